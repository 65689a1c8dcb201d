"""The state machine's view of one apply transaction of a :class:`ReplicaStore`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import lmdb

from ..kv.ranges import RESERVED_END
from ..raft.types import ConfState, HardState
from . import records

if TYPE_CHECKING:
    from .replica_store import ReplicaStore


class ApplyTxn:
    """The state machine's view of one apply transaction; implements raykv.kv's backend protocol."""

    def __init__(self, store: "ReplicaStore", txn: lmdb.Transaction) -> None:
        self._txn = txn
        self._store = store
        self._data = store.db("data")
        self._sessions = store.db("sessions")
        self._applied_db = store.db("applied")
        self._conf_db = store.db("conf")
        self.applied = store.applied_index()
        self.conf: ConfState | None = None
        self.hard: HardState | None = None

    def get(self, key: bytes) -> bytes | None:
        return self._txn.get(key, db=self._data)

    def put(self, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._data)

    def delete(self, key: bytes) -> bool:
        return self._txn.delete(key, db=self._data)

    def delete_range(self, lo: bytes, hi: bytes | None) -> int:
        doomed = []
        with self._txn.cursor(self._data) as cur:
            if cur.set_range(max(lo, RESERVED_END)):  # raykv's own rows all sort below RESERVED_END
                for key in cur.iternext(values=False):
                    if hi is not None and key >= hi:
                        break
                    doomed.append(bytes(key))
        for key in doomed:
            self._txn.delete(key, db=self._data)
        return len(doomed)

    def get_session(self, sid: int) -> bytes | None:
        return self._txn.get(records.encode_u64(sid), db=self._sessions)

    def put_session(self, sid: int, blob: bytes) -> None:
        self._txn.put(records.encode_u64(sid), blob, db=self._sessions)

    def delete_session(self, sid: int) -> None:
        self._txn.delete(records.encode_u64(sid), db=self._sessions)

    def sessions(self) -> Iterator[tuple[int, bytes]]:
        with self._txn.cursor(self._sessions) as cur:
            for key, value in cur:
                yield records.decode_u64(key), bytes(value)

    def set_applied(self, index: int) -> None:
        if index <= self.applied:
            raise ValueError(f"applied index must grow: {index} after {self.applied}")
        self._txn.put(b"applied", records.encode_applied(index), db=self._applied_db)
        self._mark("applied")
        self.applied = index

    def set_conf(self, conf: ConfState) -> None:
        self._txn.put(b"conf", records.encode_conf(conf), db=self._conf_db)
        self._mark("conf")
        self.conf = conf

    def set_hard_state(self, hs: HardState) -> None:
        """Record a hard state whose term and vote are already durable (a commit index moving
        forward): the commit index is volatile in Raft, so it may ride on an apply transaction."""
        self._txn.put(b"hs", records.encode_hard_state(hs), db=self._store.db("hard"))
        self._mark("hard")
        self.hard = hs

    def _mark(self, record: str) -> None:
        self._store.mark_present(self._txn, record)


class ReadView:
    """A consistent read view of the user table: one LMDB read transaction, aborted on exit
    (a context manager; implements :class:`raykv.replica.ports.StateView`)."""

    def __init__(self, txn: lmdb.Transaction, data_db) -> None:
        self._txn = txn
        self._db = data_db

    def __enter__(self) -> "ReadView":
        return self

    def __exit__(self, *exc) -> None:
        self._txn.abort()

    def get(self, key: bytes) -> bytes | None:
        return self._txn.get(key, db=self._db)

    def items_from(self, key: bytes) -> Iterator[tuple[bytes, bytes]]:
        with self._txn.cursor(self._db) as cur:
            if cur.set_range(key):
                for k, v in cur:
                    yield bytes(k), bytes(v)
