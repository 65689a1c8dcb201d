"""``python -m raykv.bench store``: a whole store (router + client) with 1 shard, then with 3 shards.

Starts its own ``ray.cluster_utils.Cluster`` (head plus three raylets labelled
``raykv-host=h1..h3``, private ``RAY_TMPDIR``; see :func:`raykv.bench.shard.bench_cluster`),
measures the bare Ray actor first, then for a store of 1 shard (``s1.*``) and one of 3
shards (``s3.*``), 3 replicas each, started with :func:`raykv.start` and stopped with
:func:`raykv.stop` after measuring, one :class:`~raykv.client.Client` each:

* ``put.seq`` p50/p99 and ``get.seq.linearizable`` p50 (µs): sequential 100 B puts and
  linearizable gets from one thread, against ``rtt.bare`` (one ``ray.get`` per call);
* ``put.threads1`` / ``put.threads64`` (ops/s): puts from 1 and from 64 threads sharing the
  client, against ``rate.bare.threads1`` / ``rate.bare.threads64`` (the same threads calling
  the bare actor); ``get.threads64.{linearizable,lease,stale}`` likewise against
  ``rate.bare.threads64``;
* ``bulk`` (keys/s): ``--keys`` keys with 100 B values written by one ``put_batch`` call
  given a pyarrow Table (the client cuts it per shard and by the batch limits), against
  ``bulk.bare`` (the same pairs shipped to the bare actor in one call);
* ``scan`` (keys/s): ``scan()`` of every key, decoded, against ``scan.bare`` (sequential
  pages of :data:`~raykv.client.scan.PAGE_KEYS` pairs from the bare actor).

Keys start with characters spread over ``0``..``z`` so the initial split points give each
of the 3 shards a third of them. ``s1.*`` figures have the bare figure as baseline; ``s3.*``
figures have the ``s1.*`` figure as baseline (ratio = "3 shards vs 1"), their ratio to the
bare figure is in ``detail["vs_bare"]`` and the note. Nothing here asserts speed.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from ..client.scan import PAGE_KEYS
from .report import Figure, Report, p50_p99_us
from .shard import HOSTS, _throughput_latencies, _timed, add_common_arguments, bench_cluster

LOCAL_RAY = False
VALUE = b"v" * 100
THREADS = 64
LEVELS = ("linearizable", "lease", "stale")
POINT_KEYS = 1000
SHARD_COUNTS = (1, 3)
REPLICAS = 3


@ray.remote(num_cpus=0)
class BareStore:
    """The bare reference: a plain actor that takes values, holds pairs and returns pages."""

    def __init__(self) -> None:
        self.pairs: list[tuple[bytes, bytes]] = []

    def put(self, value: bytes) -> int:
        return len(value)

    def pid(self) -> int:
        return os.getpid()

    def load(self, pairs: list[tuple[bytes, bytes]]) -> int:
        self.pairs = pairs
        return len(pairs)

    def page(self, start: int, count: int) -> list[tuple[bytes, bytes]]:
        return self.pairs[start:start + count]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--keys", type=int, default=100_000, help="keys of the bulk load and the scan")


def run(args: argparse.Namespace) -> Report:
    ops, seconds, keys = (30, 0.3, 2000) if args.quick else (args.ops, args.seconds, args.keys)  # quick: scans 2 pages
    config = {"ops": ops, "seconds": seconds, "keys": keys, "threads": THREADS, "value_bytes": len(VALUE),
              "replicas": REPLICAS, "shards": "/".join(map(str, SHARD_COUNTS))}
    report = Report("raykv store bench", config)
    with bench_cluster() as root:
        _measure_bare(report, ops, seconds, keys)
        for shards in SHARD_COUNTS:
            _measure_store(report, root, shards, ops, seconds, keys)
    report.finish()
    return report


def key(i: int) -> str:
    """The ``i``-th bench key; its first character cycles over ``0``..``z`` (spread over shards)."""
    return f"{chr(0x30 + i % 75)}{i:08d}"


# -- the bare Ray actor -------------------------------------------------------------------
def _measure_bare(report: Report, ops: int, seconds: float, keys: int) -> None:
    actor = bare_actor()
    call = bare_call(actor)
    bare_rtt(report, call, ops)
    bare_rates(report, call, (1, THREADS), seconds)
    bare_bulk_and_scan(report, actor, keys)
    ray.kill(actor, no_restart=True)


def bare_actor():
    """A started :class:`BareStore` on host ``h1`` (where a replica would run)."""
    actor = BareStore.options(label_selector={"raykv-host": "h1"}).remote()
    ray.get(actor.put.remote(VALUE))
    return actor


def bare_call(actor):
    """``call(i=0)``: one round trip of ``put(100 B)`` to the bare actor."""
    return lambda _i=0: ray.get(actor.put.remote(VALUE))


def bare_rtt(report: Report, call, ops: int) -> None:
    """Add ``rtt.bare.p50/p99`` (µs): ``ops`` sequential bare round trips."""
    p50, p99 = p50_p99_us([_timed(call) for _ in range(ops)])
    report.add(Figure("rtt.bare.p50", p50, "µs", "bare Ray actor round trip (100 B), sequential, p50"))
    report.add(Figure("rtt.bare.p99", p99, "µs", "bare Ray actor round trip (100 B), sequential, p99"))


def bare_rates(report: Report, call, threads: tuple[int, ...], seconds: float, p99: bool = False) -> None:
    """Add ``rate.bare.threads{N}`` (calls/s) for each N in ``threads`` (and ``rate.bare.threads{N}.p99``,
    µs, if ``p99``): N threads making bare round trips for ``seconds``."""
    for n in threads:
        rate, latencies = _throughput_latencies(call, n, seconds)
        what = f"bare actor round trips from {n} thread{'s' if n > 1 else ''}"
        report.add(Figure(f"rate.bare.threads{n}", rate, "calls/s", what))
        if p99:
            report.add(Figure(f"rate.bare.threads{n}.p99", p50_p99_us(latencies)[1], "µs", what + ", p99"))


def bare_bulk_and_scan(report: Report, actor, keys: int) -> None:
    """Add ``bulk.bare`` and ``scan.bare`` (keys/s): ``keys`` pairs shipped in one call, read back in pages."""
    pairs = [(key(i).encode(), VALUE) for i in range(keys)]
    report.add(Figure("bulk.bare", keys / _timed(lambda: ray.get(actor.load.remote(pairs))), "keys/s",
                      "the same (key, 100 B) pairs shipped to the bare actor in one call"))
    report.add(Figure("scan.bare", keys / _timed(lambda: _bare_scan(actor, keys)), "keys/s",
                      f"the pairs read back from the bare actor in pages of {PAGE_KEYS}"))


def _bare_scan(actor, keys: int) -> None:
    for start in range(0, keys, PAGE_KEYS):
        ray.get(actor.page.remote(start, PAGE_KEYS))


# -- one store ------------------------------------------------------------------------------
def _measure_store(report: Report, root: Path, shards: int, ops: int, seconds: float, keys: int) -> None:
    with running_store(root, shards) as client:
        add = lambda *fig: _add(report, f"s{shards}", *fig)  # noqa: E731
        _latencies(client, ops, add)
        _rates(client, seconds, add)
        _bulk(client, keys, add)
        _scan(client, keys, add)


@contextmanager
def running_store(root: Path, shards: int) -> Iterator:
    """Start store ``bench{shards}`` (``shards`` x :data:`REPLICAS`, data under ``root``), yield its
    client, then close the client and stop the store."""
    import raykv

    name = f"bench{shards}"
    client = raykv.start(name, shards, REPLICAS, {h: str(root / name / h) for h in HOSTS}, timeout_s=30.0)
    try:
        yield client
    finally:
        client.close()
        raykv.stop(name)


def _add(report: Report, prefix: str, suffix: str, value: float, unit: str, note: str, bare: str,
         detail: dict | None = None) -> None:
    """Add ``{prefix}.{suffix}``: baseline the bare figure for s1, the s1 figure otherwise
    (``detail["vs_bare"]``: value / the bare figure's, None if that is 0; ``detail`` adds more)."""
    base = report.get(bare).value
    vs_bare = value / base if base else None
    first = prefix == f"s{SHARD_COUNTS[0]}"
    baseline = bare if first else f"s{SHARD_COUNTS[0]}.{suffix}"
    if not first and vs_bare is not None:
        note = f"{note}; {vs_bare:.2f}x {bare}"
    report.add(Figure(f"{prefix}.{suffix}", value, unit, note, baseline, detail={"vs_bare": vs_bare, **(detail or {})}))


def _latencies(client, ops: int, add) -> None:
    client.put(key(0), VALUE)
    client.get(key(0))
    puts = [_timed(lambda i=i: client.put(key(i % 100), VALUE)) for i in range(ops)]
    p50, p99 = p50_p99_us(puts)
    add("put.seq.p50", p50, "µs", "sequential put (100 B), one thread, p50", "rtt.bare.p50")
    add("put.seq.p99", p99, "µs", "sequential put (100 B), one thread, p99", "rtt.bare.p99")
    gets = [_timed(lambda i=i: client.get(key(i % 100))) for i in range(ops)]
    add("get.seq.linearizable.p50", p50_p99_us(gets)[0], "µs", "sequential linearizable get, p50", "rtt.bare.p50")


def _rates(client, seconds: float, add, put_threads: tuple[int, ...] = (1, THREADS), p99: bool = False) -> None:
    """``put.threads{N}`` for N in ``put_threads`` and ``get.threads64.{level}`` (ops/s) against
    ``rate.bare.threads{N}``; with ``p99`` also each one's ``.p99`` (µs) against ``rate.bare.threads{N}.p99``."""
    def measure(suffix: str, op, n: int, note: str) -> None:
        rate, latencies = _throughput_latencies(op, n, seconds)
        add(suffix, rate, "ops/s", note, f"rate.bare.threads{n}")
        if p99:
            add(f"{suffix}.p99", p50_p99_us(latencies)[1], "µs", note + ", p99", f"rate.bare.threads{n}.p99")

    put = lambda i: client.put(key(i % POINT_KEYS), VALUE)  # noqa: E731
    for n in put_threads:
        measure(f"put.threads{n}", put, n, f"puts from {n} thread{'s sharing one client' if n > 1 else ''}")
    for level in LEVELS:
        get = lambda i, level=level: client.get(key(i % POINT_KEYS), consistency=level)  # noqa: E731
        measure(f"get.threads{THREADS}.{level}", get, THREADS, f"{level} gets from {THREADS} threads sharing one client")


def bulk_table(keys: int):
    """A pyarrow Table of ``keys`` rows: ``key`` (:func:`key`) and ``value`` (100 B)."""
    import pyarrow as pa

    return pa.table({"key": pa.array([key(i) for i in range(keys)], pa.string()),
                     "value": pa.array([VALUE] * keys, pa.binary())})


def _bulk(client, keys: int, add) -> None:
    table = bulk_table(keys)
    add("bulk", keys / _timed(lambda: client.put_batch(table)), "keys/s",
        "bulk load: one put_batch of a pyarrow Table (100 B values)", "bulk.bare")


def _scan(client, keys: int, add) -> None:
    counted: list[int] = []
    took = _timed(lambda: counted.append(sum(1 for _ in client.scan())))
    if counted[0] < keys:
        raise RuntimeError(f"scan returned {counted[0]} keys, expected at least {keys}")
    add("scan", counted[0] / took, "keys/s", "scan() of every key, decoded", "scan.bare")
