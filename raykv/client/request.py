"""The records of requests moving through the client (writes, reads, session registrations).

They hold no logic beyond construction: the core mutates them under its lock.
``kind`` names the lane queue a request goes to (:data:`_SUBMIT`,
:data:`_REGISTER`, a consistency level for point reads, or
:func:`_scan_kind` of a level for scans). ``stale`` requests may go to any
replica; all others go to the leader.
"""

from __future__ import annotations

import concurrent.futures
from typing import TYPE_CHECKING

from ..kv.codec import encode_op
from ..kv.commands import Op
from ..protocol import CONSISTENCY_LEVELS
from .route import _Backoff, _SeqTracker

if TYPE_CHECKING:
    from .timers import _Timer

_SUBMIT, _REGISTER = "submit", "register"
_SCAN_KINDS = tuple(f"scan:{level}" for level in CONSISTENCY_LEVELS)


def _scan_kind(consistency: str) -> str:
    return f"scan:{consistency}"


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
    stale = False

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
        self.calls_timed_out = 0
        """Calls of this request that got no answer in time; each doubles the next call's deadline."""
        self.gone: set[int] = set()
        """Replicas whose actor did not exist when this request was sent to them."""


class _WriteRequest(_Request):
    kind = _SUBMIT

    def __init__(self, op: Op, deadline: float, backoff: _Backoff) -> None:
        super().__init__(op.describe(), deadline, backoff)
        self.op = encode_op(op)
        """The operation as sent (:class:`~raykv.protocol.Write` carries it encoded)."""
        self.size = len(self.op)
        self.session: _Session | None = None
        self.seq = 0
        self.waiting = False
        self.queued_for_window = False
        self.expired_once = False


class _ReadRequest(_Request):
    def __init__(self, key: bytes, consistency: str, deadline: float, backoff: _Backoff) -> None:
        super().__init__(f"{consistency} get {key!r}"[:80], deadline, backoff)
        self.kind = consistency
        self.stale = consistency == "stale"
        self.key = key
        self.size = len(key)


class _ScanRequest(_Request):
    """One page of a range scan: ``scan(start, end, limit, consistency)`` -> ``(pairs, more)``."""

    def __init__(self, start: bytes, end: bytes | None, limit: int, consistency: str, deadline: float,
                 backoff: _Backoff) -> None:
        super().__init__(f"{consistency} scan [{start!r}, {end!r}) limit {limit}"[:100], deadline, backoff)
        self.kind = _scan_kind(consistency)
        self.stale = consistency == "stale"
        self.start, self.end, self.limit, self.consistency = start, end, limit, consistency
        self.size = len(start) + len(end or b"")


class _RegisterRequest(_Request):
    kind = _REGISTER

    def __init__(self, deadline: float, backoff: _Backoff) -> None:
        super().__init__("register-session", deadline, backoff)
