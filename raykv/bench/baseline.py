"""Baselines for raykv's Ray costs: ``python -m raykv.bench baseline [--quick] [--json PATH]``.

Every other raykv figure is bounded by these, measured on a running Ray (``num_cpus=0`` actors):

* ``rtt.*``: sequential round trips (one ``ray.get`` per call) of a 100 B argument, p50/p99;
* ``rate.*``: pipelined calls (all submitted, then one wait) per second, for a plain sync
  actor, an async actor (``async def``), and a threaded actor with concurrency groups
  ``{"raft": 1, "client": 16}`` whose ``raft``-group ``deliver`` only puts its argument on a
  ``queue.Queue`` and returns None (the replica's one-way Raft delivery; the inbox is emptied
  before each run). ``group`` waits for the None replies; ``group_oneway`` submits with
  ``num_returns=0``, then makes one normal call and checks the queue length. ``*_batch``
  variants carry 100 distinct 100 B items per call (their rates count items);
* ``cpu.*``: CPU µs per call: the driver's ``time.process_time`` plus the actor process's
  ``getrusage`` (all threads of each) over the same window. On 2 cores this is the real limit;
* ``lmdb.commit``: a bare synced LMDB commit of one 100 B value (from :mod:`raykv.storage.bench`).

Pipelined variants run ``rounds`` times, interleaved, and each figure is the median over rounds.
Nothing here asserts speed.
"""

from __future__ import annotations

import argparse
import queue
import resource
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import ray

from ..storage import bench as storage_bench
from .report import Figure, Report, median, p50_p99_us

VALUE_BYTES = 100
BATCH_ITEMS = 100


def process_cpu() -> float:
    """User plus system CPU seconds used so far by this whole process (every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@ray.remote(num_cpus=0)
class SyncActor:
    """A plain actor: one thread, calls run one at a time in submission order."""

    def put(self, value: bytes) -> int:
        return len(value)

    def put_batch(self, items: list[bytes]) -> int:
        return sum(map(len, items))

    def drain(self) -> int:
        return 0

    def cpu(self) -> float:
        return process_cpu()


@ray.remote(num_cpus=0)
class AsyncActor:
    """An asyncio actor: every method is a coroutine on the actor's event loop."""

    async def put(self, value: bytes) -> int:
        return len(value)

    async def put_batch(self, items: list[bytes]) -> int:
        return sum(map(len, items))

    async def drain(self) -> int:
        return 0

    async def cpu(self) -> float:
        return process_cpu()


@ray.remote(num_cpus=0, concurrency_groups={"raft": 1, "client": 16})
class GroupActor:
    """A threaded actor shaped like the replica: ``deliver`` (raft group) only enqueues."""

    def __init__(self) -> None:
        self.inbox: queue.Queue = queue.Queue()

    @ray.method(concurrency_group="raft")
    def deliver(self, message: object) -> None:
        self.inbox.put(message)

    @ray.method(concurrency_group="raft")
    def drain(self) -> int:
        """Empty the inbox (as the replica's Raft loop would); the number of messages dropped."""
        dropped = self.inbox.qsize()
        self.inbox = queue.Queue()
        return dropped

    @ray.method(concurrency_group="client")
    def wait_received(self, count: int, timeout: float = 60.0) -> int:
        """Block until ``count`` messages were delivered (polling); the number delivered."""
        deadline = time.monotonic() + timeout
        while self.inbox.qsize() < count and time.monotonic() < deadline:
            time.sleep(0.0005)
        return self.inbox.qsize()

    @ray.method(concurrency_group="client")
    def cpu(self) -> float:
        return process_cpu()


ACTORS = {"sync": SyncActor, "async": AsyncActor, "group": GroupActor}


@dataclass(frozen=True)
class Variant:
    """What is called: actor kind, method, 100 B items per call, and one-way (``num_returns=0``)."""

    name: str
    actor: str
    method: str
    items: int = 1
    oneway: bool = False


RTT_VARIANTS = (Variant("sync", "sync", "put"), Variant("async", "async", "put"),
                Variant("group", "group", "deliver"))
