"""Ray Data integration: write a ``ray.data.Dataset`` into a store, read a store as a Dataset.

::

    ds.write_datasink(RayKVDatasink("mystore"))                 # or write_dataset(ds, "mystore") -> rows
    ds = ray.data.read_datasource(RayKVDatasource("mystore"))   # or read_store("mystore", prefix="user:")
    bulk_load_parquet("/data/users/", "mystore")                # read Parquet, write, verify a sample

Writing (:class:`RayKVDatasink`)
--------------------------------
Each row becomes one put: the key is the row's ``key_column`` (a ``str`` or ``bytes`` value, no
nulls), the value its ``value_column`` (no nulls) as Arrow's ``to_pylist()`` gives it (Ray's
Python-object columns give back the original objects), or with ``value_column=None`` the whole
row as a dict (key column included). Write tasks (Ray tasks, 1 CPU each, at least
:data:`MIN_ROWS_PER_WRITE` rows each) each open their own :class:`~raykv.client.Client` and write
through ``put_batch``: up to :data:`WRITE_BATCH_ROWS` rows and about :data:`WRITE_BATCH_BYTES` per
call, routed by shard, each shard's part one atomic, exactly-once Raft write, shards in parallel,
:data:`WRITES_IN_FLIGHT` calls in flight per task (keyword arguments ``min_rows_per_write``,
``batch_rows``, ``writes_in_flight``; measured on 2 cores, fewer and larger batches wrote
faster). The write as a whole is **not** atomic: a failed write leaves the rows of the batches
that applied. Puts are idempotent, so running it again is safe; with duplicate keys in the
dataset, which row wins is unspecified. ``on_write_start`` checks on the driver that the store
runs (:class:`~raykv.errors.StoreNotFoundError`); the columns are checked in the write tasks,
block by block (:class:`~raykv.errors.InvalidRequestError`), because the schema Ray hands
``on_write_start`` is the one *before* the maps fused into the write. ``rows_written`` holds the
count afterwards.

Reading (:class:`RayKVDatasource`)
----------------------------------
One read task per shard meeting the range (``start``/``end``/``prefix`` as in
:meth:`Client.scan <raykv.client.store.Client.scan>`), planned from the shard map on the driver;
each task scans only its shard's part of the range, in pages of :data:`READ_PAGE_KEYS`, at the
chosen consistency level, and yields ``pyarrow.Table`` blocks of at most :data:`BLOCK_ROWS` rows in
key order. Every block holds keys of one type.

* ``decode=False``: ``key`` (binary: the key's bytes, UTF-8 for a str key), ``key_is_str`` (bool),
  ``value`` (binary: the stored cloudpickle), exactly like ``Client.scan_arrow``; one schema.
* ``decode=True``: ``key`` is ``string`` in blocks of str keys and ``binary`` in blocks of bytes
  keys. ``value`` follows the **value rule**, per block: if every value of the block has the same
  exact type among ``str``, ``bytes``, ``bool``, ``int`` (within int64) and ``float``, the column is
  the native Arrow type (``string``, ``binary``, ``bool``, ``int64``, ``double``); otherwise
  (dicts, lists, tuples, other objects, mixed types) it is Ray Data's Python-object column
  (``ArrowPythonObjectType``: the stored pickles, as they are), whose rows Ray Data turns back into
  the exact objects. Either way ``take_all()``/``iter_rows()`` give back the values exactly.
  ``value_format="object"`` makes every block a Python-object column (one schema for the whole
  dataset, no decoding in the read tasks).

Consistency: each page is one read at the chosen level at its own instant, so a read is not a
snapshot: each shard is read page after page and shards independently of each other; a key
written during the read may or may not appear (none twice, none out of order within a block).

Decoding unpickles values: read only stores whose writers you trust.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import ray
import ray.exceptions
from ray.data import Datasink, Datasource, ReadTask
from ray.data.block import Block, BlockAccessor, BlockMetadata
from ray.data.datasource.datasink import WriteResult

from .client.route import is_int
from .client.scan import arrow_batch, key_range
from .client.shard import check_seconds, check_consistency
from .errors import BulkLoadVerificationError, InvalidRequestError, RayKVError, ShardMapChangedError
from .kv.limits import KVLimits
from .protocol import check_store_name
from .userdata import BYTES_TAG, STR_TAG, decode_value

MIN_ROWS_PER_WRITE = 50_000
WRITE_BATCH_ROWS = 50_000
WRITE_BATCH_BYTES = 16 << 20
WRITES_IN_FLIGHT = 2
READ_PAGE_KEYS = 10_000
BLOCK_ROWS = 50_000
BLOCK_BYTES = 64 << 20
VALUE_FORMATS = ("auto", "object")
DEFAULT_TIMEOUT_S = 60.0


# -- writing ---------------------------------------------------------------------------
class RayKVDatasink(Datasink[int]):
    """Writes a Dataset's rows into the store ``store`` (see the module docstring)."""

    def __init__(self, store: str = "default", key_column: str = "key", value_column: str | None = "value", *,
                 timeout_s: float = DEFAULT_TIMEOUT_S, batch_rows: int = WRITE_BATCH_ROWS,
                 writes_in_flight: int = WRITES_IN_FLIGHT, min_rows_per_write: int = MIN_ROWS_PER_WRITE) -> None:
        self.store = check_store_name(store)
        self.key_column = _check_column("key_column", key_column)
        self.value_column = None if value_column is None else _check_column("value_column", value_column)
        self.timeout_s = check_seconds("timeout_s", timeout_s)
        self.batch_rows = _check_count("batch_rows", batch_rows)
        self.writes_in_flight = _check_count("writes_in_flight", writes_in_flight)
        self._min_rows_per_write = _check_count("min_rows_per_write", min_rows_per_write)
        self.rows_written: int | None = None

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        """On the driver: the store must run. ``schema`` is not checked here: Ray fuses the
        write with the maps before it, and then gives the schema of the data *before* them."""
        _open_client(self.store, self.timeout_s).close()

    def write(self, blocks: Iterable[Block], ctx: Any) -> int:
        """In a write task: put every row of ``blocks``; returns the number of rows."""
        client = _open_client(self.store, self.timeout_s)
        try:
            with ThreadPoolExecutor(self.writes_in_flight, thread_name_prefix="raykv-write") as pool:
                return _write_blocks(client, pool, blocks, self)
        finally:
            client.close()

    def on_write_complete(self, write_result: WriteResult[int]) -> None:
        self.rows_written = int(sum(write_result.write_returns))

    @property
    def min_rows_per_write(self) -> int:
        return self._min_rows_per_write

    def get_name(self) -> str:
        return "RayKV"


