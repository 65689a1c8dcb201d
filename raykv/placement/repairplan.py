"""Replica repair as pure decisions (stdlib only): what is lost, where its replacement goes,
which replica id it gets, and the next membership step of a repair in progress.

The Ray side (:mod:`raykv.runtime.repair`) observes the cluster and the groups and asks
these functions what to do; every decision is a function of what was observed, so a
repair driver that dies at any point is resumed by the next one from the same facts.

The repair book (:class:`RepairBook`, one JSON value in the meta group) records:

* ``next_ids`` -- per shard, the smallest replica id never used there: ids are never
  reused, so an old replica that comes back can never be mistaken for its replacement;
* ``pending`` -- per shard, at most one repair in progress: the lost replica (``old``
  on ``old_host``) and its replacement (``new`` on ``host``), written *before* the
  replacement is created, so a resumed repair reuses the same id and host;
* ``removed`` -- replicas taken out of their group whose data directory still has to
  be deleted once their host is alive (they are never started again).
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from ..errors import PlacementError, ShardMapError
from .shardmap import META_SHARD, ShardMap, ShardSpec

BOOK_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Pending:
    """One repair in progress: replica ``old`` (on ``old_host``) is replaced by ``new`` on ``host``."""

    old: int
    old_host: str
    new: int
    host: str


@dataclass(frozen=True, slots=True)
class RepairBook:
    """The repair record of one store (see the module docstring); immutable, JSON-encoded."""

    next_ids: Mapping[int, int] = field(default_factory=dict)
    pending: Mapping[int, Pending] = field(default_factory=dict)
    removed: tuple[tuple[int, int, str], ...] = ()

    def encode(self) -> bytes:
        doc = {"format": BOOK_FORMAT, "next_ids": {str(s): n for s, n in sorted(self.next_ids.items())},
               "pending": {str(s): [p.old, p.old_host, p.new, p.host] for s, p in sorted(self.pending.items())},
               "removed": [list(r) for r in self.removed]}
        return json.dumps(doc, sort_keys=True).encode()

    @staticmethod
    def decode(data: bytes | None) -> "RepairBook":
        """The book in ``data`` (None: the empty book); :class:`ShardMapError` if malformed."""
        if data is None:
            return RepairBook()
        try:
            doc = json.loads(data)
            if doc["format"] != BOOK_FORMAT:
                raise ShardMapError(f"repair book format {doc['format']} is not {BOOK_FORMAT}")
            return RepairBook(
                {int(s): int(n) for s, n in doc["next_ids"].items()},
                {int(s): Pending(int(o), str(oh), int(n), str(h)) for s, (o, oh, n, h) in doc["pending"].items()},
                tuple((int(s), int(r), str(h)) for s, r, h in doc["removed"]))
        except ShardMapError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise ShardMapError(f"repair book is malformed: {type(e).__name__}: {e}") from None

    def begin(self, shard: int, old: int, old_host: str, host: str, used: Iterable[int]) -> "RepairBook":
        """The book with a repair of ``shard`` started: ``old`` replaced by a fresh id on ``host``.
        The fresh id is above every id in ``used`` and every id this book ever gave out."""
        if shard in self.pending:
            raise PlacementError(f"shard {shard} already has a repair in progress: {self.pending[shard]}")
        new = max([self.next_ids.get(shard, 1), *(r + 1 for r in used)])
        return replace(self, next_ids={**self.next_ids, shard: new + 1},
                       pending={**self.pending, shard: Pending(old, old_host, new, host)})

    def finish(self, shard: int) -> "RepairBook":
        """The book with ``shard``'s repair done: its old replica moves to ``removed``."""
        p = self.pending[shard]
        rest = {s: q for s, q in self.pending.items() if s != shard}
        entry = (shard, p.old, p.old_host)
        removed = self.removed if entry in self.removed else self.removed + (entry,)
        return replace(self, pending=rest, removed=removed)

    def abandon(self, shard: int) -> "RepairBook":
        """The book with ``shard``'s repair dropped (its replacement's id stays used); the
        replacement, if it was ever created, is recorded as removed."""
        p = self.pending[shard]
        rest = {s: q for s, q in self.pending.items() if s != shard}
        return replace(self, pending=rest, removed=self.removed + ((shard, p.new, p.host),))

    def cleaned(self, entries: Iterable[tuple[int, int, str]]) -> "RepairBook":
        """The book without the ``removed`` entries whose directory is gone."""
        gone = set(entries)
        return replace(self, removed=tuple(r for r in self.removed if r not in gone))


def lost_replicas(spec: ShardSpec, alive_hosts: Iterable[str], down_since: Mapping[str, float], now: float,
                  dead_after_s: float, missing: Iterable[int] = (), amnesiac: Iterable[int] = ()) -> list[int]:
    """Replica ids of ``spec`` that are lost: their host has had no alive node for more than
    ``dead_after_s`` (``down_since``: when each host was first seen without one), their actor
    is dead for good (``missing``), or it runs without its data (``amnesiac``: a wiped
    directory or a replaced disk; it takes no part in the group, see
    :mod:`raykv.replica.startup`)."""
    alive, missing, amnesiac = set(alive_hosts), set(missing), set(amnesiac)
    lost = []
    for rid, host in spec.replicas:
        host_gone = host not in alive and now - down_since.get(host, now) >= dead_after_s
        if host_gone or rid in missing or rid in amnesiac:
            lost.append(rid)
    return lost


