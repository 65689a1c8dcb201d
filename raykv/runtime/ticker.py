"""The one place a replica reads the clock: monotonic time -> Raft ticks.

A replica calls :meth:`Ticker.due` every turn of its loop and feeds that many
``node.tick()`` calls to its node. Ticks missed while the process was paused
(SIGSTOP, a long GC, an overloaded machine) are delivered on resume as
*catch-up ticks*, up to ``max_catch_up``: a leader frozen for longer than its
lease must see that time passed before it serves anything (its lease expires,
check-quorum steps it down). Deliberately not wall-clock: NTP steps cannot
move Raft time.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Ticker:
    """Counts whole ticks of ``tick_s`` seconds elapsed on ``clock`` (monotonic)."""

    def __init__(self, tick_s: float, max_catch_up: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.tick_s = tick_s
        self.max_catch_up = max_catch_up
        self.clock = clock
        self._next = clock() + tick_s

    def due(self) -> int:
        """Ticks elapsed since the last call (at most ``max_catch_up``); 0 if none."""
        now = self.clock()
        if now < self._next:
            return 0
        missed = int((now - self._next) / self.tick_s) + 1
        self._next += missed * self.tick_s
        return min(missed, self.max_catch_up)

    def seconds_to_next(self) -> float:
        """How long the loop may sleep before the next tick is due (>= 0)."""
        return max(0.0, self._next - self.clock())
