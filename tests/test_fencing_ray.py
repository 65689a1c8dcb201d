"""Two placement drivers racing through a split and a merge, on a real 3-raylet Ray cluster.

Ray restarts a detached router elsewhere when its node is cut off from the GCS while the old
one still runs: two drivers. Here a second Router actor of the same store plays the other one
and the two take the lease from each other in the middle of a move (a claim fences the
holder: its late range changes and ingest chunks are refused by epoch and attempt). Under a
checked workload: the history is linearizable, every preloaded key is read back, each
operation completes and no range is left fenced (every shard serves).

A placement driver killed at every phase of a split and of a merge: every link of the groups
involved is slowed (so each phase lasts long enough to be seen) and the router is killed the
moment the record shows each phase; Ray restarts it and its driver resumes from the record.
Meanwhile one follower of the split's new group lags far behind, and stale reads of keys that
never change go round-robin over every replica, that one included: each still reads its
value (a replica answers ShardMapChangedError until it applied the ingest, and the client
tries again), none fails.

A merge forced to fail before its fence: the source group is given an ingest of its own
(what a fence cannot fit), so the merge's FENCE is refused after its pre-copy filled the
target. The operation fails, its cleanup aborts the target's ingest (the copied rows go, the
target's range is as before), and once the obstacle is gone the same merge runs to the end.
"""

from __future__ import annotations

import pytest
import ray

import raykv
from raykv.errors import InvalidRequestError, PlacementError
from raykv.kv.commands import Ok
from raykv.kv.ranges import RangeAction
from raykv.protocol import NAMESPACE, router_name
from raykv.runtime.groups import leader as group_leader
from raykv.runtime.groups import leader_call
from raykv.runtime.groups import statuses as group_statuses
from raykv.runtime.local_cluster import HOSTS, labelled_cluster
from raykv.runtime.router import Router
from raykv.testing.linearizability import check
from raykv.testing.workload import Workload
from raykv.userdata import encode_key

from ray_cluster import range_change, slow_links, wait_for

pytestmark = pytest.mark.timeout(900)
FIRST = "0AHMSZdhmqu"
SPLIT_PHASES = ("create", "precopy", "fence", "copy", "switch", "drop")
MERGE_PHASES = ("precopy", "fence", "copy", "switch", "drop", "retire")


@pytest.fixture(scope="module")
def cluster():
    with labelled_cluster(HOSTS) as (c, root):
        yield c, root


def wait_phase(kv, phases: set[str]) -> dict:
    def seen():
        record = kv.scale_status()
        return record if record and record.get("step") and record["step"]["phase"] in phases else None
    return wait_for(seen, 120, f"a scale step in phase {phases}", every_s=0.02)


def wait_done(kv) -> dict:
    record = wait_for(lambda: (r := kv.scale_status()) and r["state"] != "running" and r, 300, "the scale to end",
                      every_s=0.1)
    assert record["state"] == "done", record
    kv.refresh()
    return record


def check_history_and_data(kv, workload, data: dict, when: str, ops: int = 30) -> None:
    """The workload still makes progress (``ops`` more operations), its history is linearizable
    and every key of ``data`` reads back its value."""
    assert workload.wait_for_ops(ops, 60), f"no progress {when}: {workload.stats}"
    result = check(workload.stop_with_final_reads(), timeout_s=300)
    assert result.ok is True, result.explanation
    keys = sorted(data)
    assert kv.get_batch(keys) == [data[k] for k in keys]


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

        check_history_and_data(kv, workload, data, "after the moves", ops=40)
        keys = sorted(data)
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


def applied_everywhere(store: str, shard: int) -> bool:
    """Whether each replica of ``shard`` answers and has applied all its leader has committed."""
    found = [status for status, _ in group_statuses(store, shard, (1, 2, 3)).values()]
    leaders = [s["commit"] for s in found if s["role"] == "leader"]
    return len(found) == 3 and bool(leaders) and min(s["applied"] for s in found) >= max(leaders)


def kill_router(store: str) -> None:
    """Kill the store's router (Ray restarts it) and wait until the new incarnation answers."""
    router = ray.get_actor(router_name(store), namespace=NAMESPACE)
    old = ray.get(router.pid.remote(), timeout=30)
    ray.kill(router, no_restart=False)

    def restarted():
        try:
            return ray.get(router.pid.remote(), timeout=5) != old
        except Exception:  # noqa: BLE001 -- restarting
            return False
    wait_for(restarted, 60, "the router to restart", every_s=0.1)


class StaleReader:
    """One thread reading keys that never change with ``consistency="stale"`` until stopped;
    every answer must be the key's value (any error or other value is kept in ``wrong``)."""

    def __init__(self, kv, data: dict[str, str]) -> None:
        import threading

        self.kv, self.keys, self.data = kv, sorted(data), data
        self.reads, self.wrong = 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            key = self.keys[i % len(self.keys)]
            i += 7
            try:
                value = self.kv.get(key, consistency="stale")
            except Exception as exc:  # noqa: BLE001 -- recorded: a stale read must not fail
                self.wrong.append((key, repr(exc)))
                continue
            self.reads += 1
            if value != self.data[key]:
                self.wrong.append((key, value))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


def kill_at_each_phase(kv, phases, on_phase=None) -> None:
    """Kill the router as the record shows each of ``phases`` (in order) of the running step."""
    for phase in phases:
        record = wait_phase(kv, {phase})
        if on_phase is not None:
            on_phase(phase, record)
        kill_router(kv.store)


