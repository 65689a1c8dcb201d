"""Quiescing: an idle, caught-up group stops ticking and heartbeating, and wakes on traffic or suspicion.

Rules (host level; the core is unchanged):

* A **leader** quiesces when, for ``quiesce_after_ticks`` ticks, nothing was
  appended or committed, nothing is pending, and every voter and learner
  matches its last index. It sends each follower a :class:`Quiesce` naming its
  term and last index, then stops ticking (no heartbeats, no check-quorum).
* A **follower** quiesces on a :class:`Quiesce` from the leader it follows, in
  the same term, once its own log and commit index reach that last index (at
  once, or at a later tick if the leader's last heartbeat is still on its way);
  it stops ticking (so it never times out).
* Anyone wakes on any Raft message, a proposal or a read; a quiet follower
  also asks its leader's actor for a ``ping`` every ``quiet_probe_ticks``
  ticks and wakes (then campaigns as usual) if the ping fails or misses its
  deadline: a dead or frozen leader is noticed without heartbeats.
* **Leases after waking:** a woken leader's tick counter stood still while
  quiet, so acknowledgements from before look fresh. Lease reads are
  therefore served as ReadIndex reads until ``election_ticks`` ticks have
  passed since the wake-up: only acknowledgements of messages sent after
  waking can then keep the lease valid. (A partitioned old leader could
  otherwise wake and answer from a lease a new leader has outlived.)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..raft.messages import AppendResponse, HeartbeatResponse
from ..raft.node import Node
from ..raft.types import Role
from .options import ReplicaOptions


@dataclass(frozen=True, slots=True)
class Quiesce:
    """Leader -> follower (host message, not Raft): stop ticking; I am idle at ``last_index``."""

    frm: int
    to: int
    term: int
    last_index: int


class Quiescence:
    """The quiet/awake state of one replica (loop thread only)."""

    def __init__(self, options: ReplicaOptions) -> None:
        self.options = options
        self.quiesced = False
        self.idle_ticks = 0
        self.wake_tick = 0
        self.quiet_ticks = 0
        self._last_seen = (0, 0, 0)
        self._asked: Quiesce | None = None
        """A leader's Quiesce this follower could not follow yet (its commit index lagged)."""

    def should_tick(self, node: Node) -> bool:
        if self.quiesced:
            self.quiet_ticks += 1
            return False
        if self._asked is not None and self._follow(self._asked, node):
            return False
        seen = (node.term, node.log.last_index(), node.log.committed)
        self.idle_ticks = self.idle_ticks + 1 if seen == self._last_seen else 0
        self._last_seen = seen
        return True

    def probe_due(self, node: Node) -> int | None:
        """The leader to ping now, if this is a quiet follower whose probe interval elapsed."""
        if self.quiesced and node.role is not Role.LEADER and node.lead and self.quiet_ticks >= self.options.quiet_probe_ticks:
            self.quiet_ticks = 0
            return node.lead
        return None

    def ticks_to_sleep(self, node: Node) -> int:
        """How many ticks the loop may wait for input before it must turn (>= 1).

        Awake: 1 (every tick counts). Quiet: ticks change nothing but the probe count, so a
        quiet follower with a leader waits until its next probe is due and anyone else up to
        ``quiet_probe_ticks``; the ticks missed meanwhile arrive as catch-up ticks when the loop
        turns (any message wakes it at once). An idle replica thus turns about once a second
        instead of 20 times.
        """
        if not self.quiesced:
            return 1
        limit = min(self.options.quiet_probe_ticks, self.options.max_catch_up_ticks)
        if node.role is not Role.LEADER and node.lead:
            return max(1, min(limit, self.options.quiet_probe_ticks - self.quiet_ticks))
        return limit

    def maybe_quiesce(self, node: Node, pending: int) -> bool:
        """A leader decides to go quiet (True: send :meth:`quiesce_messages` now)."""
        if self.quiesced or node.role is not Role.LEADER or pending or node.lead_transferee:
            return False
        if self.idle_ticks < self.options.quiesce_after_ticks:
            return False
        last = node.log.last_index()
        if node.log.committed != last or any(pr.match != last for pr in node.tracker.progress.values()):
            return False
        self._go_quiet()
        return True

    def quiesce_messages(self, node: Node) -> list[Quiesce]:
        last = node.log.last_index()
        return [Quiesce(node.id, peer, node.term, last) for peer in node.tracker.ids() if peer != node.id]

    def on_message(self, m, node: Node) -> bool:
        """True if ``m`` was a :class:`Quiesce` (consumed); any other message wakes us."""
        if isinstance(m, Quiesce):
            self._asked = m
            self._follow(m, node)
            return True
        if not (self.quiesced and _late_answer(m, node)):
            self.wake(node, "message")
        return False

    def on_send(self, messages: list, node: Node) -> None:
        """Sending Raft traffic means we are active (e.g. a campaign after catch-up ticks)."""
        if messages and self.quiesced:
            self.wake(node, "send")

    def wake(self, node: Node, reason: str) -> None:
        if self.quiesced:
            self.quiesced = False
            self.idle_ticks = 0
            self.wake_tick = node.tick_count

    def lease_allowed(self, node: Node) -> bool:
        """Lease reads only once a full election timeout passed since the last wake-up."""
        return not self.quiesced and node.tick_count >= self.wake_tick + self.options.election_ticks

    def _follow(self, m: Quiesce, node: Node) -> bool:
        """Go quiet as the leader asked if this follower has caught up with it; forget the request
        once it can no longer apply (another term or leader, or newer entries)."""
        if m.term != node.term or m.frm != node.lead or node.role is not Role.FOLLOWER or node.log.last_index() != m.last_index:
            self._asked = None
            return False
        if node.log.committed < m.last_index:
            return False
        self._asked = None
        self._go_quiet()
        return True

    def _go_quiet(self) -> None:
        self.quiesced = True
        self.quiet_ticks = 0


def _late_answer(m, node: Node) -> bool:
    """An answer to traffic sent before the leader went quiet: no reason to wake up
    (if it reveals a lagging follower, the node sends entries, and sending wakes us)."""
    return (node.role is Role.LEADER and m.term == node.term
            and isinstance(m, (AppendResponse, HeartbeatResponse)) and not getattr(m, "reject", False))
