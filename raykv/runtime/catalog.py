"""Names and keys shared by the store's bootstrap, its router and its placement driver.

The meta group (shard :data:`~raykv.placement.META_SHARD`) is a kv group like any
other; these are the keys it holds (bytes keys, not user keys):

* :data:`SHARD_MAP_KEY` -- the encoded :class:`~raykv.placement.ShardMap`, changed
  only by compare-and-set from the exact previous bytes, its epoch one higher;
* :data:`SCALE_OP_KEY` -- the record of the last resharding operation
  (:class:`~raykv.runtime.scale.ScaleOp`, JSON), changed by compare-and-set.
"""

from __future__ import annotations

from collections.abc import Callable

import ray

from ..errors import PlacementError, ShardMapError
from ..placement import ShardMap
from ..protocol import HOST_LABEL

SHARD_MAP_KEY = b"shardmap"
"""The meta group's key holding the encoded :class:`~raykv.placement.ShardMap` (as a bytes key)."""
MAX_SHARDS = 1024
"""The most shards a store may have (start and scale refuse more)."""
SCALE_OP_KEY = b"scaleop"
"""The meta group's key holding the last resharding operation's record (JSON)."""


def cluster_hosts() -> list[str]:
    """The ``raykv-host`` labels of the alive Ray nodes, sorted."""
    return sorted({n["Labels"][HOST_LABEL] for n in ray.nodes() if n.get("Alive") and HOST_LABEL in n.get("Labels", {})})


def read_shard_map(meta) -> ShardMap:
    """The store's map from the meta group (``meta``: its ShardClient)."""
    raw = meta.get(SHARD_MAP_KEY)
    if raw is None:
        raise ShardMapError("the meta group holds no shard map")
    return ShardMap.decode(raw)


def update_shard_map(meta, change: Callable[[ShardMap], ShardMap]) -> tuple[ShardMap, bytes]:
    """Apply ``change(current) -> wanted`` to the map with compare-and-set, retried on a race;
    ``change`` returns ``current`` itself when there is nothing to do (nothing is written).
    Returns the map that holds afterwards and its stored bytes."""
    for _ in range(20):
        raw = meta.get(SHARD_MAP_KEY)
        if raw is None:
            raise ShardMapError("the meta group holds no shard map")
        current = ShardMap.decode(raw)
        wanted = change(current)
        if wanted == current:
            return current, raw
        encoded = wanted.encode()
        if meta.cas(SHARD_MAP_KEY, raw, encoded):
            return wanted, encoded
    raise PlacementError("the shard map kept changing under compare-and-set")
