"""Simulated clients: exactly-once sessions, retries, leader discovery, and a recorded history.

A :class:`SimClient` behaves like raykv's client toward one group, in simulated time:
it registers a session, then runs one operation at a time (put, get at
``linearizable`` or ``lease``, delete, cas) on a few keys with values unique per
history. Each attempt goes to the replica it believes leads (a ``NotLeaderError``
hint, else the next one) with a call deadline; a write keeps its ``(session, seq)``
across retries, so it applies at most once. The outcome is recorded in a
:class:`~raykv.testing.history.HistoryRecorder` stamped with simulated time,
following :mod:`raykv.errors`: answered -> ok; a write that may have applied and
ran out of time -> indeterminate; anything certainly not applied -> dropped.
Lease reads are recorded like linearizable ones: both must be linearizable (under
the lease's clock-drift assumption). Stale reads go to any replica and are not
recorded (they need not be linearizable); each must return a value some client wrote
to that key, or nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import (
    InvalidRequestError,
    LeadershipLostError,
    NotLeaderError,
    OperationTimeoutError,
    RayKVError,
)
from ..kv.codec import decode_result, encode_op
from ..kv.commands import Cas, Delete, ErrorCode, Failed, Flag, Put
from ..protocol import SessionGrant, Write
from .history import HistoryRecorder
from .workload import WorkloadStats
from .invariants import InvariantViolation
from .world import CLIENT_HOST, US, Group, World

OP_DEADLINE_US = 6 * US
CALL_DEADLINE_US = 1 * US
KINDS = ("put", "get", "lease", "delete", "cas", "stale")
READS = {"get": "linearizable", "lease": "lease", "stale": "stale"}


@dataclass
class _Op:
    token: int | None
    kind: str
    key: bytes
    args: tuple
    deadline_us: int
    seq: int = 0
    maybe_applied: bool = False
    attempt: int = 0
    on_done: object = None


class SimClient:
    """One client thread's worth of operations against one group (see the module docstring)."""

    def __init__(self, world: World, cid: int, group: Group, keys: list[bytes], recorder: HistoryRecorder,
                 mix: tuple[float, ...] = (0.35, 0.2, 0.2, 0.1, 0.1, 0.05), think_us: tuple[int, int] = (0, 30_000),
                 max_indeterminate_per_key: int = 5) -> None:
        self.world, self.cid, self.group, self.keys = world, cid, group, keys
        self.recorder, self.mix, self.think_us = recorder, mix, think_us
        self.rng = random.Random(world.rng.getrandbits(64))
        self.stats = WorkloadStats()
        self.running = False
        self.session = 0
        self._next_seq, self._acked, self._finished = 1, 0, set()
        self._guess = 1
        self._values = 0
        self._indeterminate: dict[bytes, int] = {}
        self.max_indeterminate_per_key = max_indeterminate_per_key
        self.acknowledged: dict[bytes, bytes] = {}
        self.busy = False

    # -- the op loop -------------------------------------------------------------------------------
    def start(self) -> None:
        self.running = True
        self._schedule()

    def stop(self) -> None:
        self.running = False

    def _schedule(self) -> None:
        if self.running and not self.busy:
            self.world.after(self.rng.randint(*self.think_us) + 1, self._next_op)

    def _next_op(self) -> None:
        if not self.running or self.busy:
            return
        key = self.rng.choice(self.keys)
        kind = self.rng.choices(KINDS, self.mix)[0]
        if kind in ("put", "delete", "cas") and self._indeterminate.get(key, 0) >= self.max_indeterminate_per_key:
            kind = "get"
        self.run(kind, key)

    def run(self, kind: str, key: bytes, on_done=None, deadline_us: int | None = None) -> None:
        """Start one operation now (scripted tests call this directly); ``on_done(op outcome)``.
        It is retried until ``deadline_us`` (default: ``OP_DEADLINE_US`` from now), then given up."""
        self.busy = True
        args = self._args(kind, key)
        if kind in ("put", "cas"):
            self.world.written.setdefault(key, set()).add(args[-1])
        token = None if kind == "stale" else self.recorder.invoke(self.cid, "get" if kind == "lease" else kind, key, args)
        op = _Op(token, kind, key, args, deadline_us or self.world.now_us + OP_DEADLINE_US, on_done=on_done)
        if kind == "stale":
            self._guess = self.rng.choice(sorted(self.group.replicas))
        if kind in READS:
            self._attempt(op)
        elif self.session:
            self._begin_write(op)
        else:
            self._register(op)

    def _args(self, kind: str, key: bytes) -> tuple:
        if kind == "put":
            return (self._unique(),)
        if kind == "cas":
            expected = self.acknowledged.get(key) if self.rng.random() < 0.7 else None
            return (expected, self._unique())
        return ()

    def _unique(self) -> bytes:
        self._values += 1
        return f"c{self.cid}-{self._values}".encode()

    # -- sessions and seqs -------------------------------------------------------------------------
    def _register(self, op: _Op) -> None:
        def answered(value: object) -> bool:
            if isinstance(value, SessionGrant):
                self.session = value.session
                self._next_seq, self._acked, self._finished = 1, 0, set()
                self._begin_write(op)
                return True
            return False

        self._call(op, lambda rid, at, e: e.register_session(rid, at), answered, register=True)

    def _begin_write(self, op: _Op) -> None:
        op.seq = self._next_seq
        self._next_seq += 1
        self._attempt(op)

    def _finish_seq(self, seq: int) -> None:
        self._finished.add(seq)
        while self._acked + 1 in self._finished:
            self._acked += 1
            self._finished.discard(self._acked)

    # -- attempts --------------------------------------------------------------------------------------
    def _attempt(self, op: _Op) -> None:
        if op.kind in READS:
            level = READS[op.kind]
            self._call(op, lambda rid, at, e: e.read_keys(rid, [op.key], level, at), lambda v: self._read_answer(op, v))
            return
        encoded = encode_op({"put": lambda: Put(op.key, op.args[0]), "delete": lambda: Delete(op.key),
                             "cas": lambda: Cas(op.key, op.args[0], op.args[1])}[op.kind]())
        write = Write(self.session, op.seq, min(self._acked, op.seq - 1), encoded)
        self._call(op, lambda rid, at, e: e.submit(rid, [write], at), lambda v: self._write_answer(op, v))

    def _call(self, op: _Op, start, answered, register: bool = False) -> None:
        """Send one attempt to the guessed leader; route its reply (or its missing reply)."""
        world, group = self.world, self.group
        if world.now_us >= op.deadline_us:
            self._give_up(op)
            return
        op.attempt += 1
        attempt, target = op.attempt, self._guess
        dst = group.host_of.get(target)
        if dst is None:
            self._rotate()
            world.after(1000, lambda: self._call(op, start, answered, register))
            return

        def on_reply(value: object) -> None:
            if op.attempt != attempt:
                return
            op.attempt += 1  # later replies to this attempt are stale
            if not answered(value):
                self._retry_after_error(op, value, start, answered, register)

        def arrive() -> None:
            shell = world.target(group, target)
            if shell is None:
                world.send(dst, CLIENT_HOST, lambda: on_reply(_Unreachable()), once=True)
                return
            shell.request(lambda rid, at: start(rid, at, shell.engine),
                          lambda value: world.send(dst, CLIENT_HOST, lambda: on_reply(value), once=True))

        def timeout() -> None:
            if op.attempt == attempt:
                op.attempt += 1
                if op.kind not in READS and not register:
                    op.maybe_applied = True
                self._rotate()
                self._call(op, start, answered, register)

        world.send(CLIENT_HOST, dst, arrive, once=True)
        world.after(CALL_DEADLINE_US, timeout)

    def _retry_after_error(self, op: _Op, value: object, start, answered, register: bool) -> None:
        if isinstance(value, InvalidRequestError):
            raise InvariantViolation("client", f"client {self.cid}: a valid request was refused: {value}")
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, NotLeaderError) and value.leader_id:
            self._guess = value.leader_id
        else:
            self._rotate()
        if isinstance(value, (LeadershipLostError, OperationTimeoutError)) and not register:
            op.maybe_applied = True
        delay = 2_000 if isinstance(value, NotLeaderError) and value.leader_id else self.rng.randint(10_000, 60_000)
        self.world.after(delay, lambda: self._call(op, start, answered, register))

    def _rotate(self) -> None:
        members = sorted(self.group.replicas)
        if members:
            later = [m for m in members if m > self._guess]
            self._guess = later[0] if later else members[0]

    # -- answers ----------------------------------------------------------------------------------------
    def _read_answer(self, op: _Op, value: object) -> bool:
        if not (isinstance(value, list) and len(value) == 1 and not isinstance(value[0], RayKVError)):
            return False
        if op.kind == "stale" and value[0] is not None and value[0] not in self.world.written.get(op.key, ()):
            raise InvariantViolation("stale read", f"client {self.cid} read {value[0]!r} from {op.key!r}: nobody wrote it")
        self._done(op, "ok", value[0])
        return True

    def _write_answer(self, op: _Op, value: object) -> bool:
        if not (isinstance(value, list) and len(value) == 1 and isinstance(value[0], bytes)):
            return False
        result = decode_result(value[0])
        if isinstance(result, Failed):
            self._failed_write(op, result)
        else:
            self._done(op, "ok", result.value if isinstance(result, Flag) else None)
        return True

    def _failed_write(self, op: _Op, result: Failed) -> None:
        if result.code is ErrorCode.SESSION_EXPIRED:
            self.session = 0
        indeterminate = result.code is ErrorCode.STALE_REQUEST or (
            result.code is ErrorCode.SESSION_EXPIRED and op.maybe_applied)
        self._done(op, "indeterminate" if indeterminate else "failed")

    def _give_up(self, op: _Op) -> None:
        write = op.kind not in READS
        self._done(op, "indeterminate" if write and op.maybe_applied else "failed")

    def _done(self, op: _Op, how: str, output: object = None) -> None:
        if op.token is not None:  # (stale reads are not part of the history)
            self._record(op, how, output)
        if op.seq:
            self._finish_seq(op.seq)
        self.busy = False
        if op.on_done is not None:
            op.on_done(how)
        self._schedule()

    def _record(self, op: _Op, how: str, output: object) -> None:
        rec, key = self.recorder, op.key
        if how == "ok":
            rec.ok(op.token, output)
            self.stats.ok += 1
            if op.kind == "put" or (op.kind == "cas" and output):
                self.acknowledged[key] = op.args[-1]
            elif op.kind == "delete":
                self.acknowledged.pop(key, None)
        elif how == "indeterminate":
            rec.indeterminate(op.token)
            self.stats.indeterminate += 1
            self._indeterminate[key] = self._indeterminate.get(key, 0) + 1
        else:
            rec.failed(op.token)
            self.stats.failed += 1


class _Unreachable(RayKVError):
    """The replica's actor could not be reached (no incarnation runs)."""
