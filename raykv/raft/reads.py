"""Linearizable reads without log writes: ReadIndex (thesis §6.4) and leases (§6.4.1).

Mixed into :class:`raykv.raft.node.Node`.

**ReadIndex.** The leader notes ``read_index = commit`` when a read arrives,
confirms it is still leader with one heartbeat round acknowledged by a quorum,
and emits a :class:`ReadState`; the host serves the read once its applied index
reaches ``read_index``. A new leader first commits its no-op: until then its
commit index may lag what earlier leaders committed, so reads wait (and are then
confirmed by a ReadIndex round, lease or not).

**Lease.** With check-quorum on, voters refuse to vote for ``election_ticks``
ticks after hearing from the leader (see :mod:`raykv.raft.election`). If a
quorum acknowledged messages the leader sent at tick ``t`` or later, no other
leader can exist before those voters' timers run out, i.e. before the leader's
tick ``t + election_ticks`` *if ticks advance at the same rate everywhere*. The
leader therefore trusts its lease only until ``t + election_ticks -
lease_margin_ticks``: **the assumption is that clock drift between replicas
stays below ``lease_margin_ticks`` ticks per election timeout**. Leadership
transfer (TimeoutNow) bypasses the voters' lease, so a leader that starts one
stops using its lease for the rest of its term. A lease read that cannot be
granted falls back to a ReadIndex round.
"""

from __future__ import annotations

from ..errors import ProposalDroppedError
from .progress import NEVER_TICK
from .types import ReadState


class ReadMixin:
    def read_index(self, ctx: bytes, lease: bool = False) -> None:
        """Request a linearizable read identified by the unique, non-empty ``ctx``.

        The answer arrives as a ``ReadState`` in a later Ready (or the context
        in ``Ready.dropped_reads`` if leadership is lost first). ``lease=True``
        answers from the leader's lease when it holds one.
        """
        self._require_leader()
        if not ctx:
            raise ProposalDroppedError("a read context must be non-empty")
        if ctx in self.read_only or ctx in self.reads_waiting_for_commit:
            raise ProposalDroppedError(f"read context {ctx!r} is already pending")
        if not self._committed_in_term():
            self.reads_waiting_for_commit.append(ctx)
            return
        self._serve_read(ctx, lease)

    def _serve_read(self, ctx: bytes, lease: bool) -> None:
        if self.tracker.is_singleton(self.id) or (lease and self.lease_valid()):
            self.read_states.append(ReadState(self.log.committed, ctx))
            return
        self.read_only.add(ctx, self.log.committed, self.id)
        self._bcast_heartbeat(ctx)

    def _release_reads_waiting_for_commit(self) -> None:
        """A new leader's first commit releases the reads that waited for it, each confirmed by a
        ReadIndex round even if it asked for the lease: the release happens inside whatever
        message committed the entry, and a lease judged there is only as fresh as the host's
        idea of the time (one heartbeat round per election is cheap insurance)."""
        if self.reads_waiting_for_commit and self._committed_in_term():
            waiting, self.reads_waiting_for_commit = self.reads_waiting_for_commit, []
            for ctx in waiting:
                self._serve_read(ctx, False)

    def _ack_read(self, ctx: bytes, peer: int) -> None:
        acks = self.read_only.ack(ctx, peer)
        if acks is not None and self.tracker.quorum_reached(acks):
            self.read_states.extend(self.read_only.release_through(ctx))

    def lease_valid(self) -> bool:
        """Does a quorum's acknowledgement still vouch that no other leader exists?"""
        if not self.cfg.check_quorum or self.lease_revoked or self.lead_transferee:
            return False
        if not self._is_leader():
            return False

        def acked_tick(peer: int) -> int:
            if peer == self.id:
                return self.tick_count
            return self.tracker.progress[peer].lease_tick

        quorum_tick = self.tracker.quorum_value(acked_tick)
        return quorum_tick != NEVER_TICK and quorum_tick > self.tick_count - self.cfg.lease_ticks

    def _drop_reads(self) -> None:
        self.dropped_reads.extend(self.read_only.drop_all())
        self.dropped_reads.extend(self.reads_waiting_for_commit)
        self.reads_waiting_for_commit = []
