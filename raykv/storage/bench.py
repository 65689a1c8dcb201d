"""Storage benchmark of one replica's LMDB store: ``python -m raykv.storage.bench [--help]``.

Every figure has a baseline from the same run: a bare py-lmdb synced commit (one put per
write transaction, ``sync=True``). A replica cannot make Readies durable faster than its
disk syncs, so ``x baseline`` (entries/s / baseline commits/s) shows what batching buys;
with one entry per Ready it is the store's overhead factor. The baseline runs again at
the end: with the load averages it shows whether the machine stayed steady.
Measured: ``persist(hard_state, entries)`` with 1/10/100/1000 entries per Ready;
``apply`` of 1/100/1000 committed entries per transaction (a user key each plus
``set_applied``); ``export_snapshot`` then ``install_snapshot`` of N keys. Each
measurement runs ``--seconds`` and a minimum count; MB = 10**6 B of payload. LMDB files
live in a temporary directory (under ``--dir``), removed at the end. Nothing asserts speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import lmdb
import pyarrow

from ..raft.types import Entry, HardState
from .replica_store import ReplicaId, ReplicaStore
from .snapshot import export_snapshot, install_snapshot

APPEND_BATCHES = (1, 10, 100, 1000)
APPLY_BATCHES = (1, 100, 1000)
FILL_BATCH = 10_000
MB = 1e6
COLUMNS = ("Measurement", "ops/s", "entries/s", "MB/s", "us/op", "x baseline")


@dataclass(frozen=True)
class Config:
    """What one run measures and for how long."""

    seconds: float
    min_count: int
    value_bytes: int
    snapshot_keys: int

    @property
    def payload(self) -> bytes:
        return random.Random(7).randbytes(self.value_bytes)


def timed(step: Callable[[], object], seconds: float, min_count: int) -> tuple[int, float]:
    """Call ``step`` until ``seconds`` have passed and it ran ``min_count`` times: (count, elapsed s)."""
    count, start = 0, time.perf_counter()
    while True:
        step()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and count >= min_count:
            return count, elapsed


def rates(count: int, elapsed: float, items_per_op: int, bytes_per_op: int) -> dict:
    """The figures of one measurement: ops/s, items/s, MB/s, mean us per op."""
    return {
        "ops": count, "seconds": elapsed, "ops_per_s": count / elapsed,
        "entries_per_s": count * items_per_op / elapsed,
        "mb_per_s": count * bytes_per_op / elapsed / MB, "us_per_op": elapsed / count * 1e6,
    }


def filesystem(path: str | os.PathLike) -> str:
    """``fstype at mountpoint (device)`` of the mount holding ``path``, from /proc/mounts."""
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[:3] for line in f]
    except OSError:
        return "unknown"
    holding = [m for m in mounts if real == m[1] or real.startswith(m[1].rstrip("/") + "/")]
    device, mount, fstype = max(reversed(holding), key=lambda m: len(m[1]), default=("?", "?", "unknown"))
    return f"{fstype} at {mount} ({device})"


def machine(data_dir: Path) -> dict:
    """Versions, CPUs, load and the data directory's filesystem."""
    return {
        "python": platform.python_version(), "lmdb": lmdb.__version__, "pyarrow": pyarrow.__version__,
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "loadavg_start": list(os.getloadavg()),
        "data_dir": str(data_dir), "filesystem": filesystem(data_dir),
    }


@contextmanager
def scratch_store(root: Path, shard: int, replica: int = 1) -> Iterator[ReplicaStore]:
    """A fresh ReplicaStore under ``root``, closed and deleted afterwards."""
    store = ReplicaStore(root, ReplicaId("bench", shard, replica))
    try:
        yield store
    finally:
        store.close()
        shutil.rmtree(store.path)


