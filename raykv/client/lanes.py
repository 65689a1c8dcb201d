"""Per-replica lanes: each queues requests and sends them, coalesced per kind, as few actor calls.

A :class:`_Lane` owns one dispatcher thread; a :class:`_Call` records one actor
call in flight. The ``MAX_*`` constants bound what one call carries.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Callable

from ..protocol import CONSISTENCY_LEVELS
from .request import _REGISTER, _SCAN_KINDS, _SUBMIT, _Request

if TYPE_CHECKING:
    from .timers import _Timer

log = logging.getLogger("raykv.client")

CALL_TIMEOUT_S = 0.5
"""Default deadline of one actor call; a call without a reply by then counts as lost."""
MAX_CALLS_IN_FLIGHT = 2
"""Default bound on outstanding calls per replica lane (see :mod:`raykv.client`): at 64 callers
2 measured better than 4; 1 was a little faster still, but makes a read wait behind a write call."""
MAX_WRITES_PER_CALL = 256
MAX_KEYS_PER_CALL = 4096
MAX_CALL_BYTES = 16 * 1024 * 1024
"""Soft bound on the key and value bytes of one call (a single larger request still goes)."""

_LANE_KINDS = (_SUBMIT, _REGISTER) + CONSISTENCY_LEVELS + _SCAN_KINDS
_SINGLE_KINDS = frozenset((_REGISTER,) + _SCAN_KINDS)
"""Kinds whose call carries exactly one request (``register_session``, ``scan``)."""


class _Call:
    """One actor call carrying ``items`` (request, gen) pairs."""

    __slots__ = ("lane", "kind", "items", "timeout_s", "timer", "answered", "timed_out")

    def __init__(self, lane: "_Lane", kind: str, items: list[tuple[_Request, int]], timeout_s: float) -> None:
        self.lane = lane
        self.kind = kind
        self.items = items
        self.timeout_s = timeout_s
        self.timer: _Timer | None = None
        self.answered = False
        self.timed_out = False


# -- lanes --------------------------------------------------------------------------
class _Lane:
    """The queue of one replica and its dispatcher thread.

    The thread waits (no polling) until some kind has queued requests and
    fewer than ``max_in_flight`` calls are outstanding, takes everything
    queued of one kind (kinds served round-robin; bounded by
    :data:`MAX_WRITES_PER_CALL` / :data:`MAX_KEYS_PER_CALL` /
    :data:`MAX_CALL_BYTES`; one request for registrations and scans) and
    hands it to ``dispatch``, which must call :meth:`release` exactly once
    when the call ends. :meth:`hold` keeps the thread from taking anything
    while a caller enqueues several requests that belong in one call.
    """

    def __init__(self, rid: int, dispatch: Callable[["_Lane", str, list], None], max_in_flight: int) -> None:
        self.rid = rid
        self._dispatch = dispatch
        self._max = max_in_flight
        self._cond = threading.Condition()
        self._queues: dict[str, collections.deque] = {kind: collections.deque() for kind in _LANE_KINDS}
        self._in_flight = 0
        self._turn = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"raykv-lane-{rid}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def enqueue(self, kind: str, item: tuple[_Request, int]) -> None:
        with self._cond:
            if not self._closed:
                self._queues[kind].append(item)
                self._cond.notify()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Enqueue within this block and nothing is taken before it ends (the lock is reentrant)."""
        with self._cond:
            yield

    def release(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not (self._in_flight < self._max and self._has_work()):
                    self._cond.wait()
                if self._closed:
                    return
                kind, batch = self._take()
                if not batch:
                    continue
                self._in_flight += 1
            try:
                self._dispatch(self, kind, batch)
            except Exception:
                log.exception("raykv client lane %s: dispatch failed", self.rid)

    def _has_work(self) -> bool:
        return any(self._queues.values())

    def _take(self) -> tuple[str, list[tuple[_Request, int]]]:
        for i in range(len(_LANE_KINDS)):
            kind = _LANE_KINDS[(self._turn + i) % len(_LANE_KINDS)]
            if self._queues[kind]:
                self._turn = (self._turn + i + 1) % len(_LANE_KINDS)
                return kind, self._take_batch(kind)
        return "", []

    def _take_batch(self, kind: str) -> list[tuple[_Request, int]]:
        queue = self._queues[kind]
        cap = 1 if kind in _SINGLE_KINDS else MAX_WRITES_PER_CALL if kind == _SUBMIT else MAX_KEYS_PER_CALL
        batch: list[tuple[_Request, int]] = []
        size = 0
        while queue and len(batch) < cap:
            req, gen = queue[0]
            if req.done or req.gen != gen:  # stale entry (racy read; re-checked under the core lock)
                queue.popleft()
                continue
            if batch and size + req.size > MAX_CALL_BYTES:
                break
            queue.popleft()
            batch.append((req, gen))
            size += req.size
        return batch
