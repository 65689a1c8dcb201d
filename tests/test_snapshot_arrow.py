"""Arrow snapshots of a replica store: round trip, chunking, damaged files, atomic export.

The contract (``raykv.storage.snapshot``): an export is a consistent cut of
the applied state (data, sessions, configuration, applied index) written to a
temporary file and renamed; an install replaces the target's log and state
in one transaction and, when the file is damaged in any way, raises
:class:`~raykv.errors.SnapshotError` and leaves the previous state whole.

Some damage makes pyarrow itself crash (a segfault in ``to_pylist`` of a
batch whose offsets were never validated), so the byte-flip sweep reads the
damaged files in a subprocess: this module run as a script (``python
test_snapshot_arrow.py flips <spec.json>``) reports one JSON line per flipped
position and the test restarts it after a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pyarrow as pa
import pytest

import raykv.storage.snapshot as snapshot_module
from raykv.errors import SnapshotError
from raykv.raft.types import ConfState, Entry, HardState, SnapshotMeta
from raykv.storage import records
from raykv.storage.replica_store import ReplicaId, ReplicaStore
from raykv.storage.snapshot import export_snapshot, install_snapshot, iter_snapshot_rows, read_snapshot_meta

SOURCE_CONF = ConfState(voters=(1, 2, 3), learners=(4,))
TARGET_CONF = ConfState(voters=(7, 8, 9))
SWEEP_DEADLINE_S = 60.0


# -- stores ------------------------------------------------------------------------------------------------
def source_store(root: Path, keys: int = 40, value_bytes: int = 50) -> ReplicaStore:
    """Log 1..20 (term 2), entries 1..15 applied: ``keys`` user keys, 3 sessions, a configuration."""
    store = ReplicaStore(root, ReplicaId("src", 0, 1))
    store.persist(HardState(2, 1, 15), [Entry(i, 2, data=b"src-%d" % i) for i in range(1, 21)])

    def body(tx) -> None:
        for i in range(keys):
            tx.put(b"user/%05d" % i, (b"%d:" % i * value_bytes)[:value_bytes])
        for sid in (1, 2, 2**63 + 5):
            tx.put_session(sid, b"session %d" % sid)
        tx.set_conf(SOURCE_CONF)
        tx.set_applied(15)

    store.apply(body)
    return store


def target_store(root: Path) -> ReplicaStore:
    """A replica with a state of its own: log 6..30 (1..5 compacted), 12 applied, other keys and sessions."""
    store = ReplicaStore(root, ReplicaId("dst", 0, 2))
    store.persist(HardState(1, 3, 12), [Entry(i, 1, data=b"dst-%d" % i) for i in range(1, 31)])

    def body(tx) -> None:
        for i in range(25):
            tx.put(b"old/%d" % i, b"old value %d" % i)
        tx.put(b"user/00001", b"the target's own value")
        tx.put_session(9, b"target session")
        tx.set_conf(TARGET_CONF)
        tx.set_applied(12)

    store.apply(body)
    store.create_snapshot(10, TARGET_CONF, b"dst-snap-10")
    store.compact(5)
    return store


def rows_of(store: ReplicaStore) -> tuple[dict, dict]:
    return dict(store.scan("data")), dict(store.scan("sessions"))


def state_of(store: ReplicaStore) -> dict:
    """Everything observable about a store: log, hard state, applied index, snapshot, conf, data, sessions."""
    first, last = store.first_index(), store.last_index()
    data, sessions = rows_of(store)
    return {
        "hard_state": store.hard_state(), "first": first, "last": last, "floor_term": store.term(first - 1),
        "entries": store.entries(first, last + 1, 2**62) if last >= first else [],
        "applied": store.applied_index(), "snapshot": store.snapshot(), "conf": store.initial_state()[1],
        "data": data, "sessions": sessions,
    }


OPENED: list[ReplicaStore] = []


def reopen(store: ReplicaStore) -> ReplicaStore:
    """Close and reopen (what is on disk); the new handle is closed when the test ends."""
    store.close()
    OPENED.append(ReplicaStore(store.path.parent, store.ident, path=store.path, create=False))
    return OPENED[-1]


@pytest.fixture(autouse=True)
def close_reopened():
    yield
    while OPENED:
        OPENED.pop().close()


@pytest.fixture
def source(tmp_path):
    store = source_store(tmp_path)
    yield store
    store.close()


@pytest.fixture
def target(tmp_path):
    store = target_store(tmp_path)
    yield store
    store.close()


@pytest.fixture
def exported(source, tmp_path) -> Path:
    path = tmp_path / "snaps" / "snap-15.arrow"
    path.parent.mkdir()
    export_snapshot(source, path, chunk_bytes=300)
    return path


# -- round trip -------------------------------------------------------------------------------------------
def test_round_trip_replaces_state_and_log(source, target, exported):
    meta = read_snapshot_meta(exported)
    assert meta == SnapshotMeta(15, 2, SOURCE_CONF)
    installed = install_snapshot(target, exported, hard_state=HardState(2, 0, 15))
    assert installed == meta
    for reopened in (False, True):
        store = reopen(target) if reopened else target
        got = state_of(store)
        assert (got["data"], got["sessions"]) == rows_of(source)
        assert b"old/3" not in got["data"] and got["data"][b"user/00001"] != b"the target's own value"
        assert got["conf"] == SOURCE_CONF and got["applied"] == 15
        assert (got["first"], got["last"], got["floor_term"], got["entries"]) == (16, 15, 2, [])
        assert got["snapshot"].meta == meta and got["snapshot"].data == exported.name.encode()
        assert got["hard_state"] == HardState(2, 0, 15)


def test_install_without_hard_state_keeps_it_and_log_continues(source, target, exported):
    install_snapshot(target, exported)
    assert target.hard_state() == HardState(1, 3, 12)
    target.persist(HardState(3, 2, 16), [Entry(16, 3, data=b"after")])  # the log goes on after the snapshot
    assert (target.first_index(), target.last_index(), target.term(15), target.term(16)) == (16, 16, 2, 3)
    target.apply(lambda tx: (tx.put(b"k16", b"v"), tx.set_applied(16)))
    assert reopen(target).applied_index() == 16


def test_export_of_an_empty_store(tmp_path):
    empty = ReplicaStore(tmp_path, ReplicaId("empty", 0, 1))
    path = tmp_path / "empty.arrow"
    assert export_snapshot(empty, path) == SnapshotMeta(0, 0, ConfState())
    assert list(iter_snapshot_rows(path)) == []
    empty.close()


def test_export_after_compaction_of_the_applied_entry(source, tmp_path):
    source.create_snapshot(15, SOURCE_CONF, b"x")
    source.compact(15)
    assert export_snapshot(source, tmp_path / "s.arrow") == SnapshotMeta(15, 2, SOURCE_CONF)


def test_reexport_of_an_installed_snapshot_is_identical(source, target, exported, tmp_path):
    install_snapshot(target, exported)
    again = tmp_path / "again.arrow"
    assert export_snapshot(target, again, chunk_bytes=300) == read_snapshot_meta(exported)
    assert list(iter_snapshot_rows(again)) == list(iter_snapshot_rows(exported))


# -- chunking --------------------------------------------------------------------------------------------------
def batches(path: Path) -> list[tuple[pa.RecordBatch, dict]]:
    out = []
    with pa.ipc.open_stream(pa.OSFile(str(path), "rb")) as reader:
        while True:
            try:
                batch, custom = reader.read_next_batch_with_custom_metadata()
            except StopIteration:
                return out
            out.append((batch, {k.decode(): v.decode() for k, v in (custom or {}).items()}))


def row_bytes(batch: pa.RecordBatch) -> list[int]:
    return [len(k) + len(v) for k, v in zip(batch.column(1).to_pylist(), batch.column(2).to_pylist())]


@pytest.mark.parametrize(("chunk_bytes", "value_bytes"), [(64, 10), (300, 50), (1000, 333), (100, 5000), (1 << 22, 50)])
def test_chunks_are_bounded_and_verified(tmp_path, chunk_bytes, value_bytes):
    store = source_store(tmp_path, keys=200, value_bytes=value_bytes)
    path = tmp_path / "s.arrow"
    export_snapshot(store, path, chunk_bytes=chunk_bytes)
    found = batches(path)
    *chunks, (end, end_meta) = found
    assert end.num_rows == 0 and end_meta["end"] == "1" and end_meta["rows"] == str(200 + 3)
    total = sum(b.num_rows for b, _ in chunks)
    assert total == 203
    for batch, custom in chunks:
        sizes = row_bytes(batch)
        assert batch.num_rows > 0 and len(custom["digest"]) == 32
        assert sum(sizes) - sizes[-1] < chunk_bytes, "a chunk holds more than chunk_bytes plus one row"
    if chunk_bytes < 200 * (value_bytes + 10):
        assert len(chunks) >= 5, f"expected many chunks, got {len(chunks)}"
    store.close()
    target = target_store(tmp_path)
    install_snapshot(target, path)
    data, sessions = rows_of(target)
    assert len(data) == 200 and len(sessions) == 3
    target.close()


# -- damaged files ----------------------------------------------------------------------------------------------
def assert_refused_intact(target: ReplicaStore, path: Path) -> ReplicaStore:
    """Installing ``path`` raises SnapshotError naming it; the target's state is exactly as before, also on disk.

    Returns the target reopened (the old handle is closed).
    """
    before = state_of(target)
    with pytest.raises(SnapshotError) as info:
        install_snapshot(target, path, hard_state=HardState(5, 1, 15))
    assert str(path) in info.value.path
    assert state_of(target) == before
    target = reopen(target)
    assert state_of(target) == before
    return target


def cut_points(raw: bytes) -> dict[str, int]:
    """Interesting truncation points: inside the schema, inside and between chunks, inside the end marker."""
    bounds, offset = [], 0
    while offset < len(raw):  # Arrow IPC stream framing: 0xFFFFFFFF, int32 metadata length, metadata, body
        assert raw[offset:offset + 4] == b"\xff\xff\xff\xff"
        meta_len = int.from_bytes(raw[offset + 4:offset + 8], "little")
        if meta_len == 0:
            break
        message = pa.ipc.read_message(pa.py_buffer(raw[offset:]))
        end = offset + 8 + meta_len + message.body.size
        bounds.append((offset, end))
        offset = end
    schema, first, *_, last_data, end_marker = bounds
    return {
        "empty": 0, "4 bytes": 4, "mid schema": schema[1] // 2, "after schema": schema[1],
        "mid first chunk": (first[0] + first[1]) // 2, "after first chunk": first[1],
        "one byte short of a chunk": first[1] - 1, "mid last chunk": (last_data[0] + last_data[1]) // 2,
        "before end marker": end_marker[0], "mid end marker": (end_marker[0] + end_marker[1]) // 2,
    }


def test_truncated_snapshots_are_refused(target, exported, tmp_path):
    raw = exported.read_bytes()
    points = cut_points(raw)
    assert len(set(points.values())) == len(points)
    for name, cut in points.items():
        bad = tmp_path / f"cut-{name.replace(' ', '-')}.arrow"
        bad.write_bytes(raw[:cut])
        target = assert_refused_intact(target, bad)


def test_every_truncation_is_refused_or_complete(target, exported, tmp_path):
    """Cut at every 5th byte: refused (state intact), or -- only without the stream's 8-byte EOS -- complete."""
    raw, bad = exported.read_bytes(), tmp_path / "cut.arrow"
    want = list(iter_snapshot_rows(exported))
    for cut in range(0, len(raw), 5):
        bad.write_bytes(raw[:cut])
        if cut >= len(raw) - 8:
            assert list(iter_snapshot_rows(bad)) == want
            continue
        with pytest.raises(SnapshotError):
            list(iter_snapshot_rows(bad))
    assert_refused_intact(target, exported.with_name("missing.arrow"))


