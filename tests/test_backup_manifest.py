"""Backup verification without Ray (:func:`raykv.storage.backup_manifest.verify`).

Each damaged backup here carries a manifest whose size and SHA-256 match its files, so the
checksum check passes and the content checks (schema, row count, key ranges, empty keys, limits)
must catch the damage themselves; the Ray round trip lives in ``test_backup_ray.py``.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raykv.errors import BackupError, DefiniteError
from raykv.kv.limits import KVLimits
from raykv.storage.backup import SCHEMA, file_digest
from raykv.storage.backup_manifest import FORMAT, MANIFEST, Manifest, ShardBackup, shard_file_name, verify

SPLIT = b"sm"  # shard 1: [b"", b"sm"), shard 2: [b"sm", None)


def write_backup(root: Path, rows: dict[int, list[tuple[bytes, bytes]]], *, schema: pa.Schema = SCHEMA,
                 recorded_rows: dict[int, int] | None = None, ranges=None, fmt: int = FORMAT) -> Path:
    """A backup directory whose manifest records each file's real size and SHA-256."""
    root.mkdir(parents=True, exist_ok=True)
    ranges = ranges or {1: (b"", SPLIT), 2: (SPLIT, None)}
    shards = []
    for shard, (start, end) in ranges.items():
        pairs = rows.get(shard, [])
        table = pa.table({"key": [k for k, _ in pairs], "value": [v for _, v in pairs]}, schema=schema)
        path = root / shard_file_name(shard)
        pq.write_table(table, str(path))
        size, sha = file_digest(path)
        count = (recorded_rows or {}).get(shard, len(pairs))
        shards.append(ShardBackup(shard, start, end, 10, 2, count, size, sha, shard_file_name(shard)))
    manifest = Manifest(fmt, "src", 1, "2026-11-26T00:00:00Z", "0.1.0", tuple(shards))
    (root / MANIFEST).write_text(manifest.to_json())
    return root


GOOD = {1: [(b"sa", b"1"), (b"sb", b"2")], 2: [(b"sx", b"3")]}


def test_a_sound_backup_verifies_and_round_trips_its_manifest(tmp_path: Path) -> None:
    manifest = verify(write_backup(tmp_path / "b", GOOD))
    assert manifest.rows == 3 and [s.shard for s in manifest.shards] == [1, 2]
    assert Manifest.from_json(manifest.to_json()) == manifest


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (dict(rows={1: [(b"sa", b"1"), (b"sz", b"2")], 2: []}), "outside shard 1's range"),
        (dict(rows={1: [(b"", b"1")], 2: []}), "an empty key"),
        (dict(rows=GOOD, recorded_rows={2: 5}), "holds 1 rows, the manifest records 5"),
        (dict(rows={1: [], 2: [(b"sx", b"3")]},
              schema=pa.schema([pa.field("key", pa.binary()), pa.field("value", pa.string())])), "schema"),
        (dict(rows=GOOD, ranges={1: (b"", SPLIT), 2: (b"sz", None)}), "do not tile"),
        (dict(rows=GOOD, fmt=FORMAT + 1), f"backup format {FORMAT + 1}"),
    ],
    ids=["key-out-of-range", "empty-key", "row-count", "schema", "tiling", "newer-format"],
)
def test_content_damage_behind_valid_checksums_is_refused(tmp_path: Path, damage: dict, message: str) -> None:
    rows = damage.pop("rows")
    root = write_backup(tmp_path / "b", rows, **damage)
    with pytest.raises(BackupError, match=message) as caught:
        verify(root)
    assert isinstance(caught.value, DefiniteError)


def test_rows_over_the_new_stores_limits_are_refused(tmp_path: Path) -> None:
    root = write_backup(tmp_path / "b", {1: [(b"sa", b"x" * 100)], 2: []})
    verify(root)  # without limits it is a sound backup
    with pytest.raises(BackupError, match="over the new store's limits"):
        verify(root, KVLimits(max_value_bytes=64))


def test_a_missing_shard_file_is_refused(tmp_path: Path) -> None:
    root = write_backup(tmp_path / "b", GOOD)
    (root / shard_file_name(2)).unlink()
    with pytest.raises(BackupError, match="missing or unreadable"):
        verify(root)
