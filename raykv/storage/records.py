"""Binary records of the replica store: log entries, hard state, configuration, snapshot meta.

Every record starts with a format byte (``RECORD_VERSION``) so a newer raykv can
change a layout without misreading old data, and ends with a CRC32 of what
precedes it: LMDB has no page checksums, so a damaged record must not decode as
valid data. Decoders raise :class:`ValueError` on anything malformed; the store
turns that into a :class:`~raykv.errors.CorruptStoreError` naming the file.
"""

from __future__ import annotations

import struct
import zlib

from ..raft.types import ConfState, Entry, EntryKind, HardState, SnapshotMeta

RECORD_VERSION = 1
_U64 = struct.Struct(">Q")
_ENTRY_HEAD = struct.Struct(">BQB")  # version, term, kind
_HARD = struct.Struct(">BQQQ")  # version, term, vote, commit
_META_HEAD = struct.Struct(">BQQ")  # version, index, term


_CRC = struct.Struct(">I")


def seal(body: bytes) -> bytes:
    """``body`` followed by its CRC32."""
    return body + _CRC.pack(zlib.crc32(body))


def unseal(data: bytes, what: str) -> bytes:
    """The body of a sealed record; raises ValueError if missing, short or damaged."""
    if data is None:
        raise ValueError(f"{what} is missing")
    data = bytes(data)
    if len(data) < _CRC.size or _CRC.unpack_from(data, len(data) - _CRC.size)[0] != zlib.crc32(data[: -_CRC.size]):
        raise ValueError(f"{what} fails its checksum")
    return data[: -_CRC.size]


def index_key(index: int) -> bytes:
    """Big-endian index: LMDB's byte order is then log order."""
    return _U64.pack(index)


def key_index(key: bytes) -> int:
    return _U64.unpack(key)[0]


def encode_u64(value: int) -> bytes:
    return _U64.pack(value)


def decode_u64(data: bytes) -> int:
    if len(data) != _U64.size:
        raise ValueError(f"expected 8 bytes, got {len(data)}")
    return _U64.unpack(data)[0]


def encode_applied(index: int) -> bytes:
    return seal(bytes([RECORD_VERSION]) + _U64.pack(index))


def decode_applied(data: bytes) -> int:
    body = unseal(data, "applied index")
    _check_version(body[0], "applied index")
    return decode_u64(body[1:])


def encode_entry(entry: Entry) -> bytes:
    return seal(_ENTRY_HEAD.pack(RECORD_VERSION, entry.term, int(entry.kind)) + entry.data)


def decode_entry(index: int, data: bytes) -> Entry:
    data = unseal(data, f"log entry {index}")
    if len(data) < _ENTRY_HEAD.size:
        raise ValueError(f"log entry {index} is truncated ({len(data)} bytes)")
    version, term, kind = _ENTRY_HEAD.unpack_from(data)
    _check_version(version, f"log entry {index}")
    return Entry(index, term, EntryKind(kind), bytes(data[_ENTRY_HEAD.size :]))


def encode_hard_state(hs: HardState) -> bytes:
    return seal(_HARD.pack(RECORD_VERSION, hs.term, hs.vote, hs.commit))


def decode_hard_state(data: bytes) -> HardState:
    data = unseal(data, "hard state")
    if len(data) != _HARD.size:
        raise ValueError(f"hard state has {len(data)} bytes, expected {_HARD.size}")
    version, term, vote, commit = _HARD.unpack(data)
    _check_version(version, "hard state")
    return HardState(term, vote, commit)


def encode_conf(conf: ConfState) -> bytes:
    return seal(_conf_body(conf))


def decode_conf(data: bytes) -> ConfState:
    return _decode_conf_body(unseal(data, "configuration"))


def _conf_body(conf: ConfState) -> bytes:
    parts = [bytes([RECORD_VERSION, int(conf.auto_leave)])]
    for ids in (conf.voters, conf.learners, conf.voters_outgoing, conf.learners_next):
        parts.append(_U64.pack(len(ids)) + b"".join(_U64.pack(i) for i in ids))
    return b"".join(parts)


def _decode_conf_body(data: bytes) -> ConfState:
    if len(data) < 2:
        raise ValueError("configuration record is truncated")
    _check_version(data[0], "configuration")
    offset, groups = 2, []
    for _ in range(4):
        if offset + 8 > len(data):
            raise ValueError("configuration record is truncated")
        (count,) = _U64.unpack_from(data, offset)
        end = offset + 8 + 8 * count
        if end > len(data):
            raise ValueError("configuration record is truncated")
        groups.append(tuple(_U64.unpack_from(data, offset + 8 + 8 * i)[0] for i in range(count)))
        offset = end
    if offset != len(data):
        raise ValueError("configuration record has trailing bytes")
    return ConfState(groups[0], groups[1], groups[2], groups[3], bool(data[1]))


def encode_snapshot_meta(meta: SnapshotMeta) -> bytes:
    return seal(_META_HEAD.pack(RECORD_VERSION, meta.index, meta.term) + _conf_body(meta.conf))


def decode_snapshot_meta(data: bytes) -> SnapshotMeta:
    data = unseal(data, "snapshot metadata")
    if len(data) < _META_HEAD.size:
        raise ValueError("snapshot metadata is truncated")
    version, index, term = _META_HEAD.unpack_from(data)
    _check_version(version, "snapshot metadata")
    return SnapshotMeta(index, term, _decode_conf_body(data[_META_HEAD.size :]))


def _check_version(version: int, what: str) -> None:
    if version != RECORD_VERSION:
        raise ValueError(f"{what} has record format {version}; this raykv reads format {RECORD_VERSION}")
