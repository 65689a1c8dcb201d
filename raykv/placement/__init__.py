"""Pure placement logic (stdlib only): the shard map, initial split points, replica placement."""

from .shardmap import META_SHARD, ShardMap, ShardSpec, initial_split_points, new_shard_map, plan_replicas

__all__ = ["META_SHARD", "ShardMap", "ShardSpec", "initial_split_points", "new_shard_map", "plan_replicas"]
