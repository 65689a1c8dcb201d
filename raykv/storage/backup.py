"""Backup exports of one replica's user data: a Parquet file written from ONE LMDB read transaction.

Used by the replica (:meth:`raykv.runtime.loop.ReplicaLoop.export_backup`) for
``raykv backup`` (:mod:`raykv.backup`); no Ray here.

File format: a Parquet file with two non-null binary columns, ``key`` (the
encoded key, :mod:`raykv.userdata`) and ``value`` (the stored, encoded value),
rows in key order, row groups of about ``row_group_bytes``; its schema metadata
holds ``raykv-backup`` (format), ``index`` and ``term`` (the applied index of
the cut and that entry's term). Only the ``data`` database is exported: client
sessions, the log and Raft state are not part of a backup.

Contracts:

* **One cut.** :meth:`BackupExports.export` reads the applied index, its term
  and every user row in one LMDB read transaction, so the file is the state at
  exactly that applied index. It must run on the replica's loop thread (the
  one thread that writes): LMDB may grow its map only while no transaction is
  open in the process, so a read transaction must never stay open on another
  thread (the same rule as snapshot exports, :mod:`raykv.runtime.snapshots`).
  The loop is paused while it writes (about as long as a snapshot export).
* **Errors are values.** A failed export (disk full, unreadable store) is
  returned as a :class:`~raykv.errors.BackupError`, never raised into the
  loop (which would end the replica's process).
* **Files are transient.** Exports live in the replica's ``<id>.backups``
  directory until the caller removes them (:meth:`BackupExports.remove`) once
  streamed; any left behind (caller died) go when the replica restarts or
  when a later export finds them older than :data:`STALE_EXPORT_S`.
* Backup ids are checked (letters, digits and ``-`` only, at most 100
  characters), so no id can name a path outside the directory.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import BackupError, InvalidRequestError
from ..kv.ranges import RESERVED_END
from .replica_store import ReplicaStore
from .snapshot import export_in_one_txn

BACKUP_FORMAT = 1
SCHEMA = pa.schema([pa.field("key", pa.binary(), nullable=False), pa.field("value", pa.binary(), nullable=False)])
ROW_GROUP_BYTES = 8 << 20
MAX_CHUNK_BYTES = 8 << 20
"""The largest piece of an export one :meth:`BackupExports.chunk` call returns."""
STALE_EXPORT_S = 3600.0


def check_backup_id(backup_id: object) -> str:
    if (not isinstance(backup_id, str) or not 0 < len(backup_id) <= 100
            or not backup_id.replace("-", "").isalnum() or not backup_id.isascii()):
        raise InvalidRequestError(f"a backup id must be 1-100 ASCII letters, digits or '-', got {backup_id!r}")
    return backup_id


def write_user_rows(store: ReplicaStore, path: Path, row_group_bytes: int = ROW_GROUP_BYTES) -> dict:
    """Write the store's user rows to ``path`` (Parquet) from one read transaction.

    Returns ``{"index", "term", "rows"}`` of the cut. Loop thread only (see the module docstring).
    """
    with export_in_one_txn(store, path) as (txn, meta, tmp):
        schema = SCHEMA.with_metadata({"raykv-backup": str(BACKUP_FORMAT), "index": str(meta.index),
                                       "term": str(meta.term)})
        with pq.ParquetWriter(str(tmp), schema, compression="snappy") as writer:
            rows = _write_rows(writer, schema, txn, store.db("data"), row_group_bytes)
    return {"index": meta.index, "term": meta.term, "rows": rows}


def _write_rows(writer, schema: pa.Schema, txn, db, row_group_bytes: int) -> int:
    keys: list[bytes] = []
    values: list[bytes] = []
    size = rows = 0
    with txn.cursor(db) as cur:
        # raykv's own rows (e.g. the range state) sort below RESERVED_END and are not user data
        for key, value in (cur if cur.set_range(RESERVED_END) else ()):
            keys.append(key)
            values.append(value)
            size += len(key) + len(value)
            if size >= row_group_bytes:
                rows += _flush(writer, schema, keys, values)
                keys, values, size = [], [], 0
    if keys or not rows:
        rows += _flush(writer, schema, keys, values)
    return rows


def _flush(writer, schema: pa.Schema, keys: list[bytes], values: list[bytes]) -> int:
    writer.write_table(pa.table([pa.array(keys, pa.binary()), pa.array(values, pa.binary())], schema=schema))
    return len(keys)


def file_digest(path: Path) -> tuple[int, str]:
    """``(size, sha256 hex)`` of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            h.update(piece)
            size += len(piece)
    return size, h.hexdigest()


class BackupExports:
    """The export files of one replica, in ``directory`` (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        for stale in directory.glob("backup-*") if directory.is_dir() else ():
            stale.unlink(missing_ok=True)  # exports of a run before this restart

    def path(self, backup_id: str) -> Path:
        return self.directory / f"backup-{check_backup_id(backup_id)}.parquet"

    def export(self, store: ReplicaStore, backup_id: str) -> dict | BackupError:
        """The cut ``{"index", "term", "rows"}`` written to :meth:`path`, or the error (loop thread)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._drop_stale()
            return write_user_rows(store, self.path(backup_id))
        except Exception as e:  # noqa: BLE001 -- an export failure must never end the replica's loop
            return BackupError(f"replica {store.ident.replica} of shard {store.ident.shard} could not export "
                               f"its data: {type(e).__name__}: {e}")

    def describe(self, backup_id: str, cut: dict) -> dict | BackupError:
        """``cut`` plus the file's ``bytes`` and ``sha256`` (any thread: the file is complete)."""
        try:
            size, sha = file_digest(self.path(backup_id))
        except OSError as e:
            return BackupError(f"backup export {backup_id} is unreadable: {e}")
        return {**cut, "bytes": size, "sha256": sha}

    def chunk(self, backup_id: str, offset: int, size: int) -> bytes | BackupError | InvalidRequestError:
        """Up to ``size`` (at most :data:`MAX_CHUNK_BYTES`) bytes of an export from ``offset``."""
        try:
            path = self.path(backup_id)
        except InvalidRequestError as e:
            return e
        for name, value in (("offset", offset), ("size", size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                return InvalidRequestError(f"backup chunk {name} must be an int >= 0, got {value!r}")
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(min(size, MAX_CHUNK_BYTES))
        except OSError as e:
            return BackupError(f"backup export {backup_id} is gone or unreadable: {e}")

    def remove(self, backup_id: str) -> bool:
        """Remove an export; True if it existed (a bad id removes nothing)."""
        try:
            path = self.path(backup_id)
        except InvalidRequestError:
            return False
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed

    def _drop_stale(self) -> None:
        cutoff = time.time() - STALE_EXPORT_S
        for old in self.directory.glob("backup-*"):
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink(missing_ok=True)
            except OSError:
                pass
