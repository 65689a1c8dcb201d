"""Which keys a shard's group serves: its range state, and the range changes that move keys.

Resharding (:mod:`raykv.runtime.scale`) moves a contiguous key range ``[lo, hi)``
from a *source* group to a *target* group through each group's own Raft log,
so every replica of a group agrees on what it serves at every log index:

1. target ``SET`` (a new group): it owns the empty range at ``lo``;
2. source ``FENCE [lo, hi)``: from this entry on, the source refuses every
   request touching the range (``WRONG_SHARD``), so its data there is final
   (step 3's pre-copy comes before it);
3. target ``INGEST_BEGIN [lo, hi)`` and ``INGEST_ROWS`` (the source's rows, in
   chunks) *before* the fence, while the source still serves the range (a pre-copy);
   then, after the fence, ``INGEST_ROWS`` / ``INGEST_DELETE`` of only what differs
   between the source's frozen rows and the target's copy, and ``INGEST_DONE``: the
   target now owns and serves the range (so the fence lasts as long as the delta);
4. the shard map is changed (its epoch grows): clients go to the target;
5. source ``DROP [lo, hi)``: the rows are deleted and the range leaves the
   source for good.

A split moves the upper part of a range to a new group; a merge moves a
whole range into its left neighbour. Every change is idempotent (a coordinator
that died re-proposes it): asking for the state that already holds answers
``Ok``, anything inconsistent answers ``Failed(RANGE_CONFLICT)`` and changes
nothing. Rows of an ingest are written only while that ingest is in
progress, so a duplicate chunk that arrives late cannot overwrite newer writes.

The state is one row under :data:`RANGE_KEY` in the data table, so it rides
in snapshots with the data. The key starts with ``0x00``, which no user key
does (:mod:`raykv.userdata` keys start with ``b"b"`` or ``b"s"``). A group
without the row serves every key: a store created before resharding existed,
and the meta group.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from .keys import show_bound, show_span
from .wire import Reader, Writer

RANGE_KEY = b"\x00raykv:range"
"""The data-table key of a group's :class:`RangeState`; below every user key."""
RESERVED_PREFIX = b"\x00"
"""Keys starting with this byte are raykv's own rows, never user data (scans skip them)."""
RESERVED_END = b"\x01"
"""The first key above every reserved key: user-data scans start at or after it."""
RANGE_VERSION = 1
_TAG_RANGE = 0x52
"""A range state written before ingests had attempts (read only)."""
_TAG_RANGE_FENCED = 0x53
DRIVER_KEY = b"\x00raykv:driver"
"""The data-table key of the newest placement-driver epoch that changed this group (its range
or its membership): a change from an older epoch is refused. Absent: 0."""

Bound = bytes | None
"""An exclusive upper bound; ``None`` is +infinity."""


def below(key: bytes, hi: Bound) -> bool:
    """``key < hi`` with ``hi=None`` as +infinity."""
    return hi is None or key < hi


def bound_le(a: Bound, b: Bound) -> bool:
    """``a <= b`` for upper bounds (``None`` is the largest)."""
    return b is None or (a is not None and a <= b)


class RangeAction(enum.IntEnum):
    """What a :class:`RangeChange` does. Values are part of the wire format."""

    SET = 1
    FENCE = 2
    INGEST_BEGIN = 3
    INGEST_ROWS = 4
    INGEST_DONE = 5
    DROP = 6
    INGEST_DELETE = 7
    """Delete the keys of ``rows`` (values empty) from an ingest in progress (a pre-copied row
    the source deleted before its fence)."""
    INGEST_ABORT = 8
    """Give up an ingest in progress: its rows are deleted and the range is no longer incoming
    (a merge that failed before its fence leaves its target as it was)."""


