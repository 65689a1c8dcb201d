"""One replica's loop: the Raft node, its LMDB store and the kv machine, driven by one thread.

Threading model: the Ray actor's threads (Raft deliveries, client calls,
snapshot chunks) never touch the node or the store. They *post* closures to
the loop's inbox and, for client calls, wait on a future. The loop thread
owns the :class:`~raykv.raft.Node`, the :class:`~raykv.storage.ReplicaStore`
(LMDB: it alone may grow the map, which needs no transaction open in the
process) and the transport. One turn of the loop:

1. deliver the ticks that are due (catch-up ticks after a pause come first,
   so a leader that was frozen sees its lease expired before serving);
2. run everything posted (messages, proposals, reads, reports) -- all the
   proposals of a turn become one append: group commit;
3. start one ReadIndex round per kind of read (lease or not) for the turn;
4. handle every Ready (contract of :mod:`raykv.raft.ready`): persist
   (one synced LMDB transaction) -> send -> apply (data and applied index in
   one transaction) -> answer reads -> advance;
5. maintenance: compaction, session expiry, quiescing.

A failure the loop cannot handle (a storage error, a bug) ends the process:
Ray restarts the actor (``max_restarts=-1``) and it comes back from LMDB alone.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from ..errors import (
    InvalidRequestError,
    LeadershipLostError,
    NotLeaderError,
    OperationTimeoutError,
    RayKVError,
    ShardMapChangedError,
    ShutdownError,
    StoreIdentityError,
)
from ..kv import ExpireSessions, KVStateMachine, RegisterSession, SessionId, decode_result, encode_command
from ..kv.codec import encode_request
from ..kv.commands import RangeChange
from ..kv.ranges import RANGE_KEY, RESERVED_END, RangeState
from ..raft import Config, Node, Ready, bootstrap_snapshot
from ..raft.messages import InstallSnapshot, Message
from ..raft.types import ConfChange, Entry, EntryKind, HardState, Role, Snapshot
from ..storage.backup import BackupExports
from ..storage.replica_store import ReplicaId, ReplicaStore
from ..storage.snapshot import iter_snapshot_rows
from . import movement
from .faults import FaultPlan
from .metrics import ReplicaMetrics, replica_logger
from .options import ReplicaOptions
from .protocol import CONSISTENCY_LEVELS, SessionGrant, Write, replica_actor_name
from .quiesce import Quiescence
from .requests import PendingReads, PendingWrites, ReadGroup, WriteBatch
from .snapshots import SnapshotReceiver, SnapshotSender
from .ticker import Ticker
from .transport import Transport

log = logging.getLogger("raykv.replica")
MAX_POSTS_PER_TURN = 10_000
MAX_SCAN_PAGE_BYTES = 8 << 20
"""A scan page ends once it holds this many bytes of keys and values (replies stay bounded)."""


def open_store(data_dir: str, ident: ReplicaId, voters: tuple[int, ...], create: bool = True) -> ReplicaStore:
    """Open this replica's LMDB store; with ``create``, create it (as a founding member of
    ``voters``) if absent.

    Without ``create`` (reopening an existing group) a missing directory is an error: an
    empty replica must not come back as a founding voter, since it may have voted or
    acknowledged entries before it lost its data (replacing it is a membership change).
    Creation is idempotent: a store created but not yet bootstrapped (a crash in between)
    is bootstrapped on the next open.
    """
    path = ident.path(data_dir)
    if not create and not path.exists():
        raise StoreIdentityError(f"replica {ident} has no data here and is not recreated as a founding member",
                                 str(path))
    store = ReplicaStore(data_dir, ident, create=not path.exists())
    if voters and store.snapshot().meta.index == 0 and store.last_index() == 0:
        snapshot = bootstrap_snapshot(voters)
        store.persist(HardState(term=snapshot.meta.term, commit=snapshot.meta.index), snapshot=snapshot)
    return store


class ReplicaHost:
    """The loop of one replica (see the module docstring). Public methods are thread-safe."""

    def __init__(self, data_dir: str, ident: ReplicaId, voters: tuple[int, ...], options: ReplicaOptions,
                 create: bool = True) -> None:
        self.ident, self.options = ident, options
        self.store = open_store(data_dir, ident, voters, create)
        self.store.pin_setting("kv limits", _limits_record(options.limits))
        replica_dir = ident.path(data_dir)
        snap_dir = replica_dir.with_name(replica_dir.name + ".snapshots")
        self.backups = BackupExports(replica_dir.with_name(replica_dir.name + ".backups"))
        self.machine = KVStateMachine(options.limits)
        config = Config(id=ident.replica, election_ticks=options.election_ticks, heartbeat_ticks=options.heartbeat_ticks,
                        commit_broadcast=options.commit_broadcast)
        rng = random.Random(int.from_bytes(os.urandom(8), "big"))
        self.node = Node(config, self.store, rng, applied=self.store.applied_index())
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.transport = Transport(ident.replica, lambda pid: replica_actor_name(ident.store, ident.shard, pid),
                                   options, self.post)
        self.sender = SnapshotSender(ident.replica, snap_dir, options, self.transport.handle_of, self.post,
                                     self.node.report_snapshot)
        self.receiver = SnapshotReceiver(ident.replica, snap_dir, lambda m: self.post(lambda: self._step_snapshot(m)))
        self.writes, self.reads = PendingWrites(), PendingReads()
        self.ticker = Ticker(options.tick_s, options.max_catch_up_ticks)
        self.quiet = Quiescence(options)
        self.counters = {"proposed": 0, "entries_applied": 0, "readies": 0, "elections_started": 0, "elections_won": 0,
                         "leader_changes": 0, "snapshots_created": 0, "snapshots_installed": 0}
        self.log = replica_logger(ident)
        self.metrics = ReplicaMetrics(ident, options.metrics, self.log)
        self._campaign_term, self._leader_seen = self.node.term, (0, 0)
        self.timers = {"persist_s": 0.0, "send_s": 0.0, "apply_s": 0.0, "wait_s": 0.0, "turn_s": 0.0}
        self.turns = 0
        self._next_expiry = time.monotonic() + options.session_expiry_every_s
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self.log.info("started (pid %d): term %d, commit %d, applied %d, snapshot %d", os.getpid(), self.node.term,
                      self.node.log.committed, self.node.log.applied, self.store.snapshot().meta.index)
        self._thread = threading.Thread(target=self._run, daemon=True, name="raykv-replica-loop")
        self._thread.start()

    # -- called from actor threads ---------------------------------------------------------
    def post(self, fn: Callable[[], None]) -> None:
        self._inbox.put(fn)

    def deliver(self, batch: tuple[Message, ...]) -> None:
        self.post(lambda: self._step_all(batch))

    def submit(self, writes: list[Write]) -> list:
        if not isinstance(writes, (list, tuple)) or not all(isinstance(w, Write) for w in writes):
            return [InvalidRequestError("submit takes a list of raykv.runtime.protocol.Write")]
        if not writes:
            return []
        if self._stopping.is_set():
            return [self._shutdown_error()] * len(writes)
        future: Future = Future()
        self.post(lambda: self._propose_writes(writes, future))
        return self._await(future, lambda: [OperationTimeoutError("no outcome within the replica's deadline")] * len(writes))

    def register_session(self):
        if self._stopping.is_set():
            return self._shutdown_error()
        outcome = self._propose_one(RegisterSession(ts_ms=_now_ms()), "session registration timed out")
        if isinstance(outcome, bytes):
            result = decode_result(outcome)
            return SessionGrant(result.id) if isinstance(result, SessionId) else result.to_error()
        return outcome

    def read(self, keys: list[bytes], consistency: str):
        keys = list(keys) if isinstance(keys, (list, tuple)) else None
        if keys is None or not all(isinstance(k, bytes) and k for k in keys):
            return InvalidRequestError("read keys must be a list of non-empty encoded keys (bytes)")
        return self._query(lambda: self._read_local(keys), consistency)

    def scan(self, start: bytes, end: bytes | None, limit: int, consistency: str):
        """Up to ``limit`` ``(key, value)`` pairs with ``start <= key < end`` in key order, and
        whether more follow: ``(pairs, more)`` (or an error value). A page also stops after
        :data:`MAX_SCAN_PAGE_BYTES` of keys and values (at least one pair), with ``more`` set."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            return InvalidRequestError(f"scan limit must be an int >= 1, got {limit!r}")
        if not isinstance(start, bytes) or not (end is None or isinstance(end, bytes)):
            return InvalidRequestError("scan bounds must be encoded keys (bytes; end may be None)")
        return self._query(lambda: self._scan_local(start, end, limit), consistency)

    def change_range(self, change: RangeChange):
        """Leader only: propose a resharding step (see :mod:`raykv.kv.ranges`) and wait until it is
        applied; the decoded result (``Ok`` or ``Failed``) or an error value (e.g. NotLeaderError)."""
        if not isinstance(change, RangeChange):
            return InvalidRequestError("change_range takes a raykv.kv.commands.RangeChange")
        if self._stopping.is_set():
            return self._shutdown_error()
        outcome = self._propose_one(change, "range change not applied in time")
        return decode_result(outcome) if isinstance(outcome, bytes) else outcome

    def _propose_one(self, cmd, late: str):
        """Propose one (non-session) command on the loop thread and wait for its outcome: the
        encoded result once applied, or an error value (``late``: the timeout's message)."""
        future: Future = Future()
        batch = WriteBatch(future, [None], 1)
        self.post(lambda: self._propose_commands([cmd], batch, [0]))
        return self._await(future, lambda: [OperationTimeoutError(late)])[0]

    def range_rows(self, lo: bytes, hi: bytes | None, limit: int):
        """A linearizable page of the rows in ``[lo, hi)`` even if fenced (for copying a moving
        range): ``(pairs, more)`` or an error value. Never served for unfenced ranges by clients."""
        if not isinstance(lo, bytes) or not (hi is None or isinstance(hi, bytes)):
            return InvalidRequestError("range bounds must be bytes (hi may be None)")
        return self._query(lambda: self._scan_local(lo, hi, max(1, int(limit)), check=False), "linearizable")

    def range_stats(self, lo: bytes, hi: bytes | None):
        """Leader-confirmed ``{"keys", "bytes", "median"}`` of the user rows in ``[lo, hi)``: the
        median key by bytes is where a split leaves about half the bytes on each side."""
        return self._query(lambda: movement.range_stats(self.store, lo, hi), "linearizable")

    def export_backup(self, backup_id: str, timeout_s: float):
        """Export the user rows as of one applied index, confirmed like a linearizable read
        (ReadIndex), to a Parquet file; ``{"index", "term", "rows", "bytes", "sha256"}`` or an
        error value. See :mod:`raykv.storage.backup` (the export runs on the loop thread).
        Waits up to ``timeout_s`` (1 s..1 h), not ``request_timeout_s``: a large shard's export is long."""
        try:
            self.backups.path(backup_id)
        except InvalidRequestError as e:
            return e
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
            return InvalidRequestError(f"export timeout_s must be a number of seconds, got {timeout_s!r}")
        if self._stopping.is_set():
            return self._shutdown_error()
        future: Future = Future()
        abandoned = threading.Event()

        def export():
            if abandoned.is_set():  # the caller gave up while the read waited: do not pause the loop
                return OperationTimeoutError(f"backup export {backup_id} abandoned by its caller")
            cut = self.backups.export(self.store, backup_id)
            if abandoned.is_set():
                self.backups.remove(backup_id)
            return cut

        def give_up():
            abandoned.set()
            return OperationTimeoutError(f"backup export {backup_id} not done within {timeout_s}s")

        self.post(lambda: self._start_read(export, "linearizable", future))
        cut = self._await(future, give_up, min(max(float(timeout_s), 1.0), 3600.0))
        return cut if isinstance(cut, Exception) else self.backups.describe(backup_id, cut)

    def _query(self, query: Callable[[], object], consistency: str):
        if consistency not in CONSISTENCY_LEVELS:
            return InvalidRequestError(f"consistency must be one of {CONSISTENCY_LEVELS}, got {consistency!r}")
        if self._stopping.is_set():
            return self._shutdown_error()
        future: Future = Future()
        self.post(lambda: self._start_read(query, consistency, future))
        return self._await(future, lambda: OperationTimeoutError("read not confirmed within the replica's deadline"))

    def call(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the loop thread and return its result (status, faults, admin)."""
        future: Future = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except Exception as e:  # noqa: BLE001 -- handed back to the caller
                future.set_exception(e)

        self.post(run)
        return future.result(timeout=self.options.request_timeout_s)

    def status(self) -> dict:
        return self.call(self._status)

    def change_membership(self, cc: ConfChange, timeout_s: float):
        """Leader only: propose the membership change ``cc`` and wait until it is applied here.

        Returns the configuration after it (``{"voters", "learners", "joint"}``), or an error
        value: :class:`NotLeaderError` (with the leader hint), :class:`ConfChangeError` (an
        earlier change not applied yet, a joint configuration, an invalid change, the leader
        removing itself), :class:`ProposalDroppedError` (a leadership transfer is under way),
        :class:`LeadershipLostError` / :class:`OperationTimeoutError` (indeterminate: it may
        still apply; callers re-read the configuration). A joint change is left automatically
        by the leader after this returns."""
        if not isinstance(cc, ConfChange):
            return InvalidRequestError(f"change_membership takes a ConfChange, got {type(cc).__name__}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
            return InvalidRequestError(f"change_membership timeout_s must be a number of seconds, got {timeout_s!r}")
        if self._stopping.is_set():
            return self._shutdown_error()
        future: Future = Future()
        self.post(lambda: self._propose_conf(cc, future))
        late = OperationTimeoutError(f"{cc.describe()} not applied within {timeout_s}s")
        outcome = self._await(future, lambda: [late], max(float(timeout_s), 0.1))[0]
        return outcome if isinstance(outcome, Exception) else self.call(self._conf_status)

    def _propose_conf(self, cc: ConfChange, future: Future) -> None:
        batch = WriteBatch(future, [None], 1)
        if self._stopping.is_set():
            batch.fill(0, self._shutdown_error())
            return
        self.quiet.wake(self.node, "proposal")
        try:
            index = self.node.propose_conf_change(cc)
        except RayKVError as e:
            batch.fill(0, e)
            return
        self.log.info("proposed %s at index %d", cc.describe(), index)
        self.writes.add(index, self.node.term, batch, 0)

    def _conf_status(self) -> dict:
        conf = self.node.tracker.conf
        return {"voters": list(conf.voters), "learners": list(conf.learners), "joint": conf.joint}

    def set_faults(self, plan: FaultPlan | None) -> None:
        self.call(lambda: self.transport.set_faults(plan, seed=self.ident.replica))

    def stop(self) -> None:
        """Stop the loop, fail what is pending (definitely where possible) and close LMDB."""
        self._stopping.set()
        self.post(lambda: None)
        self._stopped.wait(timeout=self.options.request_timeout_s)

    def _shutdown_error(self) -> ShutdownError:
        return ShutdownError(f"replica {self.ident.replica} of shard {self.ident.shard} is shutting down")

    def _await(self, future: Future, on_timeout: Callable[[], object], timeout_s: float | None = None):
        """The call's answer; if the loop stops first, the answer ``_shutdown`` gave (definite
        for requests never proposed, indeterminate for proposed writes); ``on_timeout()`` after
        ``timeout_s`` (default ``request_timeout_s``), or as soon as the loop is gone with the
        request unanswered."""
        deadline = time.monotonic() + (self.options.request_timeout_s if timeout_s is None else timeout_s)
        while True:
            try:
                return future.result(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
            except FutureTimeout:
                if self._stopped.is_set() or time.monotonic() >= deadline:
                    return on_timeout()

    # -- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._turn()
            self._shutdown()
        except BaseException:  # noqa: BLE001 -- crash-only: Ray restarts us from LMDB
            self.log.exception("loop failed; exiting so Ray restarts it")
            os._exit(1)
        finally:
            self._stopped.set()

    def _turn(self) -> None:
        self.turns += 1
        t0 = time.perf_counter()
        first = self._next_post()
        t1 = time.perf_counter()
        self.timers["wait_s"] += t1 - t0
        self._turn_work(first)
        self.timers["turn_s"] += time.perf_counter() - t1

    def _turn_work(self, first: Callable[[], None] | None) -> None:
        for _ in range(self.ticker.due()):
            self._tick()
        if first is not None:
            first()
        self._drain_posts()
        for peer in self.transport.poll(time.monotonic()):
            self.node.report_unreachable(peer)
        for _ in range(self.ticker.due()):  # a long drain must not leave the lease check on old time
            self._tick()
        if self.node.role is Role.LEADER:
            self.reads.start_rounds(self.node.read_index, self._fail_read_group)
        while self.node.has_ready():
            self._handle_ready(self.node.ready())
        self._maintain()

    def _next_post(self) -> Callable[[], None] | None:
        timeout = self.ticker.seconds_to_next() + (self.quiet.ticks_to_sleep(self.node) - 1) * self.ticker.tick_s
        delayed = self.transport.seconds_to_next_event(time.monotonic())
        if delayed is not None:
            timeout = min(timeout, delayed)
        try:
            return self._inbox.get(timeout=max(timeout, 0.0005))
        except queue.Empty:
            return None

    def _drain_posts(self) -> None:
        for _ in range(MAX_POSTS_PER_TURN):
            try:
                fn = self._inbox.get_nowait()
            except queue.Empty:
                return
            fn()

    def _tick(self) -> None:
        if self.quiet.should_tick(self.node):
            self.node.tick()
        probe = self.quiet.probe_due(self.node)
        if probe is not None:
            self.transport.probe(probe, self._wake)

    # -- inputs --------------------------------------------------------------------------------
    def _step_all(self, batch: tuple[Message, ...]) -> None:
        for m in batch:
            if self.quiet.on_message(m, self.node):
                continue
            self.node.step(m)

    def _step_snapshot(self, m: InstallSnapshot) -> None:
        """A streamed snapshot arrived: hand it to the node; if the node does not take it (stale,
        already covered, from an old term), its file goes now, else after it is installed."""
        self._step_all((m,))
        if self.node.log.pending_snapshot is not m.snapshot:
            Path(m.snapshot.data.decode()).unlink(missing_ok=True)

    def _wake(self, reason: str) -> None:
        self.quiet.wake(self.node, reason)

    def _propose_writes(self, writes: list[Write], future: Future) -> None:
        """Propose the writes not already pending here (retries attach to their first proposal)."""
        batch = WriteBatch(future, [None] * len(writes), len(writes))
        now = _now_ms()
        fresh = [(slot, w) for slot, w in enumerate(writes)
                 if self.node.role is not Role.LEADER or not self.writes.attach((w.session, w.seq), batch, slot)]
        limits = self.options.limits
        encoders = [lambda w=w: encode_request(w.session, w.seq, w.acked_seq, now, w.op, limits) for _, w in fresh]
        self._propose_encoded(encoders, batch, [slot for slot, _ in fresh], [(w.session, w.seq) for _, w in fresh])

    def _propose_commands(self, cmds: list, batch: WriteBatch, slots: list[int]) -> None:
        """Encode each command (validating it) and propose them (see :meth:`_propose_encoded`)."""
        limits = self.options.limits
        self._propose_encoded([lambda cmd=cmd: encode_command(cmd, limits) for cmd in cmds], batch, slots)

    def _propose_encoded(self, encoders: list[Callable[[], bytes]], batch: WriteBatch, slots: list[int],
                         requests: list[tuple[int, int]] | None = None) -> None:
        """Encode (an ``InvalidRequestError`` answers that slot), propose as one batch, and register
        each slot for its answer (``requests``: the ``(session, seq)`` of each entry, for
        :meth:`PendingWrites.attach`)."""
        if self._stopping.is_set():
            for slot in slots:
                batch.fill(slot, self._shutdown_error())
            return
        self.quiet.wake(self.node, "proposal")
        if self.node.role is not Role.LEADER:
            error = NotLeaderError(self.node.id, self.node.lead or None, self.node.term)
            for slot in slots:
                batch.fill(slot, error)
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
        proposed_at = time.perf_counter()
        for i, (slot, request) in enumerate(proposed):
            self.writes.add(first + i, self.node.term, batch, slot, request, proposed_at)

    def _start_read(self, query: Callable[[], object], consistency: str, future: Future) -> None:
        if consistency == "stale":
            future.set_result(query())
            self.metrics.reads_served("stale", 1)
            return
        if self._stopping.is_set():
            future.set_result(self._shutdown_error())
            return
        self.quiet.wake(self.node, "read")
        if self.node.role is not Role.LEADER:
            future.set_result(NotLeaderError(self.node.id, self.node.lead or None, self.node.term))
            return
        lease = consistency == "lease" and self.quiet.lease_allowed(self.node)
        self.reads.add(query, lease, future)

    def _fail_read_group(self, group: ReadGroup, error: Exception) -> None:
        for _, future in group.waiters:
            if not future.done():
                future.set_result(error)

    def _range_description(self) -> str | None:
        txn = self.store.read_txn()
        try:
            state = _range_state(txn, self.store.db("data"))
            return None if state is None else state.describe()
        finally:
            txn.abort()

    def _read_local(self, keys: list[bytes]) -> list[bytes | None] | ShardMapChangedError:
        """The values of ``keys``, or :class:`ShardMapChangedError` if this group does not serve one."""
        txn = self.store.read_txn()
        try:
            db = self.store.db("data")
            state = _range_state(txn, db)
            if state is not None and not all(state.serves(k) for k in keys):
                return ShardMapChangedError(f"shard {self.ident.shard} does not serve every key read: "
                                            f"{state.describe()}")
            return [txn.get(k, db=db) for k in keys]
        finally:
            txn.abort()

    def _scan_local(self, start: bytes, end: bytes | None, limit: int,
                    check: bool = True) -> tuple[list[tuple[bytes, bytes]], bool] | ShardMapChangedError:
        """A page of ``[start, end)`` (see :meth:`scan`); with ``check``, only if this group serves all of it."""
        txn = self.store.read_txn()
        try:
            state = _range_state(txn, self.store.db("data")) if check else None
            if state is not None and not state.serves_span(start, end):
                return ShardMapChangedError(f"shard {self.ident.shard} does not serve all of the scanned range: "
                                            f"{state.describe()}")
            pairs: list[tuple[bytes, bytes]] = []
            with txn.cursor(self.store.db("data")) as cur:
                if not cur.set_range(max(start, RESERVED_END)):
                    return pairs, False
                size = 0
                for key, value in cur:
                    if end is not None and key >= end:
                        return pairs, False
                    if len(pairs) == limit or size >= MAX_SCAN_PAGE_BYTES:
                        return pairs, True
                    pairs.append((key, value))
                    size += len(key) + len(value)
            return pairs, False
        finally:
            txn.abort()

    # -- Ready ------------------------------------------------------------------------------
    def _handle_ready(self, rd: Ready) -> None:
        if _TRACE:
            _TRACE.write(f"{time.time():.6f} r{self.node.id} {rd.describe()[:300]}\n")
            _TRACE.flush()
        self.counters["readies"] += 1
        if rd.hard_state is not None or rd.soft_state is not None:
            self._note_elections()
        t0 = time.perf_counter()
        after_send = self._persist_ready(rd)
        t1 = time.perf_counter()
        self._send(rd.messages)
        t2 = time.perf_counter()
        after_send()
        t3 = time.perf_counter()
        self.timers["persist_s"] += t1 - t0
        self.timers["send_s"] += t2 - t1
        self.timers["apply_s"] += t3 - t2
        for rs in rd.read_states:
            self.reads.confirmed(rs.ctx, rs.index)
        for ctx in rd.dropped_reads:
            group = self.reads.dropped(ctx)
            if group is not None:
                self._fail_read_group(group, NotLeaderError(self.node.id, self.node.lead or None, self.node.term))
        self.node.advance(rd)
        self._serve_reads()
        if rd.soft_state is not None:
            self._role_changed(rd.soft_state.role)

    def _persist_ready(self, rd: Ready) -> Callable[[], None]:
        """Make ``rd`` durable; returns what is left to do once its messages are sent.

        The common case (:meth:`_fusable_run`): one synced transaction persists the Ready and
        applies its committed entries; their writes are answered after the send. Otherwise
        persist, then apply after the send (a commit-only hard state rides on the apply)."""
        run = self._fusable_run(rd)
        if run:
            outcomes = self.store.persist(rd.hard_state, rd.entries, apply=self._apply_body(run, None))
            return lambda: self._applied(run, outcomes)
        commit_only = self._commit_only(rd)
        self._persist(rd, skip_hard_state=commit_only is not None)
        return lambda: self._apply(rd.committed_entries, commit_only)

    def _fusable_run(self, rd: Ready) -> list[Entry] | None:
        """The committed entries to apply, if they can be applied in the transaction that persists
        the Ready: no snapshot, no configuration change. Applying committed entries before
        sending is allowed (they are durable on a quorum already), and entries this very Ready
        persists become durable together with their effects. None (or empty): the general path."""
        if rd.snapshot is not None or not rd.committed_entries:
            return None
        applied = self.store.applied_index()
        run = [e for e in rd.committed_entries if e.index > applied]
        return None if any(e.kind is EntryKind.CONF_CHANGE for e in run) else run

    def _commit_only(self, rd: Ready) -> HardState | None:
        """The Ready's hard state if only its commit index moved and entries are to be applied.

        Raft's commit index is volatile (a restarted replica relearns it), so
        it need not be synced before sending; it is written in the apply
        transaction instead, saving one fsync per commit on every replica.
        """
        hs, stored = rd.hard_state, self.store.hard_state()
        if hs is None or rd.entries or rd.snapshot is not None or not rd.committed_entries:
            return None
        return hs if (hs.term, hs.vote) == (stored.term, stored.vote) else None

    def _persist(self, rd: Ready, skip_hard_state: bool) -> None:
        hard_state = None if skip_hard_state else rd.hard_state
        snapshot = rd.snapshot
        if snapshot is not None and snapshot.data:
            path = Path(snapshot.data.decode())
            self.store.persist(hard_state, rd.entries, Snapshot(snapshot.meta, None),
                               snapshot_rows=lambda: iter_snapshot_rows(path))
            path.unlink(missing_ok=True)
            self.counters["snapshots_installed"] += 1
            self.log.info("installed a snapshot at index %d (term %d)", snapshot.meta.index, snapshot.meta.term)
        elif hard_state is not None or rd.entries or snapshot is not None:
            self.store.persist(hard_state, rd.entries, snapshot)

    def _send(self, messages: tuple[Message, ...]) -> None:
        plain = [m for m in messages if not isinstance(m, InstallSnapshot)]
        if len(plain) != len(messages):
            for m in messages:
                if isinstance(m, InstallSnapshot):
                    self.sender.start(self.store, m)
        self.quiet.on_send(plain, self.node)
        self.transport.send(plain)

    def _apply(self, entries: tuple[Entry, ...], hard_state: HardState | None) -> None:
        """Apply in order: runs of normal entries in one transaction each, conf changes alone.

        ``hard_state`` (a commit-only change, see :meth:`_commit_only`) rides on
        the first transaction, or is persisted alone if nothing is left to apply.
        """
        run: list[Entry] = []
        for entry in entries:
            if entry.index <= self.store.applied_index():
                continue
            if entry.kind is EntryKind.CONF_CHANGE:
                hard_state = self._apply_run(run, hard_state)
                run = []
                self._apply_conf_change(entry, hard_state)
                hard_state = None
            else:
                run.append(entry)
        if self._apply_run(run, hard_state) is not None:
            self.store.persist(hard_state)

    def _apply_run(self, run: list[Entry], hard_state: HardState | None) -> HardState | None:
        """Normal entries: one LMDB transaction for all of them and the applied index.
        Returns ``hard_state`` if it was not written (empty run)."""
        if not run:
            return hard_state
        self._applied(run, self.store.apply(self._apply_body(run, hard_state)))
        return None

    def _apply_body(self, run: list[Entry], hard_state: HardState | None) -> Callable[[object], list]:
        """The transaction body applying the normal entries ``run`` (and recording the applied
        index, and ``hard_state`` if given); it returns each entry's outcome (None: no data)."""

        def body(tx) -> list:
            results = iter(self.machine.apply_run([(e.index, e.data) for e in run if e.data], tx))
            outs = [next(results) if e.data else None for e in run]
            tx.set_applied(run[-1].index)
            if hard_state is not None:
                tx.set_hard_state(hard_state)
            return outs

        return body

    def _applied(self, run: list[Entry], outcomes: list) -> None:
        """``run`` is applied and durable: answer its writes, count it."""
        self.counters["entries_applied"] += len(run)
        now = time.perf_counter()
        for entry, outcome in zip(run, outcomes):
            proposed_at = self.writes.applied(entry.index, entry.term, outcome)
            if proposed_at is not None:
                self.metrics.committed(now - proposed_at)

    def _apply_conf_change(self, entry: Entry, hard_state: HardState | None) -> None:
        conf = self.node.apply_conf_change(ConfChange.decode(entry.data))

        def body(tx) -> None:
            tx.set_conf(conf)
            tx.set_applied(entry.index)
            if hard_state is not None:
                tx.set_hard_state(hard_state)

        self.store.apply(body)
        self.writes.applied(entry.index, entry.term, None)

    def _serve_reads(self) -> None:
        for group in self.reads.ready(self.store.applied_index()):
            # the round's latency: arrival of its first read until it may be served (not the
            # queries' own time: a long scan page or a backup export is not ReadIndex latency)
            self.metrics.reads_served("lease" if group.lease else "linearizable", len(group.waiters),
                                      time.perf_counter() - group.started)
            for query, future in group.waiters:
                if not future.done():
                    future.set_result(query())

    def _note_elections(self) -> None:
        """Count the terms this replica campaigned in (a leader campaigned in its term) and the
        leaders it learned of (a new leader or term), for metrics and status."""
        node = self.node
        if node.role in (Role.CANDIDATE, Role.LEADER) and node.term > self._campaign_term:
            self._campaign_term = node.term
            self.counters["elections_started"] += 1
            self.log.debug("campaigning at term %d", node.term)
        if node.lead and (node.lead, node.term) != self._leader_seen:
            self._leader_seen = (node.lead, node.term)
            self.counters["leader_changes"] += 1
            self.log.info("leader is replica %d at term %d", node.lead, node.term)

    def _role_changed(self, role: Role) -> None:
        if role is Role.LEADER:
            self.counters["elections_won"] += 1
            self.log.info("became leader at term %d", self.node.term)
            return
        self.writes.fail_all(LeadershipLostError(f"replica {self.node.id} stopped leading (term {self.node.term})"))
        error = NotLeaderError(self.node.id, self.node.lead or None, self.node.term)
        for group in self.reads.fail_unconfirmed():
            self._fail_read_group(group, error)

    # -- maintenance -----------------------------------------------------------------------
    def _maintain(self) -> None:
        self._maybe_compact()
        if self.node.role is Role.LEADER and time.monotonic() >= self._next_expiry:
            self._next_expiry = time.monotonic() + self.options.session_expiry_every_s
            cutoff = max(0, _now_ms() - int(self.options.session_ttl_s * 1000))
            self._propose_commands([ExpireSessions(cutoff)], WriteBatch(Future(), [None], 1), [0])
        if self.quiet.maybe_quiesce(self.node, len(self.writes) + len(self.reads)):
            self.transport.send(self.quiet.quiesce_messages(self.node))
        self.metrics.maybe_flush(self._metric_values)

    def _metric_values(self) -> tuple[dict[str, int], dict[str, float]]:
        """Cumulative counters and current gauges for :meth:`ReplicaMetrics.maybe_flush`."""
        counters = dict(self.counters, snapshots_sent=self.sender.sent, snapshot_sent_bytes=self.sender.sent_bytes,
                        snapshots_received=self.receiver.received, snapshot_received_bytes=self.receiver.received_bytes)
        committed, applied = self.node.log.committed, self.node.log.applied
        gauges = {"is_leader": float(self.node.role is Role.LEADER), "term": self.node.term, "commit_index": committed,
                  "applied_index": applied, "apply_lag": committed - applied}
        return counters, gauges

    def _maybe_compact(self) -> None:
        applied = self.store.applied_index()
        if applied - self.store.snapshot().meta.index < self.options.compact_every_entries:
            return
        self.store.create_snapshot(applied, self.store.initial_state()[1], None)
        self.counters["snapshots_created"] += 1
        keep_from = applied - self.options.compact_keep_entries
        if keep_from >= self.store.first_index():
            self.store.compact(keep_from)

    def _status(self) -> dict:
        status = self.node.status()
        status["conf"] = {"voters": list(status["conf"].voters), "learners": list(status["conf"].learners),
                          "joint": status["conf"].joint}
        if self.node.role is Role.LEADER:  # what membership changes need: how far each peer is
            status["peers"] = {i: {"state": pr.state.value, "match": pr.match}
                               for i, pr in self.node.tracker.progress.items()}
        status.update(
            store=self.ident.store, shard=self.ident.shard, replica=self.ident.replica, pid=os.getpid(),
            snapshot_index=self.store.snapshot().meta.index, quiesced=self.quiet.quiesced,
            pending_writes=len(self.writes), pending_reads=len(self.reads), data_bytes=self.store.stat()["used_bytes"],
            transport={"calls": self.transport.calls, "lost": self.transport.lost},
            snapshots={"sent": self.sender.sent, "received": self.receiver.received},
            timers={k: round(v, 3) for k, v in self.timers.items()}, turns=self.turns,
            range=self._range_description(),
            **self.counters,
        )
        return status

    def _shutdown(self) -> None:
        """Answer what was posted before the stop (proposals now fail with ShutdownError: they
        were never proposed), fail what is pending, close LMDB."""
        self._drain_posts()
        self.writes.fail_all(OperationTimeoutError(f"replica {self.ident.replica} shut down before the write applied"))
        error = self._shutdown_error()
        for group in self.reads.fail_all():
            self._fail_read_group(group, error)
        self.store.close()


_TRACE = open(os.environ["RAYKV_TRACE"], "a") if os.environ.get("RAYKV_TRACE") else None


def _limits_record(limits) -> bytes:
    """A stable text form of :class:`~raykv.kv.limits.KVLimits` (field=value, sorted)."""
    from dataclasses import fields

    return ",".join(f"{f.name}={getattr(limits, f.name)}" for f in sorted(fields(limits), key=lambda f: f.name)).encode()


def _range_state(txn, db) -> RangeState | None:
    return RangeState.decode_stored(txn.get(RANGE_KEY, db=db))


def _now_ms() -> int:
    return int(time.time() * 1000)
