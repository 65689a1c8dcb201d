"""The shard map: which contiguous key range each shard serves and where its replicas live.

Keys here are *encoded* keys (:mod:`raykv.userdata`: ``b"b" + bytes`` or
``b"s" + UTF-8``). Invariants of a :class:`ShardMap` (checked by
:meth:`ShardMap.validate`, which :meth:`ShardMap.decode` always runs):

* shards are sorted by ``start``; the first starts at ``b""``, the last ends
  at ``None`` (unbounded), and each ``end`` is the next ``start``: the ranges
  ``[start, end)`` tile the key space without gaps or overlaps;
* shard ids are unique and ``>= 1`` (:data:`META_SHARD` ``0`` is the meta group);
* each shard has at least one replica, replica ids unique within the shard.

``epoch`` grows with every change of the map (splits, merges, moves: later
work), so a client can tell a newer map from an older one.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass

from ..errors import ShardMapError

META_SHARD = 0
"""The shard id of the meta group, the Raft group that stores the shard map."""
FORMAT = 1
_FIRST_CHAR, _LAST_CHAR = 0x30, 0x7A
"""Initial splits spread str keys whose first character is in ``0``..``z`` evenly."""


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """Shard ``shard`` serves encoded keys in ``[start, end)`` (``end=None``: unbounded).

    ``replicas`` are ``(replica id, host)`` pairs; ``host`` is the ``raykv-host`` label.
    """

    shard: int
    start: bytes
    end: bytes | None
    replicas: tuple[tuple[int, str], ...]

    def contains(self, key: bytes) -> bool:
        return self.start <= key and (self.end is None or key < self.end)

    def hosts(self) -> list[str]:
        return [host for _, host in self.replicas]

    def describe(self) -> str:
        end = "+inf" if self.end is None else repr(self.end)
        return f"shard {self.shard} [{self.start!r}, {end}) on {','.join(self.hosts())}"


@dataclass(frozen=True, slots=True)
class ShardMap:
    """``meta``: the meta group's replicas ``(id, host)`` (empty in maps written before replica
    repair existed; the store's start fills it in). :meth:`by_id` of :data:`META_SHARD` gives
    them as a spec, so repair treats the meta group like any shard."""

    store: str
    epoch: int
    shards: tuple[ShardSpec, ...]
    meta: tuple[tuple[int, str], ...] = ()

    def validate(self) -> "ShardMap":
        if not self.shards:
            raise ShardMapError(f"shard map of {self.store!r} has no shards")
        if self.shards[0].start != b"" or self.shards[-1].end is not None:
            raise ShardMapError("shard ranges must start at b'' and end unbounded")
        for prev, cur in zip(self.shards, self.shards[1:]):
            if prev.end is None or prev.end != cur.start or not prev.start < cur.start:
                raise ShardMapError(f"shard ranges are not contiguous: {prev.describe()} then {cur.describe()}")
        ids = [s.shard for s in self.shards]
        if len(set(ids)) != len(ids) or min(ids) < 1:
            raise ShardMapError(f"shard ids must be unique and >= 1, got {ids}")
        for s in self.shards + ((self.meta_spec(),) if self.meta else ()):
            rids = [r for r, _ in s.replicas]
            if not rids or len(set(rids)) != len(rids) or min(rids) < 1:
                raise ShardMapError(f"shard {s.shard} has bad replica ids {rids}")
        return self

    def shard_for(self, key: bytes) -> ShardSpec:
        """The shard whose range holds ``key``."""
        starts = [s.start for s in self.shards]
        return self.shards[bisect.bisect_right(starts, key) - 1]

    def overlapping(self, start: bytes, end: bytes | None) -> list[ShardSpec]:
        """Shards meeting ``[start, end)``, in key order."""
        return [s for s in self.shards if (end is None or s.start < end) and (s.end is None or start < s.end)]

    def meta_spec(self) -> ShardSpec:
        """The meta group as a spec (shard :data:`META_SHARD`; its range is meaningless)."""
        return ShardSpec(META_SHARD, b"", None, self.meta)

    def by_id(self, shard: int) -> ShardSpec:
        if shard == META_SHARD and self.meta:
            return self.meta_spec()
        for s in self.shards:
            if s.shard == shard:
                return s
        raise KeyError(shard)

    def encode(self) -> bytes:
        doc = {"format": FORMAT, "store": self.store, "epoch": self.epoch,
               "shards": [{"shard": s.shard, "start": s.start.hex(), "end": None if s.end is None else s.end.hex(),
                           "replicas": [[r, h] for r, h in s.replicas]} for s in self.shards]}
        if self.meta:
            doc["meta"] = [[r, h] for r, h in self.meta]
        return json.dumps(doc, sort_keys=True).encode()

    @staticmethod
    def decode(data: bytes) -> "ShardMap":
        try:
            doc = json.loads(data)
            if doc["format"] != FORMAT:
                raise ShardMapError(f"shard map format {doc['format']} is not {FORMAT}")
            shards = tuple(
                ShardSpec(int(s["shard"]), bytes.fromhex(s["start"]), None if s["end"] is None else bytes.fromhex(s["end"]),
                          tuple((int(r), str(h)) for r, h in s["replicas"]))
                for s in doc["shards"])
            meta = tuple((int(r), str(h)) for r, h in doc.get("meta", ()))
            smap = ShardMap(str(doc["store"]), int(doc["epoch"]), shards, meta)
        except ShardMapError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise ShardMapError(f"shard map is malformed: {type(e).__name__}: {e}") from None
        return smap.validate()


def initial_split_points(shards: int) -> list[bytes]:
    """``shards - 1`` boundaries spreading str keys evenly by their first character (``0``..``z``).

    Bytes keys (tag ``b"b"``) sort before every str key and land in the first shard.
    """
    if shards < 1:
        raise ShardMapError(f"a store needs at least 1 shard, got {shards}")
    span = _LAST_CHAR - _FIRST_CHAR + 1
    return [b"s" + bytes([_FIRST_CHAR + (i * span) // shards]) for i in range(1, shards)]


def plan_replicas(shard_index: int, replicas: int, hosts: list[str]) -> tuple[tuple[int, str], ...]:
    """Replica ids ``1..replicas`` on distinct hosts when there are enough, rotating by shard
    so load (and the first leader, replica ``1``'s host) spreads across hosts."""
    if replicas < 1:
        raise ShardMapError(f"a shard needs at least 1 replica, got {replicas}")
    if not hosts:
        raise ShardMapError("no hosts to place replicas on (nodes need the raykv-host label)")
    ordered = sorted(hosts)
    return tuple((r + 1, ordered[(shard_index + r) % len(ordered)]) for r in range(replicas))


def new_shard_map(store: str, shards: int, replicas: int, hosts: list[str]) -> ShardMap:
    """The map of a new store: ``shards`` ranges (ids ``1..shards``), epoch 1."""
    bounds = [b""] + initial_split_points(shards) + [None]
    specs = tuple(ShardSpec(i + 1, bounds[i], bounds[i + 1], plan_replicas(i, replicas, hosts)) for i in range(shards))
    return ShardMap(store, 1, specs).validate()
