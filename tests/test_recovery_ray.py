"""Full recovery: the whole Ray cluster goes away and comes back; the store reopens from LMDB.

Two clusters in a row, each a head plus three raylets labelled ``raykv-host=h1..h3`` (the
stable host identity: Ray gives the new nodes new ids), with the same per-host data
directories. Everything acknowledged before the first cluster died must be there after
``raykv.start`` on the second.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

import raykv

pytestmark = pytest.mark.timeout(600)
HOSTS = ("h1", "h2", "h3")


def _cluster() -> Cluster:
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=2, include_dashboard=False))
    for host in HOSTS:
        cluster.add_node(num_cpus=0, labels={"raykv-host": host})
    ray.init(address=cluster.address)
    return cluster


def _down(cluster: Cluster) -> None:
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def private_ray_tmp():
    root = Path(tempfile.mkdtemp(prefix="rk-", dir="/tmp"))
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(root / "ray")
    (root / "ray").mkdir()
    yield root
    if saved is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = saved
    shutil.rmtree(root, ignore_errors=True)


def test_store_comes_back_after_the_whole_ray_cluster_restarts(private_ray_tmp) -> None:
    dirs = {h: str(private_ray_tmp / "data" / h) for h in HOSTS}
    expected = {f"key-{i:04d}": {"n": i} for i in range(300)}
    cluster = _cluster()
    try:
        client = raykv.start("phoenix", shards=3, replicas=3, data_dir=dirs)
        client.put_batch(dict(list(expected.items())[:200]))
        for key, value in list(expected.items())[200:]:
            client.put(key, value)
        client.put(b"raw-bytes", b"\x00\x01")
        client.close()
    finally:
        _down(cluster)  # no clean stop: the cluster just goes away
    cluster = _cluster()
    try:
        client = raykv.start("phoenix", shards=3, replicas=3, data_dir=dirs)
        assert client.get_batch(list(expected)) == list(expected.values())
        assert client.get(b"raw-bytes") == b"\x00\x01"
        assert [k for k, _ in client.scan(prefix="key-")] == sorted(expected)
        client.put("after", 1)
        client.close()
        raykv.stop("phoenix")
        client = raykv.start("phoenix", data_dir=dirs)  # a clean stop and start: same data
        assert client.get("after") == 1 and client.get("key-0007") == {"n": 7}
        client.close()
        raykv.stop("phoenix")
    finally:
        _down(cluster)