def flip_inside(raw: bytes, needle: bytes, delta: int = 0) -> bytes:
    at = raw.index(needle) + delta
    return raw[:at] + bytes([raw[at] ^ 0x20]) + raw[at + 1:]


@pytest.mark.parametrize("needle", [b"user/00003", b"3:3:3:3:", b"session 2"], ids=["key", "value", "session"])
def test_flipped_byte_inside_a_chunk_is_refused(target, exported, tmp_path, needle):
    bad = tmp_path / "flipped.arrow"
    bad.write_bytes(flip_inside(exported.read_bytes(), needle, 2))
    assert_refused_intact(target, bad)


def rewrite(path: Path, out: Path, transform) -> Path:
    """Copy a snapshot batch by batch, letting ``transform(list of (batch, custom))`` edit the list."""
    with pa.ipc.open_stream(pa.OSFile(str(path), "rb")) as reader:
        schema, found = reader.schema, []
        while True:
            try:
                found.append(reader.read_next_batch_with_custom_metadata())
            except StopIteration:
                break
    with open(out, "wb") as f, pa.ipc.new_stream(f, schema) as writer:
        for batch, custom in transform(found):
            writer.write_batch(batch, custom_metadata=custom)
    return out


def test_rewrite_without_changes_installs(target, exported, tmp_path):
    """(The rewriting helper itself keeps a snapshot valid.)"""
    install_snapshot(target, rewrite(exported, tmp_path / "same.arrow", lambda b: b))
    assert rows_of(target)[1][records.encode_u64(1)] == b"session 1"