PIPELINED_VARIANTS = RTT_VARIANTS + (
    Variant("group_oneway", "group", "deliver", oneway=True),
    Variant("sync_batch", "sync", "put_batch", BATCH_ITEMS),
    Variant("async_batch", "async", "put_batch", BATCH_ITEMS),
    Variant("group_oneway_batch", "group", "deliver", BATCH_ITEMS, oneway=True),
)
# Which figure each pipelined variant is compared with (rate and cpu figures alike).
BASELINES = {"async": "sync", "group": "sync", "group_oneway": "sync", "sync_batch": "sync",
             "async_batch": "sync_batch", "group_oneway_batch": "sync_batch"}


@dataclass(frozen=True)
class Config:
    """Counts of one run. ``quick()`` is for tests: seconds, not figures worth reading."""

    rtt_calls: int = 2000
    pipelined_calls: int = 3000
    batch_calls: int = 500
    warmup_calls: int = 200
    rounds: int = 5
    lmdb_seconds: float = 2.0

    @classmethod
    def quick(cls) -> Config:
        return cls(rtt_calls=30, pipelined_calls=100, batch_calls=20, warmup_calls=10, rounds=1, lmdb_seconds=0.05)


@dataclass(frozen=True)
class Sample:
    """One timed run of ``calls`` calls carrying ``items`` items in all; times in seconds."""

    calls: int
    items: int
    wall: float
    driver_cpu: float
    actor_cpu: float
    latencies: tuple[float, ...] = ()

    def cpu_us_per_call(self) -> float:
        return (self.driver_cpu + self.actor_cpu) / self.calls * 1e6


