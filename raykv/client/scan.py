"""Range scans of the store client: user bounds -> an encoded range, shard segments, pages.

Contract of :meth:`Client.scan <raykv.client.store.Client.scan>` (and ``scan_arrow``):

* Bounds are user keys. ``prefix`` selects the keys of its type that start with
  it and excludes ``start``/``end``. ``start`` is inclusive, ``end`` exclusive;
  both must be of the same key type (``str`` or bytes-like). With one bound the
  other defaults to the end/start of that type's key space: ``scan(start="m")``
  yields every str key ``>= "m"``, never a bytes key. With no bound and no
  prefix: every key, bytes keys (in byte order) before str keys (in code point
  order). ``start >= end`` is an empty range, not an error.
* Bounds are checked like keys (a bound longer than a key may be raises
  :class:`~raykv.errors.KeyTooLargeError`); ``prefix`` with a bound, mixed bound
  types, a ``limit`` that is not an int ``>= 1`` (``None``: no limit) and an
  unknown consistency raise :class:`~raykv.errors.InvalidRequestError`, at call
  time (not at the first ``next()``).
* Results come in key order across shard boundaries: the shards meeting the
  range are read one after another, each in pages (the replica ``scan`` with
  its ``more`` flag). Each page is one read at the requested consistency level
  at its own instant: a scan is **not** a snapshot of the whole range (a key
  written during the scan may or may not appear; no key appears twice, none
  out of order).

Pages hold at most :data:`PAGE_KEYS` pairs; the first page of a scan holds at
most :data:`FIRST_PAGE_KEYS`, later ones are sized from the pair sizes seen so
far to about :data:`PAGE_BYTES` (replicas bound pages by count only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequestError
from ..kv.limits import KVLimits
from ..placement import ShardMap
from ..userdata import BYTES_TAG, STR_TAG, encode_key
from .route import is_int

PAGE_KEYS = 1000
FIRST_PAGE_KEYS = 100
PAGE_BYTES = 4 * 1024 * 1024
ALL_KEYS = (BYTES_TAG, bytes([STR_TAG[0] + 1]))
"""The encoded range holding every key: ``[b"b", b"t")``."""


def _after_tag(tag: bytes) -> bytes:
    """The first encoded key past every key of type ``tag`` (``b"b"`` -> ``b"c"``)."""
    return bytes([tag[0] + 1])


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: no such key)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def key_range(start: Any, end: Any, prefix: Any, limits: KVLimits) -> tuple[bytes, bytes]:
    """The encoded ``[start, end)`` a scan with these user arguments covers (see the module docstring)."""
    if prefix is not None:
        if start is not None or end is not None:
            raise InvalidRequestError("scan takes either prefix or start/end, not both")
        raw = encode_key(prefix, limits)
        return raw, prefix_end(raw) or ALL_KEYS[1]
    if start is None and end is None:
        return ALL_KEYS
    low = None if start is None else encode_key(start, limits)
    high = None if end is None else encode_key(end, limits)
    if low is not None and high is not None and low[:1] != high[:1]:
        raise InvalidRequestError(
            f"scan start and end must be keys of the same type, got {type(start).__name__} "
            f"and {type(end).__name__}")
    tag = (low or high)[:1]
    return (low if low is not None else tag), (high if high is not None else _after_tag(tag))


def check_limit(limit: Any) -> int | None:
    if limit is None:
        return None
    if not is_int(limit) or limit < 1:
        raise InvalidRequestError(f"scan limit must be an int >= 1 or None, got {limit!r}")
    return limit


@dataclass(frozen=True, slots=True)
class Segment:
    """The part ``[start, end)`` of a scan that shard ``shard`` serves."""

    shard: int
    start: bytes
    end: bytes | None


def segments(smap: ShardMap, start: bytes, end: bytes) -> list[Segment]:
    """The shards meeting ``[start, end)``, in key order, each clipped to the range."""
    if start >= end:
        return []
    out = []
    for spec in smap.overlapping(start, end):
        seg_end = end if spec.end is None else min(end, spec.end)
        out.append(Segment(spec.shard, max(start, spec.start), seg_end))
    return out


@dataclass(frozen=True, slots=True)
class Page:
    """The next replica ``scan`` call to make."""

    shard: int
    start: bytes
    end: bytes | None
    limit: int


class Pager:
    """Walks the segments of a scan page by page; feed it each page's ``(pairs, more)``.

    Not thread-safe: one scan's iterator owns it.
    """

    def __init__(self, segs: list[Segment], limit: int | None) -> None:
        self._segs = list(segs)
        self._index = 0
        self._cursor = self._segs[0].start if self._segs else b""
        self._remaining = limit
        self._seen_pairs = 0
        self._seen_bytes = 0

    def next_page(self) -> Page | None:
        """The next call, or None when the scan is complete."""
        if self._index >= len(self._segs) or self._remaining == 0:
            return None
        seg = self._segs[self._index]
        return Page(seg.shard, self._cursor, seg.end, self._page_size())

    def replan(self, smap: ShardMap) -> None:
        """Continue from where the scan stands over the shards of ``smap`` (a newer map)."""
        if self._index < len(self._segs):
            self._segs, self._index = segments(smap, self._cursor, self._segs[-1].end), 0

    def feed(self, pairs: list[tuple[bytes, bytes]], more: bool) -> None:
        """Record the answer to the page :meth:`next_page` returned."""
        self._seen_pairs += len(pairs)
        self._seen_bytes += sum(len(k) + len(v) for k, v in pairs)
        if self._remaining is not None:
            self._remaining -= len(pairs)
        if more and pairs:
            self._cursor = pairs[-1][0] + b"\x00"  # the smallest key after the last one
            return
        self._index += 1
        if self._index < len(self._segs):
            self._cursor = self._segs[self._index].start

    def _page_size(self) -> int:
        if self._seen_pairs == 0:
            size = FIRST_PAGE_KEYS
        else:
            average = max(1, self._seen_bytes // self._seen_pairs)
            size = max(1, min(PAGE_KEYS, PAGE_BYTES // average))
        return size if self._remaining is None else min(size, self._remaining)


# -- Arrow ---------------------------------------------------------------------------
def arrow_schema(pa: Any) -> Any:
    """``key`` (binary: the raw bytes, UTF-8 for str keys), ``key_is_str`` (bool), ``value`` (binary)."""
    return pa.schema([("key", pa.binary()), ("key_is_str", pa.bool_()), ("value", pa.binary())])


def arrow_batch(pa: Any, pairs: list[tuple[bytes, bytes]]) -> Any:
    """One page of stored pairs as a record batch of :func:`arrow_schema` (values stay serialized)."""
    keys = [k[1:] for k, _ in pairs]
    is_str = [k[:1] == STR_TAG for k, _ in pairs]
    values = [v for _, v in pairs]
    return pa.RecordBatch.from_arrays(
        [pa.array(keys, pa.binary()), pa.array(is_str, pa.bool_()), pa.array(values, pa.binary())],
        schema=arrow_schema(pa))


def arrow_table(pa: Any, pages: list[list[tuple[bytes, bytes]]]) -> Any:
    batches = [arrow_batch(pa, page) for page in pages if page]
    return pa.Table.from_batches(batches, schema=arrow_schema(pa))


def decoded(pairs: list[tuple[bytes, bytes]], decode_key: Callable[[bytes], Any],
            decode_value: Callable[[bytes], Any]) -> list[tuple[Any, Any]]:
    return [(decode_key(k), decode_value(v)) for k, v in pairs]