@pytest.mark.parametrize("damage", [
    "missing end marker", "missing chunk", "duplicated chunk", "swapped chunks", "end marker row count",
    "chunk without digest", "second end marker only",
])
def test_damaged_chunk_sequence_is_refused(target, exported, tmp_path, damage):
    def transform(found):
        chunks, end = found[:-1], found[-1]
        assert len(chunks) >= 3
        if damage == "missing end marker":
            return chunks
        if damage == "missing chunk":
            return chunks[:1] + chunks[2:] + [end]
        if damage == "duplicated chunk":
            return chunks + chunks[-1:] + [end]
        if damage == "swapped chunks":
            return [chunks[1], chunks[0]] + chunks[2:] + [end]
        if damage == "end marker row count":
            rows = int(end[1][b"rows"])
            return chunks + [(end[0], {**end[1], b"rows": str(rows + 1).encode()})]
        if damage == "chunk without digest":
            return [(chunks[0][0], None)] + chunks[1:] + [end]
        return [end]

    assert_refused_intact(target, rewrite(exported, tmp_path / "bad.arrow", transform))


def snapshot_metadata(path: Path) -> dict[bytes, bytes]:
    with pa.ipc.open_stream(pa.OSFile(str(path), "rb")) as reader:
        return dict(reader.schema.metadata)


