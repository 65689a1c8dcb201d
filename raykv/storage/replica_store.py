"""One replica's durable state in one LMDB environment (no Ray).

Layout: ``{data_dir}/{store}/{shard}/{replica}/`` holds ``data.mdb`` and
``lock.mdb`` with these named databases:

======== ============================================ ==========================
name     keys                                         values
======== ============================================ ==========================
meta     ``format``, ``store``, ``shard``, ``replica`` identity (checked on open)
log      big-endian u64 index                         entry record (term, kind, data)
hard     ``hs``                                       term, vote, commit
conf     ``conf``                                     applied configuration
snap     ``meta``, ``data``, ``floor``                snapshot meta, its payload
                                                      reference, (index, term) of
                                                      the entry before the log
applied  ``applied``                                  applied index (u64)
sessions big-endian u64 session id                    session blob (raykv.kv)
data     user key                                     user value
======== ============================================ ==========================

Contracts:

* :meth:`persist` writes one Ready (hard state, snapshot, entries) in **one
  write transaction, synced on commit** (LMDB ``sync=True``): the host may send
  the Ready's messages once it returns.
* :meth:`apply` applies committed entries: user data, sessions, the applied
  index and the configuration change in **the same transaction**, so replaying
  after a crash never applies an entry twice.
* Appending at index ``i`` first deletes every stored entry ``>= i`` (a
  conflicting suffix); :meth:`compact` deletes the prefix a snapshot covers.
* When LMDB's map is full the map is doubled and the transaction retried.
* Opening a directory of another store/shard/replica, of a newer format, or a
  corrupted file raises a :class:`~raykv.errors.StorageError` subclass naming
  the path; nothing is reset or overwritten.

It implements the core's :class:`~raykv.raft.storage.LogReader`.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb

from ..errors import (
    CompactedError,
    CorruptStoreError,
    FormatVersionError,
    LogUnavailableError,
    StorageError,
    StoreIdentityError,
)
from ..raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from . import records
from .apply import ApplyTxn, ReadView

FORMAT_VERSION = 1
INITIAL_MAP_BYTES = 64 << 20
_DBS = ("meta", "log", "hard", "conf", "snap", "applied", "sessions", "data")
TERM_CACHE_ENTRIES = 4096
"""Terms of the most recently appended entries kept in memory. Raft asks for terms on every
append and commit; reading one from LMDB decodes and checksums the whole entry, megabytes for a
bulk batch (profiling a 100k-key ``put_batch`` found a third of the replicas' time there)."""
_TRACKED = ("hard", "conf", "applied")
"""Records that, once written, must exist: their absence means damage, not a fresh store."""


@dataclass(frozen=True)
class ReplicaId:
    """Who a replica store belongs to; checked against the directory on every open."""

    store: str
    shard: int
    replica: int

    def path(self, data_dir: str | os.PathLike) -> Path:
        return Path(data_dir) / self.store / str(self.shard) / str(self.replica)

    def fields(self) -> dict[str, bytes]:
        return {"store": self.store.encode(), "shard": str(self.shard).encode(), "replica": str(self.replica).encode()}


class ReplicaStore:
    """The LMDB store of one replica. Not thread-safe: the replica serializes calls."""

    def __init__(
        self, data_dir: str | os.PathLike, ident: ReplicaId, *, create: bool = True, path: os.PathLike | None = None
    ) -> None:
        """Open (or with ``create``, create) the store of ``ident`` under ``data_dir``.

        ``path`` overrides the directory (tools, tests); the identity recorded
        there must still match ``ident``.
        """
        self.ident = ident
        self.path = Path(path) if path is not None else ident.path(data_dir)
        self._data_file = self.path / "data.mdb"
        if not self._data_file.exists():
            if not create:
                raise StorageError("no replica store here", str(self.path))
            self._create()
        self._terms: dict[int, int] = {}
        """Index -> term of recently appended entries (:data:`TERM_CACHE_ENTRIES`; see :meth:`_remember_terms`)."""
        self._env = self._open_env()
        try:
            self._db = self._guard(lambda: {name: self._env.open_db(name.encode(), create=False) for name in _DBS})
            self._check_identity()
            self._guard(self._load_cache)
        except BaseException:
            self._env.close()
            raise

    # -- opening -------------------------------------------------------------------
    def _create(self) -> None:
        """Create the store in a temporary directory, then rename it into place.

        A crash while creating leaves only the temporary directory (removed by
        the next attempt), never a half-initialised store under the real name:
        an empty ``data.mdb`` there is always corruption, never "new".
        """
        if self.path.exists() and any(self.path.iterdir()):
            raise CorruptStoreError("directory has files but no data.mdb; refusing to touch it", str(self.path))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.parent / f".{self.path.name}.creating"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        env = lmdb.open(str(staging), map_size=INITIAL_MAP_BYTES, max_dbs=len(_DBS), sync=True)
        try:
            with env.begin(write=True) as txn:
                dbs = {name: env.open_db(name.encode(), txn=txn) for name in _DBS}
                self._claim(txn, dbs["meta"])
        finally:
            env.close()
        os.replace(staging, self.path)
        fsync_dir(self.path.parent)

    def _open_env(self) -> lmdb.Environment:
        size = self._data_file.stat().st_size
        if size == 0:
            raise CorruptStoreError("data.mdb is empty (truncated); refusing to treat it as a new store", str(self._data_file))
        try:
            env = lmdb.open(
                str(self.path), map_size=max(INITIAL_MAP_BYTES, size), max_dbs=len(_DBS), sync=True, metasync=True,
                readahead=False,
            )
        except lmdb.Error as e:
            raise CorruptStoreError(f"cannot open the LMDB environment: {e}", str(self._data_file)) from None
        needed = _used_bytes(env)
        if size < needed:
            env.close()
            raise CorruptStoreError(f"data.mdb has {size} bytes but its pages need {needed} (truncated)", str(self._data_file))
        return env

    def _guard(self, fn: Callable[[], object]) -> object:
        """Run a read of stored records; turn LMDB or decoding failures into CorruptStoreError."""
        try:
            return fn()
        except (lmdb.Error, ValueError, TypeError) as e:
            raise CorruptStoreError(f"corrupted replica store: {type(e).__name__}: {e}", str(self._data_file)) from None

    def _check_identity(self) -> None:
        want = self.ident.fields()
        with self._env.begin(db=self._db["meta"]) as txn:
            stored = self._guard(lambda: txn.get(b"format"))
            if stored is None:
                raise CorruptStoreError("replica store without an identity record", str(self.path))
            try:
                version = int(stored)
            except ValueError:
                raise CorruptStoreError(f"format record {stored!r} is not a number", str(self.path)) from None
            if version > FORMAT_VERSION:
                raise FormatVersionError(
                    f"written by on-disk format {version}; this raykv reads format {FORMAT_VERSION}", str(self.path)
                )
            for name, value in want.items():
                found = txn.get(name.encode())
                if found != value:
                    raise StoreIdentityError(
                        f"directory belongs to {name} {found!r}, not {value!r}; refusing to touch it", str(self.path)
                    )

    def _claim(self, txn: lmdb.Transaction, meta_db) -> None:
        txn.put(b"format", str(FORMAT_VERSION).encode(), db=meta_db)
        for name, value in self.ident.fields().items():
            txn.put(name.encode(), value, db=meta_db)

    def pin_setting(self, name: str, value: bytes) -> None:
        """Record setting ``name`` on first use; afterwards it must not change.

        For settings every replica of a group must share for its whole life (the kv
        limits decide apply-time outcomes). Raises :class:`StoreIdentityError` on a
        mismatch, touching nothing.
        """
        key = b"setting:" + name.encode()
        with self._env.begin(db=self._db["meta"]) as txn:
            stored = self._guard(lambda: txn.get(key))
        if stored is None:
            self._write(lambda txn: txn.put(key, value, db=self._db["meta"]))
        elif stored != value:
            raise StoreIdentityError(
                f"{name} differ from those this replica was created with ({stored.decode(errors='replace')} "
                f"vs {value.decode(errors='replace')}); replicas of a group must keep identical {name}",
                str(self.path),
            )

    def mark_present(self, txn: lmdb.Transaction, record: str) -> None:
        """Note (once) that ``record`` exists: from then on its absence is corruption, not a default."""
        if record not in self._present:
            txn.put(b"has:" + record.encode(), b"1", db=self._db["meta"])
            self._present_pending.add(record)

    def _load_present(self, txn: lmdb.Transaction) -> None:
        self._present = {r for r in _TRACKED if txn.get(b"has:" + r.encode(), db=self._db["meta"])}
        self._present_pending: set[str] = set()

    def _required(self, txn: lmdb.Transaction, db: str, key: bytes, record: str) -> bytes | None:
        raw = txn.get(key, db=self._db[db])
        if raw is None and record in self._present:
            raise ValueError(f"the {record} record was written once and is now missing")
        return raw

    def _load_cache(self) -> None:
        with self._env.begin() as txn:
            self._load_present(txn)
            hs = self._required(txn, "hard", b"hs", "hard")
            self._hard = records.decode_hard_state(hs) if hs else HardState()
            conf = self._required(txn, "conf", b"conf", "conf")
            self._conf = records.decode_conf(conf) if conf else ConfState()
            meta = txn.get(b"meta", db=self._db["snap"])
            self._snap_meta = records.decode_snapshot_meta(meta) if meta else SnapshotMeta()
            self._snap_data = txn.get(b"data", db=self._db["snap"])
            floor = txn.get(b"floor", db=self._db["snap"])
            self._floor = records.decode_snapshot_meta(floor) if floor else SnapshotMeta()
            applied = self._required(txn, "applied", b"applied", "applied")
            self._applied = records.decode_applied(applied) if applied else 0
            with txn.cursor(self._db["log"]) as cur:
                self._last = records.key_index(cur.key()) if cur.last() else self._floor.index
            if self._last < self._floor.index:
                raise ValueError(f"log ends at {self._last} below its floor {self._floor.index}")

    def close(self) -> None:
        self._env.close()

    # -- LogReader -------------------------------------------------------------------
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard, self._conf

    def first_index(self) -> int:
        return self._floor.index + 1

    def last_index(self) -> int:
        return self._last

    def term(self, index: int) -> int:
        if index == self._floor.index:
            return self._floor.term
        self._check_range(index)
        term = self._terms.get(index)
        if term is not None:
            return term
        return self._guard(lambda: self._read_entry(index)).term

    def _read_entry(self, index: int) -> Entry:
        with self._env.begin(db=self._db["log"]) as txn:
            return records.decode_entry(index, txn.get(records.index_key(index)))

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        if lo >= hi:
            return []
        self._check_range(lo)
        self._check_range(hi - 1)
        return self._guard(lambda: self._read_entries(lo, hi, max_bytes))

    def _read_entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries ``lo..hi-1`` within ``max_bytes`` but at least one (``limit_size``'s rule, applied while reading)."""
        out, total = [], 0
        with self._env.begin(db=self._db["log"]) as txn, txn.cursor() as cur:
            cur.set_key(records.index_key(lo))
            for key, value in cur:
                index = records.key_index(key)
                if index >= hi:
                    break
                entry = records.decode_entry(index, value)
                if entry.index != lo + len(out):
                    raise ValueError(f"log entry {lo + len(out)} is missing")
                total += entry.size()
                if out and total > max_bytes:
                    break
                out.append(entry)
        if not out:
            raise ValueError(f"log entry {lo} is missing")
        return out

    def snapshot(self) -> Snapshot:
        return Snapshot(self._snap_meta, self._snap_data)

    def _check_range(self, index: int) -> None:
        if index <= self._floor.index:
            raise CompactedError(f"index {index} is compacted (first index {self.first_index()})")
        if index > self._last:
            raise LogUnavailableError(f"index {index} is beyond the last index {self._last}")

    # -- writing -----------------------------------------------------------------------
    def _write(self, work: Callable[[lmdb.Transaction], object]) -> object:
        """Run ``work`` in one synced write transaction, growing the map and retrying when full."""
        while True:
            self._present_pending = set()
            try:
                with self._env.begin(write=True) as txn:
                    result = work(txn)
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)
                continue
            self._present |= self._present_pending
            return result

    def persist(
        self,
        hard_state: HardState | None = None,
        entries: Iterable[Entry] = (),
        snapshot: Snapshot | None = None,
        snapshot_rows: Callable[[], Iterable[tuple[int, bytes, bytes]]] | None = None,
        apply: Callable[["ApplyTxn"], object] | None = None,
    ) -> object:
        """Make one Ready durable, atomically: snapshot (optionally with its rows), hard state, entries.

        ``snapshot_rows`` yields ``(table, key, value)`` rows (table 0: user
        data, 1: sessions with 8-byte ids) replacing the state machine; it may
        be called again if the transaction is retried.

        ``apply`` (not with a snapshot): also apply committed entries in the same
        transaction, exactly as :meth:`apply` would (same contract for ``apply``
        as for its ``body``), after the entries are appended: one synced commit
        instead of two. Returns ``apply``'s result (None without it).
        """
        entries = [e for e in entries]
        if apply is not None and snapshot is not None:
            raise ValueError("persist: apply cannot ride on a snapshot install")
        holder: list[ApplyTxn] = []

        def work(txn: lmdb.Transaction) -> tuple[int, object]:
            floor, last = self._floor, self._last
            if snapshot is not None:
                self._put_snapshot(txn, snapshot)
                if snapshot_rows is not None:
                    self._replace_state(txn, snapshot.meta, snapshot_rows())
                floor, last = snapshot.meta, snapshot.meta.index
            if hard_state is not None:
                txn.put(b"hs", records.encode_hard_state(hard_state), db=self._db["hard"])
                self.mark_present(txn, "hard")
            last = self._append(txn, entries, floor, last)
            if apply is None:
                return last, None
            holder[:] = [ApplyTxn(self, txn)]
            return last, apply(holder[0])

        last, result = self._write(work)
        self._after_persist(hard_state, snapshot, snapshot_rows is not None, last)
        self._remember_terms(entries, snapshot is not None)
        if holder:
            self._after_apply(holder[0])
        return result

    def _after_persist(self, hard: HardState | None, snapshot: Snapshot | None, with_rows: bool, last: int) -> None:
        """The transaction committed: bring the in-memory view (the source of truth between opens) up to date."""
        if snapshot is not None:
            self._snap_meta = self._floor = snapshot.meta
            self._snap_data = snapshot.data
            self._conf = snapshot.meta.conf
            if with_rows:
                self._applied = snapshot.meta.index
        if hard is not None:
            self._hard = hard
        self._last = last

    def _remember_terms(self, entries: list[Entry], log_replaced: bool) -> None:
        """Keep the terms of the entries a committed persist appended; a snapshot install drops the
        whole cache; beyond the bound the oldest remembered indices go first.

        A replaced suffix needs no invalidation: :meth:`term` only answers for indices up to the
        last one, and the log grows only by contiguous appends, so every index in range was
        written (and remembered) by the append that brought it into range, or a later one."""
        terms = self._terms
        if log_replaced:
            terms.clear()
        kept = [e for e in entries if e.index > self._floor.index]
        for e in kept:
            terms[e.index] = e.term
        while len(terms) > TERM_CACHE_ENTRIES:
            del terms[next(iter(terms))]

    def set_hard_state(self, hs: HardState) -> None:
        self.persist(hard_state=hs)

    def append(self, entries: Iterable[Entry]) -> None:
        self.persist(entries=entries)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the log by ``snapshot`` (metadata and payload reference only)."""
        self.persist(snapshot=snapshot)

    def _append(self, txn: lmdb.Transaction, entries: list[Entry], floor: SnapshotMeta, last: int) -> int:
        """Append ``entries`` above ``floor`` to a log ending at ``last``; returns the new last index."""
        entries = [e for e in entries if e.index > floor.index]
        if not entries:
            return last
        first = entries[0].index
        if first > last + 1:
            raise LogUnavailableError(f"append at {first} leaves a gap after {last}")
        if first <= last:
            self._delete_from(txn, first)  # a conflicting suffix
        log = self._db["log"]
        for e in entries:
            txn.put(records.index_key(e.index), records.encode_entry(e), db=log, append=True)
        return entries[-1].index

    def _delete_from(self, txn: lmdb.Transaction, first: int) -> None:
        with txn.cursor(self._db["log"]) as cur:
            if cur.set_range(records.index_key(first)):
                while cur.key() and cur.delete():
                    pass

    def _put_snapshot(self, txn: lmdb.Transaction, snapshot: Snapshot) -> None:
        meta = snapshot.meta
        txn.drop(self._db["log"], delete=False)
        txn.put(b"meta", records.encode_snapshot_meta(meta), db=self._db["snap"])
        txn.put(b"floor", records.encode_snapshot_meta(meta), db=self._db["snap"])
        self._put_snap_data(txn, snapshot.data)
        txn.put(b"conf", records.encode_conf(meta.conf), db=self._db["conf"])
        self.mark_present(txn, "conf")

    def _put_snap_data(self, txn: lmdb.Transaction, data: object) -> None:
        if data is None:
            txn.delete(b"data", db=self._db["snap"])
        elif isinstance(data, bytes):
            txn.put(b"data", data, db=self._db["snap"])
        else:
            raise TypeError(f"an LMDB snapshot payload reference must be bytes or None, not {type(data).__name__}")

    def _replace_state(self, txn: lmdb.Transaction, meta: SnapshotMeta, rows: Iterable[tuple[int, bytes, bytes]]) -> None:
        txn.drop(self._db["data"], delete=False)
        txn.drop(self._db["sessions"], delete=False)
        dbs = (self._db["data"], self._db["sessions"])
        for table, key, value in rows:
            txn.put(key, value, db=dbs[table])
        txn.put(b"applied", records.encode_applied(meta.index), db=self._db["applied"])
        self.mark_present(txn, "applied")

    def create_snapshot(self, index: int, conf: ConfState, data: bytes | None) -> Snapshot:
        """Record that a snapshot of the state at ``index`` exists (``data``: its payload reference)."""
        if index <= self._snap_meta.index:
            raise CompactedError(f"snapshot at {index} is not newer than {self._snap_meta.index}")
        meta = SnapshotMeta(index, self.term(index), conf)

        def work(txn: lmdb.Transaction) -> None:
            txn.put(b"meta", records.encode_snapshot_meta(meta), db=self._db["snap"])
            self._put_snap_data(txn, data)

        self._write(work)
        self._snap_meta, self._snap_data = meta, data
        return self.snapshot()

    def compact(self, index: int) -> None:
        """Delete log entries up to ``index``, which the snapshot must cover."""
        if index > self._snap_meta.index:
            raise LogUnavailableError(f"compact to {index} beyond snapshot {self._snap_meta.index}")
        if index <= self._floor.index:
            return
        floor = SnapshotMeta(index, self.term(index))

        def work(txn: lmdb.Transaction) -> None:
            with txn.cursor(self._db["log"]) as cur:
                if cur.first():
                    while cur.key() and records.key_index(cur.key()) <= index and cur.delete():
                        pass
            txn.put(b"floor", records.encode_snapshot_meta(floor), db=self._db["snap"])

        self._write(work)
        self._floor = floor

    # -- the state machine side ----------------------------------------------------------
    def hard_state(self) -> HardState:
        return self._hard

    def applied_index(self) -> int:
        return self._applied

    def set_conf_state(self, conf: ConfState) -> None:
        def work(txn: lmdb.Transaction) -> None:
            txn.put(b"conf", records.encode_conf(conf), db=self._db["conf"])
            self.mark_present(txn, "conf")

        self._write(work)
        self._conf = conf

    def apply(self, body: Callable[["ApplyTxn"], object]) -> object:
        """Apply committed entries in one transaction: data, sessions, applied index, configuration.

        ``body(tx)`` must be deterministic and free of outside side effects: if
        the map fills up, the transaction is aborted, the map grown and
        ``body`` run again on a fresh transaction. Returns ``body``'s result
        from the run that committed.
        """
        holder: list[ApplyTxn] = []

        def work(txn: lmdb.Transaction) -> object:
            holder[:] = [ApplyTxn(self, txn)]
            return body(holder[0])

        result = self._write(work)
        self._after_apply(holder[0])
        return result

    def _after_apply(self, tx: "ApplyTxn") -> None:
        """An apply transaction committed: the in-memory applied index, configuration, hard state."""
        self._applied = tx.applied
        if tx.conf is not None:
            self._conf = tx.conf
        if tx.hard is not None:
            self._hard = tx.hard

    def scan(self, db: str) -> list[tuple[bytes, bytes]]:
        """Every (key, value) of database ``db`` ("data", "sessions", ...) in key order, from one read."""
        def read() -> list[tuple[bytes, bytes]]:
            with self._env.begin() as txn, txn.cursor(self._db[db]) as cur:
                return [(bytes(k), bytes(v)) for k, v in cur]

        return self._guard(read)

    def view(self) -> ReadView:
        """A consistent read view of the user data (close it: ``with store.view() as view:``)."""
        return ReadView(self._env.begin(), self._db["data"])

    def read_txn(self) -> lmdb.Transaction:
        """A consistent read view (the caller closes it with ``abort()``)."""
        return self._env.begin()

    def db(self, name: str):
        return self._db[name]

    def stat(self) -> dict:
        """Sizes for status reports: map size, bytes used, entries per database."""
        with self._env.begin() as txn:
            counts = {name: txn.stat(self._db[name])["entries"] for name in ("log", "data", "sessions")}
        return {"map_bytes": self._env.info()["map_size"], "used_bytes": _used_bytes(self._env), **counts}


def _used_bytes(env: lmdb.Environment) -> int:
    """Bytes of the data file that the environment's pages occupy."""
    return (env.info()["last_pgno"] + 1) * env.stat()["psize"]


def fsync_dir(directory: Path) -> None:
    """Make a rename or file creation in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` via a fsynced temporary file and a rename, then fsync the directory: a
    reader sees the old bytes or the new, never a part. The temporary name is unique per process
    and thread (hosts on one machine may share a directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
