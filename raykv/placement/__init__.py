"""Pure placement logic (stdlib only): the shard map, initial split points, replica placement,
resharding plans (:mod:`raykv.placement.scaleplan`)."""

from .scaleplan import Move, after_move, is_done, midpoint, next_move
from .shardmap import META_SHARD, ShardMap, ShardSpec, initial_split_points, new_shard_map, plan_replicas

__all__ = ["META_SHARD", "Move", "ShardMap", "ShardSpec", "after_move", "initial_split_points", "is_done",
           "midpoint", "new_shard_map", "next_move", "plan_replicas"]
