"""What a replica reads from its applied state: keys, scan pages, range sizes, all range-checked.

Each function here builds a *query*: a callable that takes the replica's storage
(:class:`~raykv.replica.ports.ReplicaStorage`), opens one consistent read view and
computes an answer from it. The engine decides *when* a query may run (after its
ReadIndex round, or at once for stale reads); the query decides only *what* it
returns. Checked queries answer :class:`~raykv.errors.ShardMapChangedError` when
the group does not serve (all of) the keys asked for, judged by the range state
stored in the same view (so the answer and the check see one applied index).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ShardMapChangedError
from ..kv.ranges import RANGE_KEY, RESERVED_END, RangeState, below

MAX_SCAN_PAGE_BYTES = 8 << 20
"""A scan page ends once it holds this many bytes of keys and values (replies stay bounded)."""

Query = Callable[[object], object]


def range_state(view) -> RangeState | None:
    """The group's stored range state in ``view`` (None: the group serves every key)."""
    return RangeState.decode_stored(view.get(RANGE_KEY))


def stored_range(storage) -> RangeState | None:
    """The group's range state as applied here (None: it serves every key)."""
    with storage.view() as view:
        return range_state(view)


def describe_range(storage) -> str | None:
    """One line naming what the group serves (None: every key)."""
    state = stored_range(storage)
    return None if state is None else state.describe()


def read_keys(keys: list[bytes], shard: int) -> Query:
    """The values of ``keys`` (None for absent ones), or ShardMapChangedError if one is not served."""

    def query(storage) -> list[bytes | None] | ShardMapChangedError:
        with storage.view() as view:
            state = range_state(view)
            if state is not None and not all(state.serves(k) for k in keys):
                return ShardMapChangedError(f"shard {shard} does not serve every key read: {state.describe()}")
            return [view.get(k) for k in keys]

    return query


def scan_page(start: bytes, end: bytes | None, limit: int, shard: int, check: bool = True) -> Query:
    """Up to ``limit`` user rows with ``start <= key < end`` in key order and whether more follow:
    ``(pairs, more)``; a page also ends after :data:`MAX_SCAN_PAGE_BYTES` (at least one row).
    With ``check``, ShardMapChangedError unless the group serves all of ``[start, end)``;
    without (resharding copies a fenced range), rows are returned whatever the range state."""

    def query(storage) -> tuple[list[tuple[bytes, bytes]], bool] | ShardMapChangedError:
        with storage.view() as view:
            state = range_state(view) if check else None
            if state is not None and not state.serves_span(start, end):
                return ShardMapChangedError(f"shard {shard} does not serve all of the scanned range: "
                                            f"{state.describe()}")
            return _page(view, start, end, limit)

    return query


def _page(view, start: bytes, end: bytes | None, limit: int) -> tuple[list[tuple[bytes, bytes]], bool]:
    pairs: list[tuple[bytes, bytes]] = []
    size = 0
    for key, value in view.items_from(max(start, RESERVED_END)):
        if not below(key, end):
            return pairs, False
        if len(pairs) == limit or size >= MAX_SCAN_PAGE_BYTES:
            return pairs, True
        pairs.append((key, value))
        size += len(key) + len(value)
    return pairs, False


def range_stats(lo: bytes, hi: bytes | None) -> Query:
    """``{"keys", "bytes", "median"}`` of the user rows in ``[lo, hi)``.

    ``bytes`` counts ``len(key) + len(value)``; ``median`` is the first key at which the
    bytes of the rows before it reach half of ``bytes`` (None when fewer than two rows: no
    split point leaves data on both sides). Splitting at ``median`` puts the rows below it
    in one half and the rest in the other."""

    def query(storage) -> dict:
        sizes: list[tuple[bytes, int]] = []
        with storage.view() as view:
            for key, value in view.items_from(max(lo, RESERVED_END)):
                if not below(key, hi):
                    break
                sizes.append((key, len(key) + len(value)))
        total = sum(size for _, size in sizes)
        return {"keys": len(sizes), "bytes": total, "median": _median_key(sizes, total)}

    return query


def _median_key(sizes: list[tuple[bytes, int]], total: int) -> bytes | None:
    if len(sizes) < 2:
        return None
    seen = 0
    for i, (key, size) in enumerate(sizes):
        if i > 0 and seen * 2 >= total:
            return key
        seen += size
    return sizes[-1][0]