def bench_baseline(root: Path, cfg: Config, name: str) -> dict:
    """Bare py-lmdb: one put of ``value_bytes`` per write transaction, synced on commit."""
    path, payload, key = root / name, cfg.payload, 0
    env = lmdb.open(str(path), sync=True, map_size=1 << 30)  # a sparse file: no map-full retries

    def step() -> None:
        nonlocal key
        key += 1
        with env.begin(write=True) as txn:
            txn.put(key.to_bytes(8, "big"), payload)

    try:
        return rates(*timed(step, cfg.seconds, cfg.min_count), 1, cfg.value_bytes)
    finally:
        env.close()
        shutil.rmtree(path)


def bench_append(root: Path, cfg: Config, batch: int) -> dict:
    """``persist`` of Readies of ``batch`` entries, each with a HardState whose commit moves on."""
    payload, first = cfg.payload, 1
    with scratch_store(root, 1, batch) as store:
        def step() -> None:
            nonlocal first
            entries = [Entry(i, 1, data=payload) for i in range(first, first + batch)]
            store.persist(HardState(term=1, vote=1, commit=first - 1), entries)
            first += batch
        return rates(*timed(step, cfg.seconds, cfg.min_count), batch, batch * cfg.value_bytes)


def apply_entries(store: ReplicaStore, first: int, count: int, payload: bytes) -> None:
    """Apply committed entries ``first..first+count-1`` in one transaction: a user key each + set_applied."""

    def body(tx) -> None:
        for e in [Entry(i, 1, data=payload) for i in range(first, first + count)]:
            tx.put(b"user/%012d" % e.index, e.data)
        tx.set_applied(first + count - 1)

    store.apply(body)


def bench_apply(root: Path, cfg: Config, batch: int) -> dict:
    """``apply`` of ``batch`` committed entries per transaction."""
    payload, applied = cfg.payload, 0
    with scratch_store(root, 2, batch) as store:
        def step() -> None:
            nonlocal applied
            apply_entries(store, applied + 1, batch, payload)
            applied += batch
        return rates(*timed(step, cfg.seconds, cfg.min_count), batch, batch * cfg.value_bytes)


def fill(store: ReplicaStore, keys: int, payload: bytes) -> None:
    """Log ``keys`` entries (one Ready) and apply them, FILL_BATCH per transaction: ``keys`` user keys."""
    store.persist(HardState(term=1, vote=1, commit=keys), [Entry(i, 1) for i in range(1, keys + 1)])
    for first in range(1, keys + 1, FILL_BATCH):
        apply_entries(store, first, min(FILL_BATCH, keys + 1 - first), payload)


def bench_snapshot(root: Path, cfg: Config) -> dict:
    """Export a store of ``snapshot_keys`` keys to an Arrow file, then install it into another."""
    keys, path = cfg.snapshot_keys, root / "bench.snapshot"
    data_bytes = keys * (len(b"user/%012d" % 0) + cfg.value_bytes)
    with scratch_store(root, 3) as src, scratch_store(root, 4) as dst:
        fill(src, keys, cfg.payload)
        hs = HardState(term=1, vote=1, commit=src.applied_index())
        export = rates(*timed(lambda: export_snapshot(src, path), cfg.seconds, 1), keys, data_bytes)
        install = rates(*timed(lambda: install_snapshot(dst, path, hs), cfg.seconds, 1), keys, data_bytes)
        if dst.stat()["data"] != keys:
            raise RuntimeError(f"the installed snapshot holds {dst.stat()['data']} keys, not {keys}")
    file_bytes = path.stat().st_size
    path.unlink()
    return {"keys": keys, "data_bytes": data_bytes, "file_bytes": file_bytes, "export": export, "install": install}


def row(name: str, r: dict, base: float | None) -> str:
    """One Markdown table row; with ``base`` (baseline commits/s) records and shows ``ratio``."""
    if base:
        r["ratio"] = r["entries_per_s"] / base
    cells = [name, f"{r['ops_per_s']:,.1f}", f"{r['entries_per_s']:,.0f}", f"{r['mb_per_s']:.2f}",
             f"{r['us_per_op']:,.0f}", f"{r['ratio']:.2f}" if base else "-"]
    return "| " + " | ".join(cells) + " |"


