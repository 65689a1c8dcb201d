"""Membership changes as a pure function: ``next_conf(current, change) -> new``.

Rules (Raft §4.1 one-server changes and §4.3 joint consensus, in the form of
etcd's ConfChangeV2 with automatic transitions):

* A change that alters the voter set by at most one node is *simple*: it takes
  effect in one step.
* A change that alters more voters enters a *joint* configuration
  ``(incoming, outgoing)`` where decisions need both majorities; the leader
  leaves it automatically (an empty :class:`ConfChange`) once it is applied.
* Learners never overlap voters. A voter demoted to learner during a joint
  change stays a voter of the outgoing half and becomes a learner only when the
  joint configuration is left (``learners_next``).
* No change may leave the incoming voter set empty; a new change cannot start
  while the configuration is joint.

The leader never removes or demotes itself (it must transfer leadership
first, as TiKV and CockroachDB do). A leader that applies its own removal anyway
(it inherited the pending change from a previous leader) keeps leading as a
non-voter, refuses proposals, and hands over to the most caught-up voter with
TimeoutNow (see ``Node._hand_over``).

Configurations take effect when their entry is *applied* (as in etcd); the
leader allows only one unapplied change at a time, and none before it has
committed an entry of its own term (the no-op), which closes the known hole in
one-server changes across leader changes.
"""

from __future__ import annotations

from ..errors import ConfChangeError
from .types import ConfChange, ConfChangeKind, ConfState


def next_conf(cs: ConfState, cc: ConfChange) -> ConfState:
    """The configuration after applying ``cc`` to ``cs``; raises ConfChangeError if invalid."""
    if cc.leave_joint:
        return _leave_joint(cs)
    if cs.joint:
        raise ConfChangeError(f"cannot apply {cc.describe()} while joint ({cs.describe()})")
    voters = set(cs.voters)
    learners = set(cs.learners)
    for change in cc.changes:
        if change.node_id <= 0:
            raise ConfChangeError(f"invalid node id {change.node_id}")
        voters.discard(change.node_id)
        learners.discard(change.node_id)
        if change.kind is ConfChangeKind.ADD_VOTER:
            voters.add(change.node_id)
        elif change.kind is ConfChangeKind.ADD_LEARNER:
            learners.add(change.node_id)
    if not voters:
        raise ConfChangeError(f"{cc.describe()} would remove every voter of {cs.describe()}")
    if len(voters ^ set(cs.voters)) <= 1:
        return ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners)))
    outgoing = set(cs.voters)
    return ConfState(
        voters=tuple(sorted(voters)),
        learners=tuple(sorted(learners - outgoing)),
        voters_outgoing=tuple(sorted(outgoing)),
        learners_next=tuple(sorted(learners & outgoing)),
        auto_leave=True,
    )


def _leave_joint(cs: ConfState) -> ConfState:
    if not cs.joint:
        raise ConfChangeError(f"not in a joint configuration ({cs.describe()})")
    learners = set(cs.learners) | set(cs.learners_next)
    return ConfState(voters=cs.voters, learners=tuple(sorted(learners)))
