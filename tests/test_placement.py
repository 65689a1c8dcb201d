"""The shard map (pure): tiling of the key space, routing, placement, encoding and bad maps."""

from __future__ import annotations

from dataclasses import replace

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


# -- resharding plans (raykv.placement.scaleplan) ------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from raykv.placement import Move, after_move, is_done, midpoint, next_move  # noqa: E402

HOSTS3 = ["h1", "h2", "h3"]


def test_a_split_takes_the_largest_shard_at_its_measured_median() -> None:
    smap = new_shard_map("s", 2, 3, HOSTS3)
    move = next_move(smap, 3, {1: 10, 2: 99}, new_shard=3, split_key={2: b"sx"})
    assert move == Move("split", 2, 3, b"sx", None)
    after = after_move(smap, move, ((1, "h1"), (2, "h2"), (3, "h3")))
    assert [(s.shard, s.start, s.end) for s in after.shards] == [(1, b"", smap.shards[0].end),
                                                                   (2, smap.shards[1].start, b"sx"), (3, b"sx", None)]
    assert after.epoch == smap.epoch + 1 and is_done(after, move) and not is_done(smap, move)


def test_a_split_of_an_empty_shard_uses_the_middle_of_its_user_key_range() -> None:
    smap = new_shard_map("s", 1, 3, HOSTS3)
    move = next_move(smap, 2, {}, new_shard=2)
    assert move.kind == "split" and b"b" < move.lo < b"t"


def test_a_merge_joins_the_smallest_adjacent_pair_into_the_left_shard() -> None:
    smap = new_shard_map("s", 4, 3, HOSTS3)
    move = next_move(smap, 3, {1: 50, 2: 40, 3: 1, 4: 2}, new_shard=5)
    assert move == Move("merge", 4, 3, smap.shards[3].start, None)
    after = after_move(smap, move)
    assert [s.shard for s in after.shards] == [1, 2, 3] and after.shards[-1].end is None
    assert is_done(after, move)
    assert next_move(after, 3, {}, new_shard=5) is None


def test_a_move_keeps_the_meta_groups_placement() -> None:
    """Found by a Ray test: every resharding wrote a map without the meta group's replicas, so
    repair could no longer see (or replace) them."""
    meta = ((1, "h1"), (2, "h2"), (4, "h3"))
    smap = replace(new_shard_map("s", 2, 3, HOSTS3), meta=meta)
    split = after_move(smap, next_move(smap, 3, {}, new_shard=3), ((1, "h1"), (2, "h2"), (3, "h3")))
    merged = after_move(split, next_move(split, 2, {1: 1, 2: 1, 3: 1}, new_shard=4))
    assert split.meta == merged.meta == meta


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.lists(st.integers(1, 8), min_size=1, max_size=6),
       st.dictionaries(st.integers(1, 20), st.integers(0, 1000)))
def test_any_sequence_of_moves_keeps_a_valid_map_and_reaches_its_target(start, targets, sizes) -> None:
    smap, next_id = new_shard_map("s", start, 3, HOSTS3), start + 1
    for target in targets:
        for _ in range(20):
            move = next_move(smap, target, sizes, next_id)
            if move is None:
                break
            smap = after_move(smap, move, ((1, "h1"), (2, "h2"), (3, "h3")))  # validates the tiling
            next_id += move.kind == "split"
        assert len(smap.shards) == target


@given(st.binary(max_size=6), st.none() | st.binary(min_size=1, max_size=6))
def test_midpoint_lies_strictly_inside(lo, hi) -> None:
    if hi is not None and hi <= lo + b"\x00":
        return  # no key lies strictly between lo and hi
    key = midpoint(lo, hi)
    assert lo < key and (hi is None or key < hi)


def test_the_map_records_the_meta_groups_replicas_and_old_maps_still_decode() -> None:
    from dataclasses import replace

    from raykv.placement import META_SHARD
    from raykv.placement.repairplan import with_spec

    plain = new_shard_map("s", 2, 3, HOSTS3)
    assert ShardMap.decode(plain.encode()).meta == () and b'"meta"' not in plain.encode()
    with pytest.raises(KeyError):
        plain.by_id(META_SHARD)  # a map from before repair: the store's start records the meta group
    smap = replace(plain, meta=((1, "h1"), (2, "h2"), (3, "h3")))
    assert ShardMap.decode(smap.encode()) == smap
    assert smap.by_id(META_SHARD).replicas == smap.meta and smap.by_id(META_SHARD).shard == META_SHARD
    moved = with_spec(smap, ShardSpec(META_SHARD, b"", None, ((1, "h1"), (4, "h4"), (3, "h3"))))
    assert moved.meta == ((1, "h1"), (4, "h4"), (3, "h3")) and moved.epoch == smap.epoch + 1
    assert moved.shards == smap.shards
    with pytest.raises(ShardMapError):
        replace(smap, meta=((1, "h1"), (1, "h2"))).validate()
