"""``python -m raykv.bench shard``: one shard (three replicas on three raylets) against bare Ray.

Starts its own ``ray.cluster_utils.Cluster`` (a head plus three raylets
labelled ``raykv-host=h1..h3``, private ``RAY_TMPDIR``), one shard on it, and
measures, each against the bare actor round trip of the same run:

* sequential put and get (linearizable, lease, stale) latency, p50/p99;
* put throughput from 1, 8 and 64 client threads sharing one client
  (coalesced into batched calls), and linearizable and stale gets from 64 threads;
* failover: a writer puts continuously; the leader is killed (restarted in
  place); the figure is the time from the kill to the next acknowledged put
  (write unavailability), median and max over ``--trials`` kills.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from ..client import ShardClient
from ..runtime import groups
from ..runtime.local_cluster import HOSTS, labelled_cluster
from ..runtime.shard import start_shard
from .baseline import SyncActor
from .report import Figure, Report, median, p50_p99_us

LOCAL_RAY = False


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ops`` and ``--seconds``, shared by the benches that run on :func:`bench_cluster`."""
    parser.add_argument("--ops", type=int, default=1000, help="sequential operations per latency figure")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput figure")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--trials", type=int, default=10, help="leader kills for the failover figure")


def run(args: argparse.Namespace) -> Report:
    ops, seconds, trials = (30, 0.3, 1) if args.quick else (args.ops, args.seconds, args.trials)
    report = Report("raykv shard bench", {"ops": ops, "seconds": seconds, "trials": trials, "replicas": 3})
    with bench_cluster() as root:
        _measure(report, root, ops, seconds, trials)
    report.finish()
    return report


@contextmanager
def bench_cluster() -> Iterator[Path]:
    """A 3-raylet cluster (:func:`~raykv.runtime.local_cluster.labelled_cluster`) with this
    process connected; yields a private scratch directory (for data), removed on exit."""
    with labelled_cluster(HOSTS) as (_, root):
        yield root


def _measure(report: Report, root: Path, ops: int, seconds: float, trials: int) -> None:
    bare = SyncActor.options(label_selector={"raykv-host": "h1"}).remote()
    ray.get(bare.put.remote(b"x"))
    samples = [_timed(lambda: ray.get(bare.put.remote(b"x" * 100))) for _ in range(ops)]
    _latency(report, "rtt.bare", samples, "bare Ray actor round trip (100 B)", None)
    handles = start_shard("bench", 0, HOSTS, {h: str(root / h) for h in HOSTS})
    with ShardClient("bench", 0, timeout_s=30.0) as client:
        client.put("warm", b"x")
        samples = [_timed(lambda i=i: client.put(f"seq{i % 100}", b"v" * 100)) for i in range(ops)]
        _latency(report, "put.seq", samples, "sequential put (100 B value), one client thread", "rtt.bare")
        for level in ("linearizable", "lease", "stale"):
            samples = [_timed(lambda i=i: client.get(f"seq{i % 100}", consistency=level)) for i in range(ops)]
            _latency(report, f"get.seq.{level}", samples, f"sequential {level} get", "rtt.bare")
        one = _throughput(lambda i: client.put(f"t{i % 1000}", b"v" * 100), 1, seconds)
        report.add(Figure("put.threads1", one, "ops/s", "puts from 1 thread"))
        for threads in (8, 64):
            rate = _throughput(lambda i: client.put(f"t{i % 1000}", b"v" * 100), threads, seconds)
            report.add(Figure(f"put.threads{threads}", rate, "ops/s", f"puts from {threads} threads, one client",
                              "put.threads1"))
        for level in ("linearizable", "stale"):
            gets = _throughput(lambda i, level=level: client.get(f"t{i % 1000}", consistency=level), 64, seconds)
            report.add(Figure(f"get.threads64.{level}", gets, "ops/s", f"{level} gets from 64 threads", "put.threads1"))
        gaps = [_failover(client, handles) for _ in range(trials)]
        report.add(Figure("failover.median", median(gaps) * 1e3, "ms", f"write unavailability after a leader kill ({trials} kills)",
                          detail={"all_ms": [round(g * 1e3, 1) for g in gaps], "max_ms": max(gaps) * 1e3}))
    for h in handles.values():
        ray.kill(h, no_restart=True)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _latency(report: Report, name: str, samples: list[float], note: str, baseline: str | None) -> None:
    p50, p99 = p50_p99_us(samples)
    report.add(Figure(f"{name}.p50", p50, "µs", note + ", p50", baseline and f"{baseline}.p50"))
    report.add(Figure(f"{name}.p99", p99, "µs", note + ", p99", baseline and f"{baseline}.p99"))


def _throughput(op, threads: int, seconds: float) -> float:
    """Calls of ``op(i)`` per second from ``threads`` threads for ``seconds`` (see :func:`_throughput_latencies`)."""
    return _throughput_latencies(op, threads, seconds)[0]


def _throughput_latencies(op, threads: int, seconds: float) -> tuple[float, list[float]]:
    """``(calls per second, every call's latency in seconds)``: ``threads`` threads call ``op(i)``
    until ``seconds`` have passed; thread ``t`` passes ``i = t, t + threads, t + 2 * threads, ...``."""
    stop = time.perf_counter() + seconds
    latencies: list[list[float]] = [[] for _ in range(threads)]

    def worker(t: int) -> None:
        i, mine = t, latencies[t]
        now = time.perf_counter()
        while now < stop:
            op(i)
            done = time.perf_counter()
            mine.append(done - now)
            now = done
            i += threads

    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    took = time.perf_counter() - started
    every = [x for mine in latencies for x in mine]
    return len(every) / took, every


def _leader(handles) -> int:
    """The bench shard's leader (its replicas are ``handles``' keys), asked through the group port."""
    return groups.wait_leader("bench", 0, tuple(handles), timeout_s=60.0)[0]


def _failover(client: ShardClient, handles) -> float:
    """Seconds from killing the leader to the next acknowledged put (a writer runs throughout)."""
    leader = _leader(handles)
    done_after: list[float] = []
    kill_at: list[float] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            invoked = time.perf_counter()
            client.put(f"fo{i % 10}", i)
            if kill_at and invoked >= kill_at[0] and not done_after:
                done_after.append(time.perf_counter())  # a put issued after the kill was acknowledged
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.3)
    kill_at.append(time.perf_counter())
    ray.kill(handles[leader], no_restart=False)
    while not done_after:
        time.sleep(0.005)
    stop.set()
    t.join()
    _leader(handles)
    time.sleep(1.0)  # the killed replica restarts and catches up before the next trial
    return done_after[0] - kill_at[0]
