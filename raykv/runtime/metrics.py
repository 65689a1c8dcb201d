"""What one replica tells operators: Ray metrics (Prometheus) and log lines that name it.

Metrics (:class:`ReplicaMetrics`, one per replica, tags ``store``, ``shard``,
``replica``): the loop records events into plain Python ints and lists (a list
append or an int add, no Ray call) and :meth:`ReplicaMetrics.maybe_flush`, called
once per loop turn, exports counters and gauges to ``ray.util.metrics`` once every
:data:`FLUSH_EVERY_S`. Counters the host already keeps (``counters`` in its
``status()``) are read then and exported as deltas, so they cost the hot path
nothing more. Histogram samples are observed one by one (Ray's ``Histogram`` has
no weighted observe), so buckets, ``_count`` and ``_sum`` are exact; at a couple
of microseconds per call, a second's samples are observed over the following
turns, :data:`OBSERVE_PER_TURN` at a time (a leftover backlog is observed at
the next flush at once, so that flush's cost scales with the write rate). Buffers
stay bounded: only the loop thread appends, and the same thread turns at least
once per Raft tick; whatever is still queued when the next second's samples
arrive is observed at once, so at most two seconds of samples are held.

Never raises into the loop: any failure while recording or flushing is logged
once, with its traceback, and metrics stop for that replica (its loop goes on).
Disabled replicas (``ReplicaOptions(metrics=False)``) create no Ray metric at all.

Ray exports each name with a ``ray_`` prefix on every node's metrics agent
(``http://<node>:<MetricsExportPort>/metrics``); the list is in ``docs/metrics.md``.
A restarted replica is a new worker process: its counters start again at zero
under a new ``WorkerId`` label, and the dead worker's series stay (stale) until the
Ray session ends.

Logs (:func:`replica_logger`): every line of a replica starts with
``[raykv store=S shard=N replica=R]`` and carries the ids as record attributes
(``raykv_store``, ``raykv_shard``, ``raykv_replica``), so Ray's worker log files
(``logs/worker-*.err`` in the session directory) can be attributed. Inside a Ray
worker where nobody configured logging, :func:`replica_logger` gives the
``raykv`` logger a stderr handler at ``RAYKV_LOG_LEVEL`` (default ``INFO``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping

from ..storage.replica_store import ReplicaId

log = logging.getLogger("raykv.replica")

FLUSH_EVERY_S = 1.0
OBSERVE_PER_TURN = 200
"""Histogram samples observed per loop turn (~0.3 ms): a second's samples are spread over
the next second's turns (whatever is left is observed at the next flush)."""
TAG_KEYS = ("store", "shard", "replica")
LATENCY_BOUNDARIES_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
READ_LEVELS = ("linearizable", "lease", "stale")

# host counter key -> (metric name, description): cumulative counts the host keeps anyway
COUNTERS: dict[str, tuple[str, str]] = {
    "proposed": ("raykv_proposals_total", "Entries this replica proposed as leader (client writes, sessions, expiry)"),
    "entries_applied": ("raykv_entries_applied_total", "Log entries applied to this replica's state machine"),
    "elections_started": ("raykv_elections_started_total", "Elections this replica started (terms it campaigned in)"),
    "elections_won": ("raykv_elections_won_total", "Elections this replica won (times it became leader)"),
    "leader_changes": ("raykv_leader_changes_total", "Times this replica learned of a new leader (a new leader or term)"),
    "snapshots_created": ("raykv_snapshots_created_total", "Local snapshots taken to compact the log"),
    "snapshots_sent": ("raykv_snapshots_sent_total", "Snapshots streamed to a lagging follower (completed)"),
    "snapshot_sent_bytes": ("raykv_snapshot_sent_bytes_total", "Bytes of snapshots streamed to followers (completed)"),
    "snapshots_received": ("raykv_snapshots_received_total", "Snapshot files received completely from a leader"),
    "snapshot_received_bytes": ("raykv_snapshot_received_bytes_total", "Bytes of snapshot chunks received"),
    "snapshots_installed": ("raykv_snapshots_installed_total", "Snapshots installed (state replaced from a leader's)"),
}
# gauge key (from the host) -> (metric name, description)
GAUGES: dict[str, tuple[str, str]] = {
    "is_leader": ("raykv_is_leader", "1 if this replica leads its shard, else 0"),
    "term": ("raykv_term", "Current Raft term"),
    "commit_index": ("raykv_commit_index", "Highest log index known committed"),
    "applied_index": ("raykv_applied_index", "Highest log index applied to the state machine"),
    "apply_lag": ("raykv_apply_lag_entries", "Committed entries not yet applied (commit index - applied index)"),
}


