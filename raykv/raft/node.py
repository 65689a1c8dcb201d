"""The Raft node: one replica's consensus state machine, pure and deterministic.

Inputs: :meth:`Node.tick` (logical time), :meth:`Node.step` (a message from a
peer), :meth:`Node.propose`, :meth:`Node.propose_conf_change`,
:meth:`Node.read_index`, :meth:`Node.transfer_leader` and the host's reports.
Output: :class:`~raykv.raft.ready.Ready` batches, whose handling contract is in
:mod:`raykv.raft.ready`. The node does no I/O, reads no clock, starts no
thread; randomness comes only from the injected ``random.Random``. The same
inputs in the same order give the same outputs.

Role logic lives in mixins: :mod:`~raykv.raft.election` (pre-vote, votes,
transitions), :mod:`~raykv.raft.replication` (leader and follower log
handling), :mod:`~raykv.raft.reads` (ReadIndex and leases).
"""

from __future__ import annotations

import random

from ..errors import ConfChangeError, NotLeaderError, ProposalDroppedError
from .config import Config
from .confchange import next_conf
from .election import ElectionMixin
from .log import RaftLog
from .messages import AppendEntries, AppendResponse, Heartbeat, InstallSnapshot, Message, RequestVote, VoteResponse
from .progress import NEVER_TICK, Progress, ProgressState
from .readonly import ReadOnly
from .reads import ReadMixin
from .ready import Ready
from .replication import ReplicationMixin
from .storage import LogReader
from .tracker import ProgressTracker
from .types import NONE, ConfChange, ConfChangeKind, ConfState, EntryKind, HardState, ReadState, Role, SoftState, entries_size