@dataclass(frozen=True, slots=True)
class RangeState:
    """A group serves keys in ``[start, end)`` except the ``fence``; ``incoming`` is being ingested.

    Invariants: ``start <= end``; the fence, if any, is inside ``[start, end)``
    and reaches ``end``; ``incoming``, if any, is adjacent to ``[start, end)``
    (it begins at ``end`` or ends at ``start``).
    """

    start: bytes
    end: Bound
    fence: tuple[bytes, Bound] | None = None
    incoming: tuple[bytes, Bound] | None = None
    incoming_gen: int = 0
    """The attempt that began the ingest in progress: only its rows and its end are taken."""

    def owns(self, key: bytes) -> bool:
        return self.start <= key and below(key, self.end)

    def serves(self, key: bytes) -> bool:
        """True iff requests on ``key`` are answered here (owned and not fenced)."""
        if not self.owns(key):
            return False
        return self.fence is None or key < self.fence[0]

    def serves_span(self, lo: bytes, hi: Bound) -> bool:
        """True iff every key of ``[lo, hi)`` is served here (a scan's page)."""
        served_end = self.end if self.fence is None else self.fence[0]
        return self.start <= lo and bound_le(hi, served_end)

    def describe(self) -> str:
        """One line, keys as the user wrote them (:func:`~raykv.kv.keys.show_span`)."""
        text = f"range {show_span(self.start, self.end)}"
        if self.fence:
            text += f" fenced from {show_bound(self.fence[0])}"
        if self.incoming:
            text += f" ingesting {show_span(*self.incoming)} (attempt {self.incoming_gen})"
        return text

    def encode(self) -> bytes:
        w = Writer(RANGE_VERSION, _TAG_RANGE_FENCED)
        w.blob(self.start)
        _write_bound(w, self.end)
        for part in (self.fence, self.incoming):
            w.flag(part is not None)
            if part is not None:
                w.blob(part[0])
                _write_bound(w, part[1])
        w.uint(self.incoming_gen)
        return w.getvalue()

    @classmethod
    def decode_stored(cls, raw: bytes | None) -> "RangeState | None":
        """The state stored under :data:`RANGE_KEY` (``raw``: its value, None if absent: then the
        group serves every key, and so is None)."""
        return None if raw is None else cls.decode(bytes(raw))

    @classmethod
    def decode(cls, data: bytes) -> "RangeState":
        r = Reader(data, "kv range state")
        tag = r.header(RANGE_VERSION)
        if tag not in (_TAG_RANGE, _TAG_RANGE_FENCED):
            r.fail("not a range state")
        start, end = r.blob("start"), _read_bound(r)
        parts = [(r.blob("lo"), _read_bound(r)) if r.flag("present") else None for _ in range(2)]
        gen = r.uint("incoming_gen") if tag == _TAG_RANGE_FENCED else 0
        r.finish()
        return cls(start, end, parts[0], parts[1], gen)


def _write_bound(w: Writer, bound: Bound) -> None:
    w.flag(bound is not None)
    if bound is not None:
        w.blob(bound)


def _read_bound(r: Reader) -> Bound:
    return r.blob("bound") if r.flag("bounded") else None


class RangeConflict(Exception):
    """A range change that does not fit the group's state (nothing was changed)."""


def decode_driver(raw: bytes | None) -> int:
    """The placement-driver epoch stored under :data:`DRIVER_KEY` (``raw``: its value; None: 0)."""
    return 0 if raw is None else int.from_bytes(raw, "big")


def encode_driver(epoch: int) -> bytes:
    return epoch.to_bytes(8, "big")


