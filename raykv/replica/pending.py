"""Client requests waiting inside a replica engine: proposed writes until applied, reads until confirmed.

Answers are *completions*: ``(request id, value)`` pairs the engine hands to its
shell, which maps request ids to whatever its callers wait on.

Writes (:class:`PendingWrites`): a write proposed at ``(index, term)`` is answered
with the state machine's result when the entry at ``index`` is applied *with that
term*. If another term's entry lands there, or this replica stops leading first,
the write is answered with :class:`~raykv.errors.LeadershipLostError`
(indeterminate: the client retries with the same ``(session, seq)``, which applies
at most once).

Reads (:class:`PendingReads`): reads arriving between two turns of the engine share
one ReadIndex context per kind (lease or not): one confirmation round for all of
them. Once confirmed at index ``i`` they are served as soon as the applied index
reaches ``i``.

For metrics, a write may carry its proposal time and a read group the time its
first read arrived (both ``Stamp.mono_s`` of the inputs that brought them).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import LeadershipLostError, RayKVError

Outcome = object
Complete = Callable[[int, object], None]
"""``complete(request_id, value)``: hands one answer to the shell."""


@dataclass
class WriteBatch:
    """One request of ``len(outcomes)`` writes: answered, in order, once every slot is filled."""

    rid: int
    outcomes: list
    missing: int
    complete: Complete

    @classmethod
    def of(cls, rid: int, size: int, complete: Complete) -> "WriteBatch":
        return cls(rid, [None] * size, size, complete)

    def fill(self, slot: int, outcome: Outcome) -> None:
        self.outcomes[slot] = outcome
        self.missing -= 1
        if self.missing == 0:
            self.complete(self.rid, self.outcomes)


class PendingWrites:
    """Proposed writes by log index, and by ``(session, seq)`` while they are in the log.

    A client that retries a write still in flight here (its earlier call timed out at the
    client) is attached to the entry already proposed instead of proposing it again: the
    state machine would answer the copy from its session cache anyway, but a slow leader
    would otherwise grow its log with every retry exactly when it is overloaded.
    """

    def __init__(self) -> None:
        self._by_index: dict[int, tuple[int, list[tuple[WriteBatch, int]], tuple[int, int] | None, float | None]] = {}
        self._by_request: dict[tuple[int, int], int] = {}

    def __len__(self) -> int:
        return len(self._by_index)

    def add(self, index: int, term: int, batch: WriteBatch, slot: int, request: tuple[int, int] | None = None,
            proposed_at: float | None = None) -> None:
        """Answer ``batch[slot]`` when the entry at ``index`` applies; ``request`` = (session, seq);
        ``proposed_at``: when it was proposed (returned by :meth:`applied`)."""
        self._by_index[index] = (term, [(batch, slot)], request, proposed_at)
        if request is not None:
            self._by_request[request] = index

    def attach(self, request: tuple[int, int], batch: WriteBatch, slot: int) -> bool:
        """Also answer ``batch[slot]`` with the entry of ``request`` if it is pending here."""
        index = self._by_request.get(request)
        if index is None:
            return False
        self._by_index[index][1].append((batch, slot))
        return True

    def applied(self, index: int, term: int, outcome: Outcome) -> float | None:
        """The entry at ``index`` (of ``term``) was applied with result ``outcome``. Returns the
        ``proposed_at`` of the write it answers, if it was pending here with that term."""
        waiting = self._by_index.pop(index, None)
        if waiting is None:
            return None
        want_term, waiters, request, proposed_at = waiting
        self._by_request.pop(request, None)
        if want_term != term:
            outcome, proposed_at = LeadershipLostError(f"entry {index} of term {want_term} was replaced by term {term}"), None
        for batch, slot in waiters:
            batch.fill(slot, outcome)
        return proposed_at

    def fail_all(self, error: RayKVError) -> None:
        pending, self._by_index, self._by_request = self._by_index, {}, {}
        for _, waiters, _, _ in pending.values():
            for batch, slot in waiters:
                batch.fill(slot, error)


Query = Callable[[object], object]
"""A read: computes its answer from the replica's storage once it is safe to (see :mod:`.queries`)."""


@dataclass
class ReadGroup:
    """Reads sharing one ReadIndex context: ``(query, request id)`` pairs."""

    lease: bool
    started_s: float
    waiters: list[tuple[Query, int]] = field(default_factory=list)
    index: int = 0


class PendingReads:
    """Reads waiting for their ReadIndex confirmation, then for the applied index."""

    def __init__(self) -> None:
        self._ctx = itertools.count(1)
        self._forming: dict[bool, ReadGroup] = {}
        self._unconfirmed: dict[bytes, ReadGroup] = {}
        self._confirmed: list[ReadGroup] = []

    def __len__(self) -> int:
        return len(self._forming) + len(self._unconfirmed) + len(self._confirmed)

    def add(self, query: Query, lease: bool, rid: int, now_s: float) -> None:
        group = self._forming.get(lease)
        if group is None:
            group = self._forming[lease] = ReadGroup(lease, now_s)
        group.waiters.append((query, rid))

    def start_rounds(self, read_index: Callable[[bytes, bool], None], on_error: Callable[[ReadGroup, Exception], None]) -> None:
        """Ask the core for one confirmation per forming group (lease and not)."""
        forming, self._forming = self._forming, {}
        for lease, group in forming.items():
            ctx = next(self._ctx).to_bytes(8, "big")
            try:
                read_index(ctx, lease)
            except RayKVError as e:
                on_error(group, e)
                continue
            self._unconfirmed[ctx] = group

    def confirmed(self, ctx: bytes, index: int) -> None:
        group = self._unconfirmed.pop(ctx, None)
        if group is not None:
            group.index = index
            self._confirmed.append(group)

    def dropped(self, ctx: bytes) -> ReadGroup | None:
        return self._unconfirmed.pop(ctx, None)

    def ready(self, applied: int) -> list[ReadGroup]:
        """Confirmed groups whose index is applied (removed from the pending set)."""
        done = [g for g in self._confirmed if g.index <= applied]
        if done:
            self._confirmed = [g for g in self._confirmed if g.index > applied]
        return done

    def fail_unconfirmed(self) -> list[ReadGroup]:
        """Leadership lost: reads not yet confirmed can no longer be (confirmed ones stay valid)."""
        groups = list(self._forming.values()) + list(self._unconfirmed.values())
        self._forming, self._unconfirmed = {}, {}
        return groups

    def fail_all(self) -> list[ReadGroup]:
        groups = list(self._forming.values()) + list(self._unconfirmed.values()) + self._confirmed
        self._forming, self._unconfirmed, self._confirmed = {}, {}, []
        return groups
