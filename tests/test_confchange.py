"""Membership changes: :func:`raykv.raft.confchange.next_conf` and the ConfChange codec."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raykv.errors import ConfChangeError
from raykv.raft.confchange import next_conf
from raykv.raft.types import ConfChange, ConfChangeKind, ConfChangeSingle, ConfState

ADD_VOTER = ConfChangeKind.ADD_VOTER
ADD_LEARNER = ConfChangeKind.ADD_LEARNER
REMOVE = ConfChangeKind.REMOVE_NODE


def cc(*items: tuple[ConfChangeKind, int]) -> ConfChange:
    return ConfChange(tuple(ConfChangeSingle(kind, node) for kind, node in items))


LEAVE = ConfChange()


# -- simple (one voter) changes ---------------------------------------------------------------
def test_add_voter() -> None:
    assert next_conf(ConfState(voters=(1, 2, 3)), cc((ADD_VOTER, 4))) == ConfState(voters=(1, 2, 3, 4))


def test_add_voter_keeps_sorted_order() -> None:
    assert next_conf(ConfState(voters=(2, 5)), cc((ADD_VOTER, 3))).voters == (2, 3, 5)


def test_add_existing_voter_is_a_no_op() -> None:
    cs = ConfState(voters=(1, 2, 3), learners=(4,))
    assert next_conf(cs, cc((ADD_VOTER, 2))) == cs


def test_remove_voter() -> None:
    assert next_conf(ConfState(voters=(1, 2, 3)), cc((REMOVE, 2))) == ConfState(voters=(1, 3))


def test_remove_unknown_node_is_a_no_op() -> None:
    cs = ConfState(voters=(1, 2, 3))
    assert next_conf(cs, cc((REMOVE, 9))) == cs


def test_add_learner() -> None:
    assert next_conf(ConfState(voters=(1, 2, 3)), cc((ADD_LEARNER, 4))) == ConfState(voters=(1, 2, 3), learners=(4,))


def test_remove_learner() -> None:
    cs = ConfState(voters=(1, 2, 3), learners=(4, 5))
    assert next_conf(cs, cc((REMOVE, 4))) == ConfState(voters=(1, 2, 3), learners=(5,))


def test_promote_learner_to_voter_removes_it_from_learners() -> None:
    out = next_conf(ConfState(voters=(1, 2, 3), learners=(4,)), cc((ADD_VOTER, 4)))
    assert out == ConfState(voters=(1, 2, 3, 4))
    assert not out.joint


def test_demote_voter_to_learner_is_simple() -> None:
    out = next_conf(ConfState(voters=(1, 2, 3)), cc((ADD_LEARNER, 3)))
    assert out == ConfState(voters=(1, 2), learners=(3,))
    assert not out.joint and not out.auto_leave


def test_one_voter_change_plus_learner_changes_is_simple() -> None:
    out = next_conf(ConfState(voters=(1, 2, 3), learners=(5,)), cc((ADD_VOTER, 4), (ADD_LEARNER, 6), (REMOVE, 5)))
    assert out == ConfState(voters=(1, 2, 3, 4), learners=(6,))


def test_removing_the_only_voter_raises() -> None:
    with pytest.raises(ConfChangeError):
        next_conf(ConfState(voters=(1,)), cc((REMOVE, 1)))


def test_removing_every_voter_raises() -> None:
    with pytest.raises(ConfChangeError):
        next_conf(ConfState(voters=(1, 2)), cc((REMOVE, 1), (REMOVE, 2)))


def test_demoting_every_voter_raises() -> None:
    with pytest.raises(ConfChangeError):
        next_conf(ConfState(voters=(1, 2), learners=(3,)), cc((ADD_LEARNER, 1), (ADD_LEARNER, 2)))


@pytest.mark.parametrize("node_id", [0, -1, -(2**40)])
@pytest.mark.parametrize("kind", list(ConfChangeKind))
def test_invalid_node_id_raises(kind: ConfChangeKind, node_id: int) -> None:
    with pytest.raises(ConfChangeError):
        next_conf(ConfState(voters=(1, 2, 3)), cc((kind, node_id)))


def test_invalid_node_id_after_valid_changes_raises() -> None:
    with pytest.raises(ConfChangeError):
        next_conf(ConfState(voters=(1, 2, 3)), cc((ADD_VOTER, 4), (ADD_VOTER, 0)))


# -- joint consensus --------------------------------------------------------------------------
def test_two_voter_changes_enter_joint() -> None:
    old = ConfState(voters=(1, 2, 3))
    out = next_conf(old, cc((ADD_VOTER, 4), (REMOVE, 1)))
    assert out.joint and out.auto_leave
    assert out.voters == (2, 3, 4)
    assert out.voters_outgoing == old.voters
    assert out.learners == () and out.learners_next == ()
    assert out.members() == (1, 2, 3, 4)
    assert out.is_voter(1) and out.is_voter(4)


def test_adding_two_voters_enters_joint() -> None:
    out = next_conf(ConfState(voters=(1,)), cc((ADD_VOTER, 2), (ADD_VOTER, 3)))
    assert out == ConfState(voters=(1, 2, 3), voters_outgoing=(1,), auto_leave=True)


def test_demoting_a_voter_during_joint_change_defers_it_to_learners_next() -> None:
    old = ConfState(voters=(1, 2, 3), learners=(6,))
    out = next_conf(old, cc((ADD_LEARNER, 3), (ADD_VOTER, 4), (ADD_VOTER, 5)))
    assert out.joint
    assert out.voters == (1, 2, 4, 5)
    assert out.voters_outgoing == (1, 2, 3)
    assert 3 in out.learners_next
    assert 3 not in out.learners
    assert out.learners == (6,)
    assert out.learners_next == (3,)
    assert out.is_voter(3)  # still votes in the outgoing half


def test_leave_joint_moves_learners_next_into_learners_and_clears_outgoing() -> None:
    old = ConfState(voters=(1, 2, 3), learners=(6,))
    joint = next_conf(old, cc((ADD_LEARNER, 3), (ADD_VOTER, 4), (ADD_VOTER, 5)))
    out = next_conf(joint, LEAVE)
    assert out == ConfState(voters=(1, 2, 4, 5), learners=(3, 6))
    assert not out.joint and not out.auto_leave
    assert out.voters_outgoing == () and out.learners_next == ()


def test_leave_joint_drops_removed_voters() -> None:
    joint = next_conf(ConfState(voters=(1, 2, 3)), cc((REMOVE, 1), (REMOVE, 2), (ADD_VOTER, 7)))
    assert joint.voters == (3, 7)
    out = next_conf(joint, LEAVE)
    assert out == ConfState(voters=(3, 7))
    assert out.members() == (3, 7)


def test_leave_when_not_joint_raises() -> None:
    with pytest.raises(ConfChangeError):
        next_conf(ConfState(voters=(1, 2, 3)), LEAVE)


@pytest.mark.parametrize(
    "change",
    [cc((ADD_VOTER, 9)), cc((REMOVE, 1)), cc((ADD_LEARNER, 9)), cc((ADD_VOTER, 8), (ADD_VOTER, 9))],
    ids=lambda c: c.describe(),
)
def test_new_change_while_joint_raises(change: ConfChange) -> None:
    joint = next_conf(ConfState(voters=(1, 2, 3)), cc((ADD_VOTER, 4), (ADD_VOTER, 5)))
    with pytest.raises(ConfChangeError):
        next_conf(joint, change)


def test_next_conf_does_not_mutate_its_input() -> None:
    cs = ConfState(voters=(1, 2, 3), learners=(4,))
    snapshot = (cs.voters, cs.learners, cs.voters_outgoing, cs.learners_next, cs.auto_leave)
    next_conf(cs, cc((ADD_VOTER, 4), (REMOVE, 1)))
    assert (cs.voters, cs.learners, cs.voters_outgoing, cs.learners_next, cs.auto_leave) == snapshot


# -- property: random sequences ------------------------------------------------------------------
MAX_ID = 8
ids = st.integers(min_value=1, max_value=MAX_ID)
singles = st.builds(ConfChangeSingle, st.sampled_from(list(ConfChangeKind)), ids)
changes = st.lists(singles, min_size=1, max_size=5).map(lambda items: ConfChange(tuple(items)))


@st.composite
def initial_confs(draw) -> ConfState:
    voters = draw(st.frozensets(ids, min_size=1, max_size=5))
    learners = draw(st.frozensets(ids.filter(lambda i: i not in voters), max_size=3))
    return ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners)))


def requested(cs: ConfState, change: ConfChange) -> tuple[set[int], set[int]]:
    """Naive reading of a change: apply each single in order to (voters, learners)."""
    voters, learners = set(cs.voters), set(cs.learners)
    for c in change.changes:
        voters.discard(c.node_id)
        learners.discard(c.node_id)
        if c.kind is ADD_VOTER:
            voters.add(c.node_id)
        elif c.kind is ADD_LEARNER:
            learners.add(c.node_id)
    return voters, learners


def check_invariants(cs: ConfState) -> None:
    for t in (cs.voters, cs.learners, cs.voters_outgoing, cs.learners_next):
        assert isinstance(t, tuple)
        assert list(t) == sorted(set(t)), f"not sorted/duplicate-free: {cs.describe()}"
        assert all(i > 0 for i in t)
    assert cs.voters, f"no incoming voters: {cs.describe()}"
    assert not set(cs.learners) & (set(cs.voters) | set(cs.voters_outgoing)), cs.describe()
    assert set(cs.learners_next) <= set(cs.voters_outgoing), cs.describe()
    assert not set(cs.learners_next) & set(cs.voters), cs.describe()
    if not cs.joint:
        assert cs.learners_next == () and not cs.auto_leave


@settings(max_examples=300, deadline=None)
@given(initial_confs(), st.lists(st.tuples(changes, st.booleans()), max_size=8))
def test_random_change_sequences_keep_invariants(initial: ConfState, steps) -> None:
    cs = initial
    check_invariants(cs)
    for change, leave_first in steps:
        if cs.joint:
            with pytest.raises(ConfChangeError):
                next_conf(cs, change)
            if not leave_first:
                continue
            cs = next_conf(cs, LEAVE)
            check_invariants(cs)
        want_voters, want_learners = requested(cs, change)
        if not want_voters:
            with pytest.raises(ConfChangeError):
                next_conf(cs, change)
            continue
        old = cs
        cs = next_conf(old, change)
        check_invariants(cs)
        if len(want_voters ^ set(old.voters)) <= 1:
            assert not cs.joint
            assert len(set(cs.voters) ^ set(old.voters)) <= 1
            assert (set(cs.voters), set(cs.learners)) == (want_voters, want_learners)
        else:
            assert cs.joint and cs.auto_leave
            assert cs.voters_outgoing == old.voters
            assert set(cs.voters) == want_voters
            # Every requested learner ends up a learner now or when the joint config is left.
            assert set(cs.learners) | set(cs.learners_next) == want_learners
            left = next_conf(cs, LEAVE)
            check_invariants(left)
            assert set(left.voters) == want_voters
            assert set(left.learners) == want_learners
            assert not left.joint


@settings(max_examples=300, deadline=None)
@given(initial_confs(), changes)
def test_enter_then_leave_joint_yields_requested_config(initial: ConfState, change: ConfChange) -> None:
    want_voters, want_learners = requested(initial, change)
    if not want_voters:
        with pytest.raises(ConfChangeError):
            next_conf(initial, change)
        return
    out = next_conf(initial, change)
    if out.joint:
        out = next_conf(out, LEAVE)
    assert out == ConfState(voters=tuple(sorted(want_voters)), learners=tuple(sorted(want_learners)))


# -- codec ---------------------------------------------------------------------------------------
wire_singles = st.builds(
    ConfChangeSingle, st.sampled_from(list(ConfChangeKind)), st.integers(min_value=0, max_value=2**64 - 1)
)


@settings(max_examples=300, deadline=None)
@given(st.lists(wire_singles, max_size=20))
def test_encode_decode_round_trip(items) -> None:
    change = ConfChange(tuple(items))
    data = change.encode()
    assert isinstance(data, bytes)
    assert len(data) == 4 + 9 * len(items)
    decoded = ConfChange.decode(data)
    assert decoded == change
    assert decoded.encode() == data
    assert decoded.leave_joint == (not items)


def test_leave_joint_encoding() -> None:
    assert LEAVE.encode() == b"\x01\x00\x00\x00"
    assert ConfChange.decode(b"\x01\x00\x00\x00").leave_joint
    assert LEAVE.describe() == "leave-joint"
    assert cc((ADD_VOTER, 4), (REMOVE, 1)).describe() == "add_voter(4),remove_node(1)"


@pytest.mark.parametrize("version", [0, 2, 255])
def test_decode_rejects_unknown_version(version: int) -> None:
    data = bytearray(cc((ADD_VOTER, 4)).encode())
    data[0] = version
    with pytest.raises(ValueError):
        ConfChange.decode(bytes(data))


@settings(max_examples=100, deadline=None)
@given(st.lists(wire_singles, min_size=0, max_size=5), st.integers(min_value=-8, max_value=8).filter(bool))
def test_decode_rejects_wrong_length(items, delta: int) -> None:
    data = ConfChange(tuple(items)).encode()
    if delta > 0:
        data = data + b"\x00" * delta
    else:
        data = data[:delta]
        if len(data) < 4:
            return  # a truncated header is covered by test_decode_rejects_truncated_header
    with pytest.raises(ValueError):
        ConfChange.decode(data)


def test_decode_rejects_count_larger_than_payload() -> None:
    data = struct.pack(">BBH", 1, 0, 3) + struct.pack(">BQ", 0, 4)
    with pytest.raises(ValueError):
        ConfChange.decode(data)


def test_decode_rejects_unknown_kind() -> None:
    data = struct.pack(">BBH", 1, 0, 1) + struct.pack(">BQ", 7, 4)
    with pytest.raises(ValueError):
        ConfChange.decode(data)


@pytest.mark.parametrize("data", [b"", b"\x01\x00\x00"], ids=["empty", "3-bytes"])
def test_decode_rejects_truncated_header(data: bytes) -> None:
    """The docstring promises ValueError for any malformed entry, including one shorter than the header."""
    with pytest.raises(ValueError):
        ConfChange.decode(data)
