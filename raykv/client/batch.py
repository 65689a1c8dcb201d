"""Multi-key writes of the store client: inputs -> encoded ops -> per-shard atomic batches.

Contract of ``put_batch`` / ``delete_batch`` (:class:`~raykv.client.store.Client`):

* **Atomic per shard, parallel across shards.** The keys are split by shard; each
  shard's part is one :class:`~raykv.kv.commands.Batch` applied atomically (all
  or nothing) as one exactly-once write, and the shards' parts are written in
  parallel, independently: there is no atomicity *across* shards. A part larger
  than the :class:`~raykv.kv.limits.KVLimits` ``max_batch_ops`` /
  ``max_batch_bytes`` is cut into several batches (in input order), and then
  atomicity holds per batch only.
* Everything is validated and serialized before anything is sent: one bad key
  or value (wrong type, ``None`` value, over a size limit) raises
  :class:`~raykv.errors.InvalidRequestError` (or a subclass) and writes nothing.
* A key given twice keeps its last value (as in a dict).
* Outcome: ``None`` once every part applied. If a part failed: its error when it
  is the only part, or the first error when every part failed definitely (then
  nothing was written); otherwise :class:`BatchPartiallyAppliedError`, an
  :class:`~raykv.errors.IndeterminateError` that names the shards whose parts
  all applied and the error of each failed (or indeterminate) part. Puts and deletes are idempotent, so
  retrying the whole call is safe.

Inputs of ``put_batch``: a mapping; an iterable of ``(key, value)`` pairs; or a
``pyarrow.Table`` / ``RecordBatch`` with columns ``key`` (string or binary, no
nulls) and ``value`` (any type: each value becomes a Python object through
``to_pylist()`` and is then serialized like any value).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ..errors import BatchPartiallyAppliedError, DefiniteError, InvalidRequestError, RayKVError
from ..kv.commands import Batch, Delete, Put
from ..kv.limits import KVLimits, validate_op
from ..userdata import encode_key, encode_value


# -- inputs ----------------------------------------------------------------------------
def put_items(data: Any) -> Iterator[tuple[Any, Any]]:
    """The ``(key, value)`` pairs of a ``put_batch`` input (see the module docstring)."""
    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(data, (pa.Table, pa.RecordBatch)):
        return _arrow_items(pa, data)
    if isinstance(data, Mapping):
        return iter(data.items())
    if isinstance(data, (str, bytes, bytearray, memoryview)) or not isinstance(data, Iterable):
        raise InvalidRequestError(
            f"put_batch takes a mapping, an iterable of (key, value) pairs or a pyarrow Table, "
            f"got {type(data).__name__}")
    return _pairs(data)


def _pairs(items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise InvalidRequestError(f"put_batch item {i} is not a (key, value) pair: {type(item).__name__}")
        yield item[0], item[1]


def _arrow_items(pa: Any, table: Any) -> Iterator[tuple[Any, Any]]:
    names = table.schema.names
    if "key" not in names or "value" not in names:
        raise InvalidRequestError(f"an Arrow put_batch input needs columns 'key' and 'value', got {names}")
    key_col = table.column("key")
    kind = key_col.type
    if not any(check(kind) for check in (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view,
                                         pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view,
                                         pa.types.is_fixed_size_binary)):
        raise InvalidRequestError(f"the Arrow 'key' column must be string or binary, got {kind}")
    if key_col.null_count:
        raise InvalidRequestError(f"the Arrow 'key' column holds {key_col.null_count} nulls")
    return zip(key_col.to_pylist(), table.column("value").to_pylist())


def iterable_keys(keys: Any) -> Iterable[Any]:
    """``keys`` itself if it is an iterable of keys (a lone str or bytes key is refused)."""
    if isinstance(keys, (str, bytes, bytearray, memoryview)) or not isinstance(keys, Iterable):
        raise InvalidRequestError(f"expected an iterable of keys, got {type(keys).__name__}")
    return keys


# -- ops ---------------------------------------------------------------------------------
def put_ops(data: Any, limits: KVLimits) -> list[Put]:
    """Encoded puts, one per distinct key (the last value wins), in input order of first appearance."""
    ops: dict[bytes, Put] = {}
    for key, value in put_items(data):
        raw = encode_key(key, limits)
        ops[raw] = Put(raw, encode_value(value, limits))
    return list(ops.values())


def delete_ops(keys: Any, limits: KVLimits) -> list[Delete]:
    raws = dict.fromkeys(encode_key(key, limits) for key in iterable_keys(keys))
    return [Delete(raw) for raw in raws]


def _op_bytes(op: Put | Delete) -> int:
    return len(op.key) + (len(op.value) if isinstance(op, Put) else 0)


def chunk(ops: list[Put | Delete], limits: KVLimits) -> list[tuple[Put | Delete, ...]]:
    """``ops`` cut, in order, into batches within ``max_batch_ops`` and ``max_batch_bytes``, each validated."""
    chunks: list[tuple[Put | Delete, ...]] = []
    current: list[Put | Delete] = []
    size = 0
    for op in ops:
        n = _op_bytes(op)
        if current and (len(current) >= limits.max_batch_ops or size + n > limits.max_batch_bytes):
            chunks.append(tuple(current))
            current, size = [], 0
        current.append(op)
        size += n
    if current:
        chunks.append(tuple(current))
    for part in chunks:
        validate_op(Batch(part), limits)
    return chunks


# -- outcome -----------------------------------------------------------------------------
def raise_outcome(what: str, outcomes: list[tuple[int, BaseException | None]]) -> None:
    """Raise what a batch of parts ``(shard, error or None)`` amounts to (see the module docstring)."""
    failed = [(shard, error) for shard, error in outcomes if error is not None]
    if not failed:
        return
    if len(outcomes) == 1:
        raise failed[0][1]
    failed_shards = {shard for shard, _ in failed}
    applied = sorted({shard for shard, error in outcomes if error is None} - failed_shards)
    if not applied and len(failed) == len(outcomes) and all(isinstance(e, DefiniteError) for _, e in failed):
        raise failed[0][1]
    errors: dict[int, BaseException] = {}
    for shard, error in failed:
        errors.setdefault(shard, error)
    raise BatchPartiallyAppliedError(what, applied, errors) from failed[0][1]


def as_error(exc: BaseException) -> BaseException:
    """A part's failure as the caller sees it (a non-raykv exception wrapped)."""
    if isinstance(exc, RayKVError):
        return exc
    error = RayKVError(f"unexpected client failure: {exc!r}")
    error.__cause__ = exc
    return error
