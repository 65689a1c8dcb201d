"""The client's engine: ``_Core`` starts, routes, retries and completes the requests of one shard group.

This module holds the request lifecycle (start, finish, deadlines, close),
routing and backoff, and sessions (seq window, registration, expiry). Sending
calls and handling their replies is the :class:`~raykv.client.calls._CallsMixin`
part of the same object.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import math
import os
import random
import threading
import time
from typing import Any

from ..errors import DiskFullError, OperationTimeoutError, RayKVError, SessionExpiredError, ShutdownError, UnavailableError
from ..kv.commands import Op
from ..kv.limits import KVLimits
from .calls import _CallsMixin
from .lanes import CALL_TIMEOUT_S, MAX_CALLS_IN_FLIGHT, _Lane
from .request import _ReadRequest, _RegisterRequest, _Request, _ScanRequest, _Session, _WriteRequest
from .route import _Backoff, _ShardRoute
from .timers import _Timers
from .transport import _Transport

_RETRY_GRID_S = 0.01
"""Backoff retries due in the same 10 ms slot fire together, so they coalesce into the same calls."""


def _settle(future: concurrent.futures.Future, result: Any = None,
            error: BaseException | None = None) -> None:
    """Complete ``future`` unless it is already done (e.g. cancelled by its awaiter)."""
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


class _Core(_CallsMixin):
    """Routes, sends, retries and completes requests of one shard group.

    Entry points (:meth:`write`, :meth:`read`, :meth:`read_many`, :meth:`scan`,
    :meth:`call_replica`, :meth:`expire`, :meth:`close`) are thread-safe and
    never block on the network (``call_replica`` may look an actor up); everything else runs under
    ``_lock`` from lane threads, transport callbacks and the timer thread.
    """

    def __init__(self, route: _ShardRoute, transport: _Transport, *, timeout_s: float,
                 call_timeout_s: float = CALL_TIMEOUT_S, max_calls_in_flight: int = MAX_CALLS_IN_FLIGHT,
                 window: int = KVLimits().max_pending_per_session, rng: random.Random | None = None) -> None:
        self._lock = threading.RLock()
        self._window = window
        self._route = route
        self._transport = transport
        self._timeout_s = timeout_s
        self._call_timeout_s = call_timeout_s
        self._rng = rng or random.Random(int.from_bytes(os.urandom(8), "big"))
        self._timers = _Timers()
        self._max_calls_in_flight = max_calls_in_flight
        self._lanes = {rid: _Lane(rid, self._dispatch, max_calls_in_flight) for rid in route.replica_ids}
        self._session: _Session | None = None
        self._registration: _RegisterRequest | None = None
        self._session_waiters: list[_WriteRequest] = []
        self._window_waiters: collections.deque[_WriteRequest] = collections.deque()
        self._retry_slots: dict[int, list[tuple[_Request, int]]] = {}
        self._live: set[_Request] = set()
        self._closed = False
        self._stats: collections.Counter = collections.Counter()
        for lane in self._lanes.values():
            lane.start()

    # -- entry points ----------------------------------------------------------------
    def write(self, op: Op) -> _WriteRequest:
        """Start an exactly-once write; its future yields ``Ok``/``Flag`` or fails."""
        return self._start(_WriteRequest(op, self._deadline(), self._new_backoff()))

    def read(self, key: bytes, consistency: str) -> _ReadRequest:
        """Start a read; its future yields the stored bytes or None."""
        return self._start(_ReadRequest(key, consistency, self._deadline(), self._new_backoff()))

    def read_many(self, keys: list[bytes], consistency: str) -> list[_ReadRequest]:
        """Start one read per key, queued together so each lane sends them in as few calls as its caps allow."""
        deadline = self._deadline()
        return self._start_all([_ReadRequest(key, consistency, deadline, self._new_backoff()) for key in keys])

    def scan(self, start: bytes, end: bytes | None, limit: int, consistency: str) -> _ScanRequest:
        """Start a one-page scan; its future yields ``(pairs, more)``."""
        return self._start(_ScanRequest(start, end, limit, consistency, self._deadline(), self._new_backoff()))

    def call_replica(self, rid: int, method: str, args: tuple = ()) -> concurrent.futures.Future:
        """Call ``method`` on replica ``rid`` once, outside the lanes (no routing, no retry): admin calls."""
        if self._closed:
            raise ShutdownError("the raykv client is closed")
        try:
            return self._transport.call(rid, method, args)
        except Exception as exc:  # noqa: BLE001 -- handed to the caller through the future
            future: concurrent.futures.Future = concurrent.futures.Future()
            future.set_exception(exc)
            return future

    def expire(self, req: _Request) -> None:
        """End ``req`` with its deadline error now (safety net of waiting callers)."""
        self._expire(req)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self._stats)
            out["leader"] = self._route.leader
            out["session"] = self._session.id if self._session else None
            out["acked_seq"] = self._session.tracker.acked if self._session else None
            out["pending"] = len(self._live)
            return out

    def close(self) -> None:
        """Fail pending requests, refuse new ones, stop the lanes and the timer thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for req in list(self._live):
                self._finish(req, error=self._close_error(req))
        for lane in self._lanes.values():
            lane.close()
        self._timers.close()
        self._transport.close()

    # -- request lifecycle -------------------------------------------------------------
    def _deadline(self) -> float:
        return time.monotonic() + self._timeout_s

    def _new_backoff(self) -> _Backoff:
        return _Backoff(self._rng)

    def _start(self, req: _Request) -> _Request:
        return self._start_all([req])[0]

    def _start_all(self, reqs: list[_Request]) -> list[_Request]:
        """Route ``reqs`` with every lane held, so a lane takes them together rather than one by one."""
        with self._lock, contextlib.ExitStack() as held:
            if self._closed:
                raise ShutdownError("the raykv client is closed")
            for lane in self._lanes.values():
                held.enter_context(lane.hold())
            for req in reqs:
                self._live.add(req)
                req.timer = self._timers.call_at(req.deadline, lambda req=req: self._expire(req))
                self._route_request(req)
        for req in reqs:
            req.future.add_done_callback(lambda f, req=req: self._on_future_done(req, f))
        return reqs

    def _on_future_done(self, req: _Request, future: concurrent.futures.Future) -> None:
        """A cancelled future abandons its request (a cancelled write is never retried)."""
        if future.cancelled():
            with self._lock:
                self._finish(req)

    def _finish(self, req: _Request, result: Any = None, error: BaseException | None = None) -> None:
        if req.done:
            return
        req.done = True
        req.in_flight = False
        if req.timer is not None:
            req.timer.cancel()
        self._live.discard(req)
        if isinstance(req, _WriteRequest):
            self._release_seq(req)
            self._admit_window_waiters()
        _settle(req.future, result, error)

    def _expire(self, req: _Request) -> None:
        with self._lock:
            if req.done:
                return
            self._stats["deadlines"] += 1
            self._finish(req, error=self._deadline_error(req))
            if isinstance(req, _RegisterRequest) and self._registration is req:
                self._registration = None
                if any(not w.done for w in self._session_waiters):
                    self._ensure_registration()

    def _deadline_error(self, req: _Request) -> RayKVError:
        last = req.last_error
        if isinstance(req, _WriteRequest) and req.waiting and self._registration is not None:
            last = self._registration.last_error or last  # it was waiting for a session
        cause = f" (last error: {last!r})" if last is not None else ""
        limit = f"within {self._timeout_s:g} s"
        if isinstance(req, _WriteRequest):
            if req.unknown or req.in_flight:
                return OperationTimeoutError(
                    f"{req.what}: no outcome {limit}; the write may or may not have applied{cause}"
                    f"{self._quorum_hint()}")
            if isinstance(last, DiskFullError):
                return DiskFullError(f"{req.what}: not applied {limit}: {last}")
            if req.expired_once and req.waiting:
                return SessionExpiredError(
                    f"{req.what}: the session expired and no new one was registered {limit}; "
                    f"the write was not applied{cause}")
            return UnavailableError(f"{req.what}: no replica took the write {limit}; it was not applied{cause}"
                                    f"{self._quorum_hint()}")
        return UnavailableError(f"{req.what}: no replica answered {limit}{cause}{self._quorum_hint()}")

    def _quorum_hint(self) -> str:
        shard = self._route.shard
        return (f"; if shard {shard} lost its quorum (`raykv status` says so) because a majority of its "
                f"replicas is gone for good, `raykv recover --shard {shard}` re-founds it from its best survivor")

    def _close_error(self, req: _Request) -> RayKVError:
        if isinstance(req, _WriteRequest) and (req.unknown or req.in_flight):
            return OperationTimeoutError(f"{req.what}: the client was closed while the write was in flight; "
                                         "it may or may not have applied")
        return ShutdownError(f"{req.what}: the client was closed before the request was sent")

    # -- routing -----------------------------------------------------------------------
    def _route_request(self, req: _Request) -> None:
        """Queue ``req``'s next attempt on the lane of its target replica."""
        if req.done or self._closed:
            return
        if isinstance(req, _WriteRequest) and not self._bind_session(req):
            return
        if req.stale:
            target = self._route.stale_target(req.avoid)
        else:
            target = self._route.leader_target(req.avoid)
        req.gen += 1
        self._lane(target).enqueue(req.kind, (req, req.gen))

    def _lane(self, rid: int) -> _Lane:
        """The lane of replica ``rid``, started on first use for a replica learned from a leader hint."""
        lane = self._lanes.get(rid)
        if lane is None:
            lane = self._lanes[rid] = _Lane(rid, self._dispatch, self._max_calls_in_flight)
            lane.start()
        return lane

    def _retry_later(self, req: _Request) -> None:
        """Route ``req`` again after its next backoff delay, rounded up to the retry grid.

        Retries due in the same grid slot are routed together by one timer, so
        requests backing off at about the same time share calls again.
        """
        now = time.monotonic()
        delay = min(req.backoff.next_delay(), max(0.0, req.deadline - now))
        slot = math.ceil((now + delay) / _RETRY_GRID_S)
        retries = self._retry_slots.get(slot)
        if retries is None:
            retries = self._retry_slots[slot] = []
            self._timers.call_at(slot * _RETRY_GRID_S, lambda: self._retry_slot(slot))
        retries.append((req, req.gen))
        self._stats["backoffs"] += 1

    def _retry_slot(self, slot: int) -> None:
        with self._lock:
            for req, gen in self._retry_slots.pop(slot, ()):
                if not req.done and req.gen == gen and not req.in_flight:
                    self._route_request(req)

    def _retry_elsewhere(self, req: _Request, rid: int) -> None:
        """After ``rid`` failed: another replica at once if a healthy one exists, else back off."""
        req.avoid = rid
        if self._route.has_alternative(rid):
            self._stats["retries"] += 1
            self._route_request(req)
        else:
            self._retry_later(req)

    def _not_leader(self, req: _Request, rid: int, hint: int | None) -> None:
        """Follow a hint at once (at most one hop per replica in a row), else back off and probe on.

        A self-hint (``rid`` leads but refused for now) backs off and retries ``rid``.
        """
        followed = self._route.note_not_leader(rid, hint)
        req.avoid = None if hint == rid else rid
        if followed and req.hops < len(self._route.replica_ids):
            req.hops += 1
            self._stats["redirects"] += 1
            self._route_request(req)
        else:
            req.hops = 0
            self._retry_later(req)

    # -- sessions ----------------------------------------------------------------------
    def _bind_session(self, req: _WriteRequest) -> bool:
        """Give ``req`` a seq in the current session; False if it must wait for one.

        It waits for a registration when there is no session, and for room in
        the seq window when ``window`` seqs above ``acked_seq`` are already
        allocated. The window is what keeps a session's cache of unacknowledged
        results (``max_pending_per_session``) from filling up: a write is only
        ever sent with ``seq <= acked_seq + window``, so the machine never holds
        more than ``window`` results above its ``acked_seq`` and never answers
        ``TOO_MANY_PENDING`` (which, with seqs applied out of order, could block
        the lowest outstanding seq for good).
        """
        session = self._session
        if session is None:
            if not req.waiting:
                req.waiting = True
                self._session_waiters.append(req)
            self._ensure_registration()
            return False
        if req.session is not session:
            if not session.tracker.can_allocate(self._window):  # (waiters take any room as soon as it appears)
                if not req.queued_for_window:
                    req.queued_for_window = True
                    self._window_waiters.append(req)
                return False
            self._release_seq(req)
            req.session, req.seq = session, session.tracker.allocate()
        return True

    def _release_seq(self, req: _WriteRequest) -> None:
        if req.session is not None:
            req.session.tracker.finish(req.seq)

    def _admit_window_waiters(self) -> None:
        """Route waiting writes, oldest first, while the current session's window has room."""
        session = self._session
        while self._window_waiters and session is not None and session.tracker.can_allocate(self._window):
            waiter = self._window_waiters.popleft()
            waiter.queued_for_window = False
            if not waiter.done:
                self._route_request(waiter)

    def _ensure_registration(self) -> None:
        if self._registration is None or self._registration.done:
            reg = _RegisterRequest(self._deadline(), self._new_backoff())
            self._registration = reg
            self._live.add(reg)
            reg.timer = self._timers.call_at(reg.deadline, lambda: self._expire(reg))
            self._stats["registrations"] += 1
            self._route_request(reg)

    def _install_session(self, reg: _RegisterRequest, sid: int) -> None:
        self._finish(reg, result=sid)
        if self._session is not None:
            return  # a late grant of an earlier registration: an orphan session, it will expire
        self._session = _Session(sid)
        if self._registration is reg:
            self._registration = None
        waiters, self._session_waiters = self._session_waiters, []
        for waiter in waiters:
            waiter.waiting = False
            self._route_request(waiter)
        self._admit_window_waiters()

    def _session_expired(self, req: _WriteRequest, error: RayKVError) -> None:
        """Resend under a new session if no attempt may have applied; else the outcome is unknown."""
        self._note_error(req, error)
        if req.unknown:
            failure = OperationTimeoutError(
                f"{req.what}: the session expired while the write was being retried; "
                "an earlier attempt may have applied")
            failure.__cause__ = error
            self._finish(req, error=failure)
            return
        if self._session is req.session:
            self._session = None
        req.expired_once = True
        req.avoid = None
        self._route_request(req)