def check_write_schema(schema: pa.Schema, key_column: str, value_column: str | None) -> None:
    """The key column (of keys: see :func:`_holds_keys`) and the value column must be in ``schema``."""
    names = list(schema.names)
    for what, column in (("key", key_column), ("value", value_column)):
        if column is not None and column not in names:
            raise InvalidRequestError(f"the dataset has no {what} column {column!r}; its columns are {names}")
    kind = schema.field(key_column).type
    if not _holds_keys(kind):
        raise InvalidRequestError(f"the key column {key_column!r} must hold str or bytes keys, "
                                  f"its type is {kind}")


def _holds_keys(kind: pa.DataType) -> bool:
    """String or binary (also dictionary-encoded), or Ray's Python-object column (each key is checked)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if isinstance(kind, pa.ExtensionType):
        return kind.extension_name == "ray.data.arrow_pickled_object"
    return _is_text(kind) or _is_binary(kind)


def _write_blocks(client: Any, pool: ThreadPoolExecutor, blocks: Iterable[Block], sink: RayKVDatasink) -> int:
    """``put_batch`` calls of ``sink.batch_rows`` rows, at most ``sink.writes_in_flight`` at a time."""
    written = 0
    in_flight: list[Future] = []
    for block in blocks:
        table = BlockAccessor.for_block(block).to_arrow()
        check_write_schema(table.schema, sink.key_column, sink.value_column)
        step = _batch_rows(table, sink.batch_rows)
        for offset in range(0, table.num_rows, step):
            pairs = _pairs(table.slice(offset, step), sink.key_column, sink.value_column)
            if len(in_flight) >= sink.writes_in_flight:
                in_flight.pop(0).result()
            in_flight.append(pool.submit(client.put_batch, pairs))
            written += len(pairs)
    for future in in_flight:
        future.result()
    return written


def _batch_rows(table: pa.Table, batch_rows: int) -> int:
    """Rows per ``put_batch`` call: ``batch_rows``, fewer if they would exceed about :data:`WRITE_BATCH_BYTES`."""
    row_bytes = table.nbytes / max(1, table.num_rows)
    return max(1, min(batch_rows, int(WRITE_BATCH_BYTES / max(1.0, row_bytes))))


def _pairs(table: pa.Table, key_column: str, value_column: str | None) -> list[tuple[Any, Any]]:
    keys = table.column(key_column)
    if keys.null_count:
        raise InvalidRequestError(f"the key column {key_column!r} holds {keys.null_count} nulls")
    if value_column is None:
        return list(zip(keys.to_pylist(), table.to_pylist()))
    values = table.column(value_column)
    if values.null_count:
        raise InvalidRequestError(f"the value column {value_column!r} holds {values.null_count} nulls "
                                  f"(raykv does not store None)")
    return list(zip(keys.to_pylist(), values.to_pylist()))


# -- reading ---------------------------------------------------------------------------
class RayKVDatasource(Datasource):
    """Reads the store ``store`` (or a key range of it) as a Dataset (see the module docstring)."""

    def __init__(self, store: str = "default", start: Any = None, end: Any = None, prefix: Any = None,
                 consistency: str = "linearizable", decode: bool = True, *, value_format: str = "auto",
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.store = check_store_name(store)
        self.consistency = check_consistency(consistency)
        self.range = key_range(start, end, prefix, KVLimits())
        if not isinstance(decode, bool):
            raise InvalidRequestError(f"decode must be True or False, got {decode!r}")
        if value_format not in VALUE_FORMATS:
            raise InvalidRequestError(f"value_format must be one of {VALUE_FORMATS}, got {value_format!r}")
        self.decode = decode
        self.value_format = value_format
        self.timeout_s = check_seconds("timeout_s", timeout_s)

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        """One task per shard meeting the range (``parallelism`` is not used: shards decide)."""
        client = _open_client(self.store, self.timeout_s)
        try:
            smap = client.shard_map
        finally:
            client.close()
        low, high = self.range
        tasks = []
        for spec in smap.overlapping(low, high):
            ranges = typed_ranges(max(low, spec.start), high if spec.end is None else min(high, spec.end))
            if ranges:
                plan = _ShardRead(self.store, spec.shard, smap.epoch, ranges, self.consistency, self.decode,
                                  self.value_format, self.timeout_s)
                tasks.append(ReadTask(plan, BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None,
                                                          input_files=None),
                                      per_task_row_limit=per_task_row_limit))
        return tasks

    def get_name(self) -> str:
        return "RayKV"


def typed_ranges(start: bytes, end: bytes) -> list[tuple[bytes, bytes]]:
    """``[start, end)`` cut into its bytes-key part and its str-key part (empty parts dropped)."""
    parts = []
    for tag in (BYTES_TAG, STR_TAG):
        low, high = max(start, tag), min(end, bytes([tag[0] + 1]))
        if low < high:
            parts.append((low, high))
    return parts


class _ShardRead:
    """A read task's function: plain data (pickled into the task), the client is opened inside."""

    def __init__(self, store: str, shard: int, epoch: int, ranges: list[tuple[bytes, bytes]], consistency: str,
                 decode: bool, value_format: str, timeout_s: float) -> None:
        self.store, self.shard, self.epoch, self.ranges = store, shard, epoch, ranges
        self.consistency, self.decode, self.value_format, self.timeout_s = consistency, decode, value_format, timeout_s

    def __call__(self) -> Iterator[pa.Table]:
        client = _open_client(self.store, self.timeout_s)
        try:
            if client.shard_map.epoch != self.epoch:
                raise ShardMapChangedError(f"the shard map of store {self.store!r} changed since the read was "
                                           f"planned (epoch {self.epoch} -> {client.shard_map.epoch}): read again")
            shard = client.shard_client(self.shard)
            for start, end in self.ranges:
                for pairs in _blocks_of_pairs(shard, start, end, self.consistency):
                    yield self._block(pairs)
        finally:
            client.close()

    def _block(self, pairs: list[tuple[bytes, bytes]]) -> pa.Table:
        if not self.decode:
            return pa.Table.from_batches([arrow_batch(pa, pairs)])
        return decoded_block(pairs, self.value_format)


