"""Shared fixtures for tests on a real multi-raylet Ray cluster (``ray.cluster_utils.Cluster``).

One cluster per test module: a head node with CPUs for drivers and tasks, and
three worker raylets labelled ``raykv-host=h1..h3`` with no CPUs, where the
replicas (``num_cpus=0``, pinned by label) live. Ray's sockets and session
files go to a private short ``RAY_TMPDIR``; nothing here ever runs ``ray stop``.
Each test starts its own store name and kills its own actors.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from raykv.kv.commands import RangeChange
from raykv.kv.ranges import RangeAction
from raykv.runtime.faults import FaultPlan, LinkFault
from raykv.runtime import groups
from raykv.runtime.groups import leader_call
from raykv.runtime.groups import running as group_replicas
from raykv.runtime.local_cluster import HOSTS, labelled_cluster
from raykv.replica.options import ReplicaOptions
from raykv.runtime.shard import start_shard

def wait_for(predicate, timeout: float = 30.0, what: str = "condition", every_s: float = 0.05):
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` passes
    (AssertionError naming ``what``): tests await conditions, never sleep-then-assert."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def range_change(store: str, shard: int, rids, action: RangeAction, lo: bytes, hi: bytes | None, epoch: int,
                 gen: int = 0):
    """One range change sent straight to ``shard``'s leader through the group port, as a placement
    driver of lease ``epoch`` would send it (tests force conflicts with it); the group's answer."""
    return leader_call(store, shard, tuple(rids), "change_range", (RangeChange(action, lo, hi, (), epoch, gen),),
                       timeout_s=60.0)


def slow_links(store: str, shard: int, rids, delay_s: float, lagging: int | None = None, lag_s: float = 0.0) -> None:
    """Delay every link between ``rids`` of ``shard`` by ``delay_s`` (and every link into
    ``lagging`` by ``lag_s``); ``delay_s=0`` without ``lagging`` heals them."""
    links = {(a, b): LinkFault(drop=0.0, delay_s=lag_s if b == lagging else delay_s) for a in rids for b in rids if a != b}
    plan = FaultPlan(links) if (delay_s or lagging) else None
    for handle in group_replicas(store, shard, rids).values():
        ray.get(handle.set_faults.remote(plan), timeout=30)


IDLE_WORKERS_KEPT = {"RAY_idle_worker_killing_time_threshold_ms": "60000"}
"""Test clusters keep idle task workers for 60 s (Ray's default: 1 s beyond a node's CPU count).
The replica hosts here have no CPUs, so each small task pinned to one (a store start lists its
replica directories on every host; repair and resharding delete directories there) would
otherwise start a fresh Python worker (~1 CPU-s) every time. Real hosts have CPUs and keep
their idle workers anyway. Nothing a test checks depends on it."""


@contextmanager
def started_cluster(hosts: Sequence[str] = HOSTS, env: Mapping[str, str] | None = None, **kwargs):
    """:func:`~raykv.runtime.local_cluster.labelled_cluster` with :data:`IDLE_WORKERS_KEPT` and
    ``env`` in the environment of the Ray processes it starts (restored when it ends)."""
    wanted = {**IDLE_WORKERS_KEPT, **(env or {})}
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        with labelled_cluster(hosts, **kwargs) as started:
            yield started
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class RayTestCluster:
    cluster: Cluster
    root: Path
    hosts: tuple[str, ...] = HOSTS

    def data_dirs(self, name: str) -> dict[str, str]:
        return {h: str(self.root / name / h) for h in self.hosts}


@pytest.fixture(scope="module")
def ray_cluster():
    with started_cluster(HOSTS) as (cluster, root):
        yield RayTestCluster(cluster, root)


@dataclass
class ShardUnderTest:
    """One shard's three replicas, with the faults tests inject."""

    name: str
    env: RayTestCluster
    options: ReplicaOptions = field(default_factory=ReplicaOptions)

    def __post_init__(self) -> None:
        self.handles = start_shard(self.name, 0, self.env.hosts, self.env.data_dirs(self.name), self.options)
        self.stopped_pids: list[int] = []

    def status(self, rid: int, timeout: float = 5.0) -> dict | None:
        try:
            return ray.get(self.handles[rid].status.remote(), timeout=timeout)
        except Exception:  # noqa: BLE001 -- a dead, paused or restarting replica has no status
            return None

    def statuses(self, among: tuple[int, ...] | None = None) -> dict[int, dict]:
        """The statuses of the replicas (among ``among``) that answer within 5 s (the group port's)."""
        found = groups.statuses(self.name, 0, among or tuple(self.handles), timeout_s=5.0)
        return {rid: status for rid, (status, _) in found.items()}

    def wait_leader(self, among: tuple[int, ...] | None = None, exclude: int | None = None,
                    timeout: float = 30.0) -> int:
        """The replica that leads (agreed by a majority of those answering) within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            statuses = self.statuses(among)
            leaders = [(s["term"], rid) for rid, s in statuses.items() if s["role"] == "leader" and rid != exclude]
            if leaders:
                term, rid = max(leaders)
                followers = [s for s in statuses.values() if s["term"] == term and s["leader"] == rid]
                if len(followers) >= 2:
                    return rid
            time.sleep(0.05)
        raise AssertionError(f"no leader within {timeout}s: {self.statuses(among)}")

    def wait_until(self, predicate, timeout: float = 30.0, what: str = "condition"):
        return wait_for(predicate, timeout, what)

    def pid(self, rid: int) -> int:
        return ray.get(self.handles[rid].pid.remote(), timeout=10)

    def pause(self, rid: int) -> int:
        pid = self.pid(rid)
        os.kill(pid, signal.SIGSTOP)
        self.stopped_pids.append(pid)
        return pid

    def resume(self, pid: int) -> None:
        os.kill(pid, signal.SIGCONT)
        self.stopped_pids.remove(pid)

    def kill(self, rid: int, restart: bool = True) -> None:
        ray.kill(self.handles[rid], no_restart=not restart)

    def sigkill(self, rid: int) -> None:
        """SIGKILL the replica's process (no cleanup at all); Ray restarts the actor in place."""
        os.kill(self.pid(rid), signal.SIGKILL)

    def set_faults(self, plan: FaultPlan | None, among: tuple[int, ...] | None = None) -> None:
        """Install ``plan`` on every replica in ``among`` (default all), retrying while one restarts."""
        for rid in among or tuple(self.handles):
            self.wait_until(lambda rid=rid: self._try_set_faults(rid, plan), what=f"set faults on replica {rid}")

    def _try_set_faults(self, rid: int, plan: FaultPlan | None) -> bool:
        try:
            ray.get(self.handles[rid].set_faults.remote(plan), timeout=10)
            return True
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            return False

    def close(self) -> None:
        for pid in list(self.stopped_pids):
            self.resume(pid)
        for h in self.handles.values():
            ray.kill(h, no_restart=True)
