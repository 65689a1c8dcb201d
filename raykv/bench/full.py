"""``python -m raykv.bench full [--out DIR]``: the complete raykv report (``raykv bench`` runs it).

One run on its own ``ray.cluster_utils.Cluster``: a head with 2 CPUs (drivers and tasks) and
three 0-CPU raylets labelled ``raykv-host=h1..h3`` (:func:`raykv.bench.shard.bench_cluster`).
Values are 100 B; nothing asserts speed. The report states the machine (host, CPUs,
versions, load average at start and at end) and, in this order:

Baselines, measured first, on actors pinned to ``h1`` (where a replica would run):

* ``rtt.bare.p50`` / ``rtt.bare.p99`` (µs): sequential round trips to a bare sync actor;
* ``rate.bare.pipelined`` (calls/s): pipelined calls to a bare sync actor (all submitted, then
  one wait; :func:`raykv.bench.baseline.measure`) and ``rate.bare.batch`` (items/s): the same
  with 100 items per call;
* ``rate.bare.threads{1,8,64}`` (calls/s) and their ``.p99`` (µs): N driver threads making
  bare round trips (the baseline of the store's N-client figures);
* ``bulk.bare`` / ``scan.bare`` (keys/s): the bulk load's pairs shipped to the bare actor in
  one call and read back in pages;
* ``lmdb.commit`` (commits/s): a bare synced LMDB commit of one 100 B value;
* ``rss.bare`` (MiB): the bare actor's RSS (holding the bulk pairs), ``cpu.idle.bare`` (% of
  one core): its CPU while idle over ``--idle-seconds``.

Then for a store of 1 shard (``s1.*``, baseline: the bare figure) and of 3 shards (``s3.*``,
baseline: the ``s1`` figure, ratio = "3 shards vs 1", the ratio to bare in ``detail``), 3
replicas each, started with :func:`raykv.start` and stopped after:

* ``put.seq.p50`` / ``put.seq.p99``, ``get.seq.linearizable.p50`` (µs): one thread, sequential;
* ``put.threads{1,8,64}`` (ops/s) and ``.p99`` (µs): N threads sharing the driver's client;
* ``get.threads64.{linearizable,lease,stale}`` (ops/s) and ``.p99`` (µs): 64 threads;
* ``put.tasks{8,64}`` (ops/s) and ``.p99`` (µs): N clients as ``--tasks`` Ray tasks
  (``num_cpus=0``) of N/tasks threads, each task its own ``raykv.connect`` client; the tasks
  start together (a gate actor), rate = all puts / (last end - first start);
* ``bulk`` (keys/s): ``--keys`` keys loaded by one ``put_batch`` of a pyarrow Table;
* ``rss.replica.max`` / ``rss.shard.max`` (MiB): the largest replica's RSS (VmRSS) and the
  largest shard's sum over its replicas, after the bulk load (every replica, the meta group's
  too, in ``detail``);
* ``scan`` (keys/s): ``scan()`` of every key;
* ``cpu.idle.replica.max`` / ``cpu.idle.total`` (% of one core): once every group reports
  ``quiesced`` (or ``--quiesce-timeout`` passed: ``detail["quiesced"]`` says which), each replica's
  CPU (utime + stime from ``/proc/<pid>/stat``) over ``--idle-seconds``: the busiest data replica,
  and the sum over all replicas including the meta group.

Last, the targets of issue 8 (:mod:`raykv.bench.full_report`), judged on the 1-shard store (one
Raft group of three, like the 3-member etcd they were set against); scaling is 3 shards vs 1.
``--out DIR`` writes ``DIR/bench.json``, ``DIR/bench.md`` and ``DIR/bench.png`` (the plot needs
matplotlib, the ``notebook`` extra; without it the plot is skipped with a note). Replica RSS
and CPU are read from ``/proc`` of this machine: the cluster's raylets all run here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import ray

from ..errors import InvalidRequestError
from ..placement import META_SHARD
from ..protocol import HOST_LABEL, NAMESPACE, router_name
from ..runtime.shard import replica_handle
from . import baseline, store
from .full_report import FullReport, write_out
from .report import Figure, Report, p50_p99_us
from .shard import _throughput_latencies, add_common_arguments, bench_cluster

LOCAL_RAY = False
CLIENT_THREADS = (1, 8, 64)
TASK_CLIENTS = (8, 64)


@dataclass(frozen=True)
class Config:
    """Counts and durations of one run; :meth:`quick` is for tests (figures not worth reading)."""

    ops: int = 1000
    seconds: float = 5.0
    keys: int = 100_000
    tasks: int = 4
    idle_seconds: float = 3.0
    quiesce_timeout_s: float = 30.0
    pipelined_calls: int = 3000
    batch_calls: int = 500
    lmdb_seconds: float = 2.0

    @classmethod
    def quick(cls) -> Config:
        return cls(ops=30, seconds=0.3, keys=2000, tasks=2, idle_seconds=0.3, quiesce_timeout_s=10.0,
                   pipelined_calls=100, batch_calls=20, lmdb_seconds=0.05)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``full`` beyond the common ``--quick`` and ``--json`` (given ones override ``--quick``)."""
    add_common_arguments(parser)
    parser.add_argument("--keys", type=int, help="keys of the bulk load and the scan (default 100000)")
    parser.add_argument("--tasks", type=int, help="Ray tasks the task-client figures spread over (default 4)")
    parser.add_argument("--idle-seconds", type=float, help="window of the idle CPU figures (default 3)")
    parser.add_argument("--quiesce-timeout", type=float, help="longest wait for the groups to quiesce (default 30)")
    parser.add_argument("--out", metavar="DIR", help="also write DIR/bench.json, bench.md and bench.png")
    parser.set_defaults(ops=None, seconds=None)


