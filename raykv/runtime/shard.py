"""Starting one shard's Raft group on Ray: three (or N) replica actors on distinct hosts.

:func:`start_shard` is what the store's bootstrap (and the tests) use. Each
replica's data lives under ``data_dirs[host]``: the node-local data root of
the host it is pinned to (the same path on every host in a real cluster; in
``ray.cluster_utils`` tests, one directory per simulated host).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ray

from ..replica.options import ReplicaOptions
from ..protocol import NAMESPACE, replica_actor_name
from .replica import ReplicaActor, replica_options


def start_shard(store: str, shard: int, hosts: Sequence[str], data_dirs: str | Mapping[str, str],
                options: ReplicaOptions | None = None, wait: bool = True) -> dict[int, "ray.actor.ActorHandle"]:
    """Create (or reopen from their LMDB) replicas ``1..len(hosts)``; replica ``i`` on ``hosts[i-1]``."""
    placement = tuple((rid, host) for rid, host in enumerate(hosts, 1))
    return start_group(store, shard, placement, data_dirs, options, wait)


def start_group(store: str, shard: int, placement: Sequence[tuple[int, str]], data_dirs: str | Mapping[str, str],
                options: ReplicaOptions | None = None, wait: bool = True, create: bool = True,
                voters: Sequence[int] | None = None) -> dict[int, "ray.actor.ActorHandle"]:
    """Create (or reopen from their LMDB) the replicas ``placement`` names: ``(replica id, host)``.

    ``data_dirs`` is the node-local data root: one path used on every host, or a
    path per host (one machine simulating several hosts). Idempotent: an
    existing actor with the same name is reused. With ``wait``, returns once
    every replica answered a ping. ``create``: replicas without data are created as founding
    members of ``voters`` (default: the placement's ids); without it, they must exist.
    """
    options = options or ReplicaOptions()
    ids = tuple(voters) if voters is not None else tuple(rid for rid, _ in placement)
    handles = {}
    for rid, host in placement:
        name = replica_actor_name(store, shard, rid)
        root = data_dirs if isinstance(data_dirs, str) else data_dirs[host]
        handles[rid] = ReplicaActor.options(**replica_options(name, host), get_if_exists=True).remote(
            store, shard, rid, ids, str(root), options, create
        )
    if wait:
        ray.get([h.ping.remote() for h in handles.values()], timeout=120)
    return handles


def replica_handle(store: str, shard: int, replica: int):
    return ray.get_actor(replica_actor_name(store, shard, replica), namespace=NAMESPACE)
