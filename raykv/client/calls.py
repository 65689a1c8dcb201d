"""Sending calls and handling their replies: the half of ``_Core`` that talks to replicas.

:class:`_CallsMixin` is mixed into :class:`~raykv.client.core._Core` and uses
its state (``_lock``, ``_route``, ``_transport``, ``_timers``, ``_stats``,
``_closed``, ``_call_timeout_s``, ``_registration``, ``_session_waiters``)
and its lifecycle, routing and session methods (``_finish``, ``_retry_later``,
``_retry_elsewhere``, ``_not_leader``, ``_session_expired``, ``_install_session``).
Every method except :meth:`_dispatch` (a lane thread) and the transport
callbacks runs under ``_lock``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from typing import Any

from ..errors import (
    DefiniteError,
    DiskFullError,
    InvalidRequestError,
    LeadershipLostError,
    NotLeaderError,
    OperationTimeoutError,
    ProposalDroppedError,
    RayKVError,
    ReplicaDataLostError,
    SessionExpiredError,
    ShardMapChangedError,
    ShutdownError,
)
from ..kv.codec import decode_result
from ..kv.commands import ErrorCode, Failed, Flag, Ok, Result
from ..protocol import SessionGrant, Write
from .lanes import _Call, _Lane
from .request import (
    _REGISTER,
    _SCAN_KINDS,
    _SUBMIT,
    _ReadRequest,
    _RegisterRequest,
    _Request,
    _ScanRequest,
    _WriteRequest,
)
from .transport import _ActorGone, _CallLost, _CallNotSent, _ProtocolError

log = logging.getLogger("raykv.client")
_GONE = (ShutdownError, ReplicaDataLostError)
"""A replica that cannot take any request (shutting down, or lost its data): try another one."""


class _CallsMixin:
    """Sending and reply handling of :class:`~raykv.client.core._Core` (see the module docstring)."""

    # -- sending -----------------------------------------------------------------------
    def _dispatch(self, lane: _Lane, kind: str, batch: list[tuple[_Request, int]]) -> None:
        """Lane thread: send one call for ``batch``; always ends in :meth:`_on_call_done` or a release."""
        with self._lock:
            live = [(req, gen) for req, gen in batch if not req.done and req.gen == gen]
            if not live or self._closed:
                lane.release()
                return
            try:
                method, args = self._wire_call(kind, [req for req, _ in live])
            except Exception as exc:  # a client bug: fail the batch (nothing was sent) rather than leak the lane
                log.exception("raykv client: cannot build a %s call", kind)
                lane.release()
                for req, _ in live:
                    self._finish(req, error=RayKVError(f"{req.what}: internal client error {exc!r}; not sent"))
                return
            for req, _ in live:
                req.in_flight = True
            remaining = max(req.deadline for req, _ in live) - time.monotonic()
            call = _Call(lane, kind, live, max(0.001, min(self._call_deadline([r for r, _ in live]), remaining)))
            self._stats[f"calls.{kind}"] += 1
            self._stats[f"items.{kind}"] += len(live)
        try:
            future = self._transport.call(lane.rid, method, args)
        except Exception as exc:
            error = exc if isinstance(exc, _CallNotSent) else _CallNotSent(repr(exc))
            self._on_call_done(call, None, error)
            return
        call.timer = self._timers.call_later(call.timeout_s, lambda: self._on_call_timeout(call))
        future.add_done_callback(lambda f: self._on_future(call, f))

    def _call_deadline(self, reqs: list[_Request]) -> float:
        """``call_timeout_s`` doubled for every earlier call of these requests that timed out
        (capped at 16x): a dead or frozen replica is given up on quickly (fast failover), while
        a call that is merely slow (a loaded machine, a big page) gets more time on each retry."""
        return self._call_timeout_s * 2 ** min(4, min(r.calls_timed_out for r in reqs))

    def _wire_call(self, kind: str, reqs: list[_Request]) -> tuple[str, tuple]:
        if kind == _SUBMIT:
            return "submit", ([self._wire_write(req) for req in reqs],)
        if kind == _REGISTER:
            return "register_session", ()
        if kind in _SCAN_KINDS:
            (req,) = reqs
            return "scan", (req.start, req.end, req.limit, req.consistency)
        return "read", ([req.key for req in reqs], kind)

    @staticmethod
    def _wire_write(req: _WriteRequest) -> Write:
        session = req.session
        return Write(session.id, req.seq, min(session.tracker.acked, req.seq - 1), req.op)

    # -- replies -----------------------------------------------------------------------
    def _on_future(self, call: _Call, future: concurrent.futures.Future) -> None:
        try:
            reply, error = future.result(), None
        except BaseException as exc:  # any transport failure, including cancellation
            reply, error = None, exc
        self._on_call_done(call, reply, error)

    def _on_call_timeout(self, call: _Call) -> None:
        with self._lock:
            if call.answered or call.timed_out:
                return
            call.timed_out = True
            call.lane.release()
            self._stats["call_timeouts"] += 1
            self._route.note_failure(call.lane.rid)
            error = _CallLost(f"replica {call.lane.rid} did not answer {call.kind} within {call.timeout_s:g} s")
            for req, gen in call.items:
                req.calls_timed_out += 1
                if self._conclude(req, gen):
                    self._lost(req, call.lane.rid, error, unknown=True)

    def _on_call_done(self, call: _Call, reply: Any, error: BaseException | None) -> None:
        with self._lock:
            if call.answered:
                return
            call.answered = True
            if call.timer is not None:
                call.timer.cancel()
            if not call.timed_out:
                call.lane.release()
            if error is not None:
                self._on_call_failed(call, error)
            elif call.kind == _SUBMIT:
                self._on_submit_reply(call, reply)
            elif call.kind == _REGISTER:
                self._on_register_reply(call, reply)
            elif call.kind in _SCAN_KINDS:
                self._on_scan_reply(call, reply)
            else:
                self._on_read_reply(call, reply)

    def _on_call_failed(self, call: _Call, error: BaseException) -> None:
        rid = call.lane.rid
        if not call.timed_out:
            self._stats["transport_errors"] += 1
            self._route.note_failure(rid)
        unknown = not isinstance(error, _CallNotSent)
        for req, gen in call.items:
            if self._conclude(req, gen):
                self._lost(req, rid, error, unknown)

    def _note_error(self, req: _Request, error: BaseException) -> None:
        req.last_error = error
        self._stats[f"errors.{type(error).__name__}"] += 1

    def _conclude(self, req: _Request, gen: int) -> bool:
        """End the attempt ``gen`` of ``req``; True iff it was the current attempt."""
        if req.done or req.gen != gen or not req.in_flight:
            return False
        req.in_flight = False
        return True

    def _lost(self, req: _Request, rid: int, error: BaseException, unknown: bool) -> None:
        """The attempt at ``rid`` got no answer (``unknown``: it may have executed)."""
        self._note_error(req, error)
        if unknown and isinstance(req, _WriteRequest):
            req.unknown = True
        if isinstance(error, _ActorGone):
            req.gone.add(rid)
            if req.gone.issuperset(self._route.replica_ids) and not req.unknown:
                self._map_out_of_date(req)
                return
        self._retry_elsewhere(req, rid)

    def _map_out_of_date(self, req: _Request) -> None:
        """No actor of this route exists (the shard was retired or re-placed since the caller's
        map was read): a definite :class:`ShardMapChangedError` makes the store client refresh its
        map instead of probing names that will never answer until its timeout."""
        names = ", ".join(self._route.actor_name(r) for r in self._route.replica_ids)
        error = ShardMapChangedError(f"{req.what}: none of shard {self._route.shard}'s replica actors "
                                     f"exists ({names}): the shard map is out of date")
        if isinstance(req, _RegisterRequest):
            self._fail_registration(req, error)
        else:
            self._finish(req, error=error)

    def _protocol_error(self, call: _Call, message: str) -> None:
        log.warning("raykv client: replica %s broke the protocol: %s", call.lane.rid, message)
        self._stats["protocol_errors"] += 1
        self._route.note_failure(call.lane.rid)
        error = _ProtocolError(message)
        for req, gen in call.items:
            if self._conclude(req, gen):
                self._lost(req, call.lane.rid, error, unknown=True)

    # writes
    def _on_submit_reply(self, call: _Call, reply: Any) -> None:
        n = len(call.items)
        if isinstance(reply, RayKVError):
            outcomes = [reply] * n
        elif isinstance(reply, (list, tuple)) and len(reply) == n:
            outcomes = list(reply)
        else:
            self._protocol_error(call, f"submit of {n} writes answered {type(reply).__name__}")
            return
        for (req, gen), outcome in zip(call.items, outcomes):
            self._on_write_outcome(req, gen, call.lane.rid, outcome)

    def _on_write_outcome(self, req: _WriteRequest, gen: int, rid: int, outcome: Any) -> None:
        if req.done:
            return
        result = _decode_outcome(outcome)
        if isinstance(result, (Ok, Flag)):  # an answer, from whichever attempt
            if req.gen == gen and req.in_flight:
                self._route.note_leader(rid)
            self._finish(req, result=result)
            return
        if not self._conclude(req, gen):
            return
        if isinstance(result, Failed):
            self._route.note_leader(rid)
            self._on_write_failed(req, rid, result)
        elif isinstance(result, RayKVError):
            self._on_write_error(req, rid, result)
        else:
            self._stats["protocol_errors"] += 1
            self._lost(req, rid, _ProtocolError(f"bad write outcome {result!r}"), unknown=True)

    def _on_write_failed(self, req: _WriteRequest, rid: int, failed: Failed) -> None:
        error = failed.to_error()
        if failed.code is ErrorCode.SESSION_EXPIRED:
            self._session_expired(req, error)
        elif failed.code is ErrorCode.TOO_MANY_PENDING:
            self._note_error(req, error)
            req.avoid = None
            self._retry_later(req)
        elif failed.code is ErrorCode.WRONG_SHARD:
            # definite even after a lost attempt: the seq's first application was this refusal
            # (the machine caches it), so the op was never applied here
            self._note_error(req, error)
            self._finish(req, error=error)
        else:
            self._fail_write(req, error)

    def _on_write_error(self, req: _WriteRequest, rid: int, error: RayKVError) -> None:
        self._note_error(req, error)
        if isinstance(error, NotLeaderError):
            self._not_leader(req, rid, error.leader_id)
        elif isinstance(error, SessionExpiredError):
            self._session_expired(req, error)
        elif isinstance(error, (LeadershipLostError, OperationTimeoutError)):
            req.unknown = True
            if isinstance(error, LeadershipLostError):
                self._route.note_not_leader(rid, None)
            req.avoid = None
            self._retry_later(req)
        elif isinstance(error, (ProposalDroppedError, DiskFullError)):  # a full leader hands leadership away
            req.avoid = None
            self._retry_later(req)
        elif isinstance(error, _GONE):
            self._route.note_failure(rid)
            self._lost(req, rid, error, unknown=False)
        else:
            self._fail_write(req, error)

    def _fail_write(self, req: _WriteRequest, error: RayKVError) -> None:
        """Raise ``error``, unless it is definite but an earlier attempt may have applied."""
        if req.unknown and isinstance(error, DefiniteError) and not isinstance(error, InvalidRequestError):
            failure = OperationTimeoutError(
                f"{req.what}: {error}; an earlier attempt may have applied")
            failure.__cause__ = error
            error = failure
        self._finish(req, error=error)

    # registration
    def _on_register_reply(self, call: _Call, reply: Any) -> None:
        (req, gen), rid = call.items[0], call.lane.rid
        if isinstance(reply, SessionGrant):
            if req.gen == gen and req.in_flight:
                self._route.note_leader(rid)
            self._install_session(req, reply.session)
            return
        if not self._conclude(req, gen):
            return
        if not isinstance(reply, RayKVError):
            self._stats["protocol_errors"] += 1
            self._lost(req, rid, _ProtocolError(f"register_session answered {reply!r}"), unknown=True)
            return
        self._note_error(req, reply)
        if isinstance(reply, NotLeaderError):
            self._not_leader(req, rid, reply.leader_id)
        elif isinstance(reply, _GONE):
            self._route.note_failure(rid)
            self._lost(req, rid, reply, unknown=False)
        elif isinstance(reply, InvalidRequestError):
            self._fail_registration(req, reply)
        else:
            self._retry_later(req)

    def _fail_registration(self, reg: _RegisterRequest, error: RayKVError) -> None:
        self._finish(reg, error=error)
        if self._registration is reg:
            self._registration = None
        waiters, self._session_waiters = self._session_waiters, []
        for waiter in waiters:
            self._finish(waiter, error=error)

    # reads
    def _on_read_reply(self, call: _Call, reply: Any) -> None:
        rid = call.lane.rid
        if isinstance(reply, RayKVError):
            for req, gen in call.items:
                if self._conclude(req, gen):
                    self._on_read_error(req, rid, reply)
            return
        if not (isinstance(reply, (list, tuple)) and len(reply) == len(call.items)
                and all(value is None or isinstance(value, bytes) for value in reply)):
            self._protocol_error(call, f"read of {len(call.items)} keys answered {type(reply).__name__}")
            return
        if call.kind != "stale":
            self._route.note_leader(rid)
        for (req, _), value in zip(call.items, reply):
            self._finish(req, result=value)

    def _on_read_error(self, req: _ReadRequest | _ScanRequest, rid: int, error: RayKVError) -> None:
        self._note_error(req, error)
        if isinstance(error, NotLeaderError):
            self._not_leader(req, rid, error.leader_id)
        elif isinstance(error, (InvalidRequestError, ShardMapChangedError)):
            self._finish(req, error=error)  # bad request, or keys not served here: the caller re-routes
        elif isinstance(error, _GONE) or req.stale:
            self._route.note_failure(rid)
            self._lost(req, rid, error, unknown=False)
        else:
            req.avoid = None
            self._retry_later(req)


    # scans
    def _on_scan_reply(self, call: _Call, reply: Any) -> None:
        (req, gen), rid = call.items[0], call.lane.rid
        if isinstance(reply, RayKVError):
            if self._conclude(req, gen):
                self._on_read_error(req, rid, reply)
            return
        problem = _scan_page_problem(req, reply)
        if problem:
            self._protocol_error(call, problem)
            return
        if not req.stale:
            self._route.note_leader(rid)
        pairs, more = reply
        self._finish(req, result=([(k, v) for k, v in pairs], bool(more)))


def _scan_page_problem(req: _ScanRequest, reply: Any) -> str | None:
    """Why ``reply`` is not a valid ``(pairs, more)`` page for ``req`` (None if it is)."""
    if not (isinstance(reply, (list, tuple)) and len(reply) == 2 and isinstance(reply[0], (list, tuple))
            and isinstance(reply[1], bool)):
        return f"{req.what} answered {type(reply).__name__}"
    pairs = reply[0]
    if len(pairs) > req.limit:
        return f"{req.what} answered {len(pairs)} pairs"
    previous = None
    for pair in pairs:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                and isinstance(pair[0], bytes) and isinstance(pair[1], bytes)):
            return f"{req.what} answered a malformed pair"
        key = pair[0]
        if key < req.start or (req.end is not None and key >= req.end) or (previous is not None and key <= previous):
            return f"{req.what} answered key {key!r} out of range or order"
        previous = key
    return None


def _decode_outcome(outcome: Any) -> Result | RayKVError | Any:
    """An encoded result decoded, an error as is, anything else returned for the caller to refuse."""
    if isinstance(outcome, bytes):
        try:
            return decode_result(outcome)
        except ValueError as exc:
            return _ProtocolError(f"undecodable result: {exc}")
    return outcome
