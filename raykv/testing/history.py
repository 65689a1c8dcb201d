"""Client histories of a key-value store: the :class:`Op` record, a recorder and JSONL files.

A history is a list of :class:`Op`, one per operation a client *invoked*, with the
real-time interval ``[call, ret]`` in which it ran. What goes in follows
:mod:`raykv.errors`:

* an operation that returned is recorded with its output (``ok``);
* an operation that raised an :class:`~raykv.errors.IndeterminateError`, or that was
  still in flight when the history was taken, is recorded ``indeterminate``: it may
  have taken effect at any moment after ``call`` (or never), and its output is unknown;
* an operation that raised a :class:`~raykv.errors.DefiniteError` certainly did not
  happen and is **left out** of the history.

Operations (``args`` per ``kind``; ``output`` is what the client saw):

=========  ======================  ==============================================
kind       args                    output
=========  ======================  ==============================================
put        ``(value,)``            not checked (``None`` by convention)
get        ``()``                  the value, or ``None`` if the key is absent
delete     ``()``                  ``True`` iff the key existed
cas        ``(expected, new)``     ``True`` iff it swapped; ``expected`` ``None``
                                   means "the key must be absent"
=========  ======================  ==============================================

Values are hashable and never ``None`` (``None`` stands for "absent"). The JSONL
format (:func:`dump_jsonl`) stores bytes, str, int, bool and ``None`` with a small
tagged scheme so that ``b"1"``, ``"1"`` and ``1`` stay distinct.
"""

from __future__ import annotations

import base64
import json
import math
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path

KINDS: dict[str, int] = {"put": 1, "get": 0, "delete": 0, "cas": 2}
"""Each operation kind and the number of ``args`` it takes."""


@dataclass(frozen=True)
class Op:
    """One invoked operation of one client.

    Contract: ``kind`` is a key of :data:`KINDS` with ``len(args) == KINDS[kind]``;
    written values (``put``'s value, ``cas``'s new value) are not ``None``; a
    completed op has ``call <= ret``. An op is *indeterminate* when
    ``indeterminate`` is set or ``ret`` is ``None``: then ``ret`` and ``output``
    are ignored (it may be linearized anywhere after ``call``, or never).
    """

    client: int
    kind: str
    key: Hashable
    args: tuple = ()
    output: object = None
    call: float = 0.0
    ret: float | None = None
    indeterminate: bool = False

    def __post_init__(self) -> None:
        arity = KINDS.get(self.kind)
        if arity is None:
            raise ValueError(f"unknown op kind {self.kind!r} (expected one of {sorted(KINDS)})")
        if not isinstance(self.args, tuple) or len(self.args) != arity:
            raise ValueError(f"{self.kind} takes a tuple of {arity} args, got {self.args!r}")
        if self.kind in ("put", "cas") and self.args[-1] is None:
            raise ValueError(f"{self.kind} cannot write None (None means absent)")
        if self.completed and self.ret < self.call:
            raise ValueError(f"op returns before it is called: call={self.call} ret={self.ret}")

    @property
    def completed(self) -> bool:
        """True iff the op returned and its output is known."""
        return not self.indeterminate and self.ret is not None

    @property
    def end(self) -> float:
        """The latest moment the op can take effect: ``ret``, or +inf if indeterminate."""
        return self.ret if self.completed else math.inf

    def describe(self) -> str:
        """One canonical line, e.g. ``c2 cas 'k' (None, 1) -> True [1.5, 2.0]``."""
        args = repr(self.args)
        head = f"c{self.client} {self.kind} {self.key!r} {args}"
        if self.completed:
            return f"{head} -> {self.output!r} [{self.call:.6g}, {self.ret:.6g}]"
        return f"{head} -> ? [{self.call:.6g}, ...) indeterminate"


