"""The pure decisions of replica repair (:mod:`raykv.placement.repairplan`): which replica is
lost, where its replacement goes, that replica ids are never reused, the order of the
membership steps (resumable from any observation), the book's encoding and leader spreading."""

from __future__ import annotations

import pytest

from raykv.errors import PlacementError, ShardMapError
from raykv.placement import ShardMap, new_shard_map
from raykv.placement.repairplan import (
    Pending,
    RepairBook,
    Step,
    choose_host,
    leader_moves,
    lost_replicas,
    next_step,
    repaired_spec,
    with_spec,
)

HOSTS = ["h1", "h2", "h3", "h4"]


def two_shards() -> ShardMap:
    """Shard 1 on h1,h2,h3 and shard 2 on h2,h3,h4 (the planner rotates by shard)."""
    return new_shard_map("s", 2, 3, HOSTS)


def test_a_replica_is_lost_once_its_host_is_down_long_enough_or_its_actor_is_gone() -> None:
    spec = two_shards().by_id(1)
    alive = ["h2", "h3", "h4"]
    assert lost_replicas(spec, alive, {"h1": 100.0}, now=105.0, dead_after_s=10.0) == []
    assert lost_replicas(spec, alive, {"h1": 100.0}, now=110.0, dead_after_s=10.0) == [1]
    assert lost_replicas(spec, HOSTS, {}, now=0.0, dead_after_s=10.0, missing=[3]) == [3]
    assert lost_replicas(spec, HOSTS, {}, now=0.0, dead_after_s=10.0) == []
    assert lost_replicas(spec, HOSTS, {}, now=0.0, dead_after_s=10.0, amnesiac=[2]) == [2], "it lost its data"


def test_the_replacement_goes_to_the_least_loaded_alive_host_without_a_replica_of_the_shard() -> None:
    smap = two_shards()
    assert choose_host(smap, RepairBook(), 1, ["h2", "h3", "h4"]) == "h4"  # only h4 holds no replica of shard 1
    assert choose_host(smap, RepairBook(), 2, ["h1", "h2", "h3"]) == "h1"
    assert choose_host(smap, RepairBook(), 1, ["h2", "h3"]) is None  # no distinct host left
    wide = new_shard_map("s", 1, 3, HOSTS + ["h5"])  # shard 1 on h1..h3; h4 and h5 free
    busy = RepairBook(pending={9: Pending(1, "x", 4, "h4")})  # a repair elsewhere already adds to h4
    assert choose_host(wide, busy, 1, ["h2", "h3", "h4", "h5"]) == "h5"


def test_a_replica_that_lost_its_data_may_be_replaced_on_its_own_host() -> None:
    """Three hosts, three replicas, one wiped disk: the only place for the replacement (a new id)
    is beside the amnesiac replica it replaces -- but never while another host is free."""
    smap = two_shards()
    assert choose_host(smap, RepairBook(), 1, ["h1", "h2", "h3"], reusable="h2") == "h2"
    assert choose_host(smap, RepairBook(), 1, ["h1", "h2", "h3", "h4"], reusable="h2") == "h4"
    assert choose_host(smap, RepairBook(), 1, ["h1", "h3"], reusable="h2") is None, "its host must be alive"


def test_replica_ids_are_never_reused() -> None:
    book = RepairBook().begin(1, old=1, old_host="h1", host="h4", used=[1, 2, 3])
    assert book.pending[1] == Pending(1, "h1", 4, "h4")
    with pytest.raises(PlacementError):
        book.begin(1, 2, "h2", "h1", [2, 3, 4])  # one repair per shard at a time
    book = book.finish(1)
    assert book.removed == ((1, 1, "h1"),) and not book.pending
    # the map no longer shows 1 or 4 may be gone too: the book still remembers 4 was given out
    book = book.begin(1, old=4, old_host="h4", host="h1", used=[2, 3])
    assert book.pending[1].new == 5
    book = book.abandon(1)
    assert (1, 5, "h1") in book.removed and book.begin(1, 2, "h2", "h4", [2, 3]).pending[1].new == 6
    assert RepairBook().begin(2, 1, "h2", "h1", [1, 2, 3]).pending[2].new == 4  # per shard


def test_the_book_round_trips_and_rejects_garbage() -> None:
    book = RepairBook().begin(1, 1, "h1", "h4", [1, 2, 3]).finish(1).begin(2, 3, "h4", "h1", [1, 2, 3])
    assert RepairBook.decode(book.encode()) == book
    assert RepairBook.decode(None) == RepairBook()
    assert book.cleaned([(1, 1, "h1")]).removed == ()
    with pytest.raises(ShardMapError):
        RepairBook.decode(b"{not json")


def test_membership_steps_follow_the_leaders_configuration() -> None:
    spec = two_shards().by_id(1)  # replicas 1@h1, 2@h2, 3@h3
    p = Pending(old=1, old_host="h1", new=4, host="h4")

    def step(voters, learners=(), joint=False, leader=2, caught_up=False, s=spec):
        return next_step(s, p, voters, learners, joint, leader, caught_up)

    assert step([1, 2, 3]) is Step.ADD_LEARNER
    assert step([1, 2, 3], [4]) is Step.WAIT_CATCH_UP
    assert step([1, 2, 3], [4], caught_up=True) is Step.PROMOTE
    assert step([1, 2, 3, 4]) is Step.REMOVE_OLD
    assert step([1, 2, 3, 4], leader=1) is Step.TRANSFER_LEADER  # the leader never removes itself
    assert step([1, 2, 3], [4], joint=True) is Step.WAIT_JOINT
    assert step([2, 3, 4]) is Step.UPDATE_MAP
    fixed = repaired_spec(spec, p)
    assert fixed.replicas == ((4, "h4"), (2, "h2"), (3, "h3"))
    assert repaired_spec(fixed, p) == fixed  # idempotent
    assert step([2, 3, 4], s=fixed) is Step.FINISH


def test_the_repaired_map_has_a_higher_epoch() -> None:
    smap = two_shards()
    fixed = with_spec(smap, repaired_spec(smap.by_id(2), Pending(3, "h4", 4, "h1")))
    assert fixed.epoch == smap.epoch + 1 and fixed.by_id(2).hosts() == ["h2", "h3", "h1"]
    assert ShardMap.decode(fixed.encode()) == fixed


def test_leaders_spread_across_hosts() -> None:
    members = {1: {1: "h1", 2: "h2", 3: "h3"}, 2: {1: "h2", 2: "h3", 3: "h1"}, 3: {1: "h3", 2: "h1", 3: "h2"}}
    leaders = {1: 1, 2: 3, 3: 2}  # every shard led from h1
    moves = leader_moves(leaders, members)
    assert len(moves) == 2
    after = {**leaders, **dict(moves)}
    assert sorted(members[s][r] for s, r in after.items()) == ["h1", "h2", "h3"]
    assert leader_moves(after, members) == []  # already spread: nothing to do
    assert leader_moves({}, members) == []
