"""Online resharding on a real Ray cluster (3 labelled raylets, real LMDB): ``Client.scale``.

* 3 -> 5 -> 2 shards while six clients read and write keys spread over the key space:
  the history is linearizable, every preloaded key keeps its value, merged-away
  shards are shut down and their data deleted;
* the router and the meta group's leader killed in the middle of a scale, and a
  source shard's leader killed while its rows are copied or fenced: the operation
  resumes and completes, nothing is lost;
* bad counts and a second scale with another target are refused.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import ray

import raykv
from raykv.client import Client
from raykv.errors import InvalidRequestError
from raykv.protocol import router_name
from raykv.protocol import NAMESPACE
from raykv.runtime import groups
from raykv.testing.linearizability import check
from raykv.testing.workload import Workload

from ray_cluster import ray_cluster, wait_for  # noqa: F401 -- fixture

pytestmark = pytest.mark.timeout(900)
FIRST = "0AHMSZdhmqu"
"""First characters spread over every initial shard and over the splits' medians."""


@contextlib.contextmanager
def running_store(env, name: str, shards: int):
    kv = raykv.start(name, shards=shards, replicas=3, data_dir=env.data_dirs(name), timeout_s=30.0)
    try:
        yield kv
    finally:
        kv.close()
        raykv.stop(name)


def preload(kv: Client, per_char: int) -> dict[str, str]:
    data = {f"{c}{i:05d}": f"value-{c}-{i}" * 3 for c in FIRST for i in range(per_char)}
    kv.put_batch(data)
    return data


def assert_all_present(kv: Client, data: dict[str, str]) -> None:
    keys = sorted(data)
    assert kv.get_batch(keys) == [data[k] for k in keys]
    scanned = {k: v for k, v in kv.scan() if k in data}
    assert scanned == data


def op_record(kv: Client) -> dict:
    return kv.scale_status()


def wait_phase(kv: Client, phases: set[str], timeout: float = 120.0) -> dict:
    """Await a record whose current step is in one of ``phases``."""
    def seen():
        record = op_record(kv)
        return record if record and record.get("step") and record["step"]["phase"] in phases else None
    return wait_for(seen, timeout, f"a scale step in phase {phases}", every_s=0.02)


def wait_done(kv: Client, timeout: float = 300.0) -> dict:
    record = wait_for(lambda: (r := op_record(kv)) and r["state"] != "running" and r, timeout, "the scale to end")
    assert record["state"] == "done", record
    kv.refresh()
    return record


def shard_dirs(env, name: str) -> set[int]:
    return {int(p.name) for host_dir in env.data_dirs(name).values() for p in (Path(host_dir) / name).glob("*")
            if p.name.isdigit()}


def test_scale_3_to_5_to_2_under_load_is_linearizable_and_keeps_every_key(ray_cluster) -> None:  # noqa: F811
    with running_store(ray_cluster, "sc-load", shards=3) as kv:
        data = preload(kv, 150)
        keys = [f"{c}w" for c in FIRST]
        workload = Workload(kv, keys, clients=6, seed=5).start()
        assert workload.wait_for_ops(50, 60), f"no progress before scaling: {workload.stats}"
        up = kv.scale(5, retire_grace_s=1.0)
        assert up["state"] == "done" and len(kv.shard_map.shards) == 5 and up["moved_keys"] > 0
        assert workload.wait_for_ops(50, 60), f"no progress after scaling up: {workload.stats}"
        down = kv.scale(2, retire_grace_s=1.0)
        assert down["state"] == "done" and len(kv.shard_map.shards) == 2
        assert workload.wait_for_ops(50, 60), f"no progress after scaling down: {workload.stats}"
        history = workload.stop_with_final_reads()
        result = check(history, timeout_s=300)
        print(f"{workload.stats}; up {up['moved_keys']} keys, down {down['moved_keys']} keys; "
              f"{result.explanation[:100]}")
        assert result.ok is True, result.explanation
        assert_all_present(kv, data)
        live = {s.shard for s in kv.shard_map.shards}
        assert kv.shard_map.epoch >= 1 + 2 + 3 and kv.status().healthy and kv.status().operation is None
        for gone in set(range(1, 8)) - live:
            with pytest.raises(ValueError):
                ray.get_actor(f"raykv:sc-load:{gone}:1", namespace=NAMESPACE)
        assert shard_dirs(ray_cluster, "sc-load") == live | {0}


def test_scale_resumes_after_router_meta_leader_and_source_leader_kills(ray_cluster) -> None:  # noqa: F811
    with running_store(ray_cluster, "sc-kill", shards=2) as kv:
        data = preload(kv, 200)
        router = ray.get_actor(router_name("sc-kill"), namespace=NAMESPACE)
        old_pid = ray.get(router.pid.remote())
        kv.scale(4, wait=False, retire_grace_s=1.0)
        wait_phase(kv, {"precopy", "fence", "copy", "switch"})
        ray.kill(router, no_restart=False)
        wait_for(lambda: _pid_or_none(router) not in (None, old_pid), 60, "the router to restart")
        meta_leader = wait_leader_of(kv, 0, (1, 2, 3))
        ray.kill(ray.get_actor(f"raykv:sc-kill:0:{meta_leader}", namespace=NAMESPACE), no_restart=False)
        wait_done(kv)
        assert len(kv.shard_map.shards) == 4
        assert_all_present(kv, data)

        kv.scale(2, wait=False, retire_grace_s=1.0)
        record = wait_phase(kv, {"precopy", "fence", "copy"})
        source = record["step"]["src"]
        rids = tuple(record["step"]["src_rids"])
        leader = wait_leader_of(kv, source, rids)
        ray.kill(ray.get_actor(f"raykv:sc-kill:{source}:{leader}", namespace=NAMESPACE), no_restart=False)
        wait_done(kv)
        assert len(kv.shard_map.shards) == 2
        assert_all_present(kv, data)
        kv.put("after", 1)
        assert kv.get("after") == 1


def test_bad_scale_requests_are_refused(ray_cluster) -> None:  # noqa: F811
    with running_store(ray_cluster, "sc-bad", shards=1) as kv:
        for bad in (0, -1, 1025, "2", 2.0, True, None):
            with pytest.raises(InvalidRequestError):
                kv.scale(bad)
        kv.scale(2, wait=False, retire_grace_s=1.0)  # one split: it runs for seconds (a new group starts)
        with pytest.raises(InvalidRequestError, match="already scaling"):
            kv.scale(3)
        assert kv.scale(2)["state"] == "done"  # the same target: waits for the one in flight
        assert len(kv.shard_map.shards) == 2
        assert kv.scale(2)["steps_total"] == 0  # nothing to do


def _pid_or_none(handle) -> int | None:
    try:
        return ray.get(handle.pid.remote(), timeout=5)
    except Exception:  # noqa: BLE001 -- restarting
        return None


def wait_leader_of(kv: Client, shard: int, rids: tuple[int, ...]) -> int:
    return groups.wait_leader(kv.store, shard, rids, timeout_s=60)[0]
