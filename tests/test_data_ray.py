"""Ray Data integration on a real 3-raylet cluster: :mod:`raykv.data` and ``jobs/bulk_load.py``.

One store of 3 shards x 3 replicas for the module. A dataset of 100,000 rows (str keys spread over
the three shards, values of mixed types: int, str, float, dict, tuple, bytes) goes in through
:class:`~raykv.data.RayKVDatasink` and comes back through :class:`~raykv.data.RayKVDatasource`
exactly (every key, every value and its type, the count); a range read returns exactly the keys in
its range; bad inputs raise raykv errors; the bulk-load job runs as a separate driver on a Parquet
file. Write and read throughput are printed (``-s`` shows them), never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import ray.cloudpickle

import raykv
from raykv.data import (
    RayKVDatasink,
    RayKVDatasource,
    bulk_load_parquet,
    decoded_block,
    read_store,
    typed_ranges,
    write_dataset,
)
from raykv.errors import InvalidRequestError, StoreNotFoundError
from raykv.userdata import encode_key, encode_value

from ray_cluster import started_cluster

pytestmark = pytest.mark.timeout(900)
STORE = "datastore"
ROWS = 100_000
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
"""First characters of the keys: spread over the three shards (splits at "I" and "b")."""
REPO = Path(__file__).resolve().parent.parent
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test module


def key_of(i: int) -> str:
    return f"{ALPHABET[i % len(ALPHABET)]}{i:06d}"


def value_of(i: int):
    """Mixed types, so blocks hold Python-object columns (and one int-only range, below)."""
    match i % 6:
        case 0:
            return i
        case 1:
            return f"v{i}"
        case 2:
            return i / 8
        case 3:
            return {"i": i, "tags": [i % 3, "x"]}
        case 4:
            return (i, str(i))
        case _:
            return str(i).encode()


def same(a, b) -> bool:
    """Equal and of the same type, recursively for containers (1 == 1.0 == True is not enough)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


# -- the block format, without Ray ----------------------------------------------------------------
@pytest.mark.parametrize("values, arrow_type", [
    (["a", "b"], pa.string()), ([b"a", b"b"], pa.binary()), ([True, False], pa.bool_()),
    ([1, -2], pa.int64()), ([0.5, 1.0], pa.float64()),
    ([1, 2.5], None), ([1, True], None), ([2**70, 1], None), ([(1, "x"), (2, "y")], None),
    ([{"a": 1}, {"b": 2}], None), ([[1], [2, 3]], None), ([frozenset({1})], None), (["\ud800"], None),
])
def test_value_rule(values, arrow_type) -> None:
    """Native Arrow only for one exact simple type; anything else a Python-object column; exact either way."""
    block = decoded_block([(encode_key(f"k{i}"), encode_value(v)) for i, v in enumerate(values)])
    column = block.column("value")
    if arrow_type is None:
        assert column.type.extension_name == "ray.data.arrow_pickled_object"
    else:
        assert column.type == arrow_type
    assert block.column("key").type == pa.string() and block.column("key").to_pylist() == ["k0", "k1"][:len(values)]
    assert all(same(got, want) for got, want in zip(column.to_pylist(), values))


def test_typed_ranges_split_bytes_from_str_keys() -> None:
    everything = (b"b", b"t")
    assert typed_ranges(*everything) == [(b"b", b"c"), (b"s", b"t")]
    assert typed_ranges(b"", b"sI") == [(b"b", b"c"), (b"s", b"sI")]
    assert typed_ranges(b"sI", b"sb") == [(b"sI", b"sb")]
    assert typed_ranges(b"sb", b"sa") == []
    block = decoded_block([(encode_key(b"\x00raw"), encode_value(1))])
    assert block.column("key").type == pa.binary() and block.column("key").to_pylist() == [b"\x00raw"]


# -- on the cluster -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    with started_cluster(head_cpus=2) as (ray_cluster, root):
        data_dirs = {h: str(root / STORE / h) for h in ("h1", "h2", "h3")}
        kv = raykv.start(STORE, shards=3, data_dir=data_dirs, timeout_s=30.0)
        try:
            yield ray_cluster, root, kv
        finally:
            kv.close()
            raykv.stop(STORE)


def rows_of(batch: dict) -> dict:
    ids = batch["id"].tolist()
    return {"key": [key_of(i) for i in ids], "value": [value_of(i) for i in ids]}


def test_round_trip_of_100k_rows(cluster) -> None:
    _, _, kv = cluster
    ds = ray.data.range(ROWS).map_batches(rows_of, batch_size=5_000)
    started = time.perf_counter()
    written = write_dataset(ds, STORE)
    write_s = time.perf_counter() - started
    assert written == ROWS
    sample = range(0, ROWS, 997)
    assert kv.get_batch([key_of(i) for i in sample]) == [value_of(i) for i in sample]

    started = time.perf_counter()
    rows = ray.data.read_datasource(RayKVDatasource(STORE)).take_all()
    read_s = time.perf_counter() - started
    print(f"\nwrite {ROWS} rows: {write_s:.1f} s ({ROWS / write_s:,.0f} rows/s); "
          f"read: {read_s:.1f} s ({ROWS / read_s:,.0f} rows/s)")
    assert len(rows) == ROWS
    rows.sort(key=lambda r: r["key"])
    expected = sorted(range(ROWS), key=key_of)
    for row, i in zip(rows, expected):
        assert row["key"] == key_of(i) and same(row["value"], value_of(i)), (row, i, value_of(i))
    assert kv.get(key_of(3)) == value_of(3)


