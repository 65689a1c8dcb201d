"""Property tests of :mod:`raykv.raft.quorum` against deliberately naive references.

The references below brute-force the definitions instead of sorting:

* committed index: the largest value ``v`` (among the acknowledged values and 0)
  such that at least a majority of every non-empty voter set acknowledged ``>= v``;
* vote: enumerate every way the missing voters could still answer; WON if every
  completion wins, LOST if none does, PENDING otherwise.
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from raykv.raft import quorum
from raykv.raft.quorum import INFINITE_INDEX, VoteResult

SETTINGS = settings(max_examples=300, deadline=None)

node_ids = st.integers(min_value=1, max_value=12)
voter_sets = st.frozensets(node_ids, max_size=7)
indices = st.integers(min_value=0, max_value=30)


# -- naive references --------------------------------------------------------------------
def naive_holds(voters: frozenset[int], acked: dict[int, int], v: int) -> bool:
    """Does a majority of ``voters`` hold ``v``? An empty set holds everything."""
    if not voters:
        return True
    count = sum(1 for i in voters if acked.get(i, 0) >= v)
    return count >= len(voters) // 2 + 1


def naive_joint_committed(incoming: frozenset[int], outgoing: frozenset[int], acked: dict[int, int]) -> int:
    if not incoming and not outgoing:
        return INFINITE_INDEX
    candidates = {acked.get(i, 0) for i in incoming | outgoing} | {0}
    return max(v for v in candidates if naive_holds(incoming, acked, v) and naive_holds(outgoing, acked, v))


def naive_committed(voters: frozenset[int], acked: dict[int, int]) -> int:
    return naive_joint_committed(voters, frozenset(), acked)


def naive_wins(voters: frozenset[int], votes: dict[int, bool]) -> bool:
    if not voters:
        return True
    return sum(1 for i in voters if votes.get(i) is True) >= len(voters) // 2 + 1


def naive_joint_vote(incoming: frozenset[int], outgoing: frozenset[int], votes: dict[int, bool]) -> VoteResult:
    missing = sorted(i for i in incoming | outgoing if i not in votes)
    outcomes = set()
    for answers in itertools.product((False, True), repeat=len(missing)):
        completed = dict(votes)
        completed.update(zip(missing, answers))
        outcomes.add(naive_wins(incoming, completed) and naive_wins(outgoing, completed))
    if outcomes == {True}:
        return VoteResult.WON
    if outcomes == {False}:
        return VoteResult.LOST
    return VoteResult.PENDING


def naive_vote(voters: frozenset[int], votes: dict[int, bool]) -> VoteResult:
    return naive_joint_vote(voters, frozenset(), votes)


# -- strategies ---------------------------------------------------------------------------
@st.composite
def acked_maps(draw, ids: frozenset[int]) -> dict[int, int]:
    """Acknowledged indices for some of ``ids`` (the others are unknown, i.e. 0) and a few strangers."""
    known = draw(st.lists(st.sampled_from(sorted(ids)), unique=True)) if ids else []
    out = {i: draw(indices) for i in known}
    out.update(draw(st.dictionaries(st.integers(min_value=13, max_value=20), indices, max_size=3)))
    return out


@st.composite
def vote_maps(draw, ids: frozenset[int]) -> dict[int, bool]:
    """Responses from some of ``ids`` plus some from non-voters (which must be ignored)."""
    known = draw(st.lists(st.sampled_from(sorted(ids)), unique=True)) if ids else []
    out = {i: draw(st.booleans()) for i in known}
    out.update(draw(st.dictionaries(st.integers(min_value=13, max_value=20), st.booleans(), max_size=3)))
    return out


@st.composite
def joint_committed_cases(draw):
    incoming = draw(voter_sets)
    outgoing = draw(voter_sets)
    return incoming, outgoing, draw(acked_maps(incoming | outgoing))


@st.composite
def joint_vote_cases(draw):
    incoming = draw(voter_sets)
    outgoing = draw(voter_sets)
    return incoming, outgoing, draw(vote_maps(incoming | outgoing))


def lookup(acked: dict[int, int]):
    return lambda i: acked.get(i, 0)


# -- majority ------------------------------------------------------------------------------
def test_majority_sizes() -> None:
    assert [quorum.majority(n) for n in range(8)] == [1, 1, 2, 2, 3, 3, 4, 4]


def test_empty_voter_set_commits_everything_and_wins() -> None:
    assert quorum.majority_committed((), lookup({1: 5})) == INFINITE_INDEX
    assert quorum.joint_committed((), (), lookup({})) == INFINITE_INDEX
    assert quorum.majority_vote((), {}) is VoteResult.WON
    assert quorum.majority_vote((), {1: False}) is VoteResult.WON
    assert quorum.joint_vote((), (), {2: False}) is VoteResult.WON


def test_committed_examples() -> None:
    acked = lookup({1: 5, 2: 3, 3: 9})
    assert quorum.majority_committed((1, 2, 3), acked) == 5
    assert quorum.majority_committed((1, 2), acked) == 3  # both of two are needed
    assert quorum.majority_committed((1, 2, 3, 4), acked) == 3  # 4 is unknown (0): 3 of 4 hold 3
    assert quorum.joint_committed((1, 2, 3), (3, 4), acked) == 0
    assert quorum.joint_committed((1, 3), (3,), acked) == 5


def test_vote_examples() -> None:
    assert quorum.majority_vote((1, 2, 3), {1: True}) is VoteResult.PENDING
    assert quorum.majority_vote((1, 2, 3), {1: True, 2: True}) is VoteResult.WON
    assert quorum.majority_vote((1, 2, 3), {1: True, 2: False, 3: False}) is VoteResult.LOST
    assert quorum.majority_vote((1, 2, 3, 4), {1: True, 2: True, 3: False}) is VoteResult.PENDING
    assert quorum.majority_vote((1, 2, 3, 4), {1: True, 2: False, 3: False}) is VoteResult.LOST
    # Grants from non-voters do not count.
    assert quorum.majority_vote((1, 2, 3), {1: True, 7: True, 8: True}) is VoteResult.PENDING
    assert quorum.joint_vote((1, 2, 3), (4, 5, 6), {1: True, 2: True}) is VoteResult.PENDING
    assert quorum.joint_vote((1, 2, 3), (4, 5, 6), {1: True, 2: True, 4: False, 5: False}) is VoteResult.LOST
    assert quorum.joint_vote((1, 2, 3), (3, 4, 5), {1: True, 3: True, 4: True}) is VoteResult.WON


@SETTINGS
@given(st.data())
def test_majority_committed_matches_naive(data) -> None:
    voters = data.draw(voter_sets)
    acked = data.draw(acked_maps(voters))
    expected = naive_committed(voters, acked)
    # Any iterable of voters is accepted: set, sorted tuple, list in another order, generator.
    assert quorum.majority_committed(voters, lookup(acked)) == expected
    assert quorum.majority_committed(tuple(sorted(voters)), lookup(acked)) == expected
    assert quorum.majority_committed(sorted(voters, reverse=True), lookup(acked)) == expected
    assert quorum.majority_committed((i for i in voters), lookup(acked)) == expected


@SETTINGS
@given(st.data())
def test_majority_vote_matches_naive(data) -> None:
    voters = data.draw(voter_sets)
    votes = data.draw(vote_maps(voters))
    expected = naive_vote(voters, votes)
    assert quorum.majority_vote(voters, votes) is expected
    assert quorum.majority_vote(tuple(sorted(voters)), votes) is expected


@SETTINGS
@given(joint_committed_cases())
def test_joint_committed_matches_naive(case) -> None:
    incoming, outgoing, acked = case
    assert quorum.joint_committed(incoming, outgoing, lookup(acked)) == naive_joint_committed(
        incoming, outgoing, acked
    )


@SETTINGS
@given(joint_vote_cases())
def test_joint_vote_matches_naive(case) -> None:
    incoming, outgoing, votes = case
    assert quorum.joint_vote(incoming, outgoing, votes) is naive_joint_vote(incoming, outgoing, votes)


@SETTINGS
@given(st.data())
def test_joint_with_empty_outgoing_is_not_joint(data) -> None:
    voters = data.draw(voter_sets)
    acked = data.draw(acked_maps(voters))
    votes = data.draw(vote_maps(voters))
    assert quorum.joint_committed(voters, (), lookup(acked)) == quorum.majority_committed(voters, lookup(acked))
    assert quorum.joint_committed((), voters, lookup(acked)) == quorum.majority_committed(voters, lookup(acked))
    assert quorum.joint_vote(voters, (), votes) is quorum.majority_vote(voters, votes)
    assert quorum.joint_vote((), voters, votes) is quorum.majority_vote(voters, votes)


@SETTINGS
@given(joint_committed_cases())
def test_joint_committed_never_exceeds_either_half(case) -> None:
    incoming, outgoing, acked = case
    joint = quorum.joint_committed(incoming, outgoing, lookup(acked))
    a = quorum.majority_committed(incoming, lookup(acked))
    b = quorum.majority_committed(outgoing, lookup(acked))
    assert joint <= a and joint <= b
    assert joint == min(a, b)
    # The joint committed index really is held by a majority of each non-empty half.
    if incoming or outgoing:
        assert naive_holds(incoming, acked, joint) and naive_holds(outgoing, acked, joint)


@SETTINGS
@given(joint_vote_cases())
def test_joint_vote_never_more_permissive_than_either_half(case) -> None:
    incoming, outgoing, votes = case
    joint = quorum.joint_vote(incoming, outgoing, votes)
    halves = (quorum.majority_vote(incoming, votes), quorum.majority_vote(outgoing, votes))
    if joint is VoteResult.WON:
        assert halves == (VoteResult.WON, VoteResult.WON)
    if VoteResult.LOST in halves:
        assert joint is VoteResult.LOST
    if joint is VoteResult.PENDING:
        assert VoteResult.LOST not in halves and VoteResult.PENDING in halves


@SETTINGS
@given(st.data())
def test_committed_is_monotonic_in_acknowledgements(data) -> None:
    """Raising any voter's acknowledged index never lowers the committed index."""
    incoming = data.draw(voter_sets)
    outgoing = data.draw(voter_sets)
    acked = data.draw(acked_maps(incoming | outgoing))
    members = sorted(incoming | outgoing)
    if not members:
        return
    who = data.draw(st.sampled_from(members))
    more = dict(acked)
    more[who] = acked.get(who, 0) + data.draw(st.integers(min_value=1, max_value=10))
    before = quorum.joint_committed(incoming, outgoing, lookup(acked))
    after = quorum.joint_committed(incoming, outgoing, lookup(more))
    assert after >= before


@SETTINGS
@given(st.data())
def test_vote_is_monotonic_in_answers(data) -> None:
    """An extra grant never turns WON/PENDING into LOST; an extra rejection never turns LOST into anything else."""
    incoming = data.draw(voter_sets)
    outgoing = data.draw(voter_sets)
    votes = data.draw(vote_maps(incoming | outgoing))
    missing = sorted(i for i in incoming | outgoing if i not in votes)
    if not missing:
        return
    who = data.draw(st.sampled_from(missing))
    before = quorum.joint_vote(incoming, outgoing, votes)
    granted = quorum.joint_vote(incoming, outgoing, {**votes, who: True})
    rejected = quorum.joint_vote(incoming, outgoing, {**votes, who: False})
    assert before is not VoteResult.WON or granted is VoteResult.WON
    if before is VoteResult.LOST:
        assert granted is VoteResult.LOST and rejected is VoteResult.LOST
    if before is VoteResult.WON:
        assert rejected is VoteResult.WON