def next_state(state: RangeState | None, action: RangeAction, lo: bytes, hi: Bound, gen: int = 0) -> RangeState | None:
    """The state after ``action`` on ``[lo, hi)`` by ingest attempt ``gen``; ``None`` (for ``SET``
    only) if absent stays absent.

    Within an ingest, rows, deletes and its end are taken only from the attempt (``gen``) that
    began it last: a chunk sent by an abandoned attempt (a call given up on after its
    deadline, still queued) is refused. (Which placement driver may change a range at all is
    decided before, from :data:`DRIVER_KEY`: see :func:`raykv.kv.machine.change_range`.)

    ``SET`` only initialises: on a group that has a state starting at ``lo`` it changes nothing.
    Returns ``state`` itself when the change already holds (idempotent); raises
    :class:`RangeConflict` when it cannot hold. ``INGEST_ROWS`` and ``INGEST_DELETE`` do not
    change the range; they write only while the ingest of ``[lo, hi)`` by that attempt is in
    progress.
    """
    if action is RangeAction.SET:
        if state is None:
            return RangeState(lo, hi)
        if state.start == lo:
            return state  # set before (a resumed coordinator); later changes may have grown it
        raise RangeConflict(f"cannot set {show_span(lo, hi)}: the group has {state.describe()}")
    if state is None:
        raise RangeConflict(f"{action.name} needs a range state; this group serves every key")
    if action is RangeAction.FENCE:
        return _fence(state, lo, hi)
    if action is RangeAction.DROP:
        return _drop(state, lo, hi)
    if action is RangeAction.INGEST_ABORT:
        return _abort(state, lo, hi, gen)
    return _ingest(state, action, lo, hi, gen)


def _fence(state: RangeState, lo: bytes, hi: Bound) -> RangeState:
    if state.fence == (lo, hi):
        return state
    if state.fence is not None or state.incoming is not None:
        raise RangeConflict(f"cannot fence {show_span(lo, hi)}: the group has {state.describe()}")
    if not (state.start <= lo and hi == state.end and below(lo, hi)):
        raise RangeConflict(f"fence {show_span(lo, hi)} must be a non-empty upper part of {state.describe()}")
    return replace(state, fence=(lo, hi))


def _drop(state: RangeState, lo: bytes, hi: Bound) -> RangeState:
    if state.fence == (lo, hi):
        return replace(state, end=lo, fence=None)
    if state.fence is None and not below(lo, state.end) or state.end == lo:
        return state  # already dropped: the range lies at or past our end
    raise RangeConflict(f"drop {show_span(lo, hi)} needs that fence; the group has {state.describe()}")


def _ingest(state: RangeState, action: RangeAction, lo: bytes, hi: Bound, gen: int) -> RangeState:
    if _ingested(state, lo, hi):
        return state  # this ingest already finished: the range is ours
    if state.incoming == (lo, hi):
        if action is RangeAction.INGEST_BEGIN and gen >= state.incoming_gen:
            return replace(state, incoming_gen=gen)  # (a new attempt takes the ingest over)
        if gen != state.incoming_gen:
            raise RangeConflict(f"{action.name} {show_span(lo, hi)} of attempt {gen}: {state.describe()}")
        if action is RangeAction.INGEST_DONE:
            return RangeState(min(state.start, lo), _max_bound(state.end, hi), state.fence)
        return state
    if action is RangeAction.INGEST_BEGIN and state.incoming is None and state.fence is None and (
            lo == state.end or hi == state.start):
        return replace(state, incoming=(lo, hi), incoming_gen=gen)
    raise RangeConflict(f"{action.name} {show_span(lo, hi)} does not fit {state.describe()}")


def _ingested(state: RangeState, lo: bytes, hi: Bound) -> bool:
    """Whether ``[lo, hi)`` is this group's own range already (an ingest of it finished)."""
    return (state.incoming is None and state.start <= lo and bound_le(hi, state.end)
            and (state.fence is None or bound_le(hi, state.fence[0])) and lo != state.end)


def _abort(state: RangeState, lo: bytes, hi: Bound, gen: int) -> RangeState:
    if state.incoming == (lo, hi):
        if gen < state.incoming_gen:
            raise RangeConflict(f"INGEST_ABORT {show_span(lo, hi)} of attempt {gen}: {state.describe()}")
        return replace(state, incoming=None, incoming_gen=0)
    if _ingested(state, lo, hi):
        raise RangeConflict(f"cannot abort the ingest of {show_span(lo, hi)}: it finished ({state.describe()})")
    return state  # aborted before (or never begun)


def _max_bound(a: Bound, b: Bound) -> Bound:
    return a if bound_le(b, a) else b
