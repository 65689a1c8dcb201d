"""Backup and restore (:mod:`raykv.backup`, ``raykv backup`` / ``raykv restore``) on a real Ray cluster.

One 3-raylet cluster and one 3-shard source store for the module:

* round trip: a few thousand keys of mixed key and value types, backup, restore into a new
  name; every stored (key, value) pair is byte-for-byte equal, shard by shard of the backup;
* consistent cut per shard under concurrent writes: per shard, a writer of sequential puts
  ``k_1, k_2, ...`` (each acknowledged before the next) and a writer of atomic ``put_batch``
  es keep writing during the backup; batch ``j`` adds a pair ``<p>pair-j-a/-b`` and sets two
  fixed keys at both ends of the shard's test keys, ``<p>!edge`` and ``<p>~edge``, to ``j``.
  In each shard's file (asserted on the Parquet files themselves) the sequential keys form a
  gap-free prefix ``k_1..k_m``, ``m`` at least the count acknowledged before that shard's
  export was requested and at most the count started before it finished; the pairs form a
  gap-free prefix ``1..J``, each whole, and both edge keys hold exactly ``J`` (a read made of
  several reads at different times, like a paginated scan, would tear them apart);
* a backup after every shard's leadership moved off the replica it asks first (NotLeader hints);
* refusals: a damaged file (bytes flipped, truncated), a missing manifest, a malformed
  manifest, a target name that exists, a backup path that is a file or non-empty; a refused
  restore creates no store;
* the CLI end to end (subprocesses with ``--address``): backup, restore with ``--shards 2
  --replicas 1`` (another layout: rows are re-routed),
  restore of a damaged backup (exit 2), backup of an unknown store (exit 3);
* backup and restore through ``s3://`` URLs against a real S3-compatible server (moto's,
  started by the test on a local port), API and CLI; a URL of a filesystem nobody can open is
  refused (exit 2) and creates no local folder named after it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

import raykv
import raykv.api
import raykv.backup as rb
from raykv.errors import BackupError, InvalidRequestError
from raykv.runtime.shard import replica_handle
from raykv.userdata import decode_key, decode_value, encode_key

from ray_cluster import ray_cluster, wait_for  # noqa: F401 -- ray_cluster: a fixture

pytestmark = pytest.mark.timeout(600)
SOURCE = "bk-src"
SHARD_PREFIX = {1: "A", 2: "Q", 3: "m"}
"""A first character per shard of a 3-shard store (shard 1: < "I", shard 2: "I".."b", shard 3: >= "b")."""


@pytest.fixture(scope="module")
def source(ray_cluster):  # noqa: F811
    kv = raykv.start(SOURCE, 3, 3, data_dir=ray_cluster.data_dirs(SOURCE), timeout_s=30.0)
    yield kv
    kv.close()
    raykv.stop(SOURCE)


def stored_pairs(kv, shard: int) -> list[tuple[bytes, bytes]]:
    pairs, more = kv.shard_client(shard).scan(b"", None, 1_000_000, "linearizable")
    assert not more
    return pairs


def file_pairs(path: Path) -> list[tuple[bytes, bytes]]:
    table = pq.read_table(path)
    return list(zip(table.column("key").to_pylist(), table.column("value").to_pylist()))


def no_store(name: str, env) -> bool:
    """Neither running nor any data directory of that name."""
    return not raykv.api.store_running(name) and not any((Path(d) / name).exists()
                                                         for d in env.data_dirs(name).values())


def mixed_data() -> dict:
    data: dict = {}
    for i in range(1200):
        c = "0AHIQZabmz~é"[i % 12]
        data[f"{c}rt-{i:05d}"] = [i, str(i), {"f": i / 7, "b": bytes([i % 256])}, (i, None)][i % 4]
    for i in range(600):
        data[f"mrt-int-{i}"] = i * 1_000_003
        data[f"Qrt-float-{i}"] = float(i) / 3
        data[bytes([0, i % 256, 255]) + b"-rt-%d" % i] = b"\x00\xff" * (i % 50)
    data["Zrt-big"] = "x" * 500_000
    data[""] = "the empty str key"
    data[b""] = "the empty bytes key"
    return data


# -- (a) round trip ----------------------------------------------------------------------------
def test_round_trip_is_lossless(source, ray_cluster, tmp_path) -> None:  # noqa: F811
    data = mixed_data()
    source.put_batch(data)
    started = time.monotonic()
    manifest = rb.backup(source, tmp_path / "bk")
    backup_s = time.monotonic() - started
    assert manifest.store == SOURCE and manifest.format == rb.FORMAT and len(manifest.shards) == 3
    assert (tmp_path / "bk" / rb.MANIFEST).exists() and manifest == rb.verify(tmp_path / "bk")
    for shard in manifest.shards:
        on_file = file_pairs(tmp_path / "bk" / shard.file)
        assert len(on_file) == shard.rows and shard.index > 0 and shard.term > 0
        assert on_file == stored_pairs(source, shard.shard)  # quiescent source: the cut is the store
    started = time.monotonic()
    restored = rb.restore(tmp_path / "bk", "bk-rt", data_dir=ray_cluster.data_dirs("bk-rt"), timeout_s=30.0)
    restore_s = time.monotonic() - started
    try:
        for shard in manifest.shards:
            assert stored_pairs(restored, shard.shard) == file_pairs(tmp_path / "bk" / shard.file)
        got = restored.get_batch(list(data))
        assert got == list(data.values())
        print(f"\nround trip: {manifest.rows} rows, backup {backup_s:.2f}s ({manifest.rows / backup_s:,.0f} rows/s), "
              f"restore incl. store start {restore_s:.2f}s ({manifest.rows / restore_s:,.0f} rows/s)")
    finally:
        restored.close()
        raykv.stop("bk-rt")


# -- (b) consistent cut per shard under concurrent writes ----------------------------------------
class ShardWriters:
    """Per shard: sequential puts ``<p>seq-000001, ...``, and atomic batches ``j`` of a pair
    ``<p>pair-<j>-a/-b`` plus the edge keys ``<p>!edge`` and ``<p>~edge`` set to ``j``."""

    def __init__(self, kv) -> None:
        self.kv = kv
        self.stop = threading.Event()
        self.acked = {s: 0 for s in SHARD_PREFIX}
        self.pairs_acked = {s: 0 for s in SHARD_PREFIX}
        self.started = {s: 0 for s in SHARD_PREFIX}
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._guard, args=(fn, s), daemon=True)
                        for s in SHARD_PREFIX for fn in (self._sequential, self._pairs)]

    def _guard(self, fn, shard: int) -> None:
        try:
            fn(shard)
        except BaseException as e:  # noqa: BLE001 -- reported by the test
            self.errors.append(e)

    def _sequential(self, shard: int) -> None:
        p = SHARD_PREFIX[shard]
        i = 0
        while not self.stop.is_set():
            i += 1
            self.started[shard] = i
            self.kv.put(f"{p}seq-{i:06d}", i)
            self.acked[shard] = i

    def _pairs(self, shard: int) -> None:
        p = SHARD_PREFIX[shard]
        j = 0
        while not self.stop.is_set():
            j += 1
            self.kv.put_batch({f"{p}!edge": j, f"{p}pair-{j:06d}-a": j, f"{p}pair-{j:06d}-b": -j, f"{p}~edge": j})
            self.pairs_acked[shard] = j

    def snapshot(self) -> dict[int, int]:
        return dict(self.acked)

    def __enter__(self) -> "ShardWriters":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def test_backup_is_a_consistent_cut_per_shard_under_concurrent_writes(source, tmp_path) -> None:
    for shard, p in SHARD_PREFIX.items():
        assert {source.shard_map.shard_for(encode_key(f"{p}{k}")).shard for k in ("!edge", "~edge")} == {shard}
    bounds: dict[int, tuple[int, int]] = {}
    with ShardWriters(source) as writers:
        wait_for(lambda: min(writers.acked.values()) >= 20 and min(writers.pairs_acked.values()) >= 5,
                 timeout=60, what="every writer to get going")
        lower = {1: writers.snapshot()[1]}  # acknowledged before shard 1's export was requested

        def shard_done(shard: rb.ShardBackup) -> None:
            bounds[shard.shard] = (lower[shard.shard], writers.started[shard.shard])
            if shard.shard + 1 in SHARD_PREFIX:
                lower[shard.shard + 1] = writers.snapshot()[shard.shard + 1]

        manifest = rb.backup(source, tmp_path / "cut", progress=shard_done)
        after = writers.snapshot()
        wait_for(lambda: all(writers.acked[s] > after[s] for s in SHARD_PREFIX), timeout=60, what="writes after the backup")
    assert not writers.errors, writers.errors
    for shard in manifest.shards:
        rows = {decode_key(k): decode_value(v) for k, v in file_pairs(tmp_path / "cut" / shard.file)}
        p = SHARD_PREFIX[shard.shard]
        seq = sorted(int(k[len(p) + 4:]) for k in rows if isinstance(k, str) and k.startswith(f"{p}seq-"))
        low, high = bounds[shard.shard]
        assert seq == list(range(1, len(seq) + 1)), f"shard {shard.shard}: the sequential keys have gaps"
        assert low <= len(seq) <= high, f"shard {shard.shard}: prefix {len(seq)} outside [{low}, {high}]"
        assert all(rows[f"{p}seq-{i:06d}"] == i for i in seq)
        pairs = {k for k in rows if isinstance(k, str) and k.startswith(f"{p}pair-")}
        js = sorted({int(k[len(p) + 5:len(p) + 11]) for k in pairs})
        assert js == list(range(1, len(js) + 1)) and len(js) >= 5, f"shard {shard.shard}: pairs {js[:5]}..."
        for j in js:
            assert rows.get(f"{p}pair-{j:06d}-a") == j and rows.get(f"{p}pair-{j:06d}-b") == -j, (shard.shard, j)
        assert rows[f"{p}!edge"] == rows[f"{p}~edge"] == len(js), f"shard {shard.shard}: torn edges"
        print(f"\nshard {shard.shard} at index {shard.index}: {len(seq)} sequential keys (acknowledged before "
              f"its export: {low}, started before it ended: {high}), {len(js)} batches")


def test_backup_follows_the_leader_after_it_moved(source, tmp_path) -> None:
    """Every shard's leadership moves off replica 1 (where the backup asks first): the export
    follows the NotLeader hints, and each file equals the (quiescent) shard."""
    from raykv.runtime.shard import replica_handle

    def leaders() -> dict[int, int | None]:
        return {s.shard: s.leader for s in source.status().shards}

    wait_for(lambda: None not in leaders().values(), timeout=60, what="a leader in every shard")
    for shard, leader in leaders().items():
        if leader == 1:
            replica_handle(SOURCE, shard, 1).transfer_leader.remote(2)
    wait_for(lambda: all(rid not in (None, 1) for rid in leaders().values()), timeout=60, what="leaders off replica 1")
    manifest = rb.backup(source, tmp_path / "moved")
    for shard in manifest.shards:
        assert file_pairs(tmp_path / "moved" / shard.file) == stored_pairs(source, shard.shard)


# -- (c) refusals ------------------------------------------------------------------------------------
def test_a_failed_export_is_an_error_and_the_replicas_keep_serving(source, ray_cluster, tmp_path) -> None:  # noqa: F811
    """An export that cannot write (its directory is a file here; a full disk alike) comes back as a
    BackupError value: no replica process ends, no manifest is written, and the next backup works."""
    shard_dirs = [Path(root) / SOURCE / "2" for root in ray_cluster.data_dirs(SOURCE).values()]
    blockers = [d / f"{rid}.backups" for d in shard_dirs if d.is_dir() for rid in (1, 2, 3) if (d / str(rid)).is_dir()]
    assert len(blockers) == 3, blockers
    pids = {rid: ray.get(replica_handle(SOURCE, 2, rid).pid.remote(), timeout=30) for rid in (1, 2, 3)}
    for blocker in blockers:
        shutil.rmtree(blocker, ignore_errors=True)
        blocker.write_text("not a directory")
    try:
        with pytest.raises(BackupError, match="could not export"):
            rb.backup(source, tmp_path / "failed", timeout_s=30.0)
        assert not (tmp_path / "failed" / "manifest.json").exists()
        source.put("Qafter-failed-export", 1)
        assert source.get("Qafter-failed-export") == 1
        assert {rid: ray.get(replica_handle(SOURCE, 2, rid).pid.remote(), timeout=30) for rid in (1, 2, 3)} == pids
    finally:
        for blocker in blockers:
            blocker.unlink(missing_ok=True)
    assert rb.backup(source, tmp_path / "after", timeout_s=60.0).rows == len(source.scan_arrow())


@pytest.fixture(scope="module")
def small_backup(source, tmp_path_factory) -> Path:
    source.put_batch({f"{c}small-{i}": i for c in "AQm" for i in range(50)})
    path = tmp_path_factory.mktemp("small") / "bk"
    rb.backup(source, path)
    return path


def damaged_copy(original: Path, where: Path, damage) -> Path:
    copy = where / "copy"
    shutil.copytree(original, copy)
    damage(copy)
    return copy


def flip_bytes(copy: Path) -> None:
    f = copy / "shard-2.parquet"
    raw = bytearray(f.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 8):
        raw[i] ^= 0xFF
    f.write_bytes(bytes(raw))


def truncate(copy: Path) -> None:
    f = copy / "shard-3.parquet"
    f.write_bytes(f.read_bytes()[:-100])


def drop_manifest(copy: Path) -> None:
    (copy / rb.MANIFEST).unlink()


def garble_manifest(copy: Path) -> None:
    (copy / rb.MANIFEST).write_text('{"kind": "raykv-backup", "format": 1, "shards": [')


@pytest.mark.parametrize("damage, message", [
    (flip_bytes, "shard-2.parquet is damaged"),
    (truncate, "shard-3.parquet is damaged"),
    (drop_manifest, "has no manifest.json"),
    (garble_manifest, "is malformed"),
])
def test_damaged_backup_is_refused_and_creates_no_store(small_backup, ray_cluster, tmp_path, damage,  # noqa: F811
                                                        message) -> None:
    copy = damaged_copy(small_backup, tmp_path, damage)
    with pytest.raises(BackupError, match=message):
        rb.restore(copy, "bk-damaged", data_dir=ray_cluster.data_dirs("bk-damaged"))
    assert no_store("bk-damaged", ray_cluster)


def test_existing_target_and_bad_paths_are_refused(small_backup, ray_cluster, source, tmp_path) -> None:  # noqa: F811
    with pytest.raises(InvalidRequestError, match="is running"):
        rb.restore(small_backup, SOURCE, data_dir=ray_cluster.data_dirs(SOURCE))
    with pytest.raises(BackupError, match="no backup directory"):
        rb.restore(tmp_path / "nowhere", "bk-none", data_dir=ray_cluster.data_dirs("bk-none"))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(InvalidRequestError, match="is a file"):
        rb.backup(source, a_file)
    with pytest.raises(InvalidRequestError, match="not empty"):
        rb.backup(source, small_backup.parent)
    forced = tmp_path / "forced"
    shutil.copytree(small_backup, forced)
    (forced / "notes.txt").write_text("kept")
    manifest = rb.backup(source, forced, force=True)
    assert rb.verify(forced) == manifest and (forced / "notes.txt").read_text() == "kept"


# -- (d) the CLI -------------------------------------------------------------------------------------
def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raykv.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def show(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def test_cli_backup_and_restore(source, small_backup, ray_cluster, tmp_path) -> None:  # noqa: F811
    address = ray_cluster.cluster.address
    source.put("Qcli-key", {"via": "cli"})
    proc = run_cli("backup", str(tmp_path / "cli"), "-n", SOURCE, "--address", address)
    assert proc.returncode == 0, show(proc)
    assert [line.split(":")[0] for line in proc.stdout.splitlines()[:3]] == ["shard 1", "shard 2", "shard 3"]
    assert f"backup of store {SOURCE!r}" in proc.stdout and "rows/s" in proc.stdout, show(proc)
    manifest = rb.verify(tmp_path / "cli")

    data_dir = str(ray_cluster.root / "bk-cli")
    proc = run_cli("restore", str(tmp_path / "cli"), "-n", "bk-cli", "--shards", "2", "--replicas", "1",
                   "--data-dir", data_dir, "--address", address)  # another layout: keys are re-routed
    assert proc.returncode == 0, show(proc)
    assert f"store 'bk-cli' restored" in proc.stdout and f"{manifest.rows} rows into 2 shards" in proc.stdout
    try:
        with raykv.api.connect("bk-cli") as copy:
            assert len(copy.shard_map.shards) == 2
            assert copy.get("Qcli-key") == {"via": "cli"}
            assert sum(len(stored_pairs(copy, s.shard)) for s in copy.shard_map.shards) == manifest.rows
        again = run_cli("restore", str(tmp_path / "cli"), "-n", "bk-cli", "--data-dir", data_dir, "--address", address)
        assert again.returncode == 2 and "is running" in again.stderr, show(again)
    finally:
        raykv.stop("bk-cli")
    with pytest.raises(InvalidRequestError, match="has data"):  # stopped, but its data is still there
        rb.restore(tmp_path / "cli", "bk-cli", data_dir=data_dir)

    damaged = damaged_copy(small_backup, tmp_path, flip_bytes)
    proc = run_cli("restore", str(damaged), "-n", "bk-cli-bad", "--data-dir", data_dir, "--address", address)
    assert proc.returncode == 2 and "is damaged" in proc.stderr and "Traceback" not in proc.stderr, show(proc)
    proc = run_cli("backup", str(tmp_path / "unknown"), "-n", "bk-no-such-store", "--address", address)
    assert proc.returncode == 3 and "bk-no-such-store" in proc.stderr, show(proc)
    proc = run_cli("backup", str(tmp_path / "cli"), "-n", SOURCE, "--address", address)
    assert proc.returncode == 2 and "not empty" in proc.stderr, show(proc)



# -- (e) any pyarrow filesystem: s3:// on a real S3-compatible server ------------------------------
@pytest.fixture(scope="module")
def s3_query():
    """moto's S3 server on a free local port for the module; yields the URL query that points
    pyarrow at it (credentials in the environment, which CLI subprocesses inherit)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "raykv-test", "AWS_SECRET_ACCESS_KEY": "raykv-test", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield f"endpoint_override={host}:{port}&scheme=http&allow_bucket_creation=true"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_backup_and_restore_through_s3(source, ray_cluster, s3_query, tmp_path, monkeypatch) -> None:  # noqa: F811
    import pyarrow.fs as pafs

    source.put_batch({f"{p}s3-{i}": {"i": i} for p in SHARD_PREFIX.values() for i in range(50)})
    url = f"s3://raykv-backups/monday?{s3_query}"
    manifest = rb.backup(source, url)
    fs, root = pafs.FileSystem.from_uri(url)
    objects = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(root)))
    assert objects == ["manifest.json", "shard-1.parquet", "shard-2.parquet", "shard-3.parquet"]
    assert rb.verify(url) == manifest
    with pytest.raises(InvalidRequestError, match="not empty"):
        rb.backup(source, url)
    restored = rb.restore(url, "bk-s3", data_dir=ray_cluster.data_dirs("bk-s3"), timeout_s=30.0)
    try:
        for shard in manifest.shards:
            assert stored_pairs(restored, shard.shard) == stored_pairs(source, shard.shard)
    finally:
        restored.close()
        raykv.stop("bk-s3")

    monkeypatch.chdir(tmp_path)  # where the old CLI wrote ./s3:/... and ./foo:/...
    address = ray_cluster.cluster.address
    cli_url = f"s3://raykv-backups/tuesday?{s3_query}"
    proc = run_cli("backup", cli_url, "-n", SOURCE, "--address", address)
    assert proc.returncode == 0 and "written to s3://raykv-backups/tuesday:" in proc.stdout, show(proc)
    assert rb.verify(cli_url).rows == manifest.rows
    proc = run_cli("backup", "foo://bucket/b1", "-n", SOURCE, "--address", address)
    assert proc.returncode == 2 and "cannot be opened" in proc.stderr, show(proc)
    assert list(tmp_path.iterdir()) == [], "nothing written locally for a URL"
    with pytest.raises(InvalidRequestError, match="cannot be opened"):
        rb.verify("foo://bucket/b1")
