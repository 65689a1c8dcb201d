"""Full recovery: the whole Ray cluster goes away and comes back; the store reopens from LMDB.

Two clusters in a row, each a head plus three raylets labelled ``raykv-host=h1..h3`` (the
stable host identity: Ray gives the new nodes new ids), with the same per-host data
directories. Everything acknowledged before the first cluster died must be there after
``raykv.start`` on the second.
"""

from __future__ import annotations

import pytest

import raykv
from raykv.runtime.local_cluster import HOSTS

from ray_cluster import started_cluster

pytestmark = pytest.mark.timeout(600)


def test_store_comes_back_after_the_whole_ray_cluster_restarts(tmp_path) -> None:
    dirs = {h: str(tmp_path / "data" / h) for h in HOSTS}
    expected = {f"key-{i:04d}": {"n": i} for i in range(300)}
    with started_cluster(HOSTS):  # no clean stop at the end: the cluster just goes away
        client = raykv.start("phoenix", shards=3, replicas=3, data_dir=dirs)
        client.put_batch(dict(list(expected.items())[:200]))
        for key, value in list(expected.items())[200:]:
            client.put(key, value)
        client.put(b"raw-bytes", b"\x00\x01")
        client.close()
    with started_cluster(HOSTS):
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