def host_loads(smap: ShardMap, book: RepairBook) -> dict[str, int]:
    """Replicas per host: the map's (meta group included), plus the replacements of repairs in progress."""
    load: dict[str, int] = {}
    for spec in smap.shards + ((smap.meta_spec(),) if smap.meta else ()):
        for _, host in spec.replicas:
            load[host] = load.get(host, 0) + 1
    for p in book.pending.values():
        load[p.host] = load.get(p.host, 0) + 1
    return load


def choose_host(smap: ShardMap, book: RepairBook, shard: int, alive_hosts: Iterable[str],
                reusable: str | None = None) -> str | None:
    """The alive host with the fewest replicas (then by name) that holds no replica of
    ``shard``; else ``reusable`` (the host of a replica that lost its data: its replacement,
    a new id, may live beside it until it is removed); None if there is none."""
    taken = set(smap.by_id(shard).hosts())
    loads = host_loads(smap, book)
    candidates = sorted((loads.get(h, 0), h) for h in set(alive_hosts) if h not in taken)
    if candidates:
        return candidates[0][1]
    return reusable if reusable in set(alive_hosts) else None


class Step(enum.Enum):
    """The next thing a repair in progress needs (see :func:`next_step`)."""

    WAIT_JOINT = "wait for the joint configuration to be left"
    ADD_LEARNER = "add the replacement as a learner"
    WAIT_CATCH_UP = "wait for the learner to catch up"
    PROMOTE = "make the caught-up learner a voter"
    TRANSFER_LEADER = "move leadership off the replica being removed"
    REMOVE_OLD = "remove the lost replica from the group"
    UPDATE_MAP = "write the new replica list into the shard map"
    FINISH = "record the old replica as removed"


def next_step(spec: ShardSpec, pending: Pending, voters: Iterable[int], learners: Iterable[int], joint: bool,
              leader: int, caught_up: bool) -> Step:
    """The next step of ``pending`` given the group's configuration as its leader sees it
    (``caught_up``: the replacement learner's log is close enough to the leader's).

    One simple (one-voter) change at a time: learner, then voter, then the old one out; a
    joint configuration (someone else's change) is waited out. Ends with the map updated."""
    voters, learners = set(voters), set(learners)
    if joint:
        return Step.WAIT_JOINT
    if pending.new not in voters:
        if pending.new not in learners:
            return Step.ADD_LEARNER
        return Step.PROMOTE if caught_up else Step.WAIT_CATCH_UP
    if pending.old in voters or pending.old in learners:
        return Step.TRANSFER_LEADER if leader == pending.old else Step.REMOVE_OLD
    if any(rid == pending.old for rid, _ in spec.replicas) or all(rid != pending.new for rid, _ in spec.replicas):
        return Step.UPDATE_MAP
    return Step.FINISH


def repaired_spec(spec: ShardSpec, pending: Pending) -> ShardSpec:
    """``spec`` with ``pending.old`` replaced by ``pending.new`` on its host (same position,
    so the planner's leader preference is kept)."""
    out = [(pending.new, pending.host) if rid == pending.old else (rid, host) for rid, host in spec.replicas]
    if all(rid != pending.new for rid, _ in out):
        out.append((pending.new, pending.host))
    return replace(spec, replicas=tuple(out))


def with_spec(smap: ShardMap, spec: ShardSpec) -> ShardMap:
    """``smap`` with ``spec`` replacing the shard of the same id (the meta group's replicas for
    :data:`META_SHARD`), epoch one higher."""
    if spec.shard == META_SHARD:
        return replace(smap, epoch=smap.epoch + 1, meta=spec.replicas).validate()
    shards = tuple(spec if s.shard == spec.shard else s for s in smap.shards)
    return replace(smap, epoch=smap.epoch + 1, shards=shards).validate()


def leader_moves(leaders: Mapping[int, int], members: Mapping[int, Mapping[int, str]]) -> list[tuple[int, int]]:
    """Leadership transfers ``(shard, target replica)`` that spread leaders across hosts so
    no host leads more than ``ceil(shards / hosts)`` shards when possible.

    ``leaders``: shard -> its leader's replica id; ``members``: shard -> {voter id -> host}.
    A shard moves off an overloaded host to the least-loaded host among its own voters."""
    hosts = sorted({h for m in members.values() for h in m.values()})
    if not hosts or not leaders:
        return []
    cap = math.ceil(len(leaders) / len(hosts))
    count = {h: 0 for h in hosts}
    where = {}
    for shard, rid in sorted(leaders.items()):
        host = members[shard].get(rid)
        if host is not None:
            where[shard] = host
            count[host] += 1
    moves = []
    for shard, host in sorted(where.items()):
        if count[host] <= cap:
            continue
        options = sorted((count[h], h, rid) for rid, h in members[shard].items() if h != host and count[h] < cap)
        if options:
            _, target_host, target = options[0]
            count[host] -= 1
            count[target_host] += 1
            moves.append((shard, target))
    return moves