class _Instruments:
    """The ``ray.util.metrics`` objects, created once per process (the names are process-wide)."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        self.counters = {key: Counter(name, description=d, tag_keys=TAG_KEYS) for key, (name, d) in COUNTERS.items()}
        self.gauges = {key: Gauge(name, description=d, tag_keys=TAG_KEYS) for key, (name, d) in GAUGES.items()}
        self.writes = Counter("raykv_writes_total", tag_keys=TAG_KEYS,
                              description="Entries this replica proposed and answered once applied (as leader)")
        self.reads = Counter("raykv_reads_total", tag_keys=TAG_KEYS + ("consistency",),
                             description="Reads served, by how they were served: stale, lease or linearizable")
        self.commit_ms = Histogram("raykv_commit_latency_ms", boundaries=list(LATENCY_BOUNDARIES_MS), tag_keys=TAG_KEYS,
                                   description="Milliseconds from proposal at the leader to the entry's apply there")
        self.read_index_ms = Histogram(
            "raykv_read_index_latency_ms", boundaries=list(LATENCY_BOUNDARIES_MS), tag_keys=TAG_KEYS + ("consistency",),
            description="Milliseconds from a ReadIndex round's first read to its reads served, by lease or linearizable")


_instruments: _Instruments | None = None


def _shared_instruments() -> _Instruments:
    global _instruments
    if _instruments is None:
        _instruments = _Instruments()
    return _instruments


class ReplicaMetrics:
    """One replica's metrics: cheap recording on the loop thread, exported once per second.

    Every method is called on the loop thread only and never raises.
    """

    def __init__(self, ident: ReplicaId, enabled: bool = True, logger: logging.LoggerAdapter | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self._clock = clock
        self._log = logger or replica_logger(ident)
        self._tags = {"store": ident.store, "shard": str(ident.shard), "replica": str(ident.replica)}
        self._level_tags = {level: {**self._tags, "consistency": level} for level in READ_LEVELS}
        self._commit_s: list[float] = []
        self._read_rounds: list[tuple[str, float]] = []
        self._reads = dict.fromkeys(READ_LEVELS, 0)
        self._backlog: deque[tuple[object, dict[str, str], float]] = deque()  # (histogram, tags, ms) to observe
        self._flushed: dict[str, int] = {}
        self._next_flush = 0.0
        self._ray: _Instruments | None = None
        if enabled:
            self._guard(self._create)

    def committed(self, latency_s: float) -> None:
        """An entry this replica proposed was applied here, ``latency_s`` after its proposal."""
        if self.enabled:
            self._commit_s.append(latency_s)

    def reads_served(self, consistency: str, count: int, round_latency_s: float | None = None) -> None:
        """``count`` reads served ``consistency``-wise; a ReadIndex round's latency, if one ran."""
        if self.enabled:
            self._reads[consistency] += count
            if round_latency_s is not None:
                self._read_rounds.append((consistency, round_latency_s))

    def maybe_flush(self, state: Callable[[], tuple[Mapping[str, int], Mapping[str, float]]]) -> None:
        """Called once per loop turn. Observes up to :data:`OBSERVE_PER_TURN` buffered histogram
        samples; every :data:`FLUSH_EVERY_S`, exports counters and gauges (``state()``: the host's
        cumulative counters, keys of :data:`COUNTERS`, and current gauges, keys of :data:`GAUGES`)
        and queues the second's samples (observing any left from the previous second first, so
        the queue stays bounded by one second of samples)."""
        if self.enabled:
            self._guard(lambda: self._flush(state))

    # -- internals ---------------------------------------------------------------------------
    def _create(self) -> None:
        self._ray = _shared_instruments()

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 -- metrics must never take the replica down
            self.enabled = False
            self._commit_s, self._read_rounds = [], []
            self._backlog.clear()
            self._log.warning("metrics disabled for this replica after a failure", exc_info=True)

    def _flush(self, state: Callable[[], tuple[Mapping[str, int], Mapping[str, float]]]) -> None:
        if self._backlog:
            self._observe(OBSERVE_PER_TURN)
        now = self._clock()
        if now < self._next_flush:
            return
        self._next_flush = now + FLUSH_EVERY_S
        self._observe(len(self._backlog))
        counters, gauges = state()
        self._export(counters, gauges)
        self._queue_samples()

    def _observe(self, count: int) -> None:
        backlog = self._backlog
        for _ in range(min(count, len(backlog))):
            histogram, tags, ms = backlog.popleft()
            histogram.observe(ms, tags=tags)

    def _export(self, counters: Mapping[str, int], gauges: Mapping[str, float]) -> None:
        ray_metrics, tags = self._ray, self._tags
        for key, counter in ray_metrics.counters.items():
            total = counters.get(key, 0)
            delta = total - self._flushed.get(key, 0)
            if delta > 0:
                counter.inc(delta, tags=tags)
                self._flushed[key] = total
        for key, gauge in ray_metrics.gauges.items():
            if key in gauges:
                gauge.set(gauges[key], tags=tags)
        for level, count in self._reads.items():
            if count:
                ray_metrics.reads.inc(count, tags=self._level_tags[level])
                self._reads[level] = 0

    def _queue_samples(self) -> None:
        ray_metrics, tags = self._ray, self._tags
        commits, self._commit_s = self._commit_s, []
        rounds, self._read_rounds = self._read_rounds, []
        if commits:
            ray_metrics.writes.inc(len(commits), tags=tags)
            self._backlog.extend((ray_metrics.commit_ms, tags, s * 1000.0) for s in commits)
        self._backlog.extend((ray_metrics.read_index_ms, self._level_tags[level], s * 1000.0) for level, s in rounds)