def config(args: argparse.Namespace) -> Config:
    """The run's :class:`Config`: defaults (or quick ones), overridden by the options given."""
    cfg = Config.quick() if args.quick else Config()
    given = {"ops": args.ops, "seconds": args.seconds, "keys": args.keys, "tasks": args.tasks,
             "idle_seconds": args.idle_seconds, "quiesce_timeout_s": args.quiesce_timeout}
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    if cfg.tasks < 1 or any(n % cfg.tasks for n in TASK_CLIENTS):
        raise InvalidRequestError(f"--tasks must divide each of {TASK_CLIENTS}, got {cfg.tasks}")
    return cfg


def run(args: argparse.Namespace) -> FullReport:
    """Measure everything (own cluster), judge the targets, write ``--out`` if given."""
    cfg = config(args)
    report = FullReport("raykv full bench", {**asdict(cfg), "replicas": store.REPLICAS, "value_bytes": len(store.VALUE)},
                        command=" ".join(["python -m raykv.bench", *map(shlex.quote, sys.argv[1:])]))
    with bench_cluster() as root:
        measure_baselines(report, cfg)
        for shards in store.SHARD_COUNTS:
            measure_store(report, root, shards, cfg)
    report.finish()
    report.judge()
    if args.out:
        write_out(report, args.out)
    return report


# -- baselines ---------------------------------------------------------------------------
def measure_baselines(report: Report, cfg: Config) -> None:
    """Every ``rtt.bare``, ``rate.bare``, ``bulk.bare``, ``scan.bare``, ``lmdb``, ``rss.bare`` and
    ``cpu.idle.bare`` figure (see the module docstring); the actors are killed afterwards."""
    bare = store.bare_actor()
    call = store.bare_call(bare)
    store.bare_rtt(report, call, cfg.ops)
    _pipelined(report, cfg)
    store.bare_rates(report, call, CLIENT_THREADS, cfg.seconds, p99=True)
    store.bare_bulk_and_scan(report, bare, cfg.keys)
    baseline.lmdb_figure(report, baseline.Config(lmdb_seconds=cfg.lmdb_seconds))
    pid = {"bare": ray.get(bare.pid.remote())}
    report.add(Figure("rss.bare", rss_mib(pid["bare"]), "MiB", "RSS of the bare actor's process, holding the bulk pairs"))
    report.add(Figure("cpu.idle.bare", idle_cpu_percent(pid, cfg.idle_seconds)["bare"], "%",
                      f"CPU of the idle bare actor over {cfg.idle_seconds:g} s (100 = one core)"))
    ray.kill(bare, no_restart=True)