def write_with_schema(out: Path, schema: pa.Schema, rows: list[tuple] | None = None) -> Path:
    with open(out, "wb") as f, pa.ipc.new_stream(f, schema) as writer:
        if rows:
            columns = list(zip(*rows))
            writer.write_batch(pa.record_batch([pa.array(c, type=field.type) for c, field in zip(columns, schema)],
                                               schema=schema))
    return out


WRONG_SCHEMAS = {
    "key as string": pa.schema([("table", pa.uint8()), ("key", pa.string()), ("value", pa.binary())]),
    "table as uint16": pa.schema([("table", pa.uint16()), ("key", pa.binary()), ("value", pa.binary())]),
    "no value column": pa.schema([("table", pa.uint8()), ("key", pa.binary())]),
    "extra column": pa.schema([("table", pa.uint8()), ("key", pa.binary()), ("value", pa.binary()),
                               ("ttl", pa.int64())]),
    "renamed column": pa.schema([("table", pa.uint8()), ("k", pa.binary()), ("value", pa.binary())]),
    "large binary": pa.schema([("table", pa.uint8()), ("key", pa.large_binary()), ("value", pa.binary())]),
}


@pytest.mark.parametrize("name", list(WRONG_SCHEMAS))
def test_wrong_schema_is_refused(target, exported, tmp_path, name):
    schema = WRONG_SCHEMAS[name].with_metadata(snapshot_metadata(exported))
    assert_refused_intact(target, write_with_schema(tmp_path / "wrong.arrow", schema))


METADATA_DAMAGE = {
    "newer format": {b"raykv-snapshot": b"2"},
    "much newer format": {b"raykv-snapshot": b"1000"},
    "no format key": {b"raykv-snapshot": None},
    "no index": {b"index": None},
    "index not a number": {b"index": b"ten"},
    "conf not hex": {b"conf": b"zz"},
    "conf truncated": {b"conf": records.encode_conf(SOURCE_CONF).hex()[:-4].encode()},
    "format not a number": {b"raykv-snapshot": b"one"},
}


@pytest.mark.parametrize("name", list(METADATA_DAMAGE))
def test_bad_snapshot_metadata_is_refused(target, exported, tmp_path, name):
    md = snapshot_metadata(exported)
    for key, value in METADATA_DAMAGE[name].items():
        md.pop(key) if value is None else md.__setitem__(key, value)
    bad = rewrite_metadata(exported, tmp_path / "meta.arrow", md)
    with pytest.raises(SnapshotError):
        read_snapshot_meta(bad)
    assert_refused_intact(target, bad)


