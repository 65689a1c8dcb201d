"""Two placement drivers racing through a split and a merge, on a real 3-raylet Ray cluster.

Ray restarts a detached router elsewhere when its node is cut off from the GCS while the old
one still runs: two drivers. Here a second Router actor of the same store plays the other one
and the two take the lease from each other in the middle of a move (a claim fences the
holder: its late range changes and ingest chunks are refused by epoch and attempt). Under a
checked workload: the history is linearizable, every preloaded key is read back, each
operation completes and no range is left fenced (every shard serves).
"""

from __future__ import annotations

import pytest
import ray

import raykv
from raykv.errors import InvalidRequestError
from raykv.protocol import NAMESPACE, router_name
from raykv.runtime.local_cluster import HOSTS, labelled_cluster
from raykv.runtime.router import Router
from raykv.testing.linearizability import check
from raykv.testing.workload import Workload
from raykv.userdata import encode_key

pytestmark = pytest.mark.timeout(900)
FIRST = "0AHMSZdhmqu"


@pytest.fixture(scope="module")
def cluster():
    with labelled_cluster(HOSTS) as (c, root):
        yield c, root


def wait_for(predicate, timeout: float, what: str, every_s: float = 0.02):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_phase(kv, phases: set[str]) -> dict:
    def seen():
        record = kv.scale_status()
        return record if record and record.get("step") and record["step"]["phase"] in phases else None
    return wait_for(seen, 120, f"a scale step in phase {phases}")


def wait_done(kv) -> dict:
    record = wait_for(lambda: (r := kv.scale_status()) and r["state"] != "running" and r, 300, "the scale to end",
                      every_s=0.1)
    assert record["state"] == "done", record
    kv.refresh()
    return record


def holds(router) -> bool:
    return ray.get(router.lease.remote(), timeout=30)["holds"]


def test_two_drivers_take_the_lease_from_each_other_mid_move(cluster) -> None:
    _, root = cluster
    dirs = {h: str(root / "race" / h) for h in HOSTS}
    kv = raykv.start("race", shards=2, replicas=3, data_dir=dirs, timeout_s=30.0)
    rival = None
    try:
        data = {f"{c}{i:04d}": f"v-{c}-{i}" * 4 for c in FIRST for i in range(120)}
        kv.put_batch(data)
        workload = Workload(kv, [f"{c}w" for c in FIRST], clients=4, seed=11).start()
        assert workload.wait_for_ops(40, 60), f"no progress: {workload.stats}"
        named = ray.get_actor(router_name("race"), namespace=NAMESPACE)
        meta, roots = ray.get(named.meta_replicas.remote()), ray.get(named.data_roots.remote())

        kv.scale(4, wait=False, retire_grace_s=1.0)  # the named router drives the splits ...
        wait_phase(kv, {"precopy", "copy"})
        rival = Router.remote("race", meta, roots)  # ... until a second driver claims the lease mid-move
        wait_for(lambda: holds(rival), 60, "the rival driver to hold the lease")
        wait_for(lambda: not holds(named), 60, "the named router to see it was superseded")
        assert wait_done(kv)["target"] == 4 and len(kv.shard_map.shards) == 4

        kv.scale(2, wait=False, retire_grace_s=1.0)  # the named router claims it back and merges ...
        assert holds(named) and not holds(rival)
        wait_phase(kv, {"precopy", "copy", "fence"})
        # ... until the rival takes it over mid-merge (asked for the same target, it drives the running operation)
        assert ray.get(rival.scale.remote(2), timeout=60)["target"] == 2
        wait_for(lambda: holds(rival), 60, "the rival to take the lease back")
        with pytest.raises(InvalidRequestError, match="already scaling"):
            ray.get(named.scale.remote(3), timeout=60)  # another target while one runs: refused, lease untouched
        assert holds(rival)
        assert wait_done(kv)["target"] == 2 and len(kv.shard_map.shards) == 2

        assert workload.wait_for_ops(40, 60), f"no progress after the moves: {workload.stats}"
        history = workload.stop_with_final_reads()
        result = check(history, timeout_s=300)
        assert result.ok is True, result.explanation
        keys = sorted(data)
        assert kv.get_batch(keys) == [data[k] for k in keys]
        status = kv.status()
        assert status.healthy and status.operation is None
        smap = kv.shard_map
        owner = {smap.shard_for(encode_key(k)).shard: k for k in keys}
        assert sorted(owner) == sorted(s.shard for s in smap.shards)
        for shard, key in owner.items():  # no range left fenced: every shard takes a write
            kv.put(key, "after")
            assert kv.get(key) == "after"
    finally:
        if rival is not None:
            ray.get(rival.stop_driver.remote(), timeout=90)
            ray.kill(rival, no_restart=True)
        kv.close()
        raykv.stop("race")
