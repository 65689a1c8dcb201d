"""Time as the engine sees it: a :class:`Stamp` on every input, turned into Raft ticks.

The engine reads no clock. Its shell reads one when it hands the engine an input
and passes the reading along as a :class:`Stamp`; :class:`TickClock` turns the
monotonic part into whole Raft ticks of ``tick_s`` seconds. Because every input
carries the time at which the engine is given it (not the time its turn began),
the node's tick count never lags real time by more than one tick plus the time
the input itself takes: a follower dates the leader's message by when it really
handled it, and a leader checks its lease against the present.

Contract for shells (and the simulator's model of one):

* ``mono_s`` comes from a clock that never goes backwards and **keeps counting
  while the machine is suspended** (Linux ``CLOCK_BOOTTIME``). A clock that stops
  during a suspend (``CLOCK_MONOTONIC``) would give a resumed leader no
  catch-up ticks, and it would keep a lease the others have long outlived;
* ``mono_s`` is read when the engine is given the input (per input, not per turn);
* ``wall_ms`` is wall-clock milliseconds, used only for client-session activity
  times (expiry after a day of silence), never for Raft timing.

Ticks missed while the process did not run (a pause, a long GC, a suspend) come
back as catch-up ticks at the next input, at most ``max_catch_up`` of them: enough
to expire any lease and run check-quorum (the options require ``>= 2 *
election_ticks``), so a resumed leader learns that time passed before it serves.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Stamp:
    """When an input reached the engine: ``mono_s`` (suspend-aware monotonic seconds) and
    ``wall_ms`` (wall clock, for session activity only)."""

    mono_s: float
    wall_ms: int


class TickClock:
    """Counts whole ticks of ``tick_s`` seconds between successive readings of a monotonic clock."""

    __slots__ = ("tick_s", "max_catch_up", "_next")

    def __init__(self, tick_s: float, max_catch_up: int, start_s: float) -> None:
        self.tick_s = tick_s
        self.max_catch_up = max_catch_up
        self._next = start_s + tick_s

    def due(self, now_s: float) -> int:
        """Ticks elapsed up to ``now_s`` since the previous call (at most ``max_catch_up``); 0 if
        none. A reading earlier than an earlier one (a misbehaving clock) counts as no time."""
        if now_s < self._next:
            return 0
        missed = int((now_s - self._next) / self.tick_s) + 1
        self._next += missed * self.tick_s
        return min(missed, self.max_catch_up)

    def seconds_to_next(self, now_s: float) -> float:
        """How long until the next tick is due (>= 0)."""
        return max(0.0, self._next - now_s)
