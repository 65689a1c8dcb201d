"""Replica metrics and logs: Ray's Prometheus endpoints show raykv's metrics, worker logs name replicas.

One store (the meta group and one data shard) on a 3-raylet cluster started with
``RAY_metrics_report_interval_ms=1000`` (metrics visible in about a second instead
of ten). The test writes, reads at every consistency level, isolates a follower
until the leader compacted past it (it then catches up through a snapshot), kills
the data shard's leader (Ray restarts it; an election follows) and scrapes every
node's ``/metrics`` page until each raykv metric family shows up with store, shard
and replica labels and values that match what was done. Unit tests below cover
the parts that need no cluster: id-prefixed logs, a metrics failure that must not
reach the loop, proposal times handed back by the pending writes.
"""

from __future__ import annotations

import logging
import re
import urllib.request
from pathlib import Path

import pytest
import ray

import raykv
from ray_cluster import started_cluster, wait_for
from raykv.runtime.faults import FaultPlan
from raykv.runtime.local_cluster import HOSTS
from raykv.runtime.metrics import COUNTERS, GAUGES, OBSERVE_PER_TURN, ReplicaMetrics, replica_logger
from raykv.replica.options import ReplicaOptions
from raykv.protocol import NAMESPACE, replica_actor_name
from raykv.replica.pending import PendingWrites, WriteBatch
from raykv.storage.replica_store import ReplicaId

pytestmark = pytest.mark.timeout(300)
STORE, SHARD = "met", "1"  # shard 0 is the store's meta group
FAST_REPORTS = {"RAY_metrics_report_interval_ms": "1000"}
SAMPLE = re.compile(r"^(ray_raykv_\w+)\{(.*)\} (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
HISTOGRAMS = ("ray_raykv_commit_latency_ms", "ray_raykv_read_index_latency_ms")
FAMILIES = ({f"ray_{name}" for name, _ in COUNTERS.values()} | {f"ray_{name}" for name, _ in GAUGES.values()}
            | {"ray_raykv_writes_total", "ray_raykv_reads_total"}
            | {f"{h}_{part}" for h in HISTOGRAMS for part in ("bucket", "count", "sum")})


@pytest.fixture(scope="module")
def cluster_root():
    with started_cluster(HOSTS, env=FAST_REPORTS) as (_, root):  # read by the raylets and workers as they start
        yield root


# -- scraping ------------------------------------------------------------------------------
def scrape() -> list[tuple[str, dict[str, str], float]]:
    """Every ``ray_raykv_*`` sample of every alive node's metrics agent: ``(name, labels, value)``."""
    samples = []
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        try:
            text = urllib.request.urlopen(url, timeout=10).read().decode()
        except OSError:
            continue  # an agent still starting: the caller polls
        for line in text.splitlines():
            m = SAMPLE.match(line)
            if m:
                samples.append((m[1], dict(LABEL.findall(m[2])), float(m[3])))
    return samples


def total(samples, name: str, shard: str = SHARD, **labels: str) -> float:
    """Sum of ``name`` over this store's series of ``shard`` matching ``labels`` (stale series included)."""
    want = {"store": STORE, "shard": shard, **labels}
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in want.items()))


def top(samples, name: str, shard: str = SHARD) -> float:
    return max((v for n, lab, v in samples if n == name and lab.get("store") == STORE and lab.get("shard") == shard),
               default=float("-inf"))


# -- the store -------------------------------------------------------------------------------
def replica(rid: int):
    return ray.get_actor(replica_actor_name(STORE, int(SHARD), rid), namespace=NAMESPACE)


def status(rid: int) -> dict | None:
    try:
        return ray.get(replica(rid).status.remote(), timeout=10)
    except Exception:  # noqa: BLE001 -- dead or restarting: no status
        return None


def leader() -> int:
    """The data shard's leader, once a majority agrees on it."""
    def agreed() -> int | None:
        statuses = [s for s in map(status, (1, 2, 3)) if s is not None]
        leaders = [(s["term"], s["id"]) for s in statuses if s["role"] == "leader"]
        if leaders:
            term, rid = max(leaders)
            if sum(s["term"] == term and s["leader"] == rid for s in statuses) >= 2:
                return rid
        return None

    return wait_for(agreed, 60, "a leader of the data shard", every_s=0.5)


def set_faults(plan: FaultPlan | None) -> None:
    for rid in (1, 2, 3):
        ray.get(replica(rid).set_faults.remote(plan), timeout=30)


