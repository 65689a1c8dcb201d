"""``python -m raykv.bench scale``: bytes moved per second during an online scale, and the
foreground throughput dip while it runs.

One run on its own ``ray.cluster_utils.Cluster`` (:func:`raykv.bench.shard.bench_cluster`:
a head with 2 CPUs and three 0-CPU raylets labelled ``raykv-host=h1..h3``):

1. same-run baselines on a bare actor pinned to ``h1``: ``rtt.bare.p50/p99`` (a 100 B round
   trip) and ``page.bare.blob`` / ``page.bare.rows`` (ms): one call carrying the bytes of one
   copy page, as one blob and as the ``(key, value)`` pairs the copy ships; ``page.bare.rate``
   (MB/s) is the pairs' bytes over that time, the rate a copy page could at best move at;
2. a store of 2 shards x 3 replicas, bulk-loaded with ``--keys`` keys of ``--value-bytes``;
3. a :class:`ForegroundLoad` of ``--threads`` threads sharing one client (puts and
   linearizable gets on random loaded keys), running throughout;
4. ``--seconds`` of load, then ``kv.scale(4)`` (split, figures ``split.*``), ``--seconds`` of
   load, ``--seconds`` more, then ``kv.scale(2)`` (merge, ``merge.*``), ``--seconds`` more.

For each scale: ``moved.bytes`` / ``moved.keys`` / ``copy.s`` (the operation's record),
``copy.rate`` (MB/s while copying, against ``page.bare.rate``), ``wall.s`` (the record's
start to its last update, including the merge's retire grace), and foreground ``fg.before``,
``fg.during`` (mean), ``fg.during.min`` (the slowest 100 ms bucket), ``fg.fenced`` (while a
range was fenced, from the record polled every 250 ms), ``fg.after`` (ops/s), ``fg.dip`` (%
below ``fg.before``), ``fg.stall.max`` (ms, the longest stretch with no completed operation
during the scale, against the same before it) and ``fg.errors``. The JSON holds the 100 ms
buckets and the polled phases (``fg.during``'s detail) and the first errors.
Finally ``check.mismatched``: loaded keys whose value after both scales is not the last one
written (each thread puts only to its own keys, so the last acknowledged value is known).
Nothing here asserts speed.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from dataclasses import dataclass, field

import ray

from ..client.scaling import POLL_S
from ..runtime.scale import COPY_PAGE_ROWS
from .report import Figure, Report, median
from .shard import _timed, bench_cluster
from .store import BareStore, bare_call, bare_rtt, key, running_store

LOCAL_RAY = False
SHARDS, GROWN = 2, 4
BUCKET_S = 0.1
PAGE_MAX_BYTES = 8 << 20
"""A copy page stops at :data:`~raykv.runtime.scale.COPY_PAGE_ROWS` rows or 8 MiB."""
PAGE_CALLS = 5
UNAVAILABLE_PHASES = ("copy", "switch")
"""A record naming one of these as the next phase: its range is fenced and not yet switched."""


@dataclass
class ThreadLog:
    """What one foreground thread saw: completion times, errors, the last value put per key."""

    done_at: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    last_put: dict[str, bytes] = field(default_factory=dict)
    uncertain: set[str] = field(default_factory=set)


class ForegroundLoad:
    """``threads`` threads sharing ``client``, each looping put-or-get on random keys ``0..keys-1``.

    Thread ``t`` puts only to keys ``i`` with ``i % threads == t`` (so the last acknowledged
    value of every key is known: :meth:`expected`) and gets any key, linearizably. Every
    completion's ``time.perf_counter()`` is recorded; an exception is recorded (type,
    message, time) and the loop goes on; a key whose put failed becomes uncertain.
    """

    def __init__(self, client, keys: int, threads: int, value_bytes: int, put_share: float = 0.5,
                 seed: int = 1) -> None:
        self.client, self.keys, self.threads, self.value_bytes = client, keys, threads, value_bytes
        self.put_share, self.seed = put_share, seed
        self.logs = [ThreadLog() for _ in range(threads)]
        self._stop = threading.Event()
        self._pool: list[threading.Thread] = []

    def start(self) -> "ForegroundLoad":
        self._pool = [threading.Thread(target=self._loop, args=(t,), daemon=True) for t in range(self.threads)]
        for th in self._pool:
            th.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for th in self._pool:
            th.join()

    def _loop(self, t: int) -> None:
        rng, mine, n = random.Random(self.seed * 1000 + t), self.logs[t], 0
        own = max(1, (self.keys - t + self.threads - 1) // self.threads)
        while not self._stop.is_set():
            n += 1
            try:
                if rng.random() < self.put_share:
                    k = key(t + self.threads * rng.randrange(own))
                    value = f"{t}:{n}:".encode().ljust(self.value_bytes, b"f")
                    mine.uncertain.add(k)
                    self.client.put(k, value)
                    mine.last_put[k] = value
                    mine.uncertain.discard(k)
                else:
                    self.client.get(key(rng.randrange(self.keys)))
            except Exception as exc:  # noqa: BLE001 -- every error is a finding, recorded
                mine.errors.append(f"{time.perf_counter():.3f} {type(exc).__name__}: {exc}")
                continue
            mine.done_at.append(time.perf_counter())

    def completions(self) -> list[float]:
        """Every completion time so far, sorted."""
        return sorted(x for log in self.logs for x in list(log.done_at))

    def errors(self) -> list[str]:
        return sorted(e for log in self.logs for e in log.errors)

    def expected(self, loaded: bytes) -> tuple[dict[str, bytes], set[str]]:
        """``(key -> the value it must hold, keys whose last put failed)``; ``loaded`` for keys never put."""
        want = {key(i): loaded for i in range(self.keys)}
        uncertain: set[str] = set()
        for log in self.logs:
            want.update(log.last_put)
            uncertain |= log.uncertain
        return want, uncertain


@dataclass(frozen=True)
class Window:
    """Foreground completions in ``[start, end)`` (perf_counter seconds)."""

    start: float
    end: float
    times: tuple[float, ...]

    @classmethod
    def of(cls, sorted_times: list[float], start: float, end: float) -> "Window":
        return cls(start, end, tuple(x for x in sorted_times if start <= x < end))

    def rate(self) -> float:
        return len(self.times) / (self.end - self.start) if self.end > self.start else 0.0

    def buckets(self) -> list[int]:
        """Completions per whole :data:`BUCKET_S` bucket from ``start`` (a partial last bucket is left out)."""
        counts = [0] * max(1, int((self.end - self.start) / BUCKET_S))
        for x in self.times:
            i = int((x - self.start) / BUCKET_S)
            if i < len(counts):
                counts[i] += 1
        return counts

    def longest_stall(self) -> float:
        """The longest stretch (s) in the window with no completion, edges included."""
        edges = (self.start, *self.times, self.end)
        return max(b - a for a, b in zip(edges, edges[1:]))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys", type=int, default=100_000, help="keys bulk-loaded before scaling")
    parser.add_argument("--value-bytes", type=int, default=100, help="bytes per value")
    parser.add_argument("--threads", type=int, default=16, help="foreground threads sharing one client")
    parser.add_argument("--seconds", type=float, default=10.0, help="foreground window before and after each scale")
    parser.add_argument("--retire-grace", type=float, default=2.0, help="retire_grace_s of the merge")


def run(args: argparse.Namespace) -> Report:
    keys, seconds = (5000, 0.5) if args.quick else (args.keys, args.seconds)
    shards, grown = (1, 2) if args.quick else (SHARDS, GROWN)  # quick: one split, one merge
    config = {"keys": keys, "value_bytes": args.value_bytes, "threads": args.threads, "seconds": seconds,
              "shards": f"{shards}->{grown}->{shards}", "replicas": 3, "retire_grace_s": args.retire_grace,
              "copy_page_rows": COPY_PAGE_ROWS, "bucket_ms": BUCKET_S * 1000}
    report = Report("raykv scale bench", config)
    with bench_cluster() as root:
        measure_bare(report, page_bytes(keys, args.value_bytes), 50 if args.quick else 1000)
        with running_store(root, shards) as kv:
            value = b"v" * args.value_bytes
            load_keys(kv, keys, value)
            load = ForegroundLoad(kv, keys, args.threads, args.value_bytes).start()
            try:
                for prefix, target in (("split", grown), ("merge", shards)):
                    measure_scale(report, prefix, kv, load, target, seconds, args.retire_grace)
            finally:
                load.stop()
            check_keys(report, kv, load, value)
    report.finish()
    return report


def page_bytes(keys: int, value_bytes: int) -> tuple[int, int]:
    """``(rows, key + value bytes)`` of one full copy page of this run's rows (values as stored are
    a few bytes longer: they are serialized)."""
    rows = min(COPY_PAGE_ROWS, keys)
    row_bytes = len(key(0)) + value_bytes
    rows = min(rows, PAGE_MAX_BYTES // row_bytes)
    return rows, rows * row_bytes


def measure_bare(report: Report, page: tuple[int, int], ops: int) -> None:
    """``rtt.bare.p50/p99``, then one page's bytes through a bare actor call (blob, then pairs)."""
    actor = BareStore.options(label_selector={"raykv-host": "h1"}).remote()
    call = bare_call(actor)
    call()
    bare_rtt(report, call, ops)
    rows, size = page
    blob = b"p" * size
    pairs = tuple((key(i).encode(), b"v" * (size // rows - len(key(i)))) for i in range(rows))
    blob_s = median([_timed(lambda: ray.get(actor.put.remote(blob))) for _ in range(PAGE_CALLS)])
    rows_s = median([_timed(lambda: ray.get(actor.load.remote(pairs))) for _ in range(PAGE_CALLS)])
    report.add(Figure("page.bare.blob", blob_s * 1e3, "ms", f"bare actor call carrying one {size / 1e6:.1f} MB blob "
                      f"(a copy page's bytes), median of {PAGE_CALLS}", detail={"bytes": size}))
    report.add(Figure("page.bare.rows", rows_s * 1e3, "ms", f"bare actor call carrying one copy page: {rows:,} "
                      f"(key, value) pairs, {size / 1e6:.1f} MB, median of {PAGE_CALLS}", "page.bare.blob",
                      detail={"rows": rows, "bytes": size}))
    report.add(Figure("page.bare.rate", size / rows_s / 1e6, "MB/s", "page.bare.rows as a rate: a bound on one "
                      "copy page's trip, without Raft or LMDB"))
    ray.kill(actor, no_restart=True)


def load_keys(kv, keys: int, value: bytes) -> None:
    """Bulk-load ``key(0..keys-1)`` = ``value`` (``put_batch`` cuts it per shard and by the batch limits)."""
    kv.put_batch([(key(i), value) for i in range(keys)])


def measure_scale(report: Report, prefix: str, kv, load: ForegroundLoad, target: int, seconds: float,
                  retire_grace_s: float) -> None:
    """``seconds`` of load, ``kv.scale(target)`` under load, ``seconds`` more; adds ``{prefix}.*``."""
    errors_before = len(load.errors())
    before_start = time.perf_counter()
    time.sleep(seconds)
    phases: list[tuple[float, str]] = []
    started = time.perf_counter()
    record = kv.scale(target, retire_grace_s=retire_grace_s, on_progress=lambda r: phases.append(_phase(r, started)))
    ended = time.perf_counter()
    time.sleep(seconds)
    times = load.completions()
    windows = {name: Window.of(times, a, b) for name, (a, b) in
               {"before": (before_start, started), "during": (started, ended),
                "after": (ended, ended + seconds)}.items()}
    copy_figures(report, prefix, record, target)
    foreground_figures(report, prefix, windows, phases)
    errors = load.errors()[errors_before:]
    report.add(Figure(f"{prefix}.fg.errors", len(errors), "errors", "errors raised to foreground threads from the "
                      "start of the before window to the end of the after window", detail={"first": errors[:20]}))


def _phase(record: dict, started: float) -> tuple[float, int, str]:
    """``(seconds since the scale started, step number, phase to run next or the state)`` of a progress record."""
    step = record.get("step") or {}
    return round(time.perf_counter() - started, 3), record.get("steps_done", 0) + 1, step.get("phase", record["state"])


def fenced_spans(phases: list[tuple[float, int, str]], end: float) -> list[tuple[float, float]]:
    """The spans (s since the start) in which a polled record said a range was fenced and not yet
    switched (phase ``copy`` or ``switch`` next): the range's unavailable window, seen at poll granularity."""
    spans = []
    for (t, _, phase), following in zip(phases, [p[0] for p in phases[1:]] + [end]):
        if phase in UNAVAILABLE_PHASES:
            spans.append((t, following))
    return spans


def copy_figures(report: Report, prefix: str, record: dict, target: int) -> None:
    """What the operation's record says it moved, how long it copied, and its wall time."""
    moved, copy_s = record["moved_bytes"], record["copy_s"]
    note = f"scale {'up' if prefix == 'split' else 'down'} to {target} shards ({record['steps_done']} steps)"
    report.add(Figure(f"{prefix}.moved.bytes", moved / 1e6, "MB", f"{note}: key + value bytes copied"))
    report.add(Figure(f"{prefix}.moved.keys", record["moved_keys"], "keys", f"{note}: rows copied"))
    report.add(Figure(f"{prefix}.copy.s", copy_s, "s", f"{note}: time in the copy phases (INGEST_BEGIN..DONE)"))
    report.add(Figure(f"{prefix}.copy.rate", moved / copy_s / 1e6 if copy_s else 0.0, "MB/s",
                      f"{note}: bytes moved per second of copying", "page.bare.rate",
                      detail={"keys_per_s": record["moved_keys"] / copy_s if copy_s else 0.0}))
    wall = (record["updated_ms"] - record["started_ms"]) / 1e3
    report.add(Figure(f"{prefix}.wall.s", wall, "s", f"{note}: the whole operation, record start to done"
                      + (" (includes the retire grace)" if prefix == "merge" else "")))
    report.add(Figure(f"{prefix}.fenced.s", record.get("fenced_s", 0.0), "s",
                      f"{note}: time ranges were fenced (fence -> switch, summed over steps; the pre-copy comes "
                      f"before): the only time a range is unavailable", detail={"delta_keys": record.get("delta_keys")}))


def foreground_figures(report: Report, prefix: str, windows: dict[str, Window], phases: list) -> None:
    """ops/s before, during (mean, slowest bucket), after; the dip; the longest stall before and during."""
    before, during, after = windows["before"], windows["during"], windows["after"]
    threads_note = "foreground ops/s (puts and linearizable gets)"
    report.add(Figure(f"{prefix}.fg.before", before.rate(), "ops/s", f"{threads_note}, before the scale"))
    buckets = during.buckets()
    report.add(Figure(f"{prefix}.fg.during", during.rate(), "ops/s", f"{threads_note}, during the scale (mean)",
                      f"{prefix}.fg.before", detail={"buckets": buckets, "phases": phases}))
    report.add(Figure(f"{prefix}.fg.during.min", min(buckets) / BUCKET_S, "ops/s",
                      f"slowest {BUCKET_S * 1000:.0f} ms bucket during the scale", f"{prefix}.fg.before"))
    report.add(Figure(f"{prefix}.fg.after", after.rate(), "ops/s", f"{threads_note}, after the scale",
                      f"{prefix}.fg.before"))
    spans = [Window.of(list(during.times), during.start + a, during.start + b)
             for a, b in fenced_spans(phases, during.end - during.start)]
    fenced_s = sum(w.end - w.start for w in spans)
    report.add(Figure(f"{prefix}.fg.fenced", sum(len(w.times) for w in spans) / fenced_s if fenced_s else 0.0,
                      "ops/s", "mean foreground ops/s while a range was fenced (copy, switch), from the record polled "
                      f"every {POLL_S * 1000:.0f} ms", f"{prefix}.fg.before", detail={"seconds": fenced_s}))
    dip = (1 - during.rate() / before.rate()) * 100 if before.rate() else 0.0
    report.add(Figure(f"{prefix}.fg.dip", dip, "%", "mean foreground throughput during the scale, below before"))
    report.add(Figure(f"{prefix}.fg.stall.before", before.longest_stall() * 1e3, "ms",
                      "longest stretch with no completed op, before the scale"))
    report.add(Figure(f"{prefix}.fg.stall.max", during.longest_stall() * 1e3, "ms",
                      "longest stretch with no completed op, during the scale", f"{prefix}.fg.stall.before"))


def check_keys(report: Report, kv, load: ForegroundLoad, loaded: bytes) -> None:
    """``check.mismatched``: keys (whose last put was acknowledged) not holding their last value."""
    want, uncertain = load.expected(loaded)
    names = sorted(want)
    got = kv.get_batch(names)
    bad = [k for k, v in zip(names, got) if k not in uncertain and v != want[k]]
    report.add(Figure("check.mismatched", len(bad), "keys", f"of {len(names):,} loaded keys read after both scales, "
                      "those not holding their last acknowledged value", detail={
                          "first": [(k, repr(got[names.index(k)])[:60]) for k in bad[:10]],
                          "uncertain": len(uncertain), "shards": len(kv.shard_map.shards)}))