def _blocks_of_pairs(shard: Any, start: bytes, end: bytes, consistency: str) -> Iterator[list]:
    """The pairs of ``[start, end)`` on one shard, page by page, grouped into blocks."""
    block: list[tuple[bytes, bytes]] = []
    size = 0
    cursor = start
    while True:
        pairs, more = shard.scan(cursor, end, READ_PAGE_KEYS, consistency)
        block.extend(pairs)
        size += sum(len(k) + len(v) for k, v in pairs)
        if block and (not more or len(block) >= BLOCK_ROWS or size >= BLOCK_BYTES):
            yield block
            block, size = [], 0
        if not more or not pairs:
            return
        cursor = pairs[-1][0] + b"\x00"


def decoded_block(pairs: list[tuple[bytes, bytes]], value_format: str = "auto") -> pa.Table:
    """``key`` (string or binary, by the keys' type) and ``value`` by the value rule (module docstring)."""
    bodies = pa.array([k[1:] for k, _ in pairs], pa.binary())
    keys = bodies.cast(pa.string()) if pairs[0][0][:1] == STR_TAG else bodies
    raws = [v for _, v in pairs]
    return pa.table({"key": keys, "value": value_array(raws, value_format)})


_NATIVE_TYPES = {str: pa.string(), bytes: pa.binary(), bool: pa.bool_(), int: pa.int64(), float: pa.float64()}