class Node(ElectionMixin, ReplicationMixin, ReadMixin):
    """One Raft replica. Not thread-safe: the host serializes every call.

    ``applied`` is the host's durable applied index at (re)start: committed
    entries up to it are not handed out again.
    """

    def __init__(self, config: Config, storage: LogReader, rng: random.Random, applied: int = 0) -> None:
        self.cfg = config.validate()
        self.id = config.id
        self.rng = rng
        self.log = RaftLog(storage, applied)
        hard, conf = storage.initial_state()
        self.term, self.vote = hard.term, hard.vote
        self.tracker = ProgressTracker(config.max_inflight_msgs)
        self.tracker.set_conf(conf, self.log.last_index() + 1)
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.dropped_reads: list[bytes] = []
        self.read_only = ReadOnly()
        self.reads_waiting_for_commit: list[bytes] = []
        self.tick_count = 0
        self.boot_guard_ticks = config.election_ticks if config.check_quorum else 0
        self._append_pending = False
        self._prev_hard = hard
        self._prev_soft = SoftState(NONE, Role.FOLLOWER)
        self.become_follower(self.term, NONE)

    # -- time and messages ----------------------------------------------------------
    def tick(self) -> None:
        """Advance logical time by one tick (the host's ticker calls this periodically)."""
        self.tick_count += 1
        if self.boot_guard_ticks:
            self.boot_guard_ticks -= 1
        if self.role is Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum and not self._check_quorum():
                return
            self._abort_transfer()
            if not self._promotable():
                self._hand_over()  # a removed leader retries its handover every election timeout
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat(self.read_only.last_ctx())

    def _check_quorum(self) -> bool:
        """Check-quorum (thesis §6.2): step down unless a quorum was heard from lately."""
        if not self.tracker.quorum_active(self.id):
            self.become_follower(self.term, NONE)
            return False
        for peer in self._peers():
            self.tracker.progress[peer].recent_active = False
        return True

    def step(self, m: Message) -> None:
        """Handle one message from a peer. Messages for another node are ignored."""
        if m.to != self.id:
            return
        if m.term > self.term:
            if not self._accept_higher_term(m):
                return
        elif m.term < self.term:
            self._answer_stale(m)
            return
        if isinstance(m, RequestVote):
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _accept_higher_term(self, m: Message) -> bool:
        """Adopt a higher term (Raft §5.1), except where pre-vote or the lease say not to."""
        if isinstance(m, RequestVote):
            if not m.transfer and self._in_lease():
                return False  # a leader is alive as far as we know: do not disrupt it
            if m.pre:
                return True  # answering a pre-vote never changes our term
        if isinstance(m, VoteResponse) and m.pre and m.granted:
            return True  # a grant carries the term we *would* campaign at
        leader = m.frm if isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)) else NONE
        self.become_follower(m.term, leader)
        return True

    def _answer_stale(self, m: Message) -> None:
        """Tell a deposed leader or a stale pre-candidate our term; drop anything else."""
        if isinstance(m, (AppendEntries, Heartbeat)) and (self.cfg.check_quorum or self.cfg.pre_vote):
            self._send(AppendResponse(self.id, m.frm, self.term, 0))
        elif isinstance(m, RequestVote) and m.pre:
            self._send(VoteResponse(self.id, m.frm, self.term, False, True))

    def _send(self, m: Message) -> None:
        self.msgs.append(m)

    # -- proposals -----------------------------------------------------------------
    def propose(self, data: bytes) -> int:
        """Append one command; returns its index. It is committed only if it shows up applied."""
        return self.propose_many([data])

    def propose_many(self, datas: list[bytes]) -> int:
        """Append several commands as one batch; returns the index of the first."""
        self._require_accepting()
        size = sum(len(d) for d in datas) + 16 * len(datas)
        if self.uncommitted_bytes and self.uncommitted_bytes + size > self.cfg.max_uncommitted_bytes:
            raise ProposalDroppedError(
                f"uncommitted log would exceed max_uncommitted_bytes={self.cfg.max_uncommitted_bytes}"
            )
        self.uncommitted_bytes += size
        return self._append_new([(EntryKind.NORMAL, bytes(d)) for d in datas])

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Propose a membership change (see :mod:`raykv.raft.confchange`); returns its index.

        Refused while an earlier change is not yet applied here (which also
        covers a new leader's no-op) or when the change is invalid.
        """
        self._require_accepting()
        if any(c.node_id == self.id and c.kind is not ConfChangeKind.ADD_VOTER for c in cc.changes):
            raise ConfChangeError(f"leader {self.id} cannot remove or demote itself: transfer leadership first")
        if self.pending_conf_index > self.log.applied:
            raise ConfChangeError(
                f"a configuration change at index {self.pending_conf_index} is not applied yet "
                f"(applied {self.log.applied})"
            )
        next_conf(self.tracker.conf, cc)  # validates; raises ConfChangeError
        index = self._append_new([(EntryKind.CONF_CHANGE, cc.encode())])
        self.pending_conf_index = index
        return index

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """The host applies a committed CONF_CHANGE entry; returns the configuration to persist.

        An entry that is invalid against the current configuration is a no-op
        (deterministically, on every replica).
        """
        try:
            conf = next_conf(self.tracker.conf, cc)
        except ConfChangeError:
            return self.tracker.conf
        self._switch_to_conf(conf)
        return conf

    def _switch_to_conf(self, conf: ConfState) -> None:
        self.tracker.set_conf(conf, self.log.last_index() + 1)
        if self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE) and not self._promotable():
            self.become_follower(self.term, NONE)  # no longer a voter: its campaign is over
            return
        if self.role is not Role.LEADER:
            return
        if self.lead_transferee and not conf.is_voter(self.lead_transferee):
            self._abort_transfer()
        if not conf.is_voter(self.id):
            self._hand_over()
        if self._maybe_commit():
            self._bcast_append()
        else:
            self._bcast_append(send_if_empty=False)

    def _hand_over(self) -> None:
        """A leader no longer among the voters keeps leading (without counting itself)
        until the most caught-up voter can take over, then makes it campaign.

        Stepping down at once could deadlock the group: the remaining voters may
        still be in a configuration that needs this node's vote while lacking
        entries only this node holds. Proposals are refused meanwhile.
        """
        voters = [i for i in self.tracker.voter_ids() if i != self.id]
        self._begin_transfer(min(voters, key=lambda i: (-self.tracker.progress[i].match, i)))

    def _begin_transfer(self, target: int) -> None:
        """Pause proposals and leases; make ``target`` campaign now, or first catch it up."""
        self.lead_transferee = target
        self.lease_revoked = True
        if self.tracker.progress[target].match == self.log.last_index():
            self._send_timeout_now(target)
        else:
            self._send_append(target)

    def transfer_leader(self, target: int) -> None:
        """Hand leadership to voter ``target`` (thesis §3.10); proposals pause meanwhile.

        The transfer is abandoned after ``election_ticks`` ticks if it has not happened.
        """
        self._require_leader()
        if target == self.id or target == self.lead_transferee:
            return
        if target not in self.tracker.voter_ids():
            raise ConfChangeError(f"cannot transfer leadership to {target}: not a voter")
        self.election_elapsed = 0
        self._begin_transfer(target)

    def _is_leader(self) -> bool:
        return self.role is Role.LEADER

    def _require_leader(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.id, self.lead or None, self.term)

    def _require_accepting(self) -> None:
        self._require_leader()
        if self.lead_transferee:
            raise ProposalDroppedError(f"leadership is being transferred to {self.lead_transferee}")

    # -- host reports --------------------------------------------------------------
    def report_unreachable(self, peer: int) -> None:
        """The transport failed to deliver to ``peer``: stop streaming, probe instead."""
        pr = self.tracker.progress.get(peer)
        if self._is_leader() and pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot(self, peer: int, ok: bool) -> None:
        """The host finished (or failed) sending a snapshot to ``peer``."""
        pr = self.tracker.progress.get(peer)
        if not self._is_leader() or pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        pr.probe_sent = True  # wait for the next heartbeat answer before probing

    # -- Ready / advance -----------------------------------------------------------
    def _soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def has_ready(self) -> bool:
        return bool(
            self._soft_state() != self._prev_soft
            or self._hard_state() != self._prev_hard
            or self.log.pending_snapshot is not None
            or self.log.unstable
            or self.msgs
            or self.read_states
            or self.dropped_reads
            or self.log.has_next_committed()
        )

    def ready(self) -> Ready:
        """Collect what the host must persist, send and apply (contract: :mod:`raykv.raft.ready`)."""
        self._flush_appends()
        soft, hard = self._soft_state(), self._hard_state()
        committed = self.log.next_committed(self.cfg.max_committed_bytes_per_ready)
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != self._prev_hard else None,
            snapshot=self.log.pending_snapshot,
            entries=tuple(self.log.unstable),
            committed_entries=tuple(committed),
            messages=tuple(self.msgs),
            read_states=tuple(self.read_states),
            dropped_reads=tuple(self.dropped_reads),
        )
        self.msgs, self.read_states, self.dropped_reads = [], [], []
        self._prev_soft, self._prev_hard = soft, hard
        return rd

    def advance(self, rd: Ready) -> None:
        """The host persisted, sent and applied ``rd``."""
        if rd.entries:
            self.log.stable_to(rd.entries[-1].index)
        if rd.snapshot is not None:
            self.log.stable_snapshot()
            self.log.applied_to(rd.snapshot.meta.index)
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)
            if self._is_leader():
                self.uncommitted_bytes = max(0, self.uncommitted_bytes - entries_size(rd.committed_entries))
        self._maybe_auto_leave_joint()

    def _maybe_auto_leave_joint(self) -> None:
        conf = self.tracker.conf
        if self._is_leader() and conf.joint and conf.auto_leave and self.log.applied >= self.pending_conf_index:
            self.pending_conf_index = self._append_new([(EntryKind.CONF_CHANGE, ConfChange().encode())])

    # -- state reset ------------------------------------------------------------------
    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self.lead_transferee = NONE
        self.tracker.reset_votes()
        self._reset_progress()
        self.pending_conf_index = 0
        self.uncommitted_bytes = 0
        self.lease_revoked = False
        self._append_pending = False
        self._drop_reads()

    def _reset_progress(self) -> None:
        last = self.log.last_index()
        for node_id, old in list(self.tracker.progress.items()):
            pr = Progress(last + 1, self.cfg.max_inflight_msgs, old.learner)
            pr.lease_tick = NEVER_TICK
            if node_id == self.id:
                pr.match = last
            self.tracker.progress[node_id] = pr

    # -- introspection ---------------------------------------------------------------
    def status(self) -> dict:
        """A plain-data snapshot of this node's state, for hosts, tests and tools."""
        return {
            "id": self.id,
            "role": self.role.value,
            "term": self.term,
            "vote": self.vote,
            "leader": self.lead,
            "commit": self.log.committed,
            "applied": self.log.applied,
            "first_index": self.log.first_index(),
            "last_index": self.log.last_index(),
            "last_term": self.log.last_term(),
            "conf": self.tracker.conf,
            "lead_transferee": self.lead_transferee,
            "progress": {i: self.tracker.progress[i].describe() for i in self.tracker.ids()}
            if self._is_leader()
            else {},
        }

    def describe(self) -> str:
        return (
            f"node {self.id} {self.role.value} t{self.term} lead={self.lead} "
            f"commit={self.log.committed} applied={self.log.applied} last={self.log.last_index()}"
        )
