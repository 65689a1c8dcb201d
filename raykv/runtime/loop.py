"""The thin Ray shell around one replica engine: a thread, an inbox, a clock, the transport.

The engine (:mod:`raykv.replica`) makes every Raft and kv decision; this module only
moves bytes and time:

* **one loop thread** owns the engine and the LMDB store. Actor threads (Raft
  deliveries, client calls, snapshot chunks, pings) never touch them: they *post* a
  closure to the inbox, and client calls wait on a future keyed by a request id;
* **time per input**: the loop reads the clock (:func:`now`) each time it hands the
  engine one input, never once per turn (``CLOCK_BOOTTIME``, which keeps counting
  while the machine is suspended: see :mod:`raykv.replica.clock`);
* **one turn**: wait for input (at most what the engine allows), hand over
  everything posted, report unreachable peers, then ``engine.process()`` -- which
  runs the Ready contract and returns the answers -- and resolve their futures;
* **the liveness probe is answered by this loop** (:meth:`ReplicaLoop.ping` posts and
  waits), so a loop wedged on a hung fsync or a blocking lookup fails its peers' probes
  and a quiet group elects a new leader;
* **free disk space** is read every :data:`DISK_POLL_S` and handed to the engine, which
  decides what a replica with a nearly full disk may do (:mod:`raykv.replica.diskguard`);
* **crash-only**: anything the loop cannot handle (a storage error, a bug) ends the
  process; Ray restarts the actor and it comes back from LMDB alone.

Start-up (:func:`open_replica`): take the replica's directory lock (a second
incarnation fails clearly and exits), decide the start mode (pure:
:func:`raykv.replica.startup.start_mode`), open or create the store, write the
creation record, then build the engine -- or an amnesiac stand-in.
"""

from __future__ import annotations

import itertools
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from ..errors import InvalidRequestError, OperationTimeoutError, ShutdownError
from ..protocol import replica_actor_name
from ..raft import bootstrap_snapshot
from ..raft.types import HardState
from ..replica.amnesiac import AmnesiacReplica
from ..replica.clock import Stamp
from ..replica.engine import ReplicaEngine
from ..replica.options import ReplicaOptions
from ..replica.startup import StartFacts, StartMode, start_mode
from ..storage import layout
from ..storage.backup import BackupExports
from ..storage.replica_store import ReplicaId, ReplicaStore
from .metrics import ReplicaMetrics, replica_logger
from .shellport import RayShellPort
from .. import tcpbackoff
from .snapshots import SnapshotReceiver, SnapshotSender
from .transport import ReplySlot, Transport

MAX_POSTS_PER_TURN = 10_000
DISK_POLL_S = 0.1
"""How often the loop reads the free space of the data directory's filesystem (one statvfs)."""
PING_WAIT_S = 2.0
"""How long :meth:`ReplicaLoop.ping` waits for the loop (a prober's own deadline is ``call_deadline_s``)."""
_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


def now() -> Stamp:
    """The time stamp of an input: suspend-aware monotonic seconds and wall-clock milliseconds."""
    mono = time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()
    return Stamp(mono, int(time.time() * 1000))


class DiskMeter:
    """Free bytes (for unprivileged users: ``f_bavail``) of the filesystem holding ``path``,
    read at most every ``every_s``."""

    def __init__(self, path: str, every_s: float = DISK_POLL_S) -> None:
        self.path, self.every_s = path, every_s
        self._next = float("-inf")

    def poll(self, mono_s: float) -> int | None:
        """A fresh reading when one is due (None otherwise, or when the filesystem cannot be read)."""
        if mono_s < self._next:
            return None
        self._next = mono_s + self.every_s
        try:
            st = os.statvfs(self.path)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize


def open_replica(data_dir: str, ident: ReplicaId, voters: tuple[int, ...], create: bool,
                 reconstructed: bool) -> tuple[ReplicaStore | None, StartMode]:
    """Open (or create, or refuse to recreate) the replica's store; None for an amnesiac."""
    mode = start_mode(StartFacts(has_data=layout.has_data(data_dir, ident), founder=create and bool(voters),
                                 create=create, created_before=layout.was_created(data_dir, ident),
                                 reconstructed=reconstructed))
    if mode is StartMode.AMNESIAC:
        return None, mode
    store = ReplicaStore(data_dir, ident, create=mode is not StartMode.OPEN)
    if voters and create and store.snapshot().meta.index == 0 and store.last_index() == 0:
        snapshot = bootstrap_snapshot(voters)  # a founder created but not yet bootstrapped (a crash in between)
        store.persist(HardState(term=snapshot.meta.term, commit=snapshot.meta.index), snapshot=snapshot)
    layout.record_creation(data_dir, ident, now().wall_ms)
    return store, mode


class ReplicaLoop:
    """One replica's loop (see the module docstring). Public methods are thread-safe."""

    def __init__(self, data_dir: str, ident: ReplicaId, voters: tuple[int, ...], options: ReplicaOptions,
                 create: bool = True, reconstructed: bool = False, lock_wait_s: float = 10.0) -> None:
        """``reconstructed``: Ray is restarting this replica (it may not found); ``lock_wait_s``:
        how long to wait for an older incarnation to release the directory lock."""
        self.ident, self.options = ident, options
        self.log = replica_logger(ident)
        self.lock = layout.ReplicaLock(data_dir, ident, lock_wait_s)
        self.store, self.mode = open_replica(data_dir, ident, voters, create, reconstructed)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._futures: dict[int, Future] = {}
        self._ids = itertools.count(1)
        self.transport = Transport(ident.replica, lambda pid: replica_actor_name(ident.store, ident.shard, pid),
                                   options, self.post_plain)
        self.sender = SnapshotSender(ident.replica, layout.snapshots_dir(data_dir, ident), options,
                                     self.transport.handle_of, self.post_plain,
                                     lambda peer, ok: self.engine.snapshot_sent(peer, ok, now()))
        self.receiver = SnapshotReceiver(ident.replica, layout.snapshots_dir(data_dir, ident),
                                         lambda m: self.post(lambda at: self.engine.deliver_snapshot(m, at)))
        self.backups = BackupExports(layout.backups_dir(data_dir, ident))
        self.metrics = ReplicaMetrics(ident, options.metrics, self.log)
        port = RayShellPort(self)
        if self.store is None:
            why = "its directory is gone but it existed before"
            self.log.error("lost its data (%s): amnesiac, takes no part until replaced", why)
            self.engine = AmnesiacReplica(ident.replica, ident.shard, why, port)
        else:
            self.store.pin_setting("kv limits", _limits_record(options.limits))
            self.engine = ReplicaEngine(ident.replica, ident.shard, self.store, options,
                                        random.Random(int.from_bytes(os.urandom(8), "big")), port, now(),
                                        log=self.log, metrics=self.metrics)
        self.disk = DiskMeter(data_dir)
        self._measure_disk()
        self.timers = {"wait_s": 0.0, "turn_s": 0.0}
        self.turns = 0
        self._next_warm = 0.0
        self.tcp_rto_max_ms = tcpbackoff.rto_max_ms()
        """The host's cap on TCP's retransmission backoff (:mod:`raykv.tcpbackoff`)."""
        self._stopping, self._stopped = threading.Event(), threading.Event()
        status = self.engine.status()
        self.log.info("started (pid %d, %s): term %d, commit %d, applied %d", os.getpid(), self.mode.value,
                      status["term"], status["commit"], status["applied"])
        self._thread = threading.Thread(target=self._run, daemon=True, name="raykv-replica-loop")
        self._thread.start()

    # -- called from actor threads -----------------------------------------------------------
    def post(self, fn: Callable[[Stamp], None]) -> None:
        """Run ``fn(stamp)`` on the loop thread, stamped when it runs."""
        self._inbox.put(fn)

    def post_plain(self, fn: Callable[[], None]) -> None:
        self._inbox.put(lambda at: fn())

    def deliver(self, batch: tuple) -> tuple:
        """A peer's batch of Raft messages, handed to the engine in the loop's next turn; returns
        what that turn has for the peer (an append's acknowledgement, after it was persisted),
        empty if the turn did not come within half a call deadline (those messages then go in
        a call of their own)."""
        if not batch or self._stopping.is_set():
            return ()
        slot = ReplySlot(batch[0].frm)

        def handle(at: Stamp) -> None:
            self.transport.open_reply(slot)
            self.engine.deliver(batch, at)

        self.post(handle)
        return slot.wait(self.options.call_deadline_s / 2)

    def request(self, start: Callable[[int, Stamp], None], on_timeout: Callable[[], object],
                timeout_s: float | None = None) -> object:
        """Give the engine one request (``start(request id, stamp)`` on the loop thread) and wait
        for its answer; ``on_timeout()`` after ``timeout_s`` (default ``request_timeout_s``)."""
        if self._stopping.is_set():
            return self._shutdown_error()
        rid, future = next(self._ids), Future()

        def begin(at: Stamp) -> None:
            self._futures[rid] = future
            start(rid, at)

        self.post(begin)
        deadline = time.monotonic() + (self.options.request_timeout_s if timeout_s is None else timeout_s)
        while True:
            try:
                return future.result(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
            except FutureTimeout:
                if self._stopped.is_set() or time.monotonic() >= deadline:
                    self.post_plain(lambda: self._futures.pop(rid, None))
                    return on_timeout()

    def call(self, fn: Callable[[], object], timeout_s: float | None = None) -> object:
        """Run ``fn`` on the loop thread and return its result (status, faults); raises what it raises."""
        future: Future = Future()

        def run(at: Stamp) -> None:
            try:
                future.set_result(fn())
            except Exception as e:  # noqa: BLE001 -- handed back to the caller
                future.set_exception(e)

        self.post(run)
        return future.result(timeout=self.options.request_timeout_s if timeout_s is None else timeout_s)

    def force_solo(self) -> dict:
        """UNSAFE, for ``raykv recover``: this replica re-founds its group alone, its whole log
        applied (:mod:`raykv.replica.recovery`); the loop stops in the same turn, before the engine
        can write anything more, and closes the store. Returns the report as a dict; the caller
        then ends the process so Ray restarts the replica from its store."""
        future: Future = Future()

        def run(at: Stamp) -> None:
            try:
                future.set_result(self.engine.force_solo(at).to_dict())
                self._stopping.set()
            except Exception as e:  # noqa: BLE001 -- handed back to the caller
                future.set_exception(e)

        self.post(run)
        report = future.result(timeout=self.options.request_timeout_s)
        self._stopped.wait(timeout=self.options.request_timeout_s)
        return report

    def ping(self) -> bool:
        """The liveness probe: True once the loop ran a no-op (raises TimeoutError if wedged)."""
        return self.call(lambda: True, timeout_s=PING_WAIT_S)

    def export_backup(self, backup_id: str, timeout_s: float):
        """Export the user rows as of one applied index, confirmed like a linearizable read, to a
        Parquet file; ``{"index", "term", "rows", "bytes", "sha256"}`` or an error value (see
        :mod:`raykv.storage.backup`; the export runs on the loop thread). Waits up to
        ``timeout_s`` (1 s..1 h), not ``request_timeout_s``: a large shard's export is long."""
        try:
            self.backups.path(backup_id)
        except InvalidRequestError as e:
            return e
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
            return InvalidRequestError(f"export timeout_s must be a number of seconds, got {timeout_s!r}")
        abandoned = threading.Event()

        def export(storage):
            if abandoned.is_set():  # the caller gave up while the read waited: do not pause the loop
                return OperationTimeoutError(f"backup export {backup_id} abandoned by its caller")
            cut = self.backups.export(storage, backup_id)
            if abandoned.is_set():
                self.backups.remove(backup_id)
            return cut

        def give_up():
            abandoned.set()
            return OperationTimeoutError(f"backup export {backup_id} not done within {timeout_s}s")

        cut = self.request(lambda rid, at: self.engine.read(rid, export, "linearizable", at), give_up,
                           min(max(float(timeout_s), 1.0), 3600.0))
        return cut if isinstance(cut, Exception) else self.backups.describe(backup_id, cut)

    def stop(self) -> None:
        """Stop the loop, fail what is pending (definitely where possible) and close LMDB."""
        self._stopping.set()
        self.post_plain(lambda: None)
        self._stopped.wait(timeout=self.options.request_timeout_s)

    def _shutdown_error(self) -> ShutdownError:
        return ShutdownError(f"replica {self.ident.replica} of shard {self.ident.shard} is shutting down")

    # -- the loop ---------------------------------------------------------------------------------
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
        if first is None:
            self.engine.on_time(now())
        else:
            first(now())
        self._drain_posts()
        if self._stopping.is_set():
            return  # nothing more reaches the engine: _shutdown stops it (see force_solo)
        unreachable = self.transport.poll(time.monotonic())
        replies = self.transport.take_replies()
        if replies:
            self.engine.deliver(replies, now())
        if unreachable:
            self.engine.unreachable(sorted(unreachable), now())
        self._warm_peers()
        self._measure_disk()
        self._resolve(self.engine.process(now()))
        self.transport.release_replies()
        self.metrics.maybe_flush(self._metric_values)
        self.timers["turn_s"] += time.perf_counter() - t1

    def _warm_peers(self) -> None:
        """Keep a connection to every member of the configuration (:meth:`Transport.warm`)."""
        conf_status = getattr(self.engine, "conf_status", None)  # an amnesiac replica has no configuration
        if conf_status is not None and time.monotonic() >= self._next_warm:
            self._next_warm = time.monotonic() + 1.0
            conf = conf_status()
            self.transport.warm(conf["voters"] + conf["learners"], time.monotonic())

    def _measure_disk(self) -> None:
        free = self.disk.poll(time.monotonic())
        if free is not None:
            self.engine.disk_space(free, now())

    def _next_post(self) -> Callable[[Stamp], None] | None:
        timeout = self.engine.sleep_s(now())
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
            fn(now())

    def _resolve(self, answers: list[tuple[int, object]]) -> None:
        for rid, value in answers:
            future = self._futures.pop(rid, None)
            if future is not None and not future.done():
                future.set_result(value)

    def _shutdown(self) -> None:
        """Stop the engine (what is pending fails), answer what was posted before the stop (it
        finds the engine stopped: never proposed, so definitely not applied), close LMDB and
        release the directory lock."""
        self._resolve(self.engine.stop(now()))
        self._drain_posts()
        self._resolve(self.engine.stop(now()))
        error = self._shutdown_error()
        for future in self._futures.values():
            if not future.done():
                future.set_result(error)
        if self.store is not None:
            self.store.close()
        self.lock.release()

    # -- status and metrics ------------------------------------------------------------------------
    def status(self) -> dict:
        return self.call(self._status)

    def _status(self) -> dict:
        status = self.engine.status()
        status.update(store=self.ident.store, shard=self.ident.shard, replica=self.ident.replica, pid=os.getpid(),
                      transport={"calls": self.transport.calls, "lost": self.transport.lost,
                                 "replied": self.transport.replied, "warmed": self.transport.warmed},
                      snapshots={"sent": self.sender.sent, "received": self.receiver.received},
                      timers={k: round(v, 3) for k, v in self.timers.items()}, turns=self.turns,
                      tcp_rto_max_ms=self.tcp_rto_max_ms)
        return status

    def _metric_values(self) -> tuple[dict[str, int], dict[str, float]]:
        """Cumulative counters and current gauges for :meth:`ReplicaMetrics.maybe_flush`."""
        counters = dict(self.engine.counters, snapshots_sent=self.sender.sent, snapshot_sent_bytes=self.sender.sent_bytes,
                        snapshots_received=self.receiver.received, snapshot_received_bytes=self.receiver.received_bytes)
        return counters, self.engine.gauges()


def _limits_record(limits) -> bytes:
    """A stable text form of :class:`~raykv.kv.limits.KVLimits` (field=value, sorted)."""
    from dataclasses import fields

    return ",".join(f"{f.name}={getattr(limits, f.name)}" for f in sorted(fields(limits), key=lambda f: f.name)).encode()

