"""The raykv client: ``put``/``get``/``delete``/``cas`` on one shard group, sync and asyncio.

API
---
::

    with Client(store="default", shard=0, replicas=(1, 2, 3), timeout_s=10.0) as kv:
        kv.put("user:1", {"name": "Ada"})          # -> None
        kv.get("user:1")                          # -> {"name": "Ada"}; missing -> default (None)
        kv.get("user:1", consistency="stale")     # "linearizable" (default) | "lease" | "stale"
        kv.cas("user:1", {"name": "Ada"}, {"name": "Ada L."})  # -> True iff swapped
        kv.cas("new-key", None, 1)                # expected=None: the key must be absent
        kv.delete("user:1")                       # -> True iff the key existed
        await kv.aput(...); await kv.aget(...); await kv.adelete(...); await kv.acas(...)

Keys are ``str`` or bytes-like, values anything picklable except ``None``; see
:mod:`raykv.userdata` for the encoding, the size limits and why ``cas``
compares serialized values byte for byte. Arguments are validated (and values
serialized) in the calling thread before anything is sent. Ray must already be
initialized (``ray.init(...)``) in the process that creates the client; the
replicas are the named actors :func:`~raykv.runtime.protocol.replica_actor_name`
in namespace :data:`~raykv.runtime.protocol.NAMESPACE`. ``close()`` (or leaving
the ``with`` block) stops the client's threads; requests still pending then fail.

Consistency levels: ``"linearizable"`` reads go to the leader, which confirms
its leadership (ReadIndex); ``"lease"`` reads are served by the leader under
its lease (falling back to ReadIndex); ``"stale"`` reads are spread round-robin
over all replicas and may return an older value (never one that was not
written). Writes are always linearizable and go to the leader.

Error contract
--------------
Every error is a :class:`~raykv.errors.RayKVError`:

* :class:`~raykv.errors.InvalidRequestError` (and its
  :class:`~raykv.errors.KeyTooLargeError` / :class:`~raykv.errors.ValueTooLargeError`)
  -- a bad key, value or argument, raised before anything is sent (or a
  replica's refusal of a malformed request). Definite.
* :class:`~raykv.errors.UnavailableError` -- the deadline (``timeout_s`` per
  request) passed and the request was never handed to a replica that might
  have applied it (no leader found, all replicas unreachable, every attempt
  refused). Definite. Reads always fail with this on a deadline: they have no effect.
* :class:`~raykv.errors.SessionExpiredError` -- the client's session expired
  before a write's first delivery and no new session could be registered
  before the deadline. Definite.
* :class:`~raykv.errors.OperationTimeoutError` -- a *write* was handed to a
  replica (or an attempt's reply was lost, or the session expired while the
  write was being retried) and no outcome arrived before the deadline. The
  write **may or may not have applied**. Indeterminate.
* :class:`~raykv.errors.ShutdownError` -- the client is closed. Definite for
  requests never sent; a write in flight at ``close()`` gets
  ``OperationTimeoutError`` instead.
* Machine failures of a write are raised as ``Failed.to_error()`` (see
  :class:`~raykv.kv.commands.Failed`).

A caller that sees an :class:`~raykv.errors.IndeterminateError` must read back
to find out. ``NotLeaderError``, ``LeadershipLostError``,
``OperationTimeoutError`` and ``ProposalDroppedError`` answered by a replica
are never raised as such: the client retries them until the deadline (safe for
writes thanks to sessions, below) and then raises one of the errors above.

Exactly-once writes (sessions)
------------------------------
Every write carries ``(session, seq)`` (Raft thesis §6.3): the client
registers a session at the leader on its first write, numbers writes from 1
and reuses a write's ``seq`` on every retry, so the replicated state machine
applies it at most once and answers a retry with the cached result. Each write
also carries ``acked_seq``: the highest seq such that every seq at or below it
is finished (answered, or abandoned by the client after its deadline or a
cancellation; an abandoned seq is never retried), so replicas can drop those
cached answers. At most ``limits.max_pending_per_session`` seqs above
``acked_seq`` are outstanding (later writes wait in the client), so the
session's cache of answers never overflows. If the machine answers ``SESSION_EXPIRED`` to a write's only
attempt, the client registers a new session and resends the write under it
transparently; if the write had been retried (an earlier attempt may have
applied), it raises ``OperationTimeoutError``.

Leader discovery and retries
----------------------------
The client starts at any replica and follows ``NotLeaderError.leader_id``
hints (at most one hop per replica in a row, then it backs off); a refusal
without a hint moves on to the next replica after a backoff (20 ms doubling to
500 ms, with jitter); a replica that names itself (a leader not ready to serve)
is retried after a backoff. A transport failure (any ``ray.exceptions.RayError``:
actor died, unavailable, task error...) or a call without a reply within
``call_timeout_s`` (default 2 s: a lost message) marks the replica suspect for
a second and retries elsewhere; writes keep their seq. ``ProposalDroppedError``
and ``TOO_MANY_PENDING`` are retried after a backoff.

Threading model and coalescing
------------------------------
A client may be shared by any number of threads and asyncio tasks. The
``a*`` methods never block the event loop: they enqueue the request and await
an ``asyncio.wrap_future`` of a ``concurrent.futures.Future``; cancelling the
awaiting task abandons the request (a write may still apply). The sync methods
block the calling thread on the same future. Do not call the sync methods from
an event loop thread.

Behind the API every request is an event-driven state machine (no thread per
request, no polling): one *lane* per replica holds queued requests and has one
dispatcher thread that takes **everything queued** for a kind -- all writes
(``submit(list[Write])``), or all reads of one consistency level
(``read(list[key], level)``) -- and sends it as **one actor call**, with at most
``max_calls_in_flight`` (default 4) calls outstanding per lane. So requests
that arrive while calls are in flight coalesce into the next call (group
commit). Replies complete through ``ObjectRef.future()`` callbacks, deadlines
and backoffs through one timer thread per client. The lanes, timer and
routing state are internal (:class:`_ShardRoute` knows replica ids, actor names
and the believed leader; a router over many shards can replace it).
:meth:`Client.stats` reports calls and items sent per kind (so coalescing is
observable), retries, backoffs, timeouts and errors seen.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import heapq
import itertools
import logging
import math
import os
import random
import threading
import time
import weakref
from typing import Any, Callable, Protocol

import ray
import ray.exceptions

from .errors import (
    ConfigError,
    DefiniteError,
    InvalidRequestError,
    LeadershipLostError,
    NotLeaderError,
    OperationTimeoutError,
    ProposalDroppedError,
    RayKVError,
    SessionExpiredError,
    ShutdownError,
    UnavailableError,
)
from .kv.codec import decode_result
from .kv.commands import Batch, Cas, Delete, ErrorCode, Failed, Flag, Ok, Op, Put, Result
from .kv.limits import KVLimits
from .runtime.protocol import CONSISTENCY_LEVELS, NAMESPACE, SessionGrant, Write, replica_actor_name
from .userdata import decode_value, encode_key, encode_value

__all__ = ["Client", "CONSISTENCY_LEVELS"]

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 2.0
"""Default deadline of one actor call; a call without a reply by then counts as lost."""
MAX_CALLS_IN_FLIGHT = 4
"""Default bound on outstanding calls per replica lane."""
BACKOFF_INITIAL_S = 0.02
BACKOFF_MAX_S = 0.5
SUSPECT_S = 1.0
"""How long a replica that failed a call is avoided when another one is available."""
MAX_WRITES_PER_CALL = 256
MAX_KEYS_PER_CALL = 4096
MAX_CALL_BYTES = 16 * 1024 * 1024
"""Soft bound on the key and value bytes of one call (a single larger request still goes)."""
_RETRY_GRID_S = 0.01
"""Backoff retries due in the same 10 ms slot fire together, so they coalesce into the same calls."""
_WAIT_GRACE_S = 1.0
"""Sync callers wait this much past the deadline before expiring the request themselves."""

_SUBMIT, _REGISTER = "submit", "register"
_LANE_KINDS = (_SUBMIT, _REGISTER) + CONSISTENCY_LEVELS


# -- pure helpers -------------------------------------------------------------------
class _SeqTracker:
    """Sequence numbers of one session and its ``acked_seq``. Not thread-safe.

    :meth:`allocate` hands out 1, 2, 3, ...; :meth:`finish` marks a seq answered
    or abandoned (idempotent). :attr:`acked` is the highest seq such that every
    seq at or below it is finished (0 if none), so it is always below every
    unfinished seq.
    """

    __slots__ = ("_next", "_acked", "_finished")

    def __init__(self) -> None:
        self._next = 1
        self._acked = 0
        self._finished: set[int] = set()

    @property
    def acked(self) -> int:
        return self._acked

    @property
    def outstanding(self) -> int:
        """How many allocated seqs are not finished."""
        return self._next - 1 - self._acked - len(self._finished)

    def can_allocate(self, window: int) -> bool:
        """Would the next seq be within ``window`` of :attr:`acked` (``next <= acked + window``)?"""
        return self._next <= self._acked + window

    def allocate(self) -> int:
        seq = self._next
        self._next += 1
        return seq

    def finish(self, seq: int) -> None:
        """Mark ``seq`` finished; ``ValueError`` if it was never allocated."""
        if not 1 <= seq < self._next:
            raise ValueError(f"seq {seq} was never allocated (next is {self._next})")
        if seq <= self._acked:
            return
        self._finished.add(seq)
        while self._acked + 1 in self._finished:
            self._acked += 1
            self._finished.discard(self._acked)


class _Backoff:
    """Exponential backoff with jitter.

    The n-th delay (from 0) is uniform in ``[d/2, d]`` with ``d = min(initial * 2**n, maximum)``.
    """

    __slots__ = ("_rng", "_initial", "_maximum", "_next")

    def __init__(self, rng: random.Random, initial: float = BACKOFF_INITIAL_S,
                 maximum: float = BACKOFF_MAX_S) -> None:
        self._rng = rng
        self._initial = initial
        self._maximum = maximum
        self._next = initial

    def next_delay(self) -> float:
        base = self._next
        self._next = min(self._next * 2, self._maximum)
        return base * (0.5 + 0.5 * self._rng.random())

    def reset(self) -> None:
        self._next = self._initial


class _ShardRoute:
    """Where the requests of one shard group go. Not thread-safe (the client holds its lock).

    Knows the replica ids, their actor names and the believed leader, and
    keeps replicas that just failed a call *suspect* for ``suspect_s``: they
    are chosen only when every other choice is suspect too.
    """

    def __init__(self, store: str, shard: int, replica_ids: tuple[int, ...], *,
                 suspect_s: float = SUSPECT_S, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        _check_route_args(store, shard, replica_ids)
        self.store = store
        self.shard = shard
        self.replica_ids = tuple(replica_ids)
        self.leader: int | None = None
        self._suspect_s = suspect_s
        self._clock = clock
        self._suspect_until: dict[int, float] = {}
        start = (rng or random.Random(0)).randrange(len(self.replica_ids))
        self._cursor = start
        self._stale_cursor = start

    def actor_name(self, rid: int) -> str:
        return replica_actor_name(self.store, self.shard, rid)

    def is_suspect(self, rid: int) -> bool:
        return self._suspect_until.get(rid, -math.inf) > self._clock()

    def leader_target(self, avoid: int | None = None) -> int:
        """The believed leader unless it is ``avoid`` or suspect; else the next candidate.

        Candidates are probed in id order after ``avoid`` (or from a rotating
        cursor when there is nothing to avoid), non-suspect ones first.
        """
        if self.leader is not None and self.leader != avoid and not self.is_suspect(self.leader):
            return self.leader
        if avoid in self.replica_ids:
            start = self.replica_ids.index(avoid) + 1
        else:
            start = self._cursor
            self._cursor = (self._cursor + 1) % len(self.replica_ids)
        return self._first_choice(start, avoid)

    def stale_target(self, avoid: int | None = None) -> int:
        """Round-robin over all replicas (non-suspect ones and not ``avoid`` first)."""
        start = self._stale_cursor
        choice = self._first_choice(start, avoid)
        self._stale_cursor = (self.replica_ids.index(choice) + 1) % len(self.replica_ids)
        return choice

    def _first_choice(self, start: int, avoid: int | None) -> int:
        n = len(self.replica_ids)
        order = [self.replica_ids[(start + i) % n] for i in range(n)]
        for acceptable in (lambda r: r != avoid and not self.is_suspect(r), lambda r: r != avoid):
            for rid in order:
                if acceptable(rid):
                    return rid
        return order[0]

    def has_alternative(self, rid: int) -> bool:
        """Is there a non-suspect replica other than ``rid``?"""
        return any(r != rid and not self.is_suspect(r) for r in self.replica_ids)

    def note_leader(self, rid: int) -> None:
        """``rid`` acted as leader (answered a leader-only request)."""
        self.leader = rid
        self._suspect_until.pop(rid, None)

    def note_not_leader(self, rid: int, hint: int | None) -> bool:
        """``rid`` refused as not leader. True iff ``hint`` names another known replica (now the leader).

        A replica naming itself (a leader that cannot serve yet, e.g. a dropped
        ReadIndex) stays the believed leader: the request is retried there later.
        """
        self._suspect_until.pop(rid, None)
        if hint == rid:
            self.leader = rid
            return False
        if hint is not None and hint != rid and hint in self.replica_ids:
            self.leader = hint
            return True
        if self.leader == rid:
            self.leader = None
        return False

    def note_failure(self, rid: int) -> None:
        """A call to ``rid`` failed or went unanswered: suspect it, and forget it as leader."""
        self._suspect_until[rid] = self._clock() + self._suspect_s
        if self.leader == rid:
            self.leader = None


def _check_route_args(store: object, shard: object, replica_ids: object) -> None:
    if not isinstance(store, str) or not store:
        raise ConfigError(f"store must be a non-empty str, got {store!r}")
    if not _is_int(shard) or shard < 0:
        raise ConfigError(f"shard must be an int >= 0, got {shard!r}")
    if not isinstance(replica_ids, (tuple, list)) or not replica_ids:
        raise ConfigError(f"replicas must be a non-empty tuple of ints, got {replica_ids!r}")
    if not all(_is_int(r) and r >= 0 for r in replica_ids) or len(set(replica_ids)) != len(replica_ids):
        raise ConfigError(f"replicas must be distinct ints >= 0, got {replica_ids!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def check_consistency(consistency: object) -> str:
    """``consistency`` if it is one of :data:`CONSISTENCY_LEVELS`, else :class:`InvalidRequestError`."""
    if not isinstance(consistency, str) or consistency not in CONSISTENCY_LEVELS:
        raise InvalidRequestError(
            f"consistency must be one of {', '.join(map(repr, CONSISTENCY_LEVELS))}, got {consistency!r}"
        )
    return consistency


def _op_size(op: Op) -> int:
    match op:
        case Put(key, value):
            return len(key) + len(value)
        case Delete(key):
            return len(key)
        case Cas(key, expected, new):
            return len(key) + len(expected or b"") + len(new)
        case Batch(ops):
            return sum(_op_size(item) for item in ops)
    return 0


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


# -- timers -------------------------------------------------------------------------
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


# -- transport ----------------------------------------------------------------------
class _CallNotSent(Exception):
    """The call never reached a replica (its actor could not be looked up or submitted to)."""


class _CallLost(Exception):
    """The call's reply did not arrive within its deadline (the call may still execute)."""