def value_array(raws: list[bytes], value_format: str = "auto") -> pa.Array:
    """Stored values as one Arrow array: native if they share one simple type, else Python objects."""
    if value_format == "auto" and (native := _native_values(raws)) is not None:
        return native
    from ray.air.util.object_extensions.arrow import ArrowPythonObjectType

    object_type = ArrowPythonObjectType()
    return object_type.wrap_array(pa.array(raws, object_type.storage_type))


def _native_values(raws: list[bytes]) -> pa.Array | None:
    """The values as a native Arrow array if they all have one type of :data:`_NATIVE_TYPES`, else
    None (decoding stops at the first value that rules it out)."""
    values = []
    kind = None
    for raw in raws:
        value = decode_value(raw)
        if kind is None:
            kind = type(value)
        if type(value) is not kind or kind not in _NATIVE_TYPES:
            return None
        values.append(value)
    try:
        return pa.array(values, _NATIVE_TYPES[kind])
    except (OverflowError, UnicodeError, pa.ArrowException):
        return None  # an int beyond int64, a str with lone surrogates: Python objects


# -- conveniences ----------------------------------------------------------------------
def write_dataset(ds: Any, store: str = "default", key_column: str = "key", value_column: str | None = "value",
                  **options: Any) -> int:
    """Write ``ds`` into ``store`` through :class:`RayKVDatasink`; returns the rows written.
    A raykv error in a write task is raised as itself (not wrapped in Ray's ``RayTaskError``)."""
    sink = RayKVDatasink(store, key_column, value_column, **options)
    with raykv_errors_unwrapped():
        ds.write_datasink(sink)
    return sink.rows_written or 0


_RAY_DATA_RETRY_NOTE = "\nFailed to "


@contextmanager
def raykv_errors_unwrapped() -> Iterator[None]:
    """Re-raise a ``RayTaskError`` caused by a raykv error as that raykv error, with its own message
    (Ray Data appends a note on retries to the message of a task's exception: it is cut off)."""
    try:
        yield
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, RayKVError):
            raise
        if cause.args and isinstance(cause.args[0], str) and _RAY_DATA_RETRY_NOTE in cause.args[0]:
            cause.args = (cause.args[0].split(_RAY_DATA_RETRY_NOTE, 1)[0],) + cause.args[1:]
        raise cause from None