def isolate_until_snapshot(put) -> None:
    """Cut a follower off, write until the leader compacted past it, heal: it needs a snapshot."""
    lead = leader()
    follower = next(r for r in (1, 2, 3) if r != lead)
    set_faults(FaultPlan.isolate(follower, [1, 2, 3]))
    put(60)
    wait_for(lambda: (status(lead) or {}).get("first_index", 0) > (status(follower) or {}).get("last_index", 1 << 62),
             60, "compaction past the follower", every_s=0.5)
    set_faults(None)
    wait_for(lambda: (status(follower) or {}).get("snapshots_installed", 0) >= 1, 60, "the follower's snapshot", every_s=0.5)


@pytest.fixture(scope="module")
def kv(cluster_root: Path):
    data = {h: str(cluster_root / "data" / h) for h in HOSTS}
    client = raykv.start(STORE, shards=1, data_dir=data, timeout_s=30.0,
                         options=ReplicaOptions(compact_every_entries=40, compact_keep_entries=0))
    yield client
    client.close()
    raykv.stop(STORE)


def test_replica_metrics_reach_rays_prometheus_endpoints(kv) -> None:
    writes = 0

    def put(n: int) -> None:
        nonlocal writes
        for _ in range(n):
            writes += 1
            kv.put(f"k{writes}", writes)

    put(20)
    assert [kv.get(f"k{i}", consistency="linearizable") for i in range(1, 6)] == [1, 2, 3, 4, 5]
    # a lease read is served by the lease only a full election timeout after the group woke up
    # (else by a ReadIndex round, counted as linearizable): write until the leader says it may
    lead = leader()
    wait_for(lambda: put(1) or (status(lead) or {}).get("lease_reads"), 30, "the leader's lease", every_s=0.1)
    assert [kv.get(f"k{i}", consistency="lease") for i in range(1, 6)] == [1, 2, 3, 4, 5]
    kv.get("k1", consistency="stale")  # may lag behind: only counted
    isolate_until_snapshot(put)
    wait_for(lambda: _before_kill(scrape(), writes), 60, "proposals and the snapshot exported before the kill", every_s=0.5)
    ray.kill(replica(leader()), no_restart=False)
    put(10)  # the client finds the new leader
    missing: list[str] = []
    try:
        samples = wait_for(lambda: _all_metrics_in(scrape(), writes, missing), 90, "every raykv metric", every_s=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; missing or inconsistent: {missing}") from None
    assert top(samples, "ray_raykv_is_leader") == 1 and top(samples, "ray_raykv_term") >= 2
    assert top(samples, "ray_raykv_is_leader", shard="0") == 1, "the meta group reports too"
    print(f"{writes} writes; proposals {total(samples, 'ray_raykv_proposals_total'):.0f}, "
          f"elections {total(samples, 'ray_raykv_elections_started_total'):.0f}, "
          f"snapshot bytes sent {total(samples, 'ray_raykv_snapshot_sent_bytes_total'):.0f}")


def _before_kill(samples, writes: int) -> bool:
    """The leader's counts are exported (a killed replica's unexported counts are lost)."""
    return (total(samples, "ray_raykv_proposals_total") >= writes
            and total(samples, "ray_raykv_snapshots_sent_total") >= 1)


def _all_metrics_in(samples, writes: int, missing: list[str]):
    """``samples`` if every family is there with its labels and values match the run, else None
    (``missing`` then holds what is not there yet: the timeout message names it)."""
    names = {n for n, lab, _ in samples if lab.get("store") == STORE and {"shard", "replica"} <= lab.keys()}
    checks = {
        "families": FAMILIES <= names,
        "proposals": total(samples, "ray_raykv_proposals_total") >= writes,
        "writes": total(samples, "ray_raykv_writes_total") > 0,
        "commit count": total(samples, "ray_raykv_commit_latency_ms_count") > 0,
        "commit sum": total(samples, "ray_raykv_commit_latency_ms_sum") > 0,
        "commit +Inf bucket": total(samples, "ray_raykv_commit_latency_ms_bucket", le="+Inf")
        == total(samples, "ray_raykv_commit_latency_ms_count"),
        "read-index counts": all(total(samples, "ray_raykv_read_index_latency_ms_count", consistency=c) > 0
                                 for c in ("linearizable", "lease")),
        "reads": all(total(samples, "ray_raykv_reads_total", consistency=c) > 0 for c in ("linearizable", "lease", "stale")),
        "elections started": total(samples, "ray_raykv_elections_started_total") >= 2,  # the first leader's and the kill's
        "elections won": total(samples, "ray_raykv_elections_won_total") >= 2,
        "leader changes": total(samples, "ray_raykv_leader_changes_total") >= 4,  # each replica learned of >= 1 leader, then a new one
        "snapshots created": total(samples, "ray_raykv_snapshots_created_total") >= 1,
        "snapshots sent": total(samples, "ray_raykv_snapshots_sent_total") >= 1,
        "snapshot bytes sent": total(samples, "ray_raykv_snapshot_sent_bytes_total") > 0,
        "snapshots received": total(samples, "ray_raykv_snapshots_received_total") >= 1,
        "snapshot bytes received": total(samples, "ray_raykv_snapshot_received_bytes_total")
        >= total(samples, "ray_raykv_snapshot_sent_bytes_total"),
        "snapshots installed": total(samples, "ray_raykv_snapshots_installed_total") >= 1,
        "applied index": top(samples, "ray_raykv_applied_index") >= writes,
        "apply lag": top(samples, "ray_raykv_apply_lag_entries") >= 0,
    }
    missing[:] = [name for name, ok in checks.items() if not ok] + sorted(FAMILIES - names)
    return samples if not missing else None


def test_worker_logs_name_the_replica(cluster_root: Path, kv) -> None:
    """Ray's worker log files hold the replicas' lines, each prefixed with the replica's ids."""
    prefix = f"[raykv store={STORE} shard={SHARD} replica="

    def logged() -> list[str]:
        lines = []
        for path in cluster_root.rglob("worker-*.err"):
            lines += [line for line in path.read_text(errors="replace").splitlines() if prefix in line]
        return lines

    lines = wait_for(lambda: logged() or None, 30, "replica lines in the worker logs", every_s=0.5)
    assert any("started (pid" in line for line in lines)
    assert any("leader is replica" in line for line in lines)
    assert {line.split(prefix)[1][0] for line in lines} == {"1", "2", "3"}


# -- no cluster needed -------------------------------------------------------------------------
def test_replica_logger_prefixes_ids_and_sets_record_attributes(caplog) -> None:
    log = replica_logger(ReplicaId("st", 4, 2))
    with caplog.at_level(logging.INFO, logger="raykv.replica"):
        log.info("hello %d", 7)
    record = caplog.records[-1]
    assert record.getMessage() == "[raykv store=st shard=4 replica=2] hello 7"
    assert (record.raykv_store, record.raykv_shard, record.raykv_replica) == ("st", 4, 2)


def test_a_metrics_failure_disables_metrics_once_and_never_raises(caplog) -> None:
    metrics = ReplicaMetrics(ReplicaId("st", 1, 1))
    metrics.committed(0.002)
    metrics.reads_served("lease", 3, 0.001)

    def broken_state():
        raise RuntimeError("state unavailable")

    with caplog.at_level(logging.WARNING, logger="raykv.replica"):
        metrics.maybe_flush(broken_state)
        metrics.committed(0.001)
        metrics.maybe_flush(broken_state)
    assert not metrics.enabled
    assert [r.getMessage() for r in caplog.records if "metrics disabled" in r.getMessage()] == [
        "[raykv store=st shard=1 replica=1] metrics disabled for this replica after a failure"]
    assert metrics._commit_s == [] and metrics._read_rounds == [] and not metrics._backlog


def test_disabled_metrics_record_nothing() -> None:
    metrics = ReplicaMetrics(ReplicaId("st", 1, 1), enabled=False)
    metrics.committed(0.002)
    metrics.reads_served("stale", 1)
    metrics.maybe_flush(lambda: ({}, {}))
    assert metrics._commit_s == [] and sum(metrics._reads.values()) == 0


def test_enabled_metrics_export_counter_deltas_and_spread_histogram_samples() -> None:
    now = [100.0]
    metrics = ReplicaMetrics(ReplicaId("st", 1, 1), clock=lambda: now[0])
    for _ in range(OBSERVE_PER_TURN + 5):
        metrics.committed(0.002)
    metrics.reads_served("linearizable", 2, 0.003)
    metrics.maybe_flush(lambda: ({"proposed": 5}, {"term": 3}))  # due: exports, queues the samples
    assert metrics.enabled and metrics._flushed["proposed"] == 5 and sum(metrics._reads.values()) == 0
    assert len(metrics._backlog) == OBSERVE_PER_TURN + 6
    metrics.maybe_flush(lambda: ({"proposed": 9}, {}))  # not due: observes one turn's share only
    assert len(metrics._backlog) == 6 and metrics._flushed["proposed"] == 5
    metrics.maybe_flush(lambda: ({"proposed": 9}, {}))
    assert len(metrics._backlog) == 0 and metrics.enabled


def test_pending_writes_hand_back_the_proposal_time_of_their_own_term() -> None:
    pending, answers = PendingWrites(), {}
    batch = WriteBatch.of(1, 2, answers.__setitem__)
    pending.add(5, 2, batch, 0, (1, 1), proposed_at=10.5)
    pending.add(6, 2, batch, 1, (1, 2), proposed_at=10.5)
    assert pending.applied(5, 2, b"ok") == 10.5
    assert pending.applied(6, 3, b"other term") is None  # replaced: not this replica's write
    assert pending.applied(7, 2, b"unknown") is None
    assert answers[1][0] == b"ok"