class _ProtocolError(Exception):
    """A reply did not match the protocol (a replica bug); treated like a lost reply."""


class _Transport(Protocol):
    """How the client reaches replica actors (the Ray one, or a fake in tests).

    ``call`` may block briefly (an actor lookup) and is made from lane threads
    only. It returns a future of the method's reply value; the future fails
    with any exception if the call failed in transport. ``call`` itself raises
    :class:`_CallNotSent` when nothing was sent.
    """

    def call(self, rid: int, method: str, args: tuple) -> concurrent.futures.Future: ...

    def close(self) -> None: ...


class _RayTransport:
    """Calls replica actors by name through Ray; caches handles, forgets those of dead actors."""

    def __init__(self, route: _ShardRoute) -> None:
        if not ray.is_initialized():
            raise UnavailableError(
                "Ray is not initialized in this process: call ray.init(address=...) before creating a Client"
            )
        self._names = {rid: route.actor_name(rid) for rid in route.replica_ids}
        self._handles: dict[int, Any] = {}
        self._lock = threading.Lock()

    def call(self, rid: int, method: str, args: tuple) -> concurrent.futures.Future:
        handle = self._handle(rid)
        try:
            ref = getattr(handle, method).remote(*args)
        except Exception as exc:
            self._forget(rid, handle)
            raise _CallNotSent(f"cannot call {method} on {self._names[rid]!r}: {exc!r}") from exc
        future = ref.future()
        future.add_done_callback(lambda f: self._after_call(rid, handle, f))
        return future

    def close(self) -> None:
        with self._lock:
            self._handles.clear()

    def _handle(self, rid: int) -> Any:
        with self._lock:
            handle = self._handles.get(rid)
        if handle is not None:
            return handle
        try:
            handle = ray.get_actor(self._names[rid], namespace=NAMESPACE)
        except Exception as exc:  # ValueError: no such actor; RaySystemError: Ray shut down
            raise _CallNotSent(f"replica actor {self._names[rid]!r} not found: {exc}") from exc
        with self._lock:
            return self._handles.setdefault(rid, handle)

    def _forget(self, rid: int, handle: Any) -> None:
        with self._lock:
            if self._handles.get(rid) is handle:
                del self._handles[rid]

    def _after_call(self, rid: int, handle: Any, future: concurrent.futures.Future) -> None:
        """A dead actor may be re-created under the same name: look it up again next time."""
        if not future.cancelled() and isinstance(future.exception(), ray.exceptions.ActorDiedError):
            self._forget(rid, handle)