def read_store(store: str = "default", **options: Any) -> Any:
    """``ray.data.read_datasource(RayKVDatasource(store, **options))``; checks now that the store runs."""
    source = RayKVDatasource(store, **options)
    _open_client(source.store, source.timeout_s).close()
    return ray.data.read_datasource(source)


def bulk_load_parquet(path: str, store: str = "default", key_column: str = "key", value_column: str | None = "value",
                      verify_rows: int = 100) -> dict[str, Any]:
    """Read Parquet at ``path`` (a file, a directory or a URL that ``ray.data.read_parquet`` reads:
    the read tasks run on the cluster's nodes), write it into ``store``, read back up to
    ``verify_rows`` input rows and compare; returns ``{"rows", "seconds", "keys_per_s", "store",
    "verified"}`` (``seconds``: the write, Parquet reading included since Ray Data streams it).
    Ray must be initialized. Errors: missing input or columns -> :class:`InvalidRequestError`; no
    such store -> :class:`StoreNotFoundError`; rows read back that differ (also what duplicate keys
    in the input can cause) -> :class:`BulkLoadVerificationError`."""
    check_input_path(path)
    if not is_int(verify_rows) or verify_rows < 0:
        raise InvalidRequestError(f"verify_rows must be an int >= 0, got {verify_rows!r}")
    sink = RayKVDatasink(store, key_column, value_column)
    _open_client(store, DEFAULT_TIMEOUT_S).close()  # StoreNotFoundError before any Parquet is read
    ds = ray.data.read_parquet(path)
    started = time.perf_counter()
    with raykv_errors_unwrapped():
        ds.write_datasink(sink)
    seconds = time.perf_counter() - started
    rows = sink.rows_written or 0
    with raykv_errors_unwrapped():
        verified = verify_sample(ds.limit(verify_rows), store, key_column, value_column) if verify_rows else 0
    return {"rows": rows, "seconds": round(seconds, 3), "keys_per_s": round(rows / max(seconds, 1e-9), 1),
            "store": store, "verified": verified}


def check_input_path(path: Any) -> str:
    """A local ``path`` must exist (:class:`InvalidRequestError`); a URL (``s3://...``) is left to Ray Data."""
    if not isinstance(path, str) or not path:
        raise InvalidRequestError(f"the input must be a path or URL, got {path!r}")
    if "://" not in path and not os.path.exists(path):
        raise InvalidRequestError(f"the input {path!r} does not exist")
    return path


def verify_sample(ds: Any, store: str, key_column: str, value_column: str | None) -> int:
    """Compare the rows of ``ds`` (converted as the sink converts them) with what ``store`` holds
    (``==``; NaN equals NaN); returns how many rows were compared."""
    blocks = ray.get(list(ds.to_arrow_refs()))
    pairs = [pair for table in blocks if table.num_rows for pair in _pairs(table, key_column, value_column)]
    client = _open_client(store, DEFAULT_TIMEOUT_S)
    try:
        stored = client.get_batch([key for key, _ in pairs])
    finally:
        client.close()
    wrong = [key for (key, want), got in zip(pairs, stored) if not (want == got or want != want and got != got)]
    if wrong:
        raise BulkLoadVerificationError(f"{len(wrong)} of {len(pairs)} rows read back from store {store!r} differ "
                                        f"from the input, e.g. keys {wrong[:5]!r}")
    return len(pairs)


def summary_line(summary: dict[str, Any]) -> str:
    """The one JSON line a bulk-load job prints."""
    return json.dumps({k: summary[k] for k in ("rows", "seconds", "keys_per_s", "store")})


# -- helpers -----------------------------------------------------------------------------
def _open_client(store: str, timeout_s: float) -> Any:
    from .client import Client

    return Client(store, timeout_s=timeout_s)


def _check_count(what: str, value: Any) -> int:
    if not is_int(value) or value < 1:
        raise InvalidRequestError(f"{what} must be an int >= 1, got {value!r}")
    return value


def _check_column(what: str, column: Any) -> str:
    if not isinstance(column, str) or not column:
        raise InvalidRequestError(f"{what} must be a non-empty column name, got {column!r}")
    return column


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _is_binary(kind: pa.DataType) -> bool:
    return (pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind)
            or pa.types.is_fixed_size_binary(kind))