def _pipelined(report: Report, cfg: Config) -> None:
    """``rate.bare.pipelined`` (calls/s) and ``rate.bare.batch`` (items/s) on a bare sync actor."""
    actor = baseline.SyncActor.options(label_selector={HOST_LABEL: "h1"}).remote()
    variants = {v.name: v for v in baseline.PIPELINED_VARIANTS}
    runs = (("pipelined", variants["sync"], cfg.pipelined_calls, None),
            ("batch", variants["sync_batch"], cfg.batch_calls, "rate.bare.pipelined"))
    for name, variant, calls, base in runs:
        baseline.measure(actor, variant, max(1, calls // 10))
        s = baseline.measure(actor, variant, calls)
        report.add(Figure(f"rate.bare.{name}", s.items / s.wall, "items/s" if variant.items > 1 else "calls/s",
                          baseline._what(variant), base, detail={"calls": calls, "cpu_us_per_call": s.cpu_us_per_call()}))
    ray.kill(actor, no_restart=True)


# -- one store ---------------------------------------------------------------------------
def measure_store(report: Report, root: Path, shards: int, cfg: Config) -> None:
    """Every ``s{shards}.*`` figure, on a store started for it and stopped afterwards."""
    with store.running_store(root, shards) as client:
        add = lambda *fig, **kw: store._add(report, f"s{shards}", *fig, **kw)  # noqa: E731
        store._latencies(client, cfg.ops, add)
        store._rates(client, cfg.seconds, add, CLIENT_THREADS, p99=True)
        _task_rates(client.store, cfg, add)
        store._bulk(client, cfg.keys, add)
        handles = replica_handles(client)
        pids = dict(zip(handles, ray.get([h.pid.remote() for h in handles.values()])))
        _memory(pids, add)
        store._scan(client, cfg.keys, add)
        _idle(handles, pids, cfg, add)


@ray.remote(num_cpus=0)
class Gate:
    """Every one of ``parties`` callers of :meth:`arrive` returns once the last has arrived."""

    def __init__(self, parties: int) -> None:
        self.parties, self.arrived, self.open = parties, 0, None

    async def arrive(self) -> None:
        self.open = self.open or asyncio.Event()
        self.arrived += 1
        if self.arrived >= self.parties:
            self.open.set()
        await self.open.wait()


@ray.remote(num_cpus=0, max_retries=0)
def put_clients(store_name: str, threads: int, seconds: float, first: int, gate) -> tuple[float, float, list[float]]:
    """In a task: connect, warm up, wait at ``gate``, then ``threads`` threads put for ``seconds``;
    ``(start, end, latencies)``, times from ``time.time()`` (comparable: one machine)."""
    import raykv

    client = raykv.connect(store_name, timeout_s=30.0)
    try:
        put = lambda i: client.put(store.key((first + i) % store.POINT_KEYS), store.VALUE)  # noqa: E731
        put(0)
        ray.get(gate.arrive.remote())
        started = time.time()
        latencies = _throughput_latencies(put, threads, seconds)[1]
        return started, time.time(), latencies
    finally:
        client.close()


def _task_rates(store_name: str, cfg: Config, add) -> None:
    """``put.tasks{N}`` (ops/s, all tasks together) and ``.p99`` (µs) for N in :data:`TASK_CLIENTS`."""
    for clients in TASK_CLIENTS:
        threads = clients // cfg.tasks
        gate = Gate.remote(cfg.tasks)
        runs = ray.get([put_clients.remote(store_name, threads, cfg.seconds, t * threads, gate)
                        for t in range(cfg.tasks)])
        ray.kill(gate)
        span = max(end for _, end, _ in runs) - min(start for start, _, _ in runs)
        latencies = [x for *_, mine in runs for x in mine]
        note = f"puts from {clients} clients: {cfg.tasks} Ray tasks x {threads} threads, a client per task"
        add(f"put.tasks{clients}", len(latencies) / span, "ops/s", note, f"rate.bare.threads{clients}",
            detail={"per_task_ops": [len(mine) for *_, mine in runs], "span_s": span})
        add(f"put.tasks{clients}.p99", p50_p99_us(latencies)[1], "µs", note + ", p99", f"rate.bare.threads{clients}.p99")


def replica_handles(client) -> dict[str, object]:
    """``"<shard>/<replica>"`` -> actor handle for every replica of ``client``'s store, the meta
    group's as ``"meta/<replica>"`` (data shards first, in key order)."""
    router = ray.get_actor(router_name(client.store), namespace=NAMESPACE)
    groups = [(str(spec.shard), spec.shard, [rid for rid, _ in spec.replicas]) for spec in client.shard_map.shards]
    groups.append(("meta", META_SHARD, list(ray.get(router.meta_replicas.remote()))))
    return {f"{label}/{rid}": replica_handle(client.store, shard, rid) for label, shard, rids in groups for rid in rids}


def _memory(pids: dict[str, int], add) -> None:
    """``rss.replica.max`` and ``rss.shard.max`` (MiB) of the data replicas; all in ``detail``."""
    rss = {label: rss_mib(pid) for label, pid in pids.items()}
    shards: dict[str, float] = {}
    for label, mib in rss.items():
        if not label.startswith("meta/"):
            shard = label.split("/")[0]
            shards[shard] = shards.get(shard, 0.0) + mib
    data = [mib for label, mib in rss.items() if not label.startswith("meta/")]
    detail = {"replicas_mib": rss, "shards_mib": shards, "store_total_mib": sum(rss.values())}
    add("rss.replica.max", max(data), "MiB", "largest replica RSS after the bulk load", "rss.bare", detail=detail)
    add("rss.shard.max", max(shards.values()), "MiB", "largest shard's RSS (sum of its 3 replicas) after the bulk load",
        "rss.bare", detail={"shards_mib": shards})


def _idle(handles: dict, pids: dict[str, int], cfg: Config, add) -> None:
    """Wait for every group to quiesce, then ``cpu.idle.replica.max`` and ``cpu.idle.total`` (%)."""
    waited = time.monotonic()
    quiesced = wait_quiesced(handles, cfg.quiesce_timeout_s)
    waited = time.monotonic() - waited
    percent = idle_cpu_percent(pids, cfg.idle_seconds)
    data = [p for label, p in percent.items() if not label.startswith("meta/")]
    detail = {"replicas_percent": percent, "quiesced": quiesced, "waited_for_quiesce_s": waited}
    window = f"over {cfg.idle_seconds:g} s once quiesced (100 = one core)"
    add("cpu.idle.replica.max", max(data), "%", f"busiest idle data replica's CPU {window}", "cpu.idle.bare",
        detail=detail)
    add("cpu.idle.total", sum(percent.values()), "%", f"CPU of all replicas (meta group too), summed, {window}",
        "cpu.idle.bare")


def wait_quiesced(handles: dict, timeout_s: float) -> bool:
    """Poll every replica's ``status()["quiesced"]`` until all are True (True) or ``timeout_s``
    passed (False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = ray.get([h.status.remote() for h in handles.values()], timeout=max(1.0, timeout_s))
        if all(s["quiesced"] for s in statuses):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


# -- /proc ---------------------------------------------------------------------------------
def rss_mib(pid: int) -> float:
    """Resident set size (``VmRSS`` of ``/proc/<pid>/status``) of process ``pid``, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread) used so far by process ``pid``, from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)", which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15


def idle_cpu_percent(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Each process's CPU over a window of ``seconds`` in which this driver does nothing, as % of one core."""
    before, started = {label: cpu_seconds(pid) for label, pid in pids.items()}, time.monotonic()
    time.sleep(seconds)  # the measurement window itself
    took = time.monotonic() - started
    return {label: (cpu_seconds(pid) - before[label]) / took * 100 for label, pid in pids.items()}
