"""``python -m raykv.bench repair``: time to repair a lost replica, as a function of data size.

Starts its own ``ray.cluster_utils`` cluster (head plus four 0-CPU raylets ``h1..h4``, private
``RAY_TMPDIR``). For each data size (``--sizes``, keys of 100 B values; ``--quick``: 0 and
1,000), a fresh store of 1 shard x 3 replicas (on h1, h2, h3) is loaded with ``put_batch``,
then the node ``h3`` is removed (graceful: Ray marks it dead at once) and
:func:`raykv.runtime.repair.repair_once` is called (``dead_after_s=0``) until the shard has
three voters on alive hosts and no repair pending (the replacement lands on h4). Then h3
is added back (its stale replica stays dead) and the store is stopped.

Figures per size ``n``:

* ``repair.keys{n}.total`` (ms): from the node's removal to repaired -- Ray's death notice,
  the repair book, creating the replacement actor, learner, catch-up, voter, removal of the
  old member, map update, killing the old actor (``detail``: ``detect_s``, Ray's death notice;
  ``create_s``, until the replacement actor answered);
* ``repair.keys{n}.catch_up`` (ms): learner (already running) added until caught up
  (snapshot install plus the log tail), the part that grows with the data;
* baselines measured in the same run: ``copy.keys{n}`` (ms), the same bytes (keys and values)
  sent to a bare actor on h4 in one call, and ``rtt.bare`` (ms), one bare actor round trip.

Not included in these times (see ``docs/repair.md``): ``dead_after_s`` (a setting, 10 s by
default) and, as the node here stops gracefully, Ray's detection of a crash (~15 s for a
crashed raylet, ~65 s for a hung one, by the GCS health check defaults). Nothing here asserts speed.
"""

from __future__ import annotations

import argparse
import time

import ray

from .report import Figure, Report, median

LOCAL_RAY = False
HOSTS = ("h1", "h2", "h3", "h4")
VICTIM = "h3"
VALUE = b"v" * 100
SIZES = (0, 10_000, 50_000)
QUICK_SIZES = (1000,)


@ray.remote(num_cpus=0)
class BareSink:
    """The baseline: a plain actor that takes bytes."""

    def take(self, data) -> int:
        return len(data)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="comma-separated data sizes (keys of 100 B values)")


def run(args: argparse.Namespace) -> Report:
    from ..runtime.local_cluster import labelled_cluster

    sizes = QUICK_SIZES if args.quick else tuple(int(s) for s in args.sizes.split(","))
    report = Report("raykv repair bench", {"sizes": list(sizes), "value_bytes": len(VALUE), "replicas": 3,
                                           "shards": 1, "dead_after_s": 0.0})
    with labelled_cluster(HOSTS) as (cluster, root):
        sink = BareSink.options(label_selector={"raykv-host": "h4"}).remote()
        ray.get(sink.take.remote(b""))
        rtts = [_timed(lambda: ray.get(sink.take.remote(b"x"))) for _ in range(20)]
        report.add(Figure("rtt.bare", median(rtts) * 1e3, "ms", "one bare actor round trip (median of 20)"))
        for n in sizes:
            _measure_size(report, cluster, root, sink, n)
    report.finish()
    return report


def _measure_size(report: Report, cluster, root, sink, n: int) -> None:
    import raykv
    from ..client import ShardClient
    from ..placement import META_SHARD
    from ..protocol import router_name
    from ..protocol import NAMESPACE

    store = f"rep{n}"
    dirs = {h: str(root / "data" / h) for h in HOSTS}
    pairs = {f"k{i:08d}": VALUE for i in range(n)}
    blob = b"".join(k.encode() + v for k, v in pairs.items())
    report.add(Figure(f"copy.keys{n}", _timed(lambda: ray.get(sink.take.remote(blob))) * 1e3, "ms",
                      f"{len(blob):,} B (the same keys and values) to a bare actor in one call"))
    kv = raykv.start(store, shards=1, replicas=3, data_dir=dirs, timeout_s=60.0)
    router = ray.get_actor(router_name(store), namespace=NAMESPACE)
    ray.get(router.set_auto_repair.remote(False))  # the bench times its own passes, not the router's
    meta = ShardClient(store, META_SHARD, tuple(ray.get(router.meta_replicas.remote())), timeout_s=60.0)
    try:
        for i in range(0, n, 5000):
            kv.put_batch(dict(list(pairs.items())[i:i + 5000]))
        total, timings, detect = _lose_and_repair(cluster, store, meta, dirs)
        shard = timings.get(1, {})
        report.add(Figure(f"repair.keys{n}.total", total * 1e3, "ms",
                          f"node {VICTIM} removed -> 3 voters on alive hosts, map updated ({n:,} keys; Ray's death "
                          f"notice took {detect:.2f} s of it)", f"copy.keys{n}", detail={"detect_s": detect, **shard}))
        report.add(Figure(f"repair.keys{n}.catch_up", shard.get("catch_up_s", float("nan")) * 1e3, "ms",
                          "learner added -> caught up (snapshot + log tail)", f"copy.keys{n}"))
    finally:
        cluster.add_node(num_cpus=0, labels={"raykv-host": VICTIM})
        _wait(lambda: VICTIM in _alive_hosts(), 120)
        ray.get(router.refresh.remote())
        meta.close()
        kv.close()
        raykv.stop(store)


def _lose_and_repair(cluster, store: str, meta, dirs) -> tuple[float, dict, float]:
    """Remove the victim node and repair; ``(seconds to repaired, repair timings, seconds until
    Ray reported the node dead)``."""
    from ..placement.repairplan import RepairBook
    from ..runtime.repair import REPAIR_KEY, repair_once

    victim = _node(cluster, VICTIM)
    t0 = time.perf_counter()
    cluster.remove_node(victim)
    _wait(lambda: VICTIM not in _alive_hosts(), 120)
    detect = time.perf_counter() - t0
    timings: dict = {}
    while True:
        repair_once(store, meta, dirs, dead_after_s=0.0, timings=timings)
        if 1 in timings and "total_s" in timings[1] and not RepairBook.decode(meta.get(REPAIR_KEY)).pending:
            return time.perf_counter() - t0, timings, detect
        if time.perf_counter() - t0 > 600:
            raise TimeoutError(f"store {store} not repaired within 600 s")


def _node(cluster, host: str):
    ids = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Labels"].get("raykv-host") == host}
    return next(n for n in cluster.worker_nodes if n.node_id in ids)


def _alive_hosts() -> set[str]:
    return {n["Labels"]["raykv-host"] for n in ray.nodes() if n["Alive"] and "raykv-host" in n["Labels"]}


def _wait(predicate, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
