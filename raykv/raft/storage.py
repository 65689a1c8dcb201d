"""The log-reader interface the core reads durable state through, and an in-memory store.

The core never writes storage. The host persists each Ready (hard state,
snapshot, entries) into its storage and only then calls ``advance``; from then
on the core reads those entries back through :class:`LogReader`.

Contract of a LogReader (checked by the conformance suite for every
implementation, in memory and on LMDB):

* the log holds entries ``first_index() .. last_index()``, contiguous;
  ``first_index() - 1 <= snapshot().meta.index`` (entries past a snapshot may
  stay until compacted; equality right after compacting to the snapshot);
  ``first_index()`` is 1 for an empty log;
* ``term(i)`` is defined for ``first_index() - 1 <= i <= last_index()`` (the
  entry just before the first is the snapshot's index and term); below that it
  raises :class:`CompactedError`, above it :class:`LogUnavailableError`;
* ``entries(lo, hi, max_bytes)`` returns entries ``lo .. hi-1`` in order,
  truncated to at most ``max_bytes`` (by :meth:`Entry.size`) but never empty
  when ``lo < hi``; it raises like ``term`` for indices outside the log.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import CompactedError, LogUnavailableError
from .types import ConfState, Entry, HardState, Snapshot, SnapshotMeta


class LogReader(Protocol):
    def initial_state(self) -> tuple[HardState, ConfState]: ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def term(self, index: int) -> int: ...

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]: ...

    def snapshot(self) -> Snapshot: ...


def limit_size(entries: list[Entry], max_bytes: int) -> list[Entry]:
    """The longest prefix of ``entries`` within ``max_bytes``, but at least one entry."""
    total = 0
    for i, e in enumerate(entries):
        total += e.size()
        if total > max_bytes and i > 0:
            return entries[:i]
    return entries


def bootstrap_snapshot(voters: tuple[int, ...], data: object = None) -> Snapshot:
    """The snapshot every founding member of a new group starts from: index 1, term 1.

    Starting from a snapshot rather than from configuration entries means a
    member added later (with empty storage) always receives the founding
    configuration through InstallSnapshot, never a log without it.
    """
    return Snapshot(SnapshotMeta(1, 1, ConfState(voters=tuple(sorted(voters)))), data)


class MemoryStorage:
    """A :class:`LogReader` that keeps everything in memory (used by the simulator).

    ``_entries[0]`` is a dummy entry at the snapshot's index and term, so
    ``_entries[i - offset]`` is entry ``i`` where ``offset = snapshot index``.
    Writer methods mirror what a durable host does when it persists a Ready.
    """

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._conf = ConfState()
        self._snapshot = Snapshot(SnapshotMeta())
        self._entries: list[Entry] = [Entry(0, 0)]

    @classmethod
    def bootstrap(cls, voters: tuple[int, ...], data: object = None) -> "MemoryStorage":
        """Storage of a founding member of a new group (see :func:`bootstrap_snapshot`)."""
        storage = cls()
        snapshot = bootstrap_snapshot(voters, data)
        storage.apply_snapshot(snapshot)
        storage.set_hard_state(HardState(term=snapshot.meta.term, commit=snapshot.meta.index))
        return storage

    # -- LogReader -----------------------------------------------------------------
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._conf

    def first_index(self) -> int:
        return self._entries[0].index + 1

    def last_index(self) -> int:
        return self._entries[0].index + len(self._entries) - 1

    def term(self, index: int) -> int:
        self._check(index, allow_dummy=True)
        return self._entries[index - self._entries[0].index].term

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        if lo >= hi:
            return []
        self._check(lo, allow_dummy=False)
        self._check(hi - 1, allow_dummy=False)
        offset = self._entries[0].index
        return limit_size(self._entries[lo - offset : hi - offset], max_bytes)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def _check(self, index: int, allow_dummy: bool) -> None:
        floor = self._entries[0].index + (0 if allow_dummy else 1)
        if index < floor:
            raise CompactedError(f"index {index} is compacted (first index {self.first_index()})")
        if index > self.last_index():
            raise LogUnavailableError(f"index {index} is beyond the last index {self.last_index()}")

    # -- writers (the host's side) --------------------------------------------------
    def hard_state(self) -> HardState:
        return self._hard_state

    def set_hard_state(self, hs: HardState) -> None:
        self._hard_state = hs

    def set_conf_state(self, conf: ConfState) -> None:
        """Persist the configuration applied so far (with the applied index, by the host)."""
        self._conf = conf

    def persist(
        self, hard_state: HardState | None = None, entries: "list[Entry] | tuple[Entry, ...]" = (), snapshot: Snapshot | None = None
    ) -> None:
        """Persist one Ready (snapshot, hard state, entries) -- the durable stores' API, in memory."""
        if snapshot is not None:
            self.apply_snapshot(snapshot)
        if hard_state is not None:
            self.set_hard_state(hard_state)
        self.append(entries)

    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        """Append ``entries``, truncating any existing suffix they conflict with.

        Entries at or below the snapshot index are ignored (already covered).
        ``entries`` must be contiguous and start at most at ``last_index() + 1``.
        """
        entries = [e for e in entries if e.index > self._entries[0].index]
        if not entries:
            return
        first = entries[0].index
        if first > self.last_index() + 1:
            raise LogUnavailableError(f"append at {first} leaves a gap after {self.last_index()}")
        del self._entries[first - self._entries[0].index :]
        self._entries.extend(entries)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the whole log by ``snapshot`` (a follower installing one)."""
        meta = snapshot.meta
        self._snapshot = snapshot
        self._conf = meta.conf
        self._entries = [Entry(meta.index, meta.term)]

    def create_snapshot(self, index: int, conf: ConfState, data: object) -> Snapshot:
        """Record a snapshot of the state machine at applied ``index`` (must be in the log)."""
        if index <= self._snapshot.meta.index:
            raise CompactedError(f"snapshot at {index} is not newer than {self._snapshot.meta.index}")
        self._snapshot = Snapshot(SnapshotMeta(index, self.term(index), conf), data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Drop entries up to ``index`` (which a snapshot must already cover)."""
        if index > self._snapshot.meta.index:
            raise LogUnavailableError(f"compact to {index} beyond snapshot {self._snapshot.meta.index}")
        offset = self._entries[0].index
        if index <= offset:
            return
        self._entries = [Entry(index, self.term(index))] + self._entries[index - offset + 1 :]
