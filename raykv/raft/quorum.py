"""Quorum arithmetic for majority and joint configurations (pure functions).

A joint configuration is a pair (incoming, outgoing) of voter sets; a decision
needs a majority of *each* non-empty set (Raft §4.3). An empty outgoing set
means "not joint". By convention an empty voter set agrees to everything
(commit index +infinity, vote won), so a joint configuration whose outgoing half
is empty reduces to its incoming half.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping

INFINITE_INDEX = 2**63 - 1
"""What an empty voter set "commits": no constraint."""


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def majority(n: int) -> int:
    """Votes needed out of ``n``."""
    return n // 2 + 1


def majority_committed(voters: Iterable[int], acked: Callable[[int], int]) -> int:
    """The largest index acknowledged by a majority of ``voters``.

    ``acked(id)`` is the highest index voter ``id`` is known to hold (0 if
    unknown). Sort descending; the value at position ``majority - 1`` is held by
    at least a majority.
    """
    ids = list(voters)
    if not ids:
        return INFINITE_INDEX
    matched = sorted((acked(i) for i in ids), reverse=True)
    return matched[majority(len(ids)) - 1]


def joint_committed(incoming: Iterable[int], outgoing: Iterable[int], acked: Callable[[int], int]) -> int:
    """Committed index of a joint configuration: the smaller of both halves."""
    return min(majority_committed(incoming, acked), majority_committed(outgoing, acked))


def majority_vote(voters: Iterable[int], votes: Mapping[int, bool]) -> VoteResult:
    """Outcome of an election among ``voters`` given the responses in ``votes``."""
    ids = list(voters)
    if not ids:
        return VoteResult.WON
    granted = sum(1 for i in ids if votes.get(i) is True)
    missing = sum(1 for i in ids if i not in votes)
    need = majority(len(ids))
    if granted >= need:
        return VoteResult.WON
    if granted + missing >= need:
        return VoteResult.PENDING
    return VoteResult.LOST


def joint_vote(incoming: Iterable[int], outgoing: Iterable[int], votes: Mapping[int, bool]) -> VoteResult:
    """Both halves must win; either losing loses."""
    a = majority_vote(incoming, votes)
    b = majority_vote(outgoing, votes)
    if a is b:
        return a
    if VoteResult.LOST in (a, b):
        return VoteResult.LOST
    return VoteResult.PENDING