def header(m: dict, cfg: Config) -> list[str]:
    """The lines before the table: versions, CPUs, load, filesystem, settings, column heads."""
    return [
        "# raykv storage benchmark\n",
        f"- Python {m['python']}, lmdb {m['lmdb']}, pyarrow {m['pyarrow']}, {m['platform']}",
        f"- CPUs: {m['cpu_count']}; load average at start: {' '.join(f'{x:.2f}' for x in m['loadavg_start'])}",
        f"- data directory: {m['data_dir']} on {m['filesystem']}",
        f"- {cfg.seconds:g} s per measurement (at least {cfg.min_count} ops), values of {cfg.value_bytes} B, "
        "MB = 10^6 B of payload",
        "- ops = commits (baseline), Readies (persist), transactions (apply), runs (snapshot); "
        "x baseline = entries/s / baseline commits/s\n",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]


def run(root: Path, cfg: Config, out=None) -> dict:
    """Measure everything under ``root``, printing the Markdown report as it goes; returns the figures."""
    emit = lambda line="": print(line, file=out or sys.stdout, flush=True)  # noqa: E731
    m = machine(root)
    result: dict = {"config": asdict(cfg), "machine": m, "append": {}, "apply": {}}
    for line in header(m, cfg):
        emit(line)
    base = result["baseline"] = bench_baseline(root, cfg, "baseline-start")
    emit(row("bare LMDB synced commit (baseline)", base, per_s := base["ops_per_s"]))
    for kind, bench, batches, label in (("append", bench_append, APPEND_BATCHES, "persist, {}Ready"),
                                        ("apply", bench_apply, APPLY_BATCHES, "apply, {}txn")):
        for n in batches:
            r = result[kind][str(n)] = bench(root, cfg, n)
            emit(row(label.format(f"{n} entr{'y' if n == 1 else 'ies'}/"), r, per_s))
    snap = result["snapshot"] = bench_snapshot(root, cfg)
    for what in ("export", "install"):
        emit(row(f"snapshot {what}, {snap['keys']:,} keys (keys/s)", snap[what], None))
    end = result["baseline_end"] = bench_baseline(root, cfg, "baseline-end")
    emit(row("bare LMDB synced commit (again, at the end)", end, per_s))
    m["loadavg_end"] = list(os.getloadavg())
    emit(f"\n- load average at end: {' '.join(f'{x:.2f}' for x in m['loadavg_end'])}; "
         f"snapshot file {snap['file_bytes'] / MB:.2f} MB for {snap['data_bytes'] / MB:.2f} MB of keys + values")
    return result


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Config]:
    """Command-line options; ``--quick`` shortens the defaults (for tests)."""
    p = argparse.ArgumentParser(prog="python -m raykv.storage.bench", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, help="seconds per measurement (default 2.0; 0.05 with --quick)")
    p.add_argument("--value-bytes", type=int, default=100, help="bytes per entry / value (default 100)")
    p.add_argument("--snapshot-keys", type=int, help="keys in the snapshot (default 100000; 2000 with --quick)")
    p.add_argument("--quick", action="store_true", help="short runs, for tests")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    p.add_argument("--dir", help="make the temporary LMDB directory under DIR (the filesystem measured)")
    a = p.parse_args(argv)
    seconds = a.seconds if a.seconds is not None else (0.05 if a.quick else 2.0)
    keys = a.snapshot_keys if a.snapshot_keys is not None else (2000 if a.quick else 100_000)
    return a, Config(seconds, 3 if a.quick else 20, a.value_bytes, keys)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark in a temporary directory; print Markdown, optionally write JSON."""
    args, cfg = parse(argv)
    with tempfile.TemporaryDirectory(prefix="raykv-bench-", dir=args.dir) as tmp:
        result = run(Path(tmp), cfg)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
