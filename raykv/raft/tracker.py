"""The configuration, one :class:`Progress` per member, and election votes.

Members are visited in sorted id order everywhere, so the core's output does
not depend on dict or set ordering.
"""

from __future__ import annotations

from . import quorum
from .progress import Progress
from .types import ConfState


class ProgressTracker:
    def __init__(self, max_inflight_msgs: int) -> None:
        self.conf = ConfState()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.max_inflight_msgs = max_inflight_msgs

    def set_conf(self, conf: ConfState, next_index: int) -> None:
        """Switch to ``conf``: new members start probing at ``next_index``; departed ones are dropped."""
        self.conf = conf
        members = conf.members()
        for node_id in list(self.progress):
            if node_id not in members:
                del self.progress[node_id]
        learners = set(conf.learners) | set(conf.learners_next)
        for node_id in members:
            pr = self.progress.get(node_id)
            if pr is None:
                pr = self.progress[node_id] = Progress(next_index, self.max_inflight_msgs)
            pr.learner = node_id in learners and not conf.is_voter(node_id)

    def ids(self) -> list[int]:
        return sorted(self.progress)

    def voter_ids(self) -> list[int]:
        return sorted(set(self.conf.voters) | set(self.conf.voters_outgoing))

    def is_singleton(self, node_id: int) -> bool:
        """True when ``node_id`` is the only voter (decisions need nobody else)."""
        return self.voter_ids() == [node_id]

    def committed(self) -> int:
        """Largest index held by a (joint) majority of voters."""
        return self.quorum_value(lambda i: self.progress[i].match)

    def quorum_value(self, value_of) -> int:
        """Largest ``v`` such that a (joint) majority of voters have ``value_of(id) >= v``."""
        return quorum.joint_committed(self.conf.voters, self.conf.voters_outgoing, value_of)

    def quorum_reached(self, ids: set[int]) -> bool:
        votes = {i: True for i in ids}
        return quorum.joint_vote(self.conf.voters, self.conf.voters_outgoing, votes) is quorum.VoteResult.WON

    def quorum_active(self, self_id: int) -> bool:
        """Check-quorum: have a (joint) majority of voters been heard from recently?"""
        active = {i for i, pr in self.progress.items() if pr.recent_active or i == self_id}
        return self.quorum_reached(active)

    def record_vote(self, node_id: int, granted: bool) -> None:
        self.votes.setdefault(node_id, granted)

    def vote_result(self) -> quorum.VoteResult:
        return quorum.joint_vote(self.conf.voters, self.conf.voters_outgoing, self.votes)

    def reset_votes(self) -> None:
        self.votes = {}