class ReplicaLog(logging.LoggerAdapter):
    """Prefixes every message with the replica's ids and adds them as record attributes."""

    def process(self, msg, kwargs):
        kwargs["extra"] = {**self.extra, **kwargs.get("extra", {})}
        return f"{self.extra['raykv_prefix']} {msg}", kwargs


def replica_logger(ident: ReplicaId, logger: logging.Logger = log) -> ReplicaLog:
    """``logger`` wrapped so each line names ``ident`` (see the module docstring)."""
    _ensure_worker_handler()
    prefix = f"[raykv store={ident.store} shard={ident.shard} replica={ident.replica}]"
    return ReplicaLog(logger, {"raykv_prefix": prefix, "raykv_store": ident.store, "raykv_shard": ident.shard,
                               "raykv_replica": ident.replica})


def _ensure_worker_handler() -> None:
    """In a Ray worker where neither the root nor the ``raykv`` logger has a handler, log
    ``raykv`` records at ``RAYKV_LOG_LEVEL`` (default INFO) to stderr (Ray's worker-*.err)."""
    raykv_logger = logging.getLogger("raykv")
    if raykv_logger.handlers or logging.getLogger().handlers or not _in_ray_worker():
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    raykv_logger.addHandler(handler)
    level = os.environ.get("RAYKV_LOG_LEVEL", "INFO").upper()
    raykv_logger.setLevel(level if level in logging.getLevelNamesMapping() else logging.INFO)


def _in_ray_worker() -> bool:
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    except Exception:  # noqa: BLE001 -- not in Ray, or an API that moved: no handler then
        return False