def rewrite_metadata(path: Path, out: Path, metadata: dict) -> Path:
    with pa.ipc.open_stream(pa.OSFile(str(path), "rb")) as reader:
        schema = reader.schema.with_metadata(metadata)
        found = []
        while True:
            try:
                found.append(reader.read_next_batch_with_custom_metadata())
            except StopIteration:
                break
    with open(out, "wb") as f, pa.ipc.new_stream(f, schema) as writer:
        for batch, custom in found:
            writer.write_batch(pa.record_batch(batch.columns, schema=schema), custom_metadata=custom)
    return out


@pytest.mark.parametrize("content", [b"", b"not arrow at all", b"\xff\xff\xff\xff" + b"\x00" * 12, os.urandom(300)],
                         ids=["empty", "text", "eos only", "random"])
def test_not_a_snapshot_is_refused(target, tmp_path, content):
    bad = tmp_path / "junk.arrow"
    bad.write_bytes(content)
    assert_refused_intact(target, bad)


@pytest.mark.parametrize("row", [(1, b"12345", b"short session id"), (1, b"123456789", b"long id"), (2, b"k", b"v")],
                         ids=["5-byte session id", "9-byte session id", "table 2"])
def test_well_formed_snapshot_with_invalid_rows_is_refused(target, tmp_path, row):
    """Rows are checked where they enter: a session id must be 8 bytes, the table 0 or 1.

    (A snapshot comes from another replica. Digests only say the file is as
    written; a session row with a 5-byte id would install, then break every
    later ``ApplyTxn.sessions()`` with a ValueError.)
    """
    bad = tmp_path / "invalid-rows.arrow"
    with open(bad, "wb") as f:  # the module's own writer: valid framing and digests
        snapshot_module._write_stream(f, SnapshotMeta(15, 2, SOURCE_CONF), iter([(0, b"k", b"v"), row]), 1 << 20)
    assert_refused_intact(target, bad)


# -- the byte-flip sweep (in a subprocess: some damage segfaults pyarrow) ----------------------------------------------
def read_outcome(path: Path, want: dict) -> str:
    try:
        meta = read_snapshot_meta(path)
        rows = [[t, k.hex(), v.hex()] for t, k, v in iter_snapshot_rows(path)]
    except SnapshotError:
        return "refused"
    except BaseException as e:  # noqa: BLE001 -- recording what escaped is the point
        return f"RAW {type(e).__module__}.{type(e).__name__}: {str(e)[:120]}"
    got_meta = [meta.index, meta.term, records.encode_conf(meta.conf).hex()]
    if got_meta != want["meta"]:
        return f"WRONG METADATA {got_meta}"
    return "same" if rows == want["rows"] else "WRONG ROWS"


def cap_address_space(extra_bytes: int = 768 << 20) -> None:
    """Let this process map only ``extra_bytes`` more: a wild length in a damaged file then fails fast
    (MemoryError, or a segfault) instead of paging through gigabytes first."""
    import resource

    with open("/proc/self/status") as f:
        vm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    limit = vm_kib * 1024 + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def flips_main(spec_file: str) -> None:
    if os.path.exists("/proc/self/status"):
        cap_address_space()
    spec = json.loads(Path(spec_file).read_text())
    raw, out = Path(spec["path"]).read_bytes(), Path(spec["scratch"]) / "flipped.arrow"
    for pos in range(spec["start"], len(raw)):
        out.write_bytes(raw[:pos] + bytes([raw[pos] ^ (1 << pos % 8)]) + raw[pos + 1:])
        os.write(1, (json.dumps([pos, read_outcome(out, spec["want"])]) + "\n").encode())