def test_range_read_and_native_columns(cluster) -> None:
    _, _, kv = cluster
    ints = {f"int:{i:05d}": i for i in range(3_000)}
    kv.put_batch(ints)
    # a range crossing both shard boundaries ("I" and "b")
    ds = read_store(STORE, start="B", end="c")
    keys = sorted(r["key"] for r in ds.take_all())
    want = sorted(k for k in [key_of(i) for i in range(ROWS)] + list(ints) if "B" <= k < "c")
    assert keys == want
    # int-only values: a native int64 column
    table = pa.concat_tables(ray.get(list(read_store(STORE, prefix="int:").to_arrow_refs())))
    assert table.schema.field("value").type == pa.int64()
    assert dict(zip(table.column("key").to_pylist(), table.column("value").to_pylist())) == ints
    # raw form: like Client.scan_arrow
    raw = pa.concat_tables(ray.get(list(read_store(STORE, prefix="int:", decode=False).to_arrow_refs())))
    assert raw.schema.names == ["key", "key_is_str", "value"]
    assert raw.sort_by("key").equals(kv.scan_arrow(prefix="int:"))
    # one Python-object column whatever the values; an empty range is an empty dataset
    objects = ray.get(list(read_store(STORE, prefix="int:", value_format="object").to_arrow_refs()))
    assert {t.schema.field("value").type.extension_name for t in objects} == {"ray.data.arrow_pickled_object"}
    assert sum(t.num_rows for t in objects) == len(ints)
    assert read_store(STORE, start="b", end="a").count() == 0


def test_bad_inputs_raise_raykv_errors(cluster) -> None:
    ds = ray.data.from_items([{"key": "~bad-inputs", "value": 1}])
    with pytest.raises(StoreNotFoundError):
        ds.write_datasink(RayKVDatasink("no-such-store"))
    sink = RayKVDatasink(STORE, value_column=None)
    ds.write_datasink(sink)
    assert sink.rows_written == 1 and cluster[2].get("~bad-inputs") == {"key": "~bad-inputs", "value": 1}
    with pytest.raises(InvalidRequestError, match="no value column 'val'"):
        ds.write_datasink(RayKVDatasink(STORE, value_column="val"))  # Ray's RayTaskError(InvalidRequestError)
    with pytest.raises(InvalidRequestError) as raised:
        write_dataset(ds, STORE, value_column="val")
    assert type(raised.value) is InvalidRequestError and "no value column 'val'" in str(raised.value)
    with pytest.raises(InvalidRequestError, match="must hold str or bytes keys"):
        ray.data.from_items([{"key": 1, "value": 1}]).write_datasink(RayKVDatasink(STORE))
    with pytest.raises(InvalidRequestError):
        RayKVDatasink("bad name!")
    with pytest.raises(InvalidRequestError):
        RayKVDatasource(STORE, consistency="eventual")
    with pytest.raises(StoreNotFoundError):
        read_store("no-such-store")
    with pytest.raises(StoreNotFoundError):
        ray.data.read_datasource(RayKVDatasource("no-such-store")).count()


def run_bulk_load(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / "bulk_load.py"), *args],
                          capture_output=True, text=True, timeout=300, env=env)


def test_bulk_load_job_as_a_driver(cluster, tmp_path) -> None:
    ray_cluster, _, kv = cluster
    path = tmp_path / "users.parquet"
    pq.write_table(pa.table({"id": [f"user:{i:05d}" for i in range(10_000)],
                             "name": [f"name {i}" for i in range(10_000)]}), path)
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.address)
    proc = run_bulk_load(env, "--store", STORE, "--input", str(path), "--key-column", "id", "--value-column", "name")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    print(f"\nbulk_load job: {proc.stdout.strip()}")
    assert set(summary) == {"rows", "seconds", "keys_per_s", "store"}
    assert summary["rows"] == 10_000 and summary["store"] == STORE and summary["keys_per_s"] > 0
    assert lines[-2].startswith(f"loaded 10000 rows into store {STORE!r}") and "100 rows read back" in lines[-2]
    assert kv.get_batch(["user:00000", "user:09999"]) == ["name 0", "name 9999"]
    assert len(list(kv.scan(prefix="user:"))) == 10_000

    missing = run_bulk_load(env, "--store", STORE, "--input", str(tmp_path / "nope.parquet"))
    assert missing.returncode == 2 and "error: the input" in missing.stderr and "does not exist" in missing.stderr
    unknown = run_bulk_load(env, "--store", "no-such-store", "--input", str(path))
    assert unknown.returncode == 3 and "no store named 'no-such-store'" in unknown.stderr, unknown.stderr[-2000:]
    assert "Traceback" not in missing.stderr + unknown.stderr
    with pytest.raises(StoreNotFoundError):
        bulk_load_parquet(str(path), "no-such-store")
    with pytest.raises(InvalidRequestError) as raised:
        bulk_load_parquet(str(path), STORE, key_column="nope")
    assert str(raised.value) == "the dataset has no key column 'nope'; its columns are ['id', 'name']"