# -- recording -------------------------------------------------------------------------------------
class HistoryRecorder:
    """Thread-safe recorder of a concurrent client history.

    ``clock`` returns integer nanoseconds (default :func:`time.monotonic_ns`). Each
    event is stamped under the recorder's lock with a strictly increasing reading
    (a tie is bumped by 1 ns), so an op that completed before another was invoked
    always gets ``ret < call``. Times in the history are seconds since the
    recorder was created.

    Usage: ``t = rec.invoke(client, kind, key, args)`` before sending, then exactly
    one of ``rec.ok(t, output)``, ``rec.indeterminate(t)`` or ``rec.failed(t)``
    (definite failure: the op is dropped). Ops still pending when :meth:`history`
    is called appear as indeterminate.
    """

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._origin_ns = clock()
        self._last_ns = self._origin_ns - 1
        self._next_token = 0
        self._pending: dict[int, Op] = {}
        self._done: list[Op] = []

    @property
    def origin_ns(self) -> int:
        """The clock reading that times in this history count from."""
        return self._origin_ns

    def _stamp(self) -> float:
        """Seconds since creation, strictly increasing across calls. Caller holds the lock."""
        self._last_ns = max(self._clock(), self._last_ns + 1)
        return (self._last_ns - self._origin_ns) / 1e9

    def invoke(self, client: int, kind: str, key: Hashable, args: tuple = ()) -> int:
        """Record an invocation; returns the token that completes it."""
        with self._lock:
            op = Op(client, kind, key, tuple(args), call=self._stamp())
            token = self._next_token
            self._next_token += 1
            self._pending[token] = op
            return token

    def _finish(self, token: int) -> Op:
        op = self._pending.pop(token, None)
        if op is None:
            raise KeyError(f"unknown or already completed token {token}")
        return op

    def ok(self, token: int, output: object = None) -> None:
        """The op returned ``output``."""
        with self._lock:
            op = self._finish(token)
            self._done.append(Op(op.client, op.kind, op.key, op.args, output, op.call, self._stamp()))

    def indeterminate(self, token: int) -> None:
        """The op may or may not have taken effect (an :class:`IndeterminateError`)."""
        with self._lock:
            op = self._finish(token)
            self._done.append(Op(op.client, op.kind, op.key, op.args, None, op.call, None, True))

    def failed(self, token: int) -> None:
        """The op definitely did not take effect (a :class:`DefiniteError`): drop it."""
        with self._lock:
            self._finish(token)

    def history(self) -> list[Op]:
        """Every recorded op (pending ones as indeterminate), ordered by ``call``."""
        with self._lock:
            pending = [Op(o.client, o.kind, o.key, o.args, None, o.call, None, True) for o in self._pending.values()]
            return sorted(self._done + pending, key=lambda o: o.call)


class EventLog:
    """A recorder (the :class:`HistoryRecorder` interface) that appends every event to a file as
    it happens, stamped with ``time.monotonic_ns()``, so a history survives its process being
    killed or paused: clients in other processes (Ray tasks on other hosts of one machine, whose
    monotonic clock they share) record there, and :func:`load_events` turns the file into ops,
    an invocation without an end being indeterminate."""

    def __init__(self, path: str | Path) -> None:
        self._lock = threading.Lock()
        self._next_token = 0
        self._pending: dict[int, Op] = {}
        self._file = open(path, "a", encoding="utf-8", buffering=1)

    def _write(self, event: dict) -> None:
        self._file.write(json.dumps(event, separators=(",", ":")) + "\n")

    def invoke(self, client: int, kind: str, key: Hashable, args: tuple = ()) -> int:
        with self._lock:
            token = self._next_token
            self._next_token += 1
            self._pending[token] = Op(client, kind, key, tuple(args))
            self._write({"t": token, "ns": time.monotonic_ns(), **_op_to_json(self._pending[token])})
            return token

    def _end(self, token: int, how: str, output: object = None) -> None:
        with self._lock:
            self._pending.pop(token)
            self._write({"t": token, "ns": time.monotonic_ns(), "end": how, "output": encode_value(output)})

    def ok(self, token: int, output: object = None) -> None:
        self._end(token, "ok", output)

    def indeterminate(self, token: int) -> None:
        self._end(token, "indeterminate")

    def failed(self, token: int) -> None:
        self._end(token, "failed")

    def history(self) -> list[Op]:
        """Nothing kept in memory: the ops are in the file (:func:`load_events`)."""
        return []

    def close(self) -> None:
        self._file.close()


