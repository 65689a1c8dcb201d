"""Resharding plans: which range moves next, and the shard map after it moves (pure).

:func:`next_move` picks one step towards ``target`` shards:

* fewer shards than wanted: **split** the shard holding the most bytes at its
  median key by bytes (the caller measures it), or at :func:`midpoint` of its
  range when it holds fewer than two rows; the upper part moves to a new shard;
* more shards than wanted: **merge** the adjacent pair holding the fewest bytes
  together; the right range moves into the left shard.

:func:`after_move` is the shard map once a move is done: ranges still tile the
key space, the epoch is one higher. Both are deterministic (ties: lower shard id).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import ShardMapError
from ..kv.keys import show_bound, show_span
from .shardmap import ShardMap, ShardSpec


@dataclass(frozen=True, slots=True)
class Move:
    """Move ``[lo, hi)`` from shard ``src`` to shard ``dst`` (``split``: ``dst`` is new)."""

    kind: str  # "split" | "merge"
    src: int
    dst: int
    lo: bytes
    hi: bytes | None

    def describe(self) -> str:
        """One line, with keys as the user wrote them (``'user:42'``, not the encoded ``b'suser:42'``)."""
        span = show_span(self.lo, self.hi)
        if self.kind == "split":
            return f"split shard {self.src} at {show_bound(self.lo)}: {span} to new shard {self.dst}"
        return f"merge shard {self.src} {span} into shard {self.dst}"


def next_move(smap: ShardMap, target: int, sizes: dict[int, int], new_shard: int,
              split_key: dict[int, bytes | None] | None = None) -> Move | None:
    """The next move towards ``target`` shards (None when there already are that many).

    ``sizes``: bytes per shard id. ``split_key``: the measured median key of the
    shard to split (absent or None: :func:`midpoint` of its range). ``new_shard``
    is the id a split creates (ids are never reused; the caller allocates them).
    """
    count = len(smap.shards)
    if target < 1:
        raise ShardMapError(f"a store needs at least 1 shard, got {target}")
    if count < target:
        spec = max(smap.shards, key=lambda s: (sizes.get(s.shard, 0), -s.shard))
        key = (split_key or {}).get(spec.shard)
        if key is None or not (spec.start < key and (spec.end is None or key < spec.end)):
            key = midpoint(spec.start, spec.end)
        return Move("split", spec.shard, new_shard, key, spec.end)
    if count > target:
        pairs = list(zip(smap.shards, smap.shards[1:]))
        left, right = min(pairs, key=lambda p: (sizes.get(p[0].shard, 0) + sizes.get(p[1].shard, 0), p[0].shard))
        return Move("merge", right.shard, left.shard, right.start, right.end)
    return None


def after_move(smap: ShardMap, move: Move, replicas: tuple[tuple[int, str], ...] = ()) -> ShardMap:
    """``smap`` once ``move`` is done (epoch + 1); ``replicas``: the new shard's, for a split."""
    shards = list(smap.shards)
    src = smap.by_id(move.src)
    i = shards.index(src)
    if move.kind == "split":
        if not replicas:
            raise ShardMapError("a split needs the new shard's replicas")
        shards[i:i + 1] = [replace(src, end=move.lo), ShardSpec(move.dst, move.lo, src.end, replicas)]
    else:
        left = smap.by_id(move.dst)
        if shards.index(left) != i - 1:
            raise ShardMapError(f"shard {move.dst} is not the left neighbour of shard {move.src}")
        shards[i - 1:i + 1] = [replace(left, end=src.end)]
    return replace(smap, epoch=smap.epoch + 1, shards=tuple(shards)).validate()  # the meta group's placement stays


def is_done(smap: ShardMap, move: Move) -> bool:
    """True iff ``smap`` already shows ``move`` done (a resumed coordinator skips the switch)."""
    ids = {s.shard for s in smap.shards}
    if move.kind == "split":
        return move.dst in ids
    return move.src not in ids


USER_KEYS = (b"b", b"t")
"""Every user key lies in ``[b"b", b"t")`` (:mod:`raykv.userdata` tags ``b"b"`` and ``b"s"``)."""


def midpoint(lo: bytes, hi: bytes | None) -> bytes:
    """A key strictly between ``lo`` and ``hi`` (``None``: +infinity), for splitting an empty range;
    the middle of the part of the range where user keys live, when the range meets it."""
    inner_lo, inner_hi = max(lo, USER_KEYS[0]), USER_KEYS[1] if hi is None else min(hi, USER_KEYS[1])
    if inner_lo < inner_hi:
        key = _mean_key(inner_lo, inner_hi)
        if lo < key and (hi is None or key < hi):
            return key
    return _mean_key(lo, hi)


def _mean_key(lo: bytes, hi: bytes | None) -> bytes:
    """Both bounds read as fractions in base 256 (``b"a"`` is 0x61/256): their mean, one byte
    longer than needed when they are adjacent."""
    if hi is not None and lo + b"\x00" < hi and hi.rstrip(b"\x00") == lo:
        return lo + b"\x00"  # hi is lo plus zero bytes: equal as fractions, yet keys lie between
    top = hi if hi is not None else b"\xff" * (len(lo) + 1)
    width = max(len(lo), len(top)) + 1
    while True:
        a = int.from_bytes(lo.ljust(width, b"\x00"), "big")
        b = int.from_bytes(top.ljust(width, b"\x00"), "big")
        full = ((a + b) // 2).to_bytes(width, "big")
        for mid in (full.rstrip(b"\x00"), full):
            if lo < mid and (hi is None or mid < hi):
                return mid
        width += 1
        if width > 512:
            raise ShardMapError(f"no key lies between {lo!r} and {hi!r}")
