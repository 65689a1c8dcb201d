"""Reading a replica's rows for resharding: range sizes and the median split key.

These read one LMDB read transaction of a :class:`~raykv.storage.replica_store.ReplicaStore`
on the replica's loop thread (the host calls them as linearizable reads, so what
they see includes every write acknowledged before the call).
"""

from __future__ import annotations

from ..kv.ranges import RESERVED_END, below
from ..storage.replica_store import ReplicaStore


def range_stats(store: ReplicaStore, lo: bytes, hi: bytes | None) -> dict:
    """``{"keys", "bytes", "median"}`` of the user rows in ``[lo, hi)``.

    ``bytes`` counts ``len(key) + len(value)``; ``median`` is the first key at which
    the bytes of the rows before it reach half of ``bytes`` (None when fewer than two
    rows: no split point leaves data on both sides). Splitting at ``median`` puts
    the rows below it in one half and the rest in the other.
    """
    sizes: list[tuple[bytes, int]] = []
    txn = store.read_txn()
    try:
        with txn.cursor(store.db("data")) as cur:
            if cur.set_range(max(lo, RESERVED_END)):
                for key, value in cur:
                    if not below(key, hi):
                        break
                    sizes.append((bytes(key), len(key) + len(value)))
    finally:
        txn.abort()
    total = sum(size for _, size in sizes)
    return {"keys": len(sizes), "bytes": total, "median": _median_key(sizes, total)}


def _median_key(sizes: list[tuple[bytes, int]], total: int) -> bytes | None:
    if len(sizes) < 2:
        return None
    seen = 0
    for i, (key, size) in enumerate(sizes):
        if i > 0 and seen * 2 >= total:
            return key
        seen += size
    return sizes[-1][0]
