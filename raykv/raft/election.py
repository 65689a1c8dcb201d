"""Elections: pre-vote, votes, role transitions, and the check-quorum lease on voters.

Mixed into :class:`raykv.raft.node.Node`; uses its state (``term``, ``vote``,
``lead``, ``role``, ``log``, ``tracker``...).

Pre-vote (thesis §9.6): a node whose election timer fires first asks for
pre-votes at ``term + 1`` without changing its own term; only if a quorum would
vote for it does it start a real election. A partitioned node therefore never
inflates terms and cannot disrupt a healthy leader when it rejoins.

Voter-side lease (thesis §4.2.3, needed by check-quorum and lease reads): a
voter that heard from a leader within the last ``election_ticks`` ticks ignores
(pre-)vote requests, unless they come from a leadership transfer. A node that
just (re)started acts as if it had just heard from a leader (boot guard): it
cannot know whether it acknowledged a leader right before it crashed.
"""

from __future__ import annotations

from .messages import AppendEntries, Heartbeat, InstallSnapshot, RequestVote, VoteResponse
from .quorum import VoteResult
from .types import NONE, Role


class ElectionMixin:
    # -- timers ------------------------------------------------------------------
    def _promotable(self) -> bool:
        """Only voters of the current configuration campaign."""
        return self.tracker.conf.is_voter(self.id)

    def _in_lease(self) -> bool:
        if not self.cfg.check_quorum:
            return False
        heard_recently = self.lead != NONE and self.election_elapsed < self.cfg.election_ticks
        return heard_recently or self.boot_guard_ticks > 0

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self._promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.campaign(pre=self.cfg.pre_vote)

    def _reset_randomized_timeout(self) -> None:
        """Raft §5.2: a timeout drawn uniformly from [election_ticks, 2 * election_ticks)."""
        self.randomized_election_timeout = self.cfg.election_ticks + self.rng.randrange(self.cfg.election_ticks)

    # -- campaigning --------------------------------------------------------------
    def campaign(self, pre: bool, transfer: bool = False) -> None:
        if not self._promotable():
            return
        if pre:
            self._become_pre_candidate()
            vote_term = self.term + 1
        else:
            self._become_candidate()
            vote_term = self.term
        self.tracker.record_vote(self.id, True)
        if self.tracker.vote_result() is VoteResult.WON:
            self._won_election(pre, transfer)
            return
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for peer in self.tracker.voter_ids():
            if peer != self.id:
                self._send(RequestVote(self.id, peer, vote_term, last_index, last_term, pre, transfer))

    def _won_election(self, pre: bool, transfer: bool) -> None:
        if pre:
            self.campaign(pre=False, transfer=transfer)
        else:
            self._become_leader()

    def _handle_vote_request(self, m: RequestVote) -> None:
        """Grant at most one real vote per term (persisted before the grant is sent)."""
        if self._can_vote_for(m) and self.log.is_up_to_date(m.last_index, m.last_term):
            self._send(VoteResponse(self.id, m.frm, m.term, True, m.pre))
            if not m.pre:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(VoteResponse(self.id, m.frm, self.term, False, m.pre))

    def _can_vote_for(self, m: RequestVote) -> bool:
        return (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (m.pre and m.term > self.term)
        )

    def _step_candidate(self, m) -> None:
        """Handlers of a (pre-)candidate; a leader's message of our term makes us its follower."""
        match m:
            case AppendEntries():
                self.become_follower(self.term, m.frm)
                self._handle_append(m)
            case Heartbeat():
                self.become_follower(self.term, m.frm)
                self._handle_heartbeat(m)
            case InstallSnapshot():
                self.become_follower(self.term, m.frm)
                self._handle_snapshot(m)
            case VoteResponse() if m.pre == (self.role is Role.PRE_CANDIDATE):
                self._count_vote(m)
            case _:
                pass

    def _count_vote(self, m: VoteResponse) -> None:
        self.tracker.record_vote(m.frm, m.granted)
        result = self.tracker.vote_result()
        if result is VoteResult.WON:
            self._won_election(m.pre, transfer=False)
        elif result is VoteResult.LOST:
            self.become_follower(self.term, NONE)

    # -- role transitions ----------------------------------------------------------
    def become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        """Pre-candidates keep their term and vote (thesis §9.6)."""
        self.tracker.reset_votes()
        self.lead = NONE
        self.role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        """Raft §5.4.2 / §8: a new leader appends a no-op so entries of its term can commit."""
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        self.tracker.progress[self.id].become_replicate()
        self.pending_conf_index = self._append_new(((0, b""),))  # no conf change before the no-op applies