def load_events(path: str | Path, origin_ns: int) -> list[Op]:
    """The ops an :class:`EventLog` wrote to ``path``, times in seconds since ``origin_ns``
    (a :class:`HistoryRecorder`'s origin, to merge the two); definite failures left out, a torn
    last line (the writer was killed mid-write) ignored."""
    calls: dict[int, dict] = {}
    ops = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        at = (event["ns"] - origin_ns) / 1e9
        if "end" not in event:
            calls[event["t"]] = {**event, "call": at, "ret": None, "indeterminate": True, "output": None}
            continue
        begun = calls.pop(event["t"])
        if event["end"] == "ok":
            ops.append(_op_from_json({**begun, "ret": at, "indeterminate": False, "output": event["output"]}))
        elif event["end"] == "indeterminate":
            ops.append(_op_from_json(begun))
    return ops + [_op_from_json(begun) for begun in calls.values()]


# -- JSONL -----------------------------------------------------------------------------------------
def encode_value(v: object) -> object:
    """Tagged JSON form of a value: ``None`` -> null, else ``{"bytes"|"str"|"int"|"bool": ...}``."""
    if v is None:
        return None
    if isinstance(v, bool):
        return {"bool": v}
    if isinstance(v, int):
        return {"int": v}
    if isinstance(v, str):
        return {"str": v}
    if isinstance(v, bytes):
        return {"bytes": base64.b64encode(v).decode("ascii")}
    raise TypeError(f"cannot encode {type(v).__name__} value {v!r} (bytes, str, int, bool or None)")


def decode_value(j: object) -> object:
    """Inverse of :func:`encode_value`; raises ``ValueError`` on anything else."""
    if j is None:
        return None
    if not isinstance(j, dict) or len(j) != 1:
        raise ValueError(f"not a tagged value: {j!r}")
    ((tag, v),) = j.items()
    if tag == "bytes" and isinstance(v, str):
        return base64.b64decode(v.encode("ascii"), validate=True)
    if (tag, type(v)) in (("bool", bool), ("int", int), ("str", str)):
        return v
    raise ValueError(f"bad tagged value: {j!r}")


def _op_to_json(op: Op) -> dict:
    return {
        "client": op.client, "kind": op.kind, "key": encode_value(op.key),
        "args": [encode_value(a) for a in op.args], "output": encode_value(op.output),
        "call": op.call, "ret": op.ret, "indeterminate": op.indeterminate,
    }


def _op_from_json(d: dict) -> Op:
    return Op(
        client=int(d["client"]), kind=d["kind"], key=decode_value(d["key"]),
        args=tuple(decode_value(a) for a in d["args"]), output=decode_value(d["output"]),
        call=float(d["call"]), ret=None if d["ret"] is None else float(d["ret"]),
        indeterminate=bool(d["indeterminate"]),
    )


def dump_jsonl(ops: Iterable[Op], path: str | Path) -> None:
    """Write one JSON object per op per line (times are floats, round-tripped exactly)."""
    with open(path, "w", encoding="utf-8") as f:
        for op in ops:
            f.write(json.dumps(_op_to_json(op), separators=(",", ":")) + "\n")


def load_jsonl(path: str | Path) -> list[Op]:
    """Read a file written by :func:`dump_jsonl`; blank lines are skipped.

    Raises ``ValueError`` naming the line on malformed input.
    """
    ops = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ops.append(_op_from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: {e}") from e
    return ops
