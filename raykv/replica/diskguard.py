"""What a replica does while its disk is nearly full.

Raft's rule is *persist before you acknowledge*; a replica that cannot persist must not take in
anything it would have to persist. The shell measures the free bytes of the data directory's
filesystem and hands them to :meth:`DiskGuardMixin.disk_space`; while they are fewer than
``options.disk_reserve_bytes`` the replica is *low*:

* a leader refuses proposals with a definite :class:`~raykv.errors.DiskFullError` (nothing was
  appended) and hands leadership to its most caught-up voter, at most once every
  :data:`HANDOFF_EVERY_S`, so a group with room on another host keeps taking writes;
* every replica drops incoming appends that carry entries, and snapshots, as if the network had
  lost them: it never acknowledges what it could not store, and the leader sends them again once
  the space is back (votes, heartbeats and commit updates still go through: they write a few bytes
  of hard state, which the reserve covers);
* reads go on (ReadIndex rounds and leases persist nothing).

The reserve must hold the largest write a replica may be in the middle of when the report comes
(one Ready: a client batch is at most ``limits.max_batch_bytes``); below it nothing new starts.
"""

from __future__ import annotations

from ..errors import DiskFullError
from ..raft.messages import AppendEntries, InstallSnapshot, Message
from ..raft.types import Role
from .clock import Stamp

HANDOFF_EVERY_S = 5.0


class DiskGuardMixin:
    disk_low: bool = False
    free_bytes: int | None = None
    _handoff_at: float = float("-inf")

    def disk_space(self, free_bytes: int, at: Stamp) -> None:
        """The shell's reading of the free bytes where this replica keeps its data."""
        self._observe(at)
        self.free_bytes = free_bytes
        low = free_bytes < self.options.disk_reserve_bytes
        if low != self.disk_low:
            self.log.warning("disk %s: %d bytes free (reserve %d)", "LOW, refusing writes" if low else "has room again",
                             free_bytes, self.options.disk_reserve_bytes)
            self.disk_low = low
            self._handoff_at = float("-inf")

    def _disk_refusal(self) -> DiskFullError | None:
        if not self.disk_low:
            return None
        return DiskFullError(f"replica {self.id} of shard {self.shard} has {self.free_bytes} bytes of disk free, "
                             f"less than its reserve of {self.options.disk_reserve_bytes}: writes are refused "
                             f"until space returns")

    def _storable(self, messages) -> list[Message]:
        """``messages`` without what this replica could not persist now."""
        if not self.disk_low:
            return list(messages)
        return [m for m in messages if not (isinstance(m, InstallSnapshot) or (isinstance(m, AppendEntries) and m.entries))]

    def _disk_upkeep(self, at: Stamp) -> None:
        """A low leader hands leadership to its most caught-up voter (every HANDOFF_EVERY_S at most)."""
        if not self.disk_low or self.node.role is not Role.LEADER or at.mono_s - self._handoff_at < HANDOFF_EVERY_S:
            return
        self._handoff_at = at.mono_s
        progress = self.node.tracker.progress
        others = [i for i in self.node.tracker.voter_ids() if i != self.id]
        if others:
            target = min(others, key=lambda i: (-progress[i].match, i))
            self.log.warning("disk low: handing leadership to replica %d", target)
            self.quiet.wake(self.node, "disk low")
            self.node.transfer_leader(target)
