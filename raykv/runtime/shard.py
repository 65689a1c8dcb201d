"""Starting one shard's Raft group on Ray: three (or N) replica actors on distinct hosts.

:func:`start_shard` is what the store's bootstrap (and the tests) use. Each
replica's data lives under ``data_dirs[host]``: the node-local data root of
the host it is pinned to (the same path on every host in a real cluster; in
``ray.cluster_utils`` tests, one directory per simulated host).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ray

from .options import ReplicaOptions
from .protocol import NAMESPACE, replica_actor_name
from .replica import ReplicaActor, replica_options


def start_shard(store: str, shard: int, hosts: Sequence[str], data_dirs: Mapping[str, str],
                options: ReplicaOptions | None = None, wait: bool = True) -> dict[int, "ray.actor.ActorHandle"]:
    """Create (or reopen from their LMDB) replicas ``1..len(hosts)``; replica ``i`` on ``hosts[i-1]``.

    Idempotent: an existing actor with the same name is reused. With ``wait``,
    returns once every replica answered a ping.
    """
    options = options or ReplicaOptions()
    ids = tuple(range(1, len(hosts) + 1))
    handles = {}
    for rid, host in zip(ids, hosts):
        name = replica_actor_name(store, shard, rid)
        handles[rid] = ReplicaActor.options(**replica_options(name, host), get_if_exists=True).remote(
            store, shard, rid, ids, ids, str(data_dirs[host]), options
        )
    if wait:
        ray.get([h.ping.remote() for h in handles.values()])
    return handles


def replica_handle(store: str, shard: int, replica: int):
    return ray.get_actor(replica_actor_name(store, shard, replica), namespace=NAMESPACE)