# -- requests -----------------------------------------------------------------------
class _Session:
    __slots__ = ("id", "tracker")

    def __init__(self, sid: int) -> None:
        self.id = sid
        self.tracker = _SeqTracker()


class _Request:
    """One request moving through the client; mutated only under the core lock.

    ``gen`` numbers routing attempts; an attempt is *current* while it is in
    flight (``gen`` matches and ``in_flight``). Only the current attempt's
    errors drive retries; an *answer* is accepted from any attempt (all
    attempts of a request are the same operation, and a write's retries share
    its seq). ``unknown``: some attempt of this write may have applied.
    """

    kind = ""

    def __init__(self, what: str, deadline: float, backoff: _Backoff) -> None:
        self.what = what
        self.deadline = deadline
        self.backoff = backoff
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.gen = 0
        self.done = False
        self.in_flight = False
        self.unknown = False
        self.avoid: int | None = None
        self.hops = 0
        self.last_error: BaseException | None = None
        self.timer: _Timer | None = None
        self.size = 0


class _WriteRequest(_Request):
    kind = _SUBMIT

    def __init__(self, op: Op, deadline: float, backoff: _Backoff) -> None:
        super().__init__(op.describe(), deadline, backoff)
        self.op = op
        self.size = _op_size(op)
        self.session: _Session | None = None
        self.seq = 0
        self.waiting = False
        self.queued_for_window = False
        self.expired_once = False


