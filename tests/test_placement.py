"""The shard map (pure): tiling of the key space, routing, placement, encoding and bad maps."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raykv.errors import ShardMapError
from raykv.placement import ShardMap, ShardSpec, initial_split_points, new_shard_map, plan_replicas
from raykv.userdata import encode_key

HOSTS = ["h1", "h2", "h3"]


@given(st.integers(1, 64), st.lists(st.one_of(st.text(max_size=8), st.binary(max_size=8)), max_size=50))
def test_every_key_has_exactly_one_shard_and_routing_matches_ranges(shards, keys) -> None:
    smap = new_shard_map("s", shards, 3, HOSTS)
    assert len(smap.shards) == shards
    for key in keys:
        enc = encode_key(key)
        owners = [s for s in smap.shards if s.contains(enc)]
        assert owners == [smap.shard_for(enc)]


@given(st.binary(max_size=4), st.one_of(st.none(), st.binary(max_size=4)))
def test_overlapping_lists_the_shards_of_a_range_in_order(start, end) -> None:
    smap = new_shard_map("s", 5, 3, HOSTS)
    got = smap.overlapping(start, end)
    assert [s.shard for s in got] == sorted(s.shard for s in got)
    if end is None or start < end:
        assert smap.shard_for(start) in got


def test_initial_splits_spread_str_keys_and_placement_uses_distinct_hosts() -> None:
    points = initial_split_points(4)
    assert points == sorted(points) and len(set(points)) == 3 and all(p.startswith(b"s") for p in points)
    smap = new_shard_map("s", 3, 3, HOSTS)
    for spec in smap.shards:
        assert sorted(spec.hosts()) == HOSTS, "three replicas on three hosts"
    assert len({spec.replicas[0][1] for spec in smap.shards}) == 3, "first replicas (initial leaders) spread"
    assert [h for _, h in plan_replicas(0, 3, ["solo"])] == ["solo"] * 3, "one host: co-located"


def test_encoding_round_trips_and_bad_maps_are_refused() -> None:
    smap = new_shard_map("store-1", 4, 3, HOSTS)
    assert ShardMap.decode(smap.encode()) == smap
    for junk in (b"", b"{}", b"not json", b'{"format": 99}'):
        with pytest.raises(ShardMapError):
            ShardMap.decode(junk)
    gap = ShardMap("s", 1, (ShardSpec(1, b"", b"m", ((1, "h1"),)), ShardSpec(2, b"n", None, ((1, "h1"),))))
    with pytest.raises(ShardMapError, match="contiguous"):
        gap.validate()
    dup = ShardMap("s", 1, (ShardSpec(1, b"", b"m", ((1, "h1"),)), ShardSpec(1, b"m", None, ((1, "h1"),))))
    with pytest.raises(ShardMapError, match="unique"):
        dup.validate()
    for bad in (0, -1):
        with pytest.raises(ShardMapError):
            new_shard_map("s", bad, 3, HOSTS)
    with pytest.raises(ShardMapError):
        new_shard_map("s", 3, 3, [])