def test_a_driver_killed_at_every_phase_of_a_split_and_a_merge(cluster) -> None:
    _, root = cluster
    name, delay = "phases", 0.05
    kv = raykv.start(name, shards=1, replicas=3, data_dir={h: str(root / name / h) for h in HOSTS}, timeout_s=30.0)
    try:
        data = {f"{c}{i:04d}": f"v-{c}-{i}" * 4 for c in FIRST for i in range(100)}
        kv.put_batch(data)
        wait_for(lambda: applied_everywhere(name, 1), 60, "the preload applied at every replica")  # stale reads lag
        workload = Workload(kv, [f"{c}w" for c in FIRST], clients=3, seed=12).start()
        stale = StaleReader(kv, data)
        assert workload.wait_for_ops(30, 60), f"no progress: {workload.stats}"
        for shard in (0, 1):
            slow_links(name, shard, (1, 2, 3), delay)

        def lag_a_target_follower(phase: str, record: dict) -> None:
            if phase == "precopy":  # the new group exists: one of its followers lags far behind
                dst, rids = record["step"]["dst"], tuple(record["step"]["dst_rids"])
                lead = wait_for(lambda: group_leader(name, dst, rids), 60, "a leader of the new group")[0]
                slow_links(name, dst, rids, delay, lagging=next(r for r in rids if r != lead), lag_s=1.0)

        kv.scale(2, wait=False, retire_grace_s=1.0)
        kill_at_each_phase(kv, SPLIT_PHASES, lag_a_target_follower)
        assert wait_done(kv)["target"] == 2 and len(kv.shard_map.shards) == 2
        split_stale_reads = stale.reads
        assert workload.wait_for_ops(30, 60), f"no progress after the split: {workload.stats}"

        new = next(s for s in kv.shard_map.shards if s.shard != 1)
        slow_links(name, new.shard, tuple(r for r, _ in new.replicas), delay)
        kv.scale(1, wait=False, retire_grace_s=1.0)
        kill_at_each_phase(kv, MERGE_PHASES)
        assert wait_done(kv)["target"] == 1 and len(kv.shard_map.shards) == 1
        for shard in (0, 1):
            slow_links(name, shard, (1, 2, 3), 0.0)

        assert workload.wait_for_ops(30, 60), f"no progress after the merge: {workload.stats}"
        stale.stop()
        history = workload.stop_with_final_reads()
        result = check(history, timeout_s=300)
        assert result.ok is True, result.explanation
        assert stale.wrong == [] and split_stale_reads > 0 and stale.reads > split_stale_reads
        keys = sorted(data)
        assert kv.get_batch(keys) == [data[k] for k in keys]
        status = kv.status()
        assert status.healthy and status.operation is None
        kv.put(keys[0], "after")
        assert kv.get(keys[0]) == "after"
    finally:
        kv.close()
        raykv.stop(name)


def test_a_merge_that_fails_before_its_fence_cleans_its_target_and_can_run_again(cluster) -> None:
    _, root = cluster
    name = "refused"
    kv = raykv.start(name, shards=2, replicas=3, data_dir={h: str(root / name / h) for h in HOSTS}, timeout_s=30.0)
    try:
        data = {f"{c}{i:04d}": f"v-{c}-{i}" * 4 for c in FIRST for i in range(60)}
        kv.put_batch(data)
        workload = Workload(kv, [f"{c}w" for c in FIRST], clients=3, seed=13).start()
        assert workload.wait_for_ops(30, 60), f"no progress: {workload.stats}"
        left, right = kv.shard_map.shards  # a merge of 2 into 1: the right shard moves into the left one
        rids = {spec.shard: tuple(r for r, _ in spec.replicas) for spec in (left, right)}
        router = ray.get_actor(router_name(name), namespace=NAMESPACE)
        epoch = wait_for(lambda: ray.get(router.lease.remote(), timeout=30)["epoch"], 60, "the driver's lease")
        obstacle = (RangeAction.INGEST_BEGIN, b"", right.start, epoch, 7)  # an ingest into the source
        assert range_change(name, right.shard, rids[right.shard], RangeAction.SET, right.start, right.end, epoch) == Ok()
        assert range_change(name, right.shard, rids[right.shard], *obstacle) == Ok()

        with pytest.raises(PlacementError, match="FENCE refused"):
            kv.scale(1, retire_grace_s=1.0)
        record = wait_for(lambda: (r := kv.scale_status()) and r["step"]["cleanup"] is False and r, 120,
                          "the failed merge's cleanup")
        assert record["state"] == "failed" and record["step"]["src"] == right.shard and record["moved_keys"] > 0
        target = leader_call(name, left.shard, rids[left.shard], "range_state", ())
        assert (target.start, target.end, target.incoming, target.fence) == (left.start, left.end, None, None)
        rows, _ = leader_call(name, left.shard, rids[left.shard], "range_rows", (right.start, None, 10))
        assert rows == [], "the pre-copied rows left the target"
        assert len(kv.shard_map.shards) == 2 and kv.get_batch(sorted(data)) == [data[k] for k in sorted(data)]

        assert range_change(name, right.shard, rids[right.shard], RangeAction.INGEST_ABORT, *obstacle[1:]) == Ok()
        assert kv.scale(1, retire_grace_s=1.0)["state"] == "done" and len(kv.shard_map.shards) == 1
        check_history_and_data(kv, workload, data, "after the merge")
        assert kv.status().healthy
    finally:
        kv.close()
        raykv.stop(name)
