"""Log replication: the leader's sending and acknowledgement side, and the follower's.

Mixed into :class:`raykv.raft.node.Node`.

Leader: per-follower :class:`~raykv.raft.progress.Progress` decides what to
send; rejections carry a ``(hint_index, hint_term)`` so the leader skips a whole
conflicting term per round trip (thesis §5.3 optimisation); a follower whose
next entry was compacted gets :class:`InstallSnapshot`. The leader commits an
index only when a (joint) quorum holds it *and* it is of the current term
(Raft §5.4.2, Figure 8).

Follower: accepts entries that extend a matching prefix, truncates a
conflicting suffix (never below its commit index), and only commits up to the
last index it verified against the leader.
"""

from __future__ import annotations

from ..errors import CompactedError, SnapshotTemporarilyUnavailableError
from .messages import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    TimeoutNow,
)
from .progress import ProgressState
from .types import NONE, Entry, EntryKind, Snapshot


class ReplicationMixin:
    # -- leader: appending and committing -------------------------------------------
    def _append_new(self, items) -> int:
        """Append ``(kind, data)`` items at our term; returns the first new index."""
        first = self.log.last_index() + 1
        entries = [Entry(first + i, self.term, EntryKind(kind), data) for i, (kind, data) in enumerate(items)]
        self.log.append(entries)
        self.tracker.progress[self.id].maybe_update(self.log.last_index())
        self._append_pending = True
        self._maybe_commit()
        return first

    def _maybe_commit(self) -> bool:
        """Advance commit to the quorum index if that entry is of our term (§5.4.2)."""
        if not self.log.maybe_commit(self.tracker.committed(), self.term):
            return False
        self._release_reads_waiting_for_commit()
        return True

    def _committed_in_term(self) -> bool:
        return self.log.term_or_zero(self.log.committed) == self.term

    # -- leader: sending -----------------------------------------------------------
    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        """Send ``to`` what its progress allows; returns whether a message went out."""
        pr = self.tracker.progress[to]
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        try:
            prev_term = self.log.term(prev_index)
            entries = self.log.entries_from(pr.next, self.cfg.max_msg_bytes)
        except CompactedError:
            return self._send_snapshot(to)
        if not entries and not send_if_empty:
            return False
        self._send(
            AppendEntries(
                self.id, to, self.term, prev_index, prev_term, tuple(entries), self.log.committed, self.tick_count
            )
        )
        pr.sent_entries(entries[-1].index if entries else prev_index, len(entries))
        return True

    def _send_snapshot(self, to: int) -> bool:
        pr = self.tracker.progress[to]
        if not pr.recent_active:
            return False
        try:
            snapshot: Snapshot = self.log.snapshot()
        except SnapshotTemporarilyUnavailableError:
            return False
        assert snapshot.meta.index > 0, "a compacted log must have a snapshot"
        pr.become_snapshot(snapshot.meta.index)
        self._send(InstallSnapshot(self.id, to, self.term, snapshot))
        return True

    def _peers(self) -> list[int]:
        return [i for i in self.tracker.ids() if i != self.id]

    def _bcast_append(self, send_if_empty: bool = True) -> None:
        for peer in self._peers():
            self._send_append(peer, send_if_empty)

    def _flush_appends(self) -> None:
        """Send entries proposed since the last Ready: one append per follower for the batch."""
        if self._append_pending:
            self._append_pending = False
            self._bcast_append(send_if_empty=False)

    def _bcast_heartbeat(self, ctx: bytes = b"") -> None:
        for peer in self._peers():
            commit = min(self.tracker.progress[peer].match, self.log.committed)
            self._send(Heartbeat(self.id, peer, self.term, commit, ctx, self.tick_count))

    def _send_timeout_now(self, to: int) -> None:
        self._send(TimeoutNow(self.id, to, self.term))

    # -- leader: receiving -----------------------------------------------------------
    def _step_leader(self, m) -> None:
        match m:
            case AppendResponse() if m.frm in self.tracker.progress:
                self._handle_append_response(m)
            case HeartbeatResponse() if m.frm in self.tracker.progress:
                self._handle_heartbeat_response(m)
            case _:
                pass

    def _note_alive(self, peer: int, lease_tick: int) -> None:
        pr = self.tracker.progress[peer]
        pr.recent_active = True
        pr.lease_tick = max(pr.lease_tick, lease_tick)

    def _handle_append_response(self, m: AppendResponse) -> None:
        self._note_alive(m.frm, m.lease_tick)
        pr = self.tracker.progress[m.frm]
        if m.reject:
            if pr.maybe_decrease_to(m.index, self._next_probe_index(m)):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = pr.is_paused()
        if not (pr.maybe_update(m.index) or (pr.match == m.index and pr.state is ProgressState.PROBE)):
            return
        self._advance_progress_state(pr, m.index)
        if self._maybe_commit() and self.cfg.commit_broadcast:
            self._bcast_append()
        elif was_paused:
            self._send_append(m.frm)
        while self._send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send_timeout_now(m.frm)

    def _advance_progress_state(self, pr, acked: int) -> None:
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match + 1 >= self.log.first_index():
            pr.become_replicate()
        elif pr.state is ProgressState.REPLICATE:
            pr.inflights.free_le(acked)

    def _next_probe_index(self, m: AppendResponse) -> int:
        """Fast back-off: the largest index of ours that may match the follower's hint."""
        if m.hint_term > 0:
            return self.log.find_conflict_by_term(m.hint_index, m.hint_term)[0]
        return m.hint_index

    def _handle_heartbeat_response(self, m: HeartbeatResponse) -> None:
        self._note_alive(m.frm, m.lease_tick)
        pr = self.tracker.progress[m.frm]
        pr.probe_sent = False
        if pr.state is ProgressState.REPLICATE and pr.inflights.full():
            pr.inflights.free_first()
        if pr.match < self.log.last_index():
            self._send_append(m.frm)
        if m.ctx:
            self._ack_read(m.ctx, m.frm)

    # -- follower ------------------------------------------------------------------
    def _step_follower(self, m) -> None:
        match m:
            case AppendEntries():
                self._heard_from_leader(m.frm)
                self._handle_append(m)
            case Heartbeat():
                self._heard_from_leader(m.frm)
                self._handle_heartbeat(m)
            case InstallSnapshot():
                self._heard_from_leader(m.frm)
                self._handle_snapshot(m)
            case TimeoutNow():
                self.campaign(pre=False, transfer=True)
            case _:
                pass

    def _heard_from_leader(self, leader: int) -> None:
        self.election_elapsed = 0
        self.lead = leader

    def _handle_append(self, m: AppendEntries) -> None:
        if m.prev_index < self.log.committed:
            self._send(AppendResponse(self.id, m.frm, self.term, self.log.committed, lease_tick=m.lease_tick))
            return
        last_new = self.log.maybe_append(m.prev_index, m.prev_term, m.commit, m.entries)
        if last_new is not None:
            self._send(AppendResponse(self.id, m.frm, self.term, last_new, lease_tick=m.lease_tick))
            return
        hint_index, hint_term = self.log.find_conflict_by_term(min(m.prev_index, self.log.last_index()), m.prev_term)
        self._send(
            AppendResponse(self.id, m.frm, self.term, m.prev_index, True, hint_index, hint_term, m.lease_tick)
        )

    def _handle_heartbeat(self, m: Heartbeat) -> None:
        self.log.commit_to(m.commit)
        self._send(HeartbeatResponse(self.id, m.frm, self.term, m.ctx, m.lease_tick))

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        if self._restore(m.snapshot):
            index = self.log.last_index()
        else:
            index = self.log.committed
        self._send(AppendResponse(self.id, m.frm, self.term, index))

    def _restore(self, snapshot: Snapshot) -> bool:
        """Accept a leader's snapshot unless we already have (or committed) what it covers.

        The snapshot's configuration may predate our own addition (a new learner
        gets whatever snapshot the leader has): we accept it anyway and learn our
        membership from the log entries that follow.
        """
        meta = snapshot.meta
        if meta.index <= self.log.committed:
            return False
        if self.log.match_term(meta.index, meta.term):
            self.log.commit_to(meta.index)
            return False
        self.log.restore(snapshot)
        self.tracker.set_conf(meta.conf, self.log.last_index() + 1)
        return True

    def _abort_transfer(self) -> None:
        self.lead_transferee = NONE
