"""Routing state of one shard group: replica choice, backoff delays, a session's seq numbers.

Everything here is Ray-free and not thread-safe: :class:`_ShardRoute` is only
touched under the client core's lock, and :class:`_Backoff` / :class:`_SeqTracker`
belong to one request / one session. Randomness and the clock are injected,
so tests can drive them deterministically.
"""

from __future__ import annotations

import math
import random
import time
from typing import Callable

from ..errors import ConfigError
from ..protocol import replica_actor_name

BACKOFF_INITIAL_S = 0.02
BACKOFF_MAX_S = 0.1
"""Short: during an election the next leader is usually known within one or two 50 ms ticks."""
SUSPECT_S = 1.0
"""How long a replica that failed a call is avoided when another one is available."""


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
        """``rid`` refused as not leader. True iff ``hint`` names another known, unsuspected replica,
        or a replica this route did not know (a member added by repair: it is learned), now the
        believed leader.

        A replica naming itself (a leader that cannot serve yet, e.g. a dropped
        ReadIndex) stays the believed leader: the request is retried there later.
        """
        self._suspect_until.pop(rid, None)
        if hint == rid:
            self.leader = rid
            return False
        if is_int(hint) and hint > 0 and hint not in self.replica_ids:
            # a member added since this route was made (replica repair): learn it, it leads
            self.replica_ids = tuple(sorted(self.replica_ids + (hint,)))
            self.leader = hint
            return True
        if hint is not None and hint != rid and hint in self.replica_ids and not self.is_suspect(hint):
            self.leader = hint  # (a hint naming a replica that just failed us is stale: ignore it)
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
    if not is_int(shard) or shard < 0:
        raise ConfigError(f"shard must be an int >= 0, got {shard!r}")
    if not isinstance(replica_ids, (tuple, list)) or not replica_ids:
        raise ConfigError(f"replicas must be a non-empty tuple of ints, got {replica_ids!r}")
    if not all(is_int(r) and r >= 0 for r in replica_ids) or len(set(replica_ids)) != len(replica_ids):
        raise ConfigError(f"replicas must be distinct ints >= 0, got {replica_ids!r}")


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
