"""Snapshots as Arrow IPC streams: export from one consistent read, install atomically.

File format (an Arrow IPC *stream*, so it can be sent chunk by chunk):

* schema ``(table: uint8, key: binary, value: binary)`` -- table 0 is user
  data, 1 is client sessions (8-byte big-endian ids) -- with schema metadata
  ``raykv-snapshot`` (format), ``index``, ``term``, ``conf`` (hex record);
* record batches of at most ``chunk_bytes`` of keys and values, each carrying
  custom metadata ``digest``: a BLAKE2b of its rows;
* a last, empty batch with ``end``, ``rows`` and ``digest`` (over the
  metadata and all rows, so a damaged index, term or configuration is caught).

A reader validates every batch fully before touching its values, so a damaged
file raises :class:`~raykv.errors.SnapshotError`, never a crash or a raw error.

An export reads applied index, configuration, sessions and data in one LMDB
read transaction, so the snapshot is a consistent cut; it is written to a
temporary file, fsynced and renamed, so a crash leaves no half file under the
final name. An install verifies every digest while it writes the rows inside
the replica store's single write transaction: any damage aborts that
transaction and leaves the old state intact.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lmdb
import pyarrow as pa

from ..errors import CorruptStoreError, SnapshotError
from ..kv.limits import LMDB_MAX_KEY_BYTES
from ..raft.types import HardState, Snapshot, SnapshotMeta
from . import records
from .replica_store import ReplicaStore, fsync_dir

SNAPSHOT_FORMAT = 1
SCHEMA = pa.schema([("table", pa.uint8()), ("key", pa.binary()), ("value", pa.binary())])
DEFAULT_CHUNK_BYTES = 4 << 20
DATA, SESSIONS = 0, 1


def _digest(h, table: int, key: bytes, value: bytes) -> None:
    h.update(bytes([table]) + len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value)


def export_snapshot(store: ReplicaStore, path: str | os.PathLike, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> SnapshotMeta:
    """Write the store's applied state to ``path`` as an Arrow snapshot; returns its metadata."""
    path = Path(path)
    try:
        with export_in_one_txn(store, path) as (txn, meta, tmp):
            with open(tmp, "wb") as f:
                _write_stream(f, meta, _rows_in(store, txn), chunk_bytes)
                f.flush()
                os.fsync(f.fileno())
    except (lmdb.Error, ValueError, TypeError) as e:
        raise CorruptStoreError(f"cannot read a consistent state to export: {e}", str(store.path)) from None
    fsync_dir(path.parent)
    return meta


@contextmanager
def export_in_one_txn(store: ReplicaStore, path: Path) -> Iterator[tuple[object, SnapshotMeta, Path]]:
    """Yields ``(read txn, applied meta, tmp path)`` for writing an export of the state at one
    applied index: the body writes ``tmp`` from ``txn``; on success ``tmp`` replaces ``path``, on
    any error it is removed; the transaction is always aborted (before the rename), so none stays
    open (LMDB grows its map only while no transaction is open in the process)."""
    tmp = path.with_name(path.name + ".tmp")
    txn = store.read_txn()
    try:
        yield txn, applied_meta_in(store, txn), tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        txn.abort()
    os.replace(tmp, path)


def applied_meta_in(store: ReplicaStore, txn) -> SnapshotMeta:
    """The applied index and its term as seen by read transaction ``txn`` (shared by the snapshot
    and backup exports, which read the state and its index in that one transaction)."""
    applied_raw = txn.get(b"applied", db=store.db("applied"))
    applied = records.decode_applied(applied_raw) if applied_raw else 0
    floor_raw = txn.get(b"floor", db=store.db("snap"))
    floor = records.decode_snapshot_meta(floor_raw) if floor_raw else SnapshotMeta()
    if applied == floor.index:
        term = floor.term
    else:
        entry = txn.get(records.index_key(applied), db=store.db("log"))
        if entry is None:
            raise SnapshotError(f"applied entry {applied} is missing from the log", str(store.path))
        term = records.decode_entry(applied, entry).term
    conf_raw = txn.get(b"conf", db=store.db("conf"))
    return SnapshotMeta(applied, term, records.decode_conf(conf_raw) if conf_raw else floor.conf)


def _rows_in(store: ReplicaStore, txn) -> Iterator[tuple[int, bytes, bytes]]:
    for table, name in ((DATA, "data"), (SESSIONS, "sessions")):
        with txn.cursor(store.db(name)) as cur:
            for key, value in cur:
                yield table, bytes(key), bytes(value)


def _write_stream(f, meta: SnapshotMeta, rows: Iterator[tuple[int, bytes, bytes]], chunk_bytes: int) -> None:
    schema = SCHEMA.with_metadata(
        {
            "raykv-snapshot": str(SNAPSHOT_FORMAT),
            "index": str(meta.index),
            "term": str(meta.term),
            "conf": records.encode_conf(meta.conf).hex(),
        }
    )
    total, count = _total_digest(meta), 0
    with pa.ipc.new_stream(f, schema) as writer:
        chunk: list[tuple[int, bytes, bytes]] = []
        size = 0
        for row in rows:
            chunk.append(row)
            size += len(row[1]) + len(row[2])
            if size >= chunk_bytes:
                count += _write_chunk(writer, schema, chunk, total)
                chunk, size = [], 0
        count += _write_chunk(writer, schema, chunk, total) if chunk else 0
        end = {"end": "1", "rows": str(count), "digest": total.hexdigest()}
        writer.write_batch(_batch(schema, []), custom_metadata=end)


