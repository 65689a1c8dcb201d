"""The backup directory format: ``manifest.json`` (:class:`Manifest`) and its verification (no Ray).

A backup directory (written by :func:`raykv.backup.backup`; local, or at any URL pyarrow's
filesystems open: :mod:`raykv.storage.location`) holds one
``shard-<id>.parquet`` per shard (the schema of :mod:`raykv.storage.backup`:
encoded ``key``, stored ``value``) and ``manifest.json``, written last (whole or not at all:
:meth:`~raykv.storage.location.BackupLocation.write_whole`). The manifest records the format, the source store and
its shard map epoch, the creation time, the raykv version, and per shard: its
key range ``[start, end)`` (encoded keys, hex), the Raft ``index`` and ``term``
of its cut, and its file's ``rows``, ``bytes`` and ``sha256``.

:func:`verify` checks a directory without changing anything and raises
:class:`~raykv.errors.BackupError` naming the first problem: no directory, no
manifest (an incomplete backup), a malformed or newer-format manifest, shard
ranges that do not tile the key space, and per file: size and SHA-256 as
recorded, the backup schema, the row count, no null or empty key, every key in
its shard's range, and (given limits) every key and value within them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from ..errors import BackupError
from ..kv.limits import KVLimits
from .backup import SCHEMA
from .location import BackupLocation

FORMAT = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ShardBackup:
    """One shard's file: its key range ``[start, end)`` (encoded keys), the cut's Raft ``index``
    and ``term``, and the file's ``rows``, ``bytes`` and ``sha256``."""

    shard: int
    start: bytes
    end: bytes | None
    index: int
    term: int
    rows: int
    bytes: int
    sha256: str
    file: str

    def to_json(self) -> dict:
        doc = asdict(self)
        doc.update(start=self.start.hex(), end=None if self.end is None else self.end.hex())
        return doc


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` records (``format``, source ``store``, its shard map ``epoch``)."""

    format: int
    store: str
    epoch: int
    created_at: str
    raykv_version: str
    shards: tuple[ShardBackup, ...]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def to_json(self) -> str:
        doc = {"kind": "raykv-backup", **asdict(self), "shards": [s.to_json() for s in self.shards]}
        return json.dumps(doc, indent=2, sort_keys=True)

    @staticmethod
    def from_json(text: str | bytes, where: str = MANIFEST) -> "Manifest":
        """Parse and validate (raises :class:`BackupError` naming what is wrong)."""
        try:
            doc = json.loads(text)
            if doc.get("kind") != "raykv-backup":
                raise BackupError(f"{where} is not a raykv backup manifest")
            if int(doc["format"]) > FORMAT:
                raise BackupError(f"{where} has backup format {doc['format']}; this raykv reads format {FORMAT}")
            shards = tuple(_shard_from_json(s) for s in doc["shards"])
            manifest = Manifest(int(doc["format"]), str(doc["store"]), int(doc["epoch"]), str(doc["created_at"]),
                                str(doc["raykv_version"]), shards)
        except BackupError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BackupError(f"{where} is malformed: {type(e).__name__}: {e}") from None
        _check_tiling(manifest, where)
        return manifest


def _shard_from_json(s: dict) -> ShardBackup:
    end = None if s["end"] is None else bytes.fromhex(s["end"])
    shard = ShardBackup(int(s["shard"]), bytes.fromhex(s["start"]), end, int(s["index"]), int(s["term"]),
                        int(s["rows"]), int(s["bytes"]), str(s["sha256"]), str(s["file"]))
    if shard.file != shard_file_name(shard.shard) or min(shard.rows, shard.bytes, shard.index) < 0:
        raise ValueError(f"bad entry for shard {shard.shard}: file {shard.file!r}, rows {shard.rows}")
    return shard


def _check_tiling(manifest: Manifest, where: str) -> None:
    """Shard ranges must tile the key space (as a shard map's do) and shard ids be unique."""
    shards = sorted(manifest.shards, key=lambda s: s.start)
    ids = [s.shard for s in shards]
    contiguous = all(a.end == b.start for a, b in zip(shards, shards[1:]))
    tiles = bool(shards) and shards[0].start == b"" and shards[-1].end is None and contiguous
    if not tiles or len(set(ids)) != len(ids):
        raise BackupError(f"{where}: the shards' key ranges do not tile the key space (or repeat a shard)")


def shard_file_name(shard: int) -> str:
    return f"shard-{shard}.parquet"


def verify(path: "str | os.PathLike | BackupLocation", limits: KVLimits | None = None) -> Manifest:
    """Check a backup (a directory, a URL or a :class:`BackupLocation`) without changing anything;
    its :class:`Manifest`, or :class:`BackupError`.

    Reads the manifest, then every file in full: size and SHA-256 as recorded, the
    backup schema, the row count, no null or empty key, every key inside its shard's
    range, and (with ``limits``) every key and value within them.
    """
    where = path if isinstance(path, BackupLocation) else BackupLocation.parse(path)
    if where.kind() != "directory":
        raise BackupError(f"no backup directory at {where.shown!r}")
    if where.kind(MANIFEST) != "file":
        raise BackupError(f"{where.shown!r} has no {MANIFEST}: not a backup, or an incomplete one")
    shown = f"{where.shown.rstrip('/')}/{MANIFEST}"
    try:
        text = where.read(MANIFEST)
    except OSError as e:
        raise BackupError(f"cannot read {shown}: {e}") from None
    manifest = Manifest.from_json(text, shown)
    for shard in manifest.shards:
        _verify_file(where, shard, limits)
    return manifest


def _verify_file(where: BackupLocation, shard: ShardBackup, limits: KVLimits | None) -> None:
    name = shard.file
    try:
        size, sha = where.digest(name)
    except OSError as e:
        raise BackupError(f"backup file {name} is missing or unreadable: {e}") from None
    if size != shard.bytes or sha != shard.sha256:
        raise BackupError(f"backup file {name} is damaged: {size} bytes, sha256 {sha[:16]}..., but the "
                          f"manifest records {shard.bytes} bytes, sha256 {shard.sha256[:16]}...")
    rows = 0
    try:
        for batch in iter_batches(where, name):
            if batch.schema.remove_metadata() != SCHEMA:
                raise BackupError(f"backup file {name} has schema {batch.schema}, not the backup schema")
            _check_batch(batch, shard, limits, name)
            rows += batch.num_rows
    except BackupError:
        raise
    except Exception as e:  # noqa: BLE001 -- any decoding failure is damage
        raise BackupError(f"backup file {name} is not readable Parquet: {type(e).__name__}: {e}") from None
    if rows != shard.rows:
        raise BackupError(f"backup file {name} holds {rows} rows, the manifest records {shard.rows}")


def iter_batches(where: BackupLocation, name: str, batch_size: int = 65_536):
    """The record batches of backup file ``name`` at ``where``."""
    yield from where.parquet(name).iter_batches(batch_size=batch_size)


def _check_batch(batch, shard: ShardBackup, limits: KVLimits | None, name: str) -> None:
    import pyarrow.compute as pc

    keys, values = batch.column(0), batch.column(1)
    if not batch.num_rows:
        return
    if keys.null_count or values.null_count:
        raise BackupError(f"backup file {name} has null keys or values")
    low, high = pc.min_max(keys).values()
    if not low.as_py() or low.as_py() < shard.start or (shard.end is not None and high.as_py() >= shard.end):
        raise BackupError(f"backup file {name} has keys outside shard {shard.shard}'s range (or an empty key)")
    if limits is not None:
        longest_key = pc.max(pc.binary_length(keys)).as_py()
        longest_value = pc.max(pc.binary_length(values)).as_py()
        if longest_key > limits.max_key_bytes or longest_value > limits.max_value_bytes:
            raise BackupError(f"backup file {name} holds a key of {longest_key} or a value of {longest_value} bytes, "
                              f"over the new store's limits ({limits.max_key_bytes}, {limits.max_value_bytes})")