class _ReadRequest(_Request):
    def __init__(self, key: bytes, consistency: str, deadline: float, backoff: _Backoff) -> None:
        super().__init__(f"{consistency} get {key!r}"[:80], deadline, backoff)
        self.kind = consistency
        self.key = key
        self.size = len(key)


class _RegisterRequest(_Request):
    kind = _REGISTER

    def __init__(self, deadline: float, backoff: _Backoff) -> None:
        super().__init__("register-session", deadline, backoff)


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
    :data:`MAX_CALL_BYTES`) and hands it to ``dispatch``, which must call
    :meth:`release` exactly once when the call ends.
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
        cap = 1 if kind == _REGISTER else MAX_WRITES_PER_CALL if kind == _SUBMIT else MAX_KEYS_PER_CALL
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


# -- the engine ---------------------------------------------------------------------
class _Core:
    """Routes, sends, retries and completes requests of one shard group.

    Entry points (:meth:`write`, :meth:`read`, :meth:`expire`, :meth:`close`)
    are thread-safe and never block on the network; everything else runs under
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
        with self._lock:
            if self._closed:
                raise ShutdownError("the raykv client is closed")
            self._live.add(req)
            req.timer = self._timers.call_at(req.deadline, lambda: self._expire(req))
            self._route_request(req)
        req.future.add_done_callback(lambda f: self._on_future_done(req, f))
        return req

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
                    f"{req.what}: no outcome {limit}; the write may or may not have applied{cause}")
            if req.expired_once and req.waiting:
                return SessionExpiredError(
                    f"{req.what}: the session expired and no new one was registered {limit}; "
                    f"the write was not applied{cause}")
            return UnavailableError(f"{req.what}: no replica took the write {limit}; it was not applied{cause}")
        return UnavailableError(f"{req.what}: no replica answered {limit}{cause}")

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
        if req.kind == "stale":
            target = self._route.stale_target(req.avoid)
        else:
            target = self._route.leader_target(req.avoid)
        req.gen += 1
        self._lanes[target].enqueue(req.kind, (req, req.gen))

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
            call = _Call(lane, kind, live, max(0.001, min(self._call_timeout_s, remaining)))
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

    def _wire_call(self, kind: str, reqs: list[_Request]) -> tuple[str, tuple]:
        if kind == _SUBMIT:
            return "submit", ([self._wire_write(req) for req in reqs],)
        if kind == _REGISTER:
            return "register_session", ()
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
        self._retry_elsewhere(req, rid)

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
        elif isinstance(error, ProposalDroppedError):
            req.avoid = None
            self._retry_later(req)
        elif isinstance(error, ShutdownError):
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
        elif isinstance(reply, ShutdownError):
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

    def _on_read_error(self, req: _ReadRequest, rid: int, error: RayKVError) -> None:
        self._note_error(req, error)
        if isinstance(error, NotLeaderError):
            self._not_leader(req, rid, error.leader_id)
        elif isinstance(error, InvalidRequestError):
            self._finish(req, error=error)
        elif isinstance(error, ShutdownError) or req.kind == "stale":
            self._route.note_failure(rid)
            self._lost(req, rid, error, unknown=False)
        else:
            req.avoid = None
            self._retry_later(req)


def _decode_outcome(outcome: Any) -> Result | RayKVError | Any:
    """An encoded result decoded, an error as is, anything else returned for the caller to refuse."""
    if isinstance(outcome, bytes):
        try:
            return decode_result(outcome)
        except ValueError as exc:
            return _ProtocolError(f"undecodable result: {exc}")
    return outcome


# -- the public client ----------------------------------------------------------------
def _put_result(result: Result) -> None:
    return None


def _flag_result(result: Result) -> bool:
    assert isinstance(result, Flag), result
    return result.value


class Client:
    """A thread-safe, asyncio-friendly client of one shard group (see the module docstring).

    ``replicas`` are the replica ids of the group; ``timeout_s`` bounds each
    request; ``limits`` must equal the replicas' :class:`KVLimits` (key and
    value bounds are checked before sending; ``max_pending_per_session`` sizes
    the window of outstanding write seqs, see :meth:`_Core._bind_session`).
    ``call_timeout_s`` (one actor call's deadline) and ``max_calls_in_flight``
    (per replica) are tuning knobs. Constructor arguments that are out of range
    raise :class:`~raykv.errors.ConfigError`; a process without ``ray.init``
    raises :class:`~raykv.errors.UnavailableError`.
    """

    def __init__(self, store: str = "default", shard: int = 0, replicas: tuple[int, ...] = (1, 2, 3), *,
                 timeout_s: float = 10.0, limits: KVLimits | None = None,
                 call_timeout_s: float = CALL_TIMEOUT_S, max_calls_in_flight: int = MAX_CALLS_IN_FLIGHT) -> None:
        replicas = tuple(replicas) if isinstance(replicas, (list, tuple)) else replicas
        route = _ShardRoute(store, shard, replicas, rng=random.Random(int.from_bytes(os.urandom(8), "big")))
        self._setup(route, None, timeout_s, limits, call_timeout_s, max_calls_in_flight)

    @classmethod
    def _over(cls, transport: _Transport, *, store: str = "default", shard: int = 0,
              replicas: tuple[int, ...] = (1, 2, 3), timeout_s: float = 10.0, limits: KVLimits | None = None,
              call_timeout_s: float = CALL_TIMEOUT_S, max_calls_in_flight: int = MAX_CALLS_IN_FLIGHT,
              rng: random.Random | None = None, suspect_s: float = SUSPECT_S) -> "Client":
        """A client over another transport (tests)."""
        client = cls.__new__(cls)
        route = _ShardRoute(store, shard, replicas, rng=rng, suspect_s=suspect_s)
        client._setup(route, transport, timeout_s, limits, call_timeout_s, max_calls_in_flight, rng)
        return client

    def _setup(self, route: _ShardRoute, transport: _Transport | None, timeout_s: float,
               limits: KVLimits | None, call_timeout_s: float, max_calls_in_flight: int,
               rng: random.Random | None = None) -> None:
        self._timeout_s = _check_seconds("timeout_s", timeout_s)
        call_timeout_s = _check_seconds("call_timeout_s", call_timeout_s)
        if not _is_int(max_calls_in_flight) or max_calls_in_flight < 1:
            raise ConfigError(f"max_calls_in_flight must be an int >= 1, got {max_calls_in_flight!r}")
        if limits is not None and not isinstance(limits, KVLimits):
            raise ConfigError(f"limits must be a KVLimits, got {type(limits).__name__}")
        self._limits = limits if limits is not None else KVLimits()
        self._store, self._shard = route.store, route.shard
        transport = transport if transport is not None else _RayTransport(route)
        self._core = _Core(route, transport, timeout_s=self._timeout_s, call_timeout_s=call_timeout_s,
                           max_calls_in_flight=max_calls_in_flight,
                           window=self._limits.max_pending_per_session, rng=rng)
        self._finalizer = weakref.finalize(self, _Core.close, self._core)
        self._finalizer.atexit = False

    # -- sync API ----------------------------------------------------------------------
    def put(self, key: Any, value: Any) -> None:
        """Set ``key`` to ``value`` (not None)."""
        return _put_result(self._wait(self._core.write(self._put_op(key, value))))

    def get(self, key: Any, default: Any = None, consistency: str = "linearizable") -> Any:
        """The value of ``key``, or ``default`` if it is absent."""
        return self._value(self._wait(self._start_read(key, consistency)), default)

    def delete(self, key: Any) -> bool:
        """Remove ``key``; True iff it existed."""
        return _flag_result(self._wait(self._core.write(self._delete_op(key))))

    def cas(self, key: Any, expected: Any, new: Any) -> bool:
        """Set ``key`` to ``new`` iff its value serializes exactly as ``expected`` (None: absent)."""
        return _flag_result(self._wait(self._core.write(self._cas_op(key, expected, new))))

    # -- asyncio API -------------------------------------------------------------------
    async def aput(self, key: Any, value: Any) -> None:
        """:meth:`put` for asyncio: awaits without blocking the event loop."""
        return _put_result(await self._await(self._core.write(self._put_op(key, value))))

    async def aget(self, key: Any, default: Any = None, consistency: str = "linearizable") -> Any:
        """:meth:`get` for asyncio."""
        return self._value(await self._await(self._start_read(key, consistency)), default)

    async def adelete(self, key: Any) -> bool:
        """:meth:`delete` for asyncio."""
        return _flag_result(await self._await(self._core.write(self._delete_op(key))))

    async def acas(self, key: Any, expected: Any, new: Any) -> bool:
        """:meth:`cas` for asyncio."""
        return _flag_result(await self._await(self._core.write(self._cas_op(key, expected, new))))

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        """Stop the client: pending requests fail (see the error contract), new ones raise ShutdownError."""
        self._finalizer()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """Diagnostics: calls and items sent per kind, retries, timeouts, leader, session, acked_seq."""
        return self._core.stats()

    def __repr__(self) -> str:
        return f"Client(store={self._store!r}, shard={self._shard}, timeout_s={self._timeout_s:g})"

    # -- helpers -----------------------------------------------------------------------
    def _put_op(self, key: Any, value: Any) -> Put:
        return Put(encode_key(key, self._limits), encode_value(value, self._limits))

    def _delete_op(self, key: Any) -> Delete:
        return Delete(encode_key(key, self._limits))

    def _cas_op(self, key: Any, expected: Any, new: Any) -> Cas:
        raw_key = encode_key(key, self._limits)
        if new is None:
            raise InvalidRequestError("cas needs a new value (None cannot be stored; use delete() to remove a key)")
        raw_expected = None if expected is None else encode_value(expected, self._limits)
        return Cas(raw_key, raw_expected, encode_value(new, self._limits))

    def _start_read(self, key: Any, consistency: str) -> _ReadRequest:
        level = check_consistency(consistency)
        return self._core.read(encode_key(key, self._limits), level)

    @staticmethod
    def _value(raw: bytes | None, default: Any) -> Any:
        return default if raw is None else decode_value(raw)

    def _wait(self, req: _Request) -> Any:
        try:
            return req.future.result(timeout=self._timeout_s + _WAIT_GRACE_S)
        except concurrent.futures.TimeoutError:
            if req.future.done():
                raise
            self._core.expire(req)
            return req.future.result()

    @staticmethod
    async def _await(req: _Request) -> Any:
        return await asyncio.wrap_future(req.future)
