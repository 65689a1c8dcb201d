"""The client's timer thread: deadlines, call timeouts and backoff retries of one client.

:class:`_Timers` runs callbacks at ``time.monotonic()`` instants on one daemon
thread; :meth:`_Timers.call_at` returns a :class:`_Timer` whose ``cancel()`` is
idempotent. A callback's exception is logged and does not stop the thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable

log = logging.getLogger("raykv.client")


class _Timer:
    __slots__ = ("_timers", "fn")

    def __init__(self, timers: "_Timers", fn: Callable[[], None] | None) -> None:
        self._timers = timers
        self.fn = fn

    def cancel(self) -> None:
        self._timers._cancel(self)


class _Timers:
    """One daemon thread that runs callbacks at ``time.monotonic()`` instants.

    Callbacks must be short and must not block; they run outside the timer's
    lock. Cancelled entries are dropped lazily (and purged when they dominate).
    """

    def __init__(self, name: str = "raykv-client-timers") -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Timer]] = []
        self._counter = itertools.count()
        self._cancelled = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_at(self, when: float, fn: Callable[[], None]) -> _Timer:
        timer = _Timer(self, fn)
        with self._cond:
            if self._closed:
                timer.fn = None
                return timer
            heapq.heappush(self._heap, (when, next(self._counter), timer))
            if self._heap[0][2] is timer:
                self._cond.notify()
        return timer

    def call_later(self, delay: float, fn: Callable[[], None]) -> _Timer:
        return self.call_at(time.monotonic() + max(0.0, delay), fn)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def _cancel(self, timer: _Timer) -> None:
        with self._cond:
            if timer.fn is None:
                return
            timer.fn = None
            self._cancelled += 1
            if self._cancelled > 256 and 2 * self._cancelled > len(self._heap):
                self._heap = [entry for entry in self._heap if entry[2].fn is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def _next_due(self) -> Callable[[], None] | None:
        """Block until a callback is due and return it (None once closed)."""
        with self._cond:
            while not self._closed:
                if not self._heap:
                    self._cond.wait()
                    continue
                when, _, timer = self._heap[0]
                if timer.fn is None:
                    heapq.heappop(self._heap)
                    self._cancelled = max(0, self._cancelled - 1)
                    continue
                delay = when - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
                fn, timer.fn = timer.fn, None
                return fn
            return None

    def _run(self) -> None:
        while (fn := self._next_due()) is not None:
            try:
                fn()
            except Exception:
                log.exception("raykv client timer callback failed")
