"""The replica engine: one Raft replica of one shard, every decision, no I/O of its own.

See :mod:`raykv.replica` for the public surface. This module holds the inputs
(each stamped with the time the engine is given it), proposals and reads; the
Ready contract (persist -> send -> apply -> serve -> advance) is in
:mod:`raykv.replica.readyloop`, maintenance and status in
:mod:`raykv.replica.upkeep`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from ..errors import InvalidRequestError, NotLeaderError, OperationTimeoutError, RayKVError, ShutdownError
from ..kv import KVStateMachine, RegisterSession, SessionId, decode_result, encode_command
from ..kv.codec import encode_request
from ..kv.commands import RangeChange
from ..protocol import CONSISTENCY_LEVELS, SessionGrant, Write
from ..raft import Config, Node
from ..raft.messages import InstallSnapshot, Message
from ..raft.types import ConfChange, Role
from . import queries
from .clock import Stamp, TickClock
from .diskguard import DiskGuardMixin
from .options import ReplicaOptions
from .pending import PendingReads, PendingWrites, Query, ReadGroup, WriteBatch
from .ports import Observer, ReplicaStorage, Shell
from .quiesce import Quiescence
from .readyloop import ReadyMixin
from .recovery import ForcedRecovery, force_solo
from .upkeep import UpkeepMixin

COUNTERS = ("proposed", "entries_applied", "readies", "elections_started", "elections_won", "leader_changes",
            "snapshots_created", "snapshots_installed")


class NoMetrics:
    """The metrics sink of an engine nobody scrapes (the simulator's)."""

    def committed(self, latency_s: float) -> None:
        pass

    def reads_served(self, level: str, count: int, latency_s: float | None = None) -> None:
        pass


class ReplicaEngine(ReadyMixin, UpkeepMixin, DiskGuardMixin):
    """One replica: the Raft node, the kv machine, pending requests, quiescing (see :mod:`raykv.replica`).

    Single-threaded: the shell calls every method from one thread. Inputs may be given in
    any order and any number between two :meth:`process` calls; answers collect until
    :meth:`process` returns them. ``raft`` overrides further :class:`~raykv.raft.Config`
    fields (the simulator varies flow control: ``max_msg_bytes``, ``max_inflight_msgs``).
    """

    def __init__(self, node_id: int, shard: int, storage: ReplicaStorage, options: ReplicaOptions,
                 rng: random.Random, shell: Shell, at: Stamp, *, log: logging.Logger | logging.LoggerAdapter | None = None,
                 metrics=None, observer: Observer | None = None, raft: dict | None = None) -> None:
        self.id, self.shard = node_id, shard
        self.options, self.storage, self.shell = options, storage, shell
        self.log = log if log is not None else logging.getLogger("raykv.replica")
        self.metrics = metrics if metrics is not None else NoMetrics()
        self.observer = observer
        self.machine = KVStateMachine(options.limits)
        config = Config(id=node_id, election_ticks=options.election_ticks, heartbeat_ticks=options.heartbeat_ticks,
                        commit_broadcast=options.commit_broadcast, **(raft or {}))
        self.node = Node(config, storage, rng, applied=storage.applied_index())
        self.clock = TickClock(options.tick_s, options.max_catch_up_ticks, at.mono_s)
        self.writes, self.reads = PendingWrites(), PendingReads()
        self.quiet = Quiescence(options)
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.stopped = False
        self._at = at
        self._answers: list[tuple[int, object]] = []
        self._campaign_term, self._leader_seen = self.node.term, (0, 0)
        self._next_expiry_s = at.mono_s + options.session_expiry_every_s

    # -- time ------------------------------------------------------------------------------
    def _observe(self, at: Stamp) -> None:
        """Every input first moves time to its stamp: the ticks due, catch-up ticks included."""
        if at.mono_s > self._at.mono_s:
            self._at = at
        for _ in range(self.clock.due(at.mono_s)):
            self._tick()

    def _tick(self) -> None:
        if self.quiet.should_tick(self.node):
            self.node.tick()
        probe = self.quiet.probe_due(self.node)
        if probe is not None:
            self.shell.probe(probe)

    def on_time(self, at: Stamp) -> None:
        """Nothing arrived; time passed (the shell's wait for input timed out)."""
        self._observe(at)

    def sleep_s(self, at: Stamp) -> float:
        """How long the shell may wait for input before calling :meth:`on_time` (quiet replicas
        sleep through ticks that would change nothing but their probe count)."""
        return self.clock.seconds_to_next(at.mono_s) + (self.quiet.ticks_to_sleep(self.node) - 1) * self.clock.tick_s

    # -- Raft traffic ------------------------------------------------------------------------
    def deliver(self, messages: tuple[Message, ...] | list[Message], at: Stamp) -> None:
        """Raft (and quiescing) messages from peers."""
        self._observe(at)
        for m in self._storable(messages):
            if not self.quiet.on_message(m, self.node):
                self.node.step(m)

    def deliver_snapshot(self, message: InstallSnapshot, at: Stamp) -> None:
        """A snapshot streamed in full; its payload goes now unless the node takes it (then it
        goes once installed)."""
        self.deliver((message,), at)
        if self.node.log.pending_snapshot is not message.snapshot:
            self.shell.drop_snapshot(message.snapshot.data)

    def unreachable(self, peers, at: Stamp) -> None:
        """The shell could not deliver to ``peers``: stop streaming to them, probe instead."""
        self._observe(at)
        for peer in peers:
            self.node.report_unreachable(peer)

    def snapshot_sent(self, peer: int, ok: bool, at: Stamp) -> None:
        self._observe(at)
        self.node.report_snapshot(peer, ok)

    def probe_failed(self, peer: int, reason: str, at: Stamp) -> None:
        """A quiet follower's probe of its leader failed: wake up (and campaign as usual)."""
        self._observe(at)
        self.quiet.wake(self.node, reason)

    # -- writes -------------------------------------------------------------------------------
    def submit(self, rid: int, writes: list[Write], at: Stamp) -> None:
        """Client writes, proposed as one batch; answered with one outcome per write, in order
        (an encoded result once applied, or an error value)."""
        self._observe(at)
        if not isinstance(writes, (list, tuple)) or not all(isinstance(w, Write) for w in writes):
            self._answer(rid, [InvalidRequestError("submit takes a list of raykv.protocol.Write")])
            return
        batch = WriteBatch.of(rid, len(writes), self._answer)
        if not writes:
            self._answer(rid, [])
            return
        fresh = [(slot, w) for slot, w in enumerate(writes)
                 if self.node.role is not Role.LEADER or not self.writes.attach((w.session, w.seq), batch, slot)]
        limits, now_ms = self.options.limits, at.wall_ms
        encoders = [lambda w=w: encode_request(w.session, w.seq, w.acked_seq, now_ms, w.op, limits) for _, w in fresh]
        self._propose_encoded(encoders, batch, [slot for slot, _ in fresh], [(w.session, w.seq) for _, w in fresh])

    def register_session(self, rid: int, at: Stamp) -> None:
        """Open an exactly-once session; answered with a :class:`SessionGrant` or an error value."""
        self._observe(at)
        self._propose_one(rid, RegisterSession(ts_ms=at.wall_ms), _session_grant)

    def change_range(self, rid: int, change: RangeChange, at: Stamp) -> None:
        """Resharding (leader only): answered with the decoded result (``Ok``/``Failed``) or an error."""
        self._observe(at)
        if not isinstance(change, RangeChange):
            self._answer(rid, InvalidRequestError("change_range takes a raykv.kv.commands.RangeChange"))
            return
        self._propose_one(rid, change, _decoded)

    def _propose_one(self, rid: int, command, finish: Callable[[object], object]) -> None:
        batch = WriteBatch.of(rid, 1, lambda r, outcomes: self._answer(r, finish(outcomes[0])))
        self._propose_commands([command], batch, [0])

    def _propose_commands(self, commands: list, batch: WriteBatch, slots: list[int]) -> None:
        limits = self.options.limits
        self._propose_encoded([lambda c=c: encode_command(c, limits) for c in commands], batch, slots)

    def _propose_encoded(self, encoders: list[Callable[[], bytes]], batch: WriteBatch, slots: list[int],
                         requests: list[tuple[int, int]] | None = None) -> None:
        """Encode (an ``InvalidRequestError`` answers that slot), propose as one batch (group
        commit), and register each slot for its answer."""
        refusal = self._refusal() or self._disk_refusal()
        if refusal is not None:
            for slot in slots:
                batch.fill(slot, refusal)
            return
        datas, proposed = [], []
        for i, (encode, slot) in enumerate(zip(encoders, slots)):
            try:
                datas.append(encode())
                proposed.append((slot, requests[i] if requests else None))
            except InvalidRequestError as e:
                batch.fill(slot, e)
        if not datas:
            return
        try:
            first = self.node.propose_many(datas)
        except RayKVError as e:
            for slot, _ in proposed:
                batch.fill(slot, e)
            return
        self.counters["proposed"] += len(datas)
        for i, (slot, request) in enumerate(proposed):
            self.writes.add(first + i, self.node.term, batch, slot, request, self._at.mono_s)

    def _refusal(self) -> RayKVError | None:
        """Why this replica cannot take a proposal or a confirmed read now (None: it can). Any
        such request wakes a quiet replica."""
        if self.stopped:
            return self._shutdown_error()
        self.quiet.wake(self.node, "request")
        if self.node.role is not Role.LEADER:
            return NotLeaderError(self.id, self.node.lead or None, self.node.term)
        return None

    # -- membership ---------------------------------------------------------------------------
    def change_membership(self, rid: int, cc: ConfChange, at: Stamp) -> None:
        """Propose ``cc`` (leader only); answered once applied here with ``{"voters", "learners",
        "joint"}``, or an error value (see ``docs/repair.md``)."""
        self._observe(at)
        batch = WriteBatch.of(rid, 1, lambda r, outs: self._answer(r, outs[0] if isinstance(outs[0], Exception)
                                                                   else self.conf_status()))
        if not isinstance(cc, ConfChange):
            batch.fill(0, InvalidRequestError(f"change_membership takes a ConfChange, got {type(cc).__name__}"))
            return
        if self.stopped or self.disk_low:
            batch.fill(0, self._shutdown_error() if self.stopped else self._disk_refusal())
            return
        self.quiet.wake(self.node, "proposal")
        try:
            index = self.node.propose_conf_change(cc)
        except RayKVError as e:
            batch.fill(0, e)
            return
        self.log.info("proposed %s at index %d", cc.describe(), index)
        self.writes.add(index, self.node.term, batch, 0)

    def transfer_leader(self, rid: int, target: int, at: Stamp) -> None:
        """Hand leadership to voter ``target``; answered with None or the error value."""
        self._observe(at)
        self.quiet.wake(self.node, "transfer")
        try:
            self.node.transfer_leader(target)
        except RayKVError as e:
            self._answer(rid, e)
            return
        self._answer(rid, None)

    def conf_status(self) -> dict:
        conf = self.node.tracker.conf
        return {"voters": list(conf.voters), "learners": list(conf.learners), "joint": conf.joint}

    # -- reads ----------------------------------------------------------------------------------
    def read_keys(self, rid: int, keys: list[bytes], consistency: str, at: Stamp) -> None:
        """The values of encoded ``keys`` at ``consistency`` (see :mod:`raykv.protocol`)."""
        if not isinstance(keys, (list, tuple)) or not all(isinstance(k, bytes) and k for k in keys):
            self._observe(at)
            self._answer(rid, InvalidRequestError("read keys must be a list of non-empty encoded keys (bytes)"))
            return
        self.read(rid, queries.read_keys(list(keys), self.shard), consistency, at)

    def scan(self, rid: int, start: bytes, end: bytes | None, limit: int, consistency: str, at: Stamp) -> None:
        """A page ``(pairs, more)`` of ``[start, end)`` (see :func:`raykv.replica.queries.scan_page`)."""
        self._page(rid, start, end, limit, consistency, True, at)

    def range_rows(self, rid: int, lo: bytes, hi: bytes | None, limit: int, at: Stamp) -> None:
        """Resharding: a linearizable page of the rows in ``[lo, hi)``, fenced or not (never
        served to clients: a fenced range's rows are frozen for the copy)."""
        self._page(rid, lo, hi, limit, "linearizable", False, at)

    def _page(self, rid: int, start, end, limit, consistency: str, check: bool, at: Stamp) -> None:
        problem = _scan_problem(start, end, limit)
        if problem is not None:
            self._observe(at)
            self._answer(rid, problem)
            return
        self.read(rid, queries.scan_page(start, end, limit, self.shard, check), consistency, at)

    def range_state(self, rid: int, at: Stamp) -> None:
        """Resharding: the group's :class:`~raykv.kv.ranges.RangeState` (None: it serves every key),
        leader-confirmed: whether a fence or an ingest is really in place, whatever a record says."""
        self.read(rid, queries.stored_range, "linearizable", at)

    def range_stats(self, rid: int, lo: bytes, hi: bytes | None, at: Stamp) -> None:
        """Resharding: leader-confirmed ``{"keys", "bytes", "median"}`` of ``[lo, hi)``."""
        self.read(rid, queries.range_stats(lo, hi), "linearizable", at)

    def read(self, rid: int, query: Query, consistency: str, at: Stamp) -> None:
        """Run ``query`` on the applied state once ``consistency`` allows: ``stale`` at once
        (any replica); ``lease`` from the leader's lease if it holds one, else like
        ``linearizable`` (a ReadIndex round, then once the applied index reaches it)."""
        self._observe(at)
        if consistency not in CONSISTENCY_LEVELS:
            self._answer(rid, InvalidRequestError(f"consistency must be one of {CONSISTENCY_LEVELS}, got {consistency!r}"))
            return
        if consistency == "stale":
            self._answer(rid, self._run_query(query))
            self.metrics.reads_served("stale", 1)
            return
        refusal = self._refusal()
        if refusal is not None:
            self._answer(rid, refusal)
            return
        lease = consistency == "lease" and self.quiet.lease_allowed(self.node)
        self.reads.add(query, lease, rid, at.mono_s)

    def _run_query(self, query: Query) -> object:
        try:
            return query(self.storage)
        except RayKVError as e:  # a query's own failure (e.g. an export's) answers that read only
            return e

    def _fail_read_group(self, group: ReadGroup, error: Exception) -> None:
        for _, rid in group.waiters:
            self._answer(rid, error)

    # -- the turn ---------------------------------------------------------------------------------
    def process(self, at: Stamp) -> list[tuple[int, object]]:
        """End of a turn: start one ReadIndex round per kind of read, handle every Ready, do
        upkeep; returns the answers ``(request id, value)`` produced since the last call."""
        self._observe(at)
        if self.node.role is Role.LEADER:
            self.reads.start_rounds(self.node.read_index, self._fail_read_group)
        while self.node.has_ready():
            self._handle_ready(self.node.ready())
        self._upkeep(at)
        if self.observer is not None:
            self.observer.turned(self.node)
        answers, self._answers = self._answers, []
        return answers

    def stop(self, at: Stamp) -> list[tuple[int, object]]:
        """Refuse everything from now on; fail what is pending (writes indeterminately: they may
        still commit); returns the last answers. The shell then closes the storage."""
        self._observe(at)
        self.stopped = True
        self.writes.fail_all(OperationTimeoutError(f"replica {self.id} shut down before the write applied"))
        for group in self.reads.fail_all():
            self._fail_read_group(group, self._shutdown_error())
        answers, self._answers = self._answers, []
        return answers

    def force_solo(self, at: Stamp) -> "ForcedRecovery":
        """UNSAFE, on an operator's request: re-found the group with this replica alone, its
        whole log applied (:mod:`raykv.replica.recovery`). The engine is stopped afterwards: the
        shell must restart it from its store."""
        self._observe(at)
        report = force_solo(self)
        self.stop(at)
        return report

    def _answer(self, rid: int, value: object) -> None:
        self._answers.append((rid, value))

    def _shutdown_error(self) -> ShutdownError:
        return ShutdownError(f"replica {self.id} of shard {self.shard} is shutting down")


def _session_grant(outcome: object) -> object:
    if isinstance(outcome, bytes):
        result = decode_result(outcome)
        return SessionGrant(result.id) if isinstance(result, SessionId) else result.to_error()
    return outcome


def _decoded(outcome: object) -> object:
    return decode_result(outcome) if isinstance(outcome, bytes) else outcome


def _scan_problem(start: object, end: object, limit: object) -> InvalidRequestError | None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        return InvalidRequestError(f"scan limit must be an int >= 1, got {limit!r}")
    if not isinstance(start, bytes) or not (end is None or isinstance(end, bytes)):
        return InvalidRequestError("scan bounds must be encoded keys (bytes; end may be None)")
    return None