@pytest.fixture(scope="module")
def flip_outcomes(tmp_path_factory) -> dict[int, str]:
    """Flip one bit of every byte of a small snapshot (3+ chunks) and read it: {position: outcome}."""
    scratch = tmp_path_factory.mktemp("flips")
    store = source_store(scratch, keys=12, value_bytes=20)
    path = scratch / "snap.arrow"
    meta = export_snapshot(store, path, chunk_bytes=150)
    store.close()
    want = {"meta": [meta.index, meta.term, records.encode_conf(meta.conf).hex()],
            "rows": [[t, k.hex(), v.hex()] for t, k, v in iter_snapshot_rows(path)]}
    size, outcomes = path.stat().st_size, {}
    while len(outcomes) < size:
        start = len(outcomes)
        spec = scratch / "spec.json"
        spec.write_text(json.dumps({"path": str(path), "scratch": str(scratch), "start": start, "want": want}))
        proc = subprocess.Popen([sys.executable, __file__, "flips", str(spec)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        try:
            buf, fd, deadline = b"", proc.stdout.fileno(), time.monotonic() + SWEEP_DEADLINE_S
            while True:
                ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
                assert ready, f"the flip sweep hung at byte {len(outcomes)}"
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    pos, outcome = json.loads(line)
                    outcomes[pos] = outcome
            code = proc.wait()
            if code != 0:
                outcomes[len(outcomes)] = f"CRASHED with {'signal %d' % -code if code < 0 else 'status %d' % code}"
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
    return outcomes


def flips_where(outcomes: dict[int, str], prefix: str) -> str:
    hits = {pos: o for pos, o in outcomes.items() if o.startswith(prefix)}
    return f"{len(hits)} of {len(outcomes)} single-bit flips, e.g. " + "; ".join(
        f"byte {pos}: {o}" for pos, o in list(hits.items())[:8])


def test_flipped_bits_never_change_rows_silently(flip_outcomes):
    """The chunk digests catch every damaged row (most flips are refused, a few hit unused bytes)."""
    assert not any(o == "WRONG ROWS" for o in flip_outcomes.values()), flips_where(flip_outcomes, "WRONG ROWS")
    assert sum(o == "refused" for o in flip_outcomes.values()) > len(flip_outcomes) // 2


def test_flipped_bits_never_crash_the_reader(flip_outcomes):
    """Reading a damaged snapshot never kills the process (pyarrow does not validate offsets unless asked)."""
    assert not any(o.startswith("CRASHED") for o in flip_outcomes.values()), flips_where(flip_outcomes, "CRASHED")


def test_flipped_bits_raise_snapshot_error_not_raw_errors(flip_outcomes):
    assert not any(o.startswith("RAW") for o in flip_outcomes.values()), flips_where(flip_outcomes, "RAW")


def test_flipped_bits_in_metadata_are_detected(flip_outcomes):
    """index, term and conf live in the schema metadata: damage there must be refused, not installed."""
    assert not any(o.startswith("WRONG METADATA") for o in flip_outcomes.values()), flips_where(
        flip_outcomes, "WRONG METADATA")


# -- export: temp file + rename ------------------------------------------------------------------------------------
def failing_after(calls: int, real):
    count = {"n": 0}

    def write_chunk(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise OSError("disk full (injected)")
        return real(*args, **kwargs)

    return write_chunk


def test_failed_export_leaves_no_file_under_the_final_name(source, tmp_path, monkeypatch):
    monkeypatch.setattr(snapshot_module, "_write_chunk", failing_after(2, snapshot_module._write_chunk))
    path = tmp_path / "fresh.arrow"
    with pytest.raises(OSError, match="injected"):
        export_snapshot(source, path, chunk_bytes=100)
    assert not path.exists()


def test_failed_export_keeps_the_previous_file(source, exported, monkeypatch):
    before = hashlib.sha256(exported.read_bytes()).hexdigest()
    source.apply(lambda tx: (tx.put(b"user/new", b"x"), tx.set_applied(16)))
    monkeypatch.setattr(snapshot_module, "_write_chunk", failing_after(1, snapshot_module._write_chunk))
    with pytest.raises(OSError, match="injected"):
        export_snapshot(source, exported, chunk_bytes=100)
    assert hashlib.sha256(exported.read_bytes()).hexdigest() == before
    assert read_snapshot_meta(exported).index == 15


def test_export_ignores_writes_after_its_read(source, tmp_path, monkeypatch):
    """The export reads one transaction: a write committed while it streams is not in the file."""
    real = snapshot_module._write_chunk
    done = {"n": 0}

    def write_chunk(*args, **kwargs):
        if not done["n"]:
            source.apply(lambda tx: (tx.put(b"user/00000", b"changed"), tx.put(b"user/zzz", b"new"),
                                     tx.set_applied(16)))
        done["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(snapshot_module, "_write_chunk", write_chunk)
    path = tmp_path / "cut.arrow"
    assert export_snapshot(source, path, chunk_bytes=100).index == 15
    data = {k: v for t, k, v in iter_snapshot_rows(path) if t == 0}
    assert data[b"user/00000"] != b"changed" and b"user/zzz" not in data


if __name__ == "__main__" and sys.argv[1:2] == ["flips"]:
    try:
        flips_main(sys.argv[2])
    except BaseException:
        traceback.print_exc()
        raise
