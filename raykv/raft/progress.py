"""The leader's view of each follower: match/next indices and flow control.

States (as in etcd's raft, see its design doc on progress):

* ``PROBE`` -- we do not know where the follower's log matches ours. Send one
  append at a time and wait for its answer (or the next heartbeat answer).
* ``REPLICATE`` -- the follower is caught up to ``match``; stream appends
  optimistically (``next`` jumps ahead on send), at most ``max_inflight_msgs``
  unacknowledged messages (pipelining with a bound).
* ``SNAPSHOT`` -- the follower needs a snapshot; send nothing until the host
  reports the transfer's outcome or the follower acknowledges past it.

Invariant: ``match < next``.
"""

from __future__ import annotations

import enum
from collections import deque

NEVER_TICK = -(1 << 62)
"""A ``lease_tick`` meaning "never acknowledged in this term"."""


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """Last indices of the appends sent and not yet acknowledged, oldest first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[int] = deque()

    def add(self, last_index: int) -> None:
        assert not self.full(), "inflights overflow"
        self._items.append(last_index)

    def free_le(self, index: int) -> None:
        """Forget every message whose entries are all acknowledged by ``index``."""
        while self._items and self._items[0] <= index:
            self._items.popleft()

    def free_first(self) -> None:
        if self._items:
            self._items.popleft()

    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def reset(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class Progress:
    def __init__(self, next_index: int, max_inflight_msgs: int, learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0
        self.probe_sent = False
        self.recent_active = True
        self.learner = learner
        self.lease_tick = NEVER_TICK
        """The leader's tick at which it sent the newest message this peer acknowledged."""
        self.inflights = Inflights(max_inflight_msgs)

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.reset()

    def maybe_update(self, index: int) -> bool:
        """The follower acknowledged ``index``; returns whether ``match`` moved."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease_to(self, rejected: int, hint_index: int) -> bool:
        """The follower rejected an append at ``rejected``; back off ``next``.

        Returns False when the rejection is stale (an answer to an older message).
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint_index + 1), self.match + 1)
        self.probe_sent = False
        return True

    def sent_entries(self, last_index: int, count: int) -> None:
        """Record an append carrying ``count`` entries up to ``last_index``."""
        if self.state is ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.add(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def describe(self) -> str:
        return f"{self.state.value} match={self.match} next={self.next} inflight={len(self.inflights)}"
