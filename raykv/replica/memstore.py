"""A replica's durable state in memory: the storage port of :mod:`raykv.replica.ports`, pure.

:class:`MemoryReplicaStore` behaves like the LMDB
:class:`~raykv.storage.replica_store.ReplicaStore` in everything the engine can
observe (the conformance tests run both through the same sequences): one
:meth:`persist` or :meth:`apply` is atomic (an apply body that raises leaves
nothing behind), the log obeys the :class:`~raykv.raft.storage.LogReader`
contract, a snapshot install replaces data and sessions and sets the applied
index. The simulator keeps one per replica as that replica's "disk": it outlives
the engine across crashes, and a lost directory is a new, empty one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from ..kv.ranges import RESERVED_END, RESERVED_PREFIX
from ..raft.storage import MemoryStorage, bootstrap_snapshot
from ..raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta

_DELETED = object()


class MemoryReplicaStore:
    """Log, hard state, configuration, applied index, sessions and user data, in dicts."""

    def __init__(self) -> None:
        self._log = MemoryStorage()
        self._applied = 0
        self.data: dict[bytes, bytes] = {}
        self.sessions: dict[int, bytes] = {}
        self.closed = False

    @classmethod
    def founding(cls, voters: tuple[int, ...]) -> "MemoryReplicaStore":
        """The store of a founding member of a new group (see :func:`~raykv.raft.bootstrap_snapshot`)."""
        store = cls()
        snapshot = bootstrap_snapshot(voters)
        store.persist(HardState(term=snapshot.meta.term, commit=snapshot.meta.index), snapshot=snapshot)
        return store

    # -- LogReader ------------------------------------------------------------------------
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._log.initial_state()

    def first_index(self) -> int:
        return self._log.first_index()

    def last_index(self) -> int:
        return self._log.last_index()

    def term(self, index: int) -> int:
        return self._log.term(index)

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        return self._log.entries(lo, hi, max_bytes)

    def snapshot(self) -> Snapshot:
        return self._log.snapshot()

    # -- writes -----------------------------------------------------------------------------
    def hard_state(self) -> HardState:
        return self._log.hard_state()

    def applied_index(self) -> int:
        return self._applied

    def persist(self, hard_state: HardState | None = None, entries: Iterable[Entry] = (),
                snapshot: Snapshot | None = None, snapshot_rows: Callable[[], Iterable] | None = None,
                apply: Callable | None = None) -> object:
        """One Ready, atomically (see :class:`~raykv.replica.ports.ReplicaStorage`)."""
        entries = list(entries)
        if apply is not None and snapshot is not None:
            raise ValueError("persist: apply cannot ride on a snapshot install")
        rows = list(snapshot_rows()) if snapshot_rows is not None else None
        tx = _MemTx(self) if apply is not None else None
        result = apply(tx) if tx is not None else None  # computed before anything changes: all or nothing
        if snapshot is not None:
            self._log.apply_snapshot(snapshot)
            if rows is not None:
                self._replace_state(snapshot.meta, rows)
        if hard_state is not None:
            self._log.set_hard_state(hard_state)
        self._log.append(entries)
        if tx is not None:
            tx.commit()
        return result

    def _replace_state(self, meta: SnapshotMeta, rows: list[tuple[int, bytes, bytes]]) -> None:
        self.data = {bytes(k): bytes(v) for table, k, v in rows if table == 0}
        self.sessions = {int.from_bytes(k, "big"): bytes(v) for table, k, v in rows if table == 1}
        self._applied = meta.index

    def apply(self, body: Callable) -> object:
        """Apply committed entries atomically: ``body(tx)`` sees the state as it stands; its
        writes land only if it returns."""
        tx = _MemTx(self)
        result = body(tx)
        tx.commit()
        return result

    def create_snapshot(self, index: int, conf: ConfState, data: bytes | None) -> Snapshot:
        return self._log.create_snapshot(index, conf, data)

    def compact(self, index: int) -> None:
        self._log.compact(index)

    def set_conf_state(self, conf: ConfState) -> None:
        self._log.set_conf_state(conf)

    # -- reading the state ------------------------------------------------------------------
    def view(self) -> "_MemView":
        return _MemView(self.data)

    def export(self) -> tuple[SnapshotMeta, list[tuple[int, bytes, bytes]]]:
        """The applied state as snapshot rows and their metadata (what a leader streams)."""
        meta = SnapshotMeta(self._applied, self.term(self._applied), self.initial_state()[1])
        rows = [(0, k, self.data[k]) for k in sorted(self.data)]
        rows += [(1, sid.to_bytes(8, "big"), self.sessions[sid]) for sid in sorted(self.sessions)]
        return meta, rows

    def stat(self) -> dict:
        used = sum(len(k) + len(v) for k, v in self.data.items()) + sum(len(v) + 8 for v in self.sessions.values())
        return {"used_bytes": used, "log": self.last_index() - self.first_index() + 1, "data": len(self.data),
                "sessions": len(self.sessions)}

    def close(self) -> None:
        self.closed = True


class _MemTx:
    """One apply transaction: writes are buffered and land together on :meth:`commit`."""

    def __init__(self, store: MemoryReplicaStore) -> None:
        self._store = store
        self._data: dict[bytes, object] = {}
        self._sessions: dict[int, object] = {}
        self.applied = store.applied_index()
        self.conf: ConfState | None = None
        self.hard: HardState | None = None

    def get(self, key: bytes) -> bytes | None:
        value = self._data.get(key, None)
        if value is None:
            return self._store.data.get(key)
        return None if value is _DELETED else value

    def put(self, key: bytes, value: bytes) -> None:
        self._data[bytes(key)] = bytes(value)

    def delete(self, key: bytes) -> bool:
        existed = self.get(key) is not None
        self._data[bytes(key)] = _DELETED
        return existed

    def delete_range(self, lo: bytes, hi: bytes | None) -> int:
        doomed = [k for k in set(self._store.data) | set(self._data)
                  if k >= max(lo, RESERVED_END) and (hi is None or k < hi) and not k.startswith(RESERVED_PREFIX)
                  and self.get(k) is not None]
        for key in doomed:
            self._data[key] = _DELETED
        return len(doomed)

    def get_session(self, sid: int) -> bytes | None:
        value = self._sessions.get(sid, None)
        if value is None:
            return self._store.sessions.get(sid)
        return None if value is _DELETED else value

    def put_session(self, sid: int, blob: bytes) -> None:
        self._sessions[sid] = bytes(blob)

    def delete_session(self, sid: int) -> None:
        self._sessions[sid] = _DELETED

    def sessions(self) -> Iterator[tuple[int, bytes]]:
        for sid in sorted(set(self._store.sessions) | set(self._sessions)):
            blob = self.get_session(sid)
            if blob is not None:
                yield sid, blob

    def set_applied(self, index: int) -> None:
        if index <= self.applied:
            raise ValueError(f"applied index must grow: {index} after {self.applied}")
        self.applied = index

    def set_conf(self, conf: ConfState) -> None:
        self.conf = conf

    def set_hard_state(self, hs: HardState) -> None:
        self.hard = hs

    def commit(self) -> None:
        store = self._store
        for key, value in self._data.items():
            if value is _DELETED:
                store.data.pop(key, None)
            else:
                store.data[key] = value
        for sid, blob in self._sessions.items():
            if blob is _DELETED:
                store.sessions.pop(sid, None)
            else:
                store.sessions[sid] = blob
        store._applied = self.applied
        if self.conf is not None:
            store.set_conf_state(self.conf)
        if self.hard is not None:
            store._log.set_hard_state(self.hard)


class _MemView:
    """A read view of the user table (the engine reads between writes, so no copy is needed)."""

    def __init__(self, data: dict[bytes, bytes]) -> None:
        self._data = data

    def __enter__(self) -> "_MemView":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def items_from(self, key: bytes) -> Iterator[tuple[bytes, bytes]]:
        for k in sorted(k for k in self._data if k >= key):
            yield k, self._data[k]
