"""The Raft log as the core sees it: durable entries (storage) + not-yet-persisted ones.

Layout, with ``s = storage`` and ``u = unstable``::

    [ s.first_index ............ s.last_index ]
                        [ u.offset ............ last_index ]   (u may overlap s:
                                                               u wins from u.offset)

``committed`` and ``applied`` follow ``applied <= committed <= last_index``.
The unstable part is handed to the host in a Ready; once the host has persisted
it, :meth:`RaftLog.stable_to` drops it from here and storage serves it.
"""

from __future__ import annotations

from ..errors import CompactedError, LogUnavailableError
from .storage import LogReader, limit_size
from .types import Entry, Snapshot


class RaftLog:
    def __init__(self, storage: LogReader, applied: int = 0) -> None:
        self.storage = storage
        self.unstable: list[Entry] = []
        self.offset = storage.last_index() + 1
        """Index of ``unstable[0]`` (or where the next unstable entry would go)."""
        self.pending_snapshot: Snapshot | None = None
        """A snapshot received from the leader, not yet persisted by the host."""
        snap_index = storage.first_index() - 1
        hs, _ = storage.initial_state()
        self.committed = max(hs.commit, snap_index)
        self.applied = max(applied, snap_index)
        if self.applied > self.committed:
            raise LogUnavailableError(f"applied {self.applied} is beyond commit {self.committed}")

    # -- bounds and terms ----------------------------------------------------------
    def first_index(self) -> int:
        if self.pending_snapshot is not None:
            return self.pending_snapshot.meta.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self.unstable:
            return self.unstable[-1].index
        if self.pending_snapshot is not None:
            return self.pending_snapshot.meta.index
        return self.storage.last_index()

    def term(self, index: int) -> int:
        """Term of entry ``index``; raises outside ``[first_index - 1, last_index]``."""
        if index < self.first_index() - 1:
            raise CompactedError(f"index {index} is compacted")
        if index > self.last_index():
            raise LogUnavailableError(f"index {index} is beyond the last index {self.last_index()}")
        if self.pending_snapshot is not None and index == self.pending_snapshot.meta.index:
            return self.pending_snapshot.meta.term
        if index >= self.offset:
            return self.unstable[index - self.offset].term
        return self.storage.term(index)

    def term_or_zero(self, index: int) -> int:
        """Term of ``index``, or 0 if the log does not hold it."""
        try:
            return self.term(index)
        except LogUnavailableError:
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        return self.term_or_zero(index) == term and (index == 0 or term != 0)

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: is a candidate's log at least as up to date as ours?"""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    # -- reading entries -----------------------------------------------------------
    def slice(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries ``lo .. hi-1`` (at least one if ``lo < hi``) within ``max_bytes``."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise CompactedError(f"index {lo} is compacted")
        if hi > self.last_index() + 1:
            raise LogUnavailableError(f"slice to {hi} is beyond the last index {self.last_index()}")
        out: list[Entry] = []
        if lo < self.offset:
            out = self.storage.entries(lo, min(hi, self.offset), max_bytes)
            if len(out) < min(hi, self.offset) - lo:
                return out  # size limit reached inside storage
        if hi > self.offset:
            start = max(lo, self.offset) - self.offset
            out = out + self.unstable[start : hi - self.offset]
        return limit_size(out, max_bytes)

    def entries_from(self, lo: int, max_bytes: int) -> list[Entry]:
        return self.slice(lo, self.last_index() + 1, max_bytes)

    def snapshot(self) -> Snapshot:
        return self.pending_snapshot if self.pending_snapshot is not None else self.storage.snapshot()

    def next_committed(self, max_bytes: int) -> list[Entry]:
        """Committed entries not yet handed to the host for applying."""
        lo = max(self.applied + 1, self.first_index())
        return self.slice(lo, self.committed + 1, max_bytes)

    def has_next_committed(self) -> bool:
        return self.committed >= max(self.applied + 1, self.first_index())

    # -- changing the log ----------------------------------------------------------
    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> int:
        """Append ``entries`` (contiguous, starting at most at last_index + 1), truncating.

        Truncation below ``committed`` would lose a committed entry: that is a
        safety bug in the caller and raises ``AssertionError``.
        """
        if not entries:
            return self.last_index()
        first = entries[0].index
        assert first > self.committed, f"truncating committed entry {first} <= {self.committed}"
        assert first <= self.last_index() + 1, f"gap: append at {first} after {self.last_index()}"
        if first <= self.offset:
            # Replaces all unstable entries; storage keeps its prefix below ``first``.
            self.offset = first
            self.unstable = list(entries)
        else:
            del self.unstable[first - self.offset :]
            self.unstable.extend(entries)
        return self.last_index()

    def find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """Index of the first entry whose term differs from ours (or is new); 0 if none."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest ``i <= index`` with ``term(i) <= term``, and that term (fast back-off hint).

        Stops at the first index we cannot read (compacted), returning it with term 0.
        """
        while index > 0:
            t = self.term_or_zero(index)
            if t <= term:
                return index, t
            index -= 1
        return 0, 0

    def maybe_append(self, prev_index: int, prev_term: int, commit: int, entries: tuple[Entry, ...]) -> int | None:
        """Follower side of AppendEntries (Raft §5.3).

        Returns the last index known to match the leader, or ``None`` if
        ``(prev_index, prev_term)`` does not match our log.
        """
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            assert conflict > self.committed, f"conflict at {conflict} <= committed {self.committed}"
            self.append(entries[conflict - entries[0].index :])
        self.commit_to(min(commit, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            assert index <= self.last_index(), f"commit {index} beyond last index {self.last_index()}"
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit ``index`` if it is newer and its entry is of ``term`` (Raft §5.4.2)."""
        if index > self.committed and self.term_or_zero(index) == term:
            self.commit_to(index)
            return True
        return False

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by ``snapshot`` (a follower accepting InstallSnapshot)."""
        self.committed = snapshot.meta.index
        self.pending_snapshot = snapshot
        self.unstable = []
        self.offset = snapshot.meta.index + 1

    # -- after the host persisted and applied a Ready --------------------------------
    def stable_to(self, index: int) -> None:
        """Entries up to ``index`` are now durable in storage."""
        if self.unstable and index >= self.offset:
            del self.unstable[: index - self.offset + 1]
            self.offset = index + 1

    def stable_snapshot(self) -> None:
        self.pending_snapshot = None

    def applied_to(self, index: int) -> None:
        if index > self.applied:
            assert index <= self.committed, f"applied {index} beyond commit {self.committed}"
            self.applied = index
