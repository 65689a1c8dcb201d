"""A linearizability checker for key-value histories (Wing & Gong, Lowe, Porcupine).

:func:`check` decides whether a history of :class:`~raykv.testing.history.Op` (put,
get, delete, cas; see :mod:`raykv.testing.history` for what each op means and which
ops belong in a history) could have come from a single register per key whose
operations each took effect atomically at one instant inside their real-time interval.

How it works:

* **P-compositionality** -- a history is linearizable iff each key's sub-history is
  (Herlihy & Wing), so every key is checked on its own, in order of first call.
* **Depth-first search** over linearization orders (Wing & Gong) with **memoization**
  of ``(set of linearized ops as a bitmask, model state)``: a configuration already
  explored from another order is never explored again (Lowe, "Testing for
  linearizability", 2017).
* **Just-in-time linearization** (Lowe): the next op may only be one whose ``call``
  is ``<=`` the earliest ``ret`` among the not-yet-linearized *completed* ops; any
  later op would be placed after an op that returned before it was called.
* **Indeterminate ops** end at +inf: they may be linearized at any step after they
  become candidates, or never; a key is done once every completed op is linearized.
  Indeterminate gets are dropped up front (no effect, no checked output).

Real-time order is strict: ``a`` precedes ``b`` iff ``a.ret < b.call``; equal stamps
count as concurrent. Values are compared with their type (``1``, ``True`` and ``b"1"``
are different values). The search is exponential in the worst case;
``timeout_s`` bounds it and yields ``ok=None`` ("unknown") when exceeded.

Cost: valid histories with no indeterminate ops check in about linear time (5,000
ops on one key with 16 concurrent clients: ~0.05 s). Indeterminate ops are the
expensive part, as in Knossos and Porcupine: each stays a candidate until the key
is done, and the search may try it at every step. Many of them on one heavily
contended key (100 among 5,000 ops, 16 clients) take about a minute; spreading
the workload over keys (as Jepsen does) keeps each key's search small. Trying
completed candidates first was measured and is slower (it must exhaust every
order without an indeterminate write before placing one that a later read saw).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from .history import HistoryRecorder, Op, dump_jsonl, load_jsonl

__all__ = ["HistoryRecorder", "LinearizabilityResult", "Op", "check", "dump_jsonl", "load_jsonl", "step"]


# -- the sequential model (one key) -----------------------------------------------------------------
def _same(a: object, b: object) -> bool:
    """Value equality that also compares types (so ``1 != True`` and ``1 != 1.0``)."""
    return type(a) is type(b) and a == b


def step(op: Op, state: object) -> tuple[bool, object]:
    """Apply ``op`` to a key whose value is ``state`` (``None``: absent).

    Returns ``(legal, new_state)``: ``legal`` is False iff the op is completed and its
    recorded output differs from what the register would return. The output of an
    indeterminate op is not checked; ``put``'s output is never checked.
    """
    kind, checked = op.kind, op.completed
    if kind == "put":
        return True, op.args[0]
    if kind == "get":
        return (not checked or _same(op.output, state)), state
    if kind == "delete":
        return (not checked or _same(op.output, state is not None)), None
    expected, new = op.args  # cas
    swapped = _same(expected, state)
    return (not checked or _same(op.output, swapped)), (new if swapped else state)


# -- one key's history, prepared for the search ---------------------------------------------------
def _lowest_zero_bit(x: int) -> int:
    return (~x & (x + 1)).bit_length() - 1


@dataclass(frozen=True)
class _KeyHistory:
    """The ops of one key sorted by ``call`` (op ``i`` is bit ``i`` of a linearized mask).

    ``by_ret`` lists the indices of the completed ops by ``ret``; ``ret_bit[i]`` is op
    ``i``'s bit in the completed-ops mask (ordered like ``by_ret``; 0 if indeterminate),
    so the earliest unlinearized return is ``by_ret[lowest zero bit]``.
    """

    key: Hashable
    ops: tuple[Op, ...]
    calls: tuple[float, ...]
    by_ret: tuple[int, ...]
    ret_bit: tuple[int, ...]

    @classmethod
    def build(cls, key: Hashable, ops: list[Op]) -> _KeyHistory:
        ops = sorted((o for o in ops if o.completed or o.kind != "get"), key=lambda o: o.call)
        by_ret = sorted((i for i, o in enumerate(ops) if o.completed), key=lambda i: ops[i].ret)
        ret_bit = [0] * len(ops)
        for rank, i in enumerate(by_ret):
            ret_bit[i] = 1 << rank
        return cls(key, tuple(ops), tuple(o.call for o in ops), tuple(by_ret), tuple(ret_bit))

    @property
    def all_completed(self) -> int:
        return (1 << len(self.by_ret)) - 1

    def candidates(self, mask: int, ret_mask: int) -> int:
        """Bitmask of the ops that may be linearized next (Lowe's just-in-time rule)."""
        first = _lowest_zero_bit(ret_mask)
        if first >= len(self.by_ret):
            window = len(self.ops)
        else:
            window = bisect.bisect_right(self.calls, self.ops[self.by_ret[first]].ret)
        return ~mask & ((1 << window) - 1)


class _Frame:
    """A search node: ops linearized so far (``mask``), model ``state``, untried candidates."""

    __slots__ = ("mask", "ret_mask", "state", "pending", "op", "parent", "depth")

    def __init__(self, mask: int, ret_mask: int, state: object, op: int, parent: _Frame | None) -> None:
        self.mask, self.ret_mask, self.state = mask, ret_mask, state
        self.op, self.parent = op, parent
        self.depth = 0 if parent is None else parent.depth + 1
        self.pending = 0

    def path(self) -> list[_Frame]:
        """The frames from the first linearized op to this one."""
        out, f = [], self
        while f.parent is not None:
            out.append(f)
            f = f.parent
        return out[::-1]


@dataclass(frozen=True)
class _Outcome:
    ok: bool | None
    explored: int
    best: _Frame  # the deepest node reached (the full linearization when ok)


def _search(h: _KeyHistory, deadline: float | None) -> _Outcome:
    """Iterative DFS with memoization; ``ok`` is None if ``deadline`` (monotonic s) passed."""
    root = _Frame(0, 0, None, -1, None)
    if not h.by_ret:
        return _Outcome(True, 1, root)
    root.pending = h.candidates(0, 0)
    seen = {(0, type(None), None)}
    stack, best, steps = [root], root, 0
    while stack:
        f = stack[-1]
        if not f.pending:
            stack.pop()
            continue
        steps += 1
        if deadline is not None and steps % 1024 == 0 and time.monotonic() > deadline:
            return _Outcome(None, len(seen), best)
        low = f.pending & -f.pending  # in order of call
        f.pending ^= low
        i = low.bit_length() - 1
        legal, state = step(h.ops[i], f.state)
        mask = f.mask | low
        if not legal or (mask, type(state), state) in seen:
            continue
        seen.add((mask, type(state), state))
        child = _Frame(mask, f.ret_mask | h.ret_bit[i], state, i, f)
        if child.ret_mask == h.all_completed:
            return _Outcome(True, len(seen), child)
        child.pending = h.candidates(mask, child.ret_mask)
        if child.depth > best.depth:
            best = child
        stack.append(child)
    return _Outcome(False, len(seen), best)


# -- results ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinearizabilityResult:
    """What :func:`check` found.

    ``ok`` is True (linearizable), False (a key is not) or None (gave up at the
    timeout). When not ok, ``key`` is the failing (or unfinished) key, ``prefix`` the
    longest linearizable prefix found for it, and ``explanation`` a readable account:
    the key's ops in real-time order, that prefix, and why each next candidate fails.
    """

    ok: bool | None
    key: Hashable | None
    explanation: str
    op_count: int
    key_count: int
    keys_checked: int
    states_explored: int
    elapsed_s: float
    prefix: tuple[Op, ...] = ()


def _explain(h: _KeyHistory, out: _Outcome, timeout_s: float | None) -> str:
    path = out.best.path()
    done = sum(1 for f in path if h.ops[f.op].completed)
    head = (
        f"key {h.key!r} is not linearizable" if out.ok is False
        else f"gave up on key {h.key!r} after {timeout_s} s (result unknown)"
    )
    lines = [
        f"{head}: {len(h.ops)} ops; the longest linearizable prefix found has {len(path)} ops "
        f"({done} of {len(h.by_ret)} completed ops); {out.explored} states explored",
        "history of the key (real-time order, by call):",
        *(f"  #{i} {op.describe()}" for i, op in enumerate(h.ops)),
        "longest linearizable prefix (op => value after it):",
        *(f"  #{f.op} {h.ops[f.op].describe()} => {f.state!r}" for f in path),
        f"then, with value {out.best.state!r}, every possible next op fails:",
    ]
    for i in _bits(h.candidates(out.best.mask, out.best.ret_mask)):
        legal, _ = step(h.ops[i], out.best.state)
        why = "legal, but no linearization continues from it" if legal else "its output contradicts the value"
        lines.append(f"  #{i} {h.ops[i].describe()}: {why}")
    return "\n".join(lines)


def _bits(x: int) -> Iterable[int]:
    while x:
        low = x & -x
        yield low.bit_length() - 1
        x ^= low


def _partition(ops: Iterable[Op]) -> dict[Hashable, list[Op]]:
    """Ops grouped per key; keys in order of their first call (deterministic)."""
    parts: dict[Hashable, list[Op]] = {}
    for op in sorted(ops, key=lambda o: o.call):
        parts.setdefault(op.key, []).append(op)
    return parts


def check(ops: Iterable[Op], timeout_s: float | None = None) -> LinearizabilityResult:
    """Is the history linearizable? Checks each key in turn and stops at the first failure.

    ``timeout_s`` bounds the whole check (wall-clock); when it runs out the result
    has ``ok=None`` and names the key being searched.
    """
    start = time.monotonic()
    deadline = None if timeout_s is None else start + timeout_s
    ops = list(ops)
    parts = _partition(ops)
    explored = 0
    for n, (key, key_ops) in enumerate(parts.items(), 1):
        h = _KeyHistory.build(key, key_ops)
        out = _search(h, deadline)
        explored += out.explored
        if out.ok is not True:
            return LinearizabilityResult(
                out.ok, key, _explain(h, out, timeout_s), len(ops), len(parts), n, explored,
                time.monotonic() - start, tuple(h.ops[f.op] for f in out.best.path()),
            )
    summary = f"linearizable: {len(ops)} ops on {len(parts)} keys, {explored} states explored"
    elapsed_s = time.monotonic() - start
    return LinearizabilityResult(True, None, summary, len(ops), len(parts), len(parts), explored, elapsed_s)