def _total_digest(meta: SnapshotMeta):
    """The running digest of a whole snapshot starts with its metadata, so the end marker covers it."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{SNAPSHOT_FORMAT}/{meta.index}/{meta.term}/".encode() + records.encode_conf(meta.conf))
    return h


def _batch(schema: pa.Schema, rows: list[tuple[int, bytes, bytes]]) -> pa.RecordBatch:
    columns = list(zip(*rows)) if rows else [[], [], []]
    return pa.record_batch([pa.array(c, type=t.type) for c, t in zip(columns, SCHEMA)], schema=schema)


def _write_chunk(writer, schema, chunk, total) -> int:
    h = hashlib.blake2b(digest_size=16)
    for row in chunk:
        _digest(h, *row)
        _digest(total, *row)
    writer.write_batch(_batch(schema, chunk), custom_metadata={"digest": h.hexdigest()})
    return len(chunk)


def read_snapshot_meta(path: str | os.PathLike) -> SnapshotMeta:
    """The metadata of a snapshot file (validated), without reading its rows."""
    with _open(path) as reader:
        return _meta_from_schema(reader.schema, path)


def iter_snapshot_rows(path: str | os.PathLike) -> Iterator[tuple[int, bytes, bytes]]:
    """Every row of the snapshot, verifying each chunk and the whole; raises SnapshotError."""
    count = 0
    with _open(path) as reader:
        total = _total_digest(_meta_from_schema(reader.schema, path))
        while True:
            batch, custom = _next_batch(reader, path)
            if custom.get("end") == "1":
                _check_end(custom, count, total, path)
                return
            rows = _verified_rows(batch, custom, total, path)
            count += len(rows)
            yield from rows


def _next_batch(reader, path) -> tuple[pa.RecordBatch, dict[str, str]]:
    """The next batch, fully validated (a damaged buffer must never reach Python objects)."""
    try:
        batch, custom = reader.read_next_batch_with_custom_metadata()
        batch.validate(full=True)
        if batch.schema.remove_metadata() != SCHEMA:
            raise SnapshotError("a snapshot chunk has the wrong schema", str(path))
        return batch, {k.decode(): v.decode() for k, v in (custom or {}).items()}
    except StopIteration:
        raise SnapshotError("snapshot ends before its end marker (truncated)", str(path)) from None
    except _DAMAGE as e:
        raise SnapshotError(f"snapshot stream is damaged: {type(e).__name__}: {e}", str(path)) from None


_DAMAGE = (pa.ArrowException, OSError, UnicodeDecodeError, ValueError, MemoryError, SystemError)


def _verified_rows(batch, custom, total, path) -> list[tuple[int, bytes, bytes]]:
    tables, keys, values = (batch.column(i).to_pylist() for i in range(3))
    h = hashlib.blake2b(digest_size=16)
    rows = list(zip(tables, keys, values))
    for row in rows:
        _check_row(row, path)
        _digest(h, *row)
        _digest(total, *row)
    if custom.get("digest") != h.hexdigest():
        raise SnapshotError("a snapshot chunk fails its checksum", str(path))
    return rows


def _check_row(row: tuple, path) -> None:
    """Rows must be storable: a known table, a non-empty key LMDB accepts, 8-byte session ids."""
    table, key, value = row
    if table not in (DATA, SESSIONS) or key is None or value is None:
        raise SnapshotError(f"snapshot row has an invalid table or a null field (table {table})", str(path))
    if table == SESSIONS and len(key) != 8:
        raise SnapshotError(f"snapshot session id has {len(key)} bytes, not 8", str(path))
    if not 0 < len(key) <= LMDB_MAX_KEY_BYTES:
        raise SnapshotError(f"snapshot key of {len(key)} bytes is outside 1..{LMDB_MAX_KEY_BYTES}", str(path))


def _check_end(custom, count, total, path) -> None:
    if custom.get("rows") != str(count) or custom.get("digest") != total.hexdigest():
        raise SnapshotError("snapshot row count or checksum does not match its end marker", str(path))


def _open(path):
    try:
        return pa.ipc.open_stream(pa.OSFile(str(path), "rb"))
    except _DAMAGE as e:
        raise SnapshotError(f"not a readable Arrow snapshot: {type(e).__name__}: {e}", str(path)) from None


def _meta_from_schema(schema: pa.Schema, path) -> SnapshotMeta:
    try:
        md = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
        if "raykv-snapshot" not in md or schema.remove_metadata() != SCHEMA:
            raise SnapshotError("not a raykv snapshot (schema or metadata missing)", str(path))
        if int(md["raykv-snapshot"]) > SNAPSHOT_FORMAT:
            raise SnapshotError(
                f"snapshot format {md['raykv-snapshot']} is newer than this raykv's {SNAPSHOT_FORMAT}", str(path)
            )
        return SnapshotMeta(int(md["index"]), int(md["term"]), records.decode_conf(bytes.fromhex(md["conf"])))
    except (KeyError, *_DAMAGE) as e:
        raise SnapshotError(f"snapshot metadata is malformed: {type(e).__name__}: {e}", str(path)) from None


def install_snapshot(store: ReplicaStore, path: str | os.PathLike, hard_state: HardState | None = None) -> SnapshotMeta:
    """Replace the store's log and state by the snapshot at ``path``, in one transaction.

    The file's name is recorded as the snapshot's payload reference (so this
    replica can later send the same snapshot on). Any damage found while
    reading aborts the transaction: the old state stays, whole.
    """
    path = Path(path)
    meta = read_snapshot_meta(path)
    snapshot = Snapshot(meta, path.name.encode())
    store.persist(hard_state=hard_state, snapshot=snapshot, snapshot_rows=lambda: iter_snapshot_rows(path))
    return meta