def argument(items: int) -> bytes | list[bytes]:
    """One 100 B value, or a list of ``items`` distinct ones (so pickle cannot share them)."""
    if items == 1:
        return bytes(range(VALUE_BYTES))
    return [i.to_bytes(4, "big") * (VALUE_BYTES // 4) for i in range(items)]


def _settle(handle, variant: Variant, refs: list) -> None:
    """Wait until every submitted call ran: its replies, or (one-way calls, whose ``refs`` are
    None) one last normal call and then the inbox length, on an inbox drained beforehand."""
    if not variant.oneway:
        ray.get(refs)
        return
    ray.get(handle.deliver.remote(None))
    expected = len(refs) + 1
    got = ray.get(handle.wait_received.remote(expected))
    if got < expected:
        raise RuntimeError(f"{variant.name}: {got} of {expected} one-way messages arrived")


def measure(handle, variant: Variant, calls: int, sequential: bool = False) -> Sample:
    """Make ``calls`` calls of ``variant`` on ``handle``, one ``ray.get`` each if ``sequential``
    (latencies recorded), else all submitted before waiting; CPU of driver and actor over the run."""
    if sequential and variant.oneway:
        raise ValueError("a one-way call has no round trip to time")
    method = getattr(handle, variant.method)
    call = method.options(num_returns=0) if variant.oneway else method
    arg = argument(variant.items)
    ray.get(handle.drain.remote())  # an inbox that only grows would slow the actor's GC
    actor0, driver0, start = ray.get(handle.cpu.remote()), time.process_time(), time.perf_counter()
    latencies: list[float] = []
    if sequential:
        for _ in range(calls):
            t = time.perf_counter()
            ray.get(call.remote(arg))
            latencies.append(time.perf_counter() - t)
    else:
        _settle(handle, variant, [call.remote(arg) for _ in range(calls)])
    wall, driver = time.perf_counter() - start, time.process_time() - driver0
    actor = ray.get(handle.cpu.remote()) - actor0
    return Sample(calls, calls * variant.items, wall, driver, actor, tuple(latencies))


def rtt_figures(report: Report, handles: dict, cfg: Config) -> None:
    """Add ``rtt.<variant>.p50/p99`` (µs) for each RTT variant; sync is the baseline."""
    for v in RTT_VARIANTS:
        measure(handles[v.actor], v, cfg.warmup_calls, sequential=True)
        s = measure(handles[v.actor], v, cfg.rtt_calls, sequential=True)
        p50, p99 = p50_p99_us(s.latencies)
        detail = {"calls": s.calls, "cpu_us_per_call": s.cpu_us_per_call(), "wall_s": s.wall}
        for q, value in (("p50", p50), ("p99", p99)):
            base = None if v.name == "sync" else f"rtt.sync.{q}"
            report.add(Figure(f"rtt.{v.name}.{q}", value, "µs", f"{v.actor} actor, sequential {v.method}(100 B), {q}",
                              base, detail=detail))


def pipelined_samples(handles: dict, cfg: Config) -> dict[str, list[Sample]]:
    """``rounds`` interleaved runs of every pipelined variant (each after a warm-up); each round
    starts one variant later, so no variant always runs first (or right after the same one)."""
    samples: dict[str, list[Sample]] = {v.name: [] for v in PIPELINED_VARIANTS}
    n = len(PIPELINED_VARIANTS)
    for r in range(cfg.rounds):
        for v in PIPELINED_VARIANTS[r % n:] + PIPELINED_VARIANTS[:r % n]:
            calls = cfg.batch_calls if v.items > 1 else cfg.pipelined_calls
            measure(handles[v.actor], v, max(1, cfg.warmup_calls // v.items))
            samples[v.name].append(measure(handles[v.actor], v, calls))
    return samples


def pipelined_figures(report: Report, samples: dict[str, list[Sample]]) -> None:
    """Add ``rate.<variant>`` (calls/s, or items/s when batched), then ``cpu.<variant>`` (µs/call)."""
    for v in PIPELINED_VARIANTS:
        runs, base = samples[v.name], BASELINES.get(v.name)
        rates = [s.items / s.wall for s in runs]
        report.add(Figure(f"rate.{v.name}", median(rates), "items/s" if v.items > 1 else "calls/s", _what(v),
                          base and f"rate.{base}", detail={"per_round": rates, "calls": runs[0].calls}))
    for v in PIPELINED_VARIANTS:
        runs, base = samples[v.name], BASELINES.get(v.name)
        detail = {
            "driver_us_per_call": median([s.driver_cpu / s.calls * 1e6 for s in runs]),
            "actor_us_per_call": median([s.actor_cpu / s.calls * 1e6 for s in runs]),
            "us_per_item": median([s.cpu_us_per_call() / v.items for s in runs]),
            "cores_busy": median([(s.driver_cpu + s.actor_cpu) / s.wall for s in runs]), "rounds": len(runs),
        }
        report.add(Figure(f"cpu.{v.name}", median([s.cpu_us_per_call() for s in runs]), "µs/call",
                          f"{_what(v)}: CPU of driver + actor", base and f"cpu.{base}", detail=detail))


def _what(v: Variant) -> str:
    """The table's words for a pipelined variant."""
    what = f"{v.actor} actor, pipelined {v.method}" + (f"({v.items}×100 B)" if v.items > 1 else "(100 B)")
    return what + (", num_returns=0" if v.oneway else "")


def lmdb_figure(report: Report, cfg: Config) -> None:
    """Add ``lmdb.commit``: bare py-lmdb synced commits/s of one 100 B put, in a temporary dir."""
    scfg = storage_bench.Config(cfg.lmdb_seconds, 3, VALUE_BYTES, 0)
    with tempfile.TemporaryDirectory(prefix="raykv-bench-") as tmp:
        r = storage_bench.bench_baseline(Path(tmp), scfg, "lmdb")
        fs = storage_bench.filesystem(tmp)
    report.add(Figure("lmdb.commit", r["ops_per_s"], "commits/s", "bare LMDB put + synced commit (100 B)",
                      detail={"us_per_commit": r["us_per_op"], "commits": r["ops"], "filesystem": fs}))


def measure_baselines(cfg: Config) -> Report:
    """Every baseline figure, on the Ray the caller has initialized; actors are killed afterwards."""
    report = Report("raykv baseline: Ray actor calls and LMDB commits", asdict(cfg))
    handles = {kind: cls.remote() for kind, cls in ACTORS.items()}
    try:
        ray.get([h.cpu.remote() for h in handles.values()])  # all started
        rtt_figures(report, handles, cfg)
        pipelined_figures(report, pipelined_samples(handles, cfg))
    finally:
        for h in handles.values():
            ray.kill(h)
    lmdb_figure(report, cfg)
    report.finish()
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``baseline`` beyond the common ``--quick`` and ``--json``."""
    parser.add_argument("--rounds", type=int, help="interleaved rounds of the pipelined variants (default 5; 1 quick)")


def run(args: argparse.Namespace) -> Report:
    """The CLI entry: Ray is already up (the CLI starts a local one); returns the report to print."""
    cfg = Config.quick() if args.quick else Config()
    if args.rounds:
        cfg = replace(cfg, rounds=args.rounds)
    return measure_baselines(cfg)
