"""Replica repair: notice a lost replica and restore the replication factor on a healthy host.

:func:`repair_once` is one pass of the placement driver (the router calls it periodically;
tests and the bench call it directly). For every shard of the map it decides, from what it
observes (the map, the repair book in the meta group, the alive Ray nodes, the named actors
and the leader's status), whether a replica is lost and what the next step of its repair is
(decisions: :mod:`raykv.placement.repairplan`). The protocol, for a lost replica ``old``:

1. record the repair in the book (meta key :data:`REPAIR_KEY`, compare-and-set): a fresh
   replica id ``new`` (ids are never reused in a shard) on the least-loaded alive host that
   holds no replica of the shard. From here on the repair is resumable: the next pass reads
   the same ``new`` and ``host``;
2. create ``new`` there, empty (no configuration: it waits for the leader's snapshot);
3. the leader adds ``new`` as a learner; it catches up (snapshot, then log);
4. the leader makes ``new`` a voter (a one-voter change), then removes ``old`` (after moving
   leadership off it if it leads); every change is proposed to the current leader only and
   chosen from the leader's *applied* configuration, so a resumed pass never repeats one;
5. the shard map gets ``new`` in ``old``'s place (compare-and-set, epoch + 1);
6. ``old``'s actor is killed for good (``ray.kill(no_restart=True)``: a returning node does
   not bring it back) and ``old`` moves to the book's ``removed`` list; its data directory is
   deleted by a task pinned to its host once that host is alive again.

Quorum: only one-voter changes, one at a time per shard, never while joint, and only for a
shard whose leader is reachable (a majority is alive); a shard that lost a majority is
reported and left alone (no membership change can be committed without a majority).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping

import ray

from ..placement import META_SHARD, ShardMap, ShardSpec
from ..placement.repairplan import (
    Pending,
    RepairBook,
    Step,
    choose_host,
    leader_moves,
    lost_replicas,
    next_step,
    repaired_spec,
    with_spec,
)
from ..errors import DriverSupersededError
from ..kv.ranges import encode_driver
from ..raft.types import ConfChange, ConfChangeKind, ConfChangeSingle
from ..replica.options import ReplicaOptions
from . import groups
from .catalog import cluster_hosts, read_shard_map, update_record, update_shard_map
from .shard import start_group

log = logging.getLogger("raykv.repair")

REPAIR_KEY = b"repairbook"
"""The meta group's key holding the encoded :class:`~raykv.placement.repairplan.RepairBook`."""
CATCH_UP_SLACK = 256
"""A learner whose acknowledged log is within this many entries of the leader's is caught up."""
POLL_S = 0.05

_down_since: dict[str, float] = {}
"""Host -> when this process first saw it without an alive node (``time.monotonic()``)."""


def repair_once(store: str, meta, data_dirs: str | Mapping[str, str], options: ReplicaOptions | None = None, *,
                dead_after_s: float = 10.0, step_timeout_s: float = 120.0,
                timings: dict | None = None, skip_shards: Collection[int] = (), epoch: int = 0) -> list[str]:
    """One repair pass over every shard of ``store`` (see the module docstring).

    ``meta``: a :class:`~raykv.client.ShardClient` of the meta group. A replica is lost once
    its host has had no alive node for ``dead_after_s`` (as seen by this process) or its
    actor is dead for good. A repair in progress is driven to its end, or for at most
    ``step_timeout_s`` (then the next pass resumes it). Returns one line per action taken.
    ``timings``, if given, receives per repaired shard ``{"create_s", "catch_up_s", "total_s"}``.
    ``skip_shards``: shards left alone this pass (e.g. those a resharding step is moving).
    ``epoch``: the placement driver's lease epoch, carried by every membership change (a group
    refuses one from an older epoch than it has seen: :class:`DriverSupersededError` is raised).
    """
    options = options or ReplicaOptions()
    alive = cluster_hosts()
    smap = read_shard_map(meta)
    book = _read_book(meta)
    _note_hosts(alive, smap, book)
    actions = _clean_removed(store, meta, book, alive, data_dirs)
    groups = {spec.shard for spec in smap.shards} | ({META_SHARD} if smap.meta else set())
    shards = sorted(groups | set(book.pending))  # pending: maybe retired since
    for shard in shards:
        if shard in skip_shards:
            continue
        try:
            actions += _repair_shard(store, meta, shard, alive, data_dirs, options, dead_after_s,
                                     time.monotonic() + step_timeout_s, timings, epoch)
        except DriverSupersededError:
            raise
        except Exception as e:  # noqa: BLE001 -- one shard's trouble must not stop the others
            log.warning("repair of shard %s of %s failed this pass: %s", shard, store, e)
            actions.append(f"shard {shard}: repair pass failed: {type(e).__name__}: {e}")
    return actions


def rebalance_leaders(store: str, smap: ShardMap) -> int:
    """Spread leaders across hosts with leadership transfers (no host leads more than
    ``ceil(shards / hosts)`` shards when the voters allow it); returns how many were started."""
    leaders, members, handles = {}, {}, {}
    for spec in smap.shards:
        found = groups.leader(store, spec.shard, [rid for rid, _ in spec.replicas])
        if found is None:
            continue
        rid, status, handle = found
        hosts = dict(spec.replicas)
        leaders[spec.shard] = rid
        members[spec.shard] = {v: hosts[v] for v in status["conf"]["voters"] if v in hosts}
        handles[spec.shard] = handle
    moved = 0
    for shard, target in leader_moves(leaders, members):
        try:
            ray.get(handles[shard].transfer_leader.remote(target), timeout=groups.STATUS_TIMEOUT_S)
            moved += 1
        except Exception as e:  # noqa: BLE001 -- balancing is an optimisation, never a failure
            log.info("leader transfer in shard %s not started: %s", shard, e)
    return moved


# -- one shard ------------------------------------------------------------------------------
def _repair_shard(store: str, meta, shard: int, alive: list[str], data_dirs, options: ReplicaOptions,
                  dead_after_s: float, deadline: float, timings: dict | None, epoch: int) -> list[str]:
    book = _read_book(meta)
    pending = book.pending.get(shard)
    actions: list[str] = []
    if pending is None:
        pending = _maybe_begin(store, meta, shard, alive, dead_after_s, actions)
        if pending is None:
            return actions
    started, catch_up_from, created = time.monotonic(), None, False
    while True:
        smap = read_shard_map(meta)
        if shard != META_SHARD and all(s.shard != shard for s in smap.shards):  # retired by resharding meanwhile
            groups.kill_for_good(store, shard, pending.new)
            _update_book(meta, lambda b: b.abandon(shard) if b.pending.get(shard) == pending else b)
            return actions + [f"shard {shard} left the map; its repair is dropped"]
        spec = smap.by_id(shard)
        if _host_gone(pending.host, cluster_hosts(), dead_after_s):
            return actions + _abandon(store, meta, shard, pending, epoch)
        found = groups.leader(store, shard, _members_to_ask(spec, pending, cluster_hosts()))
        if found is None:
            if time.monotonic() > deadline:
                return actions + [f"shard {shard}: no reachable leader; repair of {pending.old} waits"]
            time.sleep(POLL_S)
            continue
        leader, status, handle = found
        conf = status["conf"]
        step = next_step(spec, pending, conf["voters"], conf["learners"], conf["joint"], leader,
                         _caught_up(status, pending.new))
        if not created and step in (Step.ADD_LEARNER, Step.WAIT_CATCH_UP, Step.PROMOTE):
            # only while it is no voter: an empty replica must never come back as a voter
            created = _create_replacement(store, shard, pending, data_dirs, options, deadline)
            if timings is not None:
                timings.setdefault(shard, {})["create_s"] = time.monotonic() - started
            if not created:
                if time.monotonic() > deadline:
                    return actions + [f"shard {shard}: replacement {pending.new} on {pending.host} not up yet"]
                continue
        if step is Step.WAIT_CATCH_UP and catch_up_from is None:
            catch_up_from = time.monotonic()  # resumed: the learner was added by an earlier pass
        done = _do_step(store, meta, shard, pending, step, leader, status, handle, epoch)
        if step is Step.ADD_LEARNER and done:
            catch_up_from = time.monotonic()
        if done:
            actions.append(f"shard {shard}: {done}")
        if step is Step.PROMOTE and timings is not None:
            timings.setdefault(shard, {})["catch_up_s"] = time.monotonic() - (catch_up_from or time.monotonic())
        if step is Step.FINISH:
            if timings is not None:
                timings.setdefault(shard, {})["total_s"] = time.monotonic() - started
            return actions
        if time.monotonic() > deadline:
            return actions + [f"shard {shard}: repair of {pending.old} by {pending.new} not done yet ({step.name})"]
        if step in (Step.WAIT_CATCH_UP, Step.WAIT_JOINT, Step.TRANSFER_LEADER) or not done:
            time.sleep(POLL_S)


def _create_replacement(store: str, shard: int, p: Pending, data_dirs, options: ReplicaOptions,
                        deadline: float) -> bool:
    """Create (or find) the empty replacement replica; True once it answers (so it is added as a
    learner only when it can take the snapshot at once)."""
    handle = start_group(store, shard, [(p.new, p.host)], data_dirs, options, wait=False, create=True,
                         voters=())[p.new]
    try:
        ray.get(handle.ping.remote(), timeout=max(groups.STATUS_TIMEOUT_S, deadline - time.monotonic()))
        return True
    except Exception as e:  # noqa: BLE001 -- still starting, or its host went away: observe again
        log.info("replacement %s of shard %s not up yet: %s", p.new, shard, e)
        return False


def _maybe_begin(store: str, meta, shard: int, alive: list[str], dead_after_s: float,
                 actions: list[str]) -> Pending | None:
    """Start a repair of ``shard`` if one of its replicas is lost and the rest can repair it."""
    smap = read_shard_map(meta)
    spec = smap.by_id(shard)
    on_alive = [rid for rid, host in spec.replicas if host in alive]
    existing = groups.running(store, shard, on_alive)
    missing = [rid for rid in on_alive if rid not in existing]
    seen = groups.statuses(store, shard, list(existing))
    amnesiac = [rid for rid, (status, _) in seen.items() if status.get("mode") == "amnesiac"]
    lost = lost_replicas(spec, alive, _down_since, time.monotonic(), dead_after_s, missing, amnesiac)
    if not lost:
        return None
    old = lost[0]
    old_host = dict(spec.replicas)[old]
    # A leader means the group's configuration has its majority, whatever the map lists (after
    # ``raykv recover`` the group is its survivor alone while the map still names the lost ones).
    leader = groups.leader(store, shard, [rid for rid, h in spec.replicas if rid not in lost])
    if leader is None:
        if 2 * len(lost) >= len(spec.replicas):
            actions.append(f"shard {shard}: replicas {lost} lost, a majority: cannot repair by membership change "
                           f"(`raykv recover --shard {shard}` re-founds the group from its best survivor)")
        else:
            actions.append(f"shard {shard}: replica {old} lost and no reachable leader")
        return None
    book = _read_book(meta)
    host = choose_host(smap, book, shard, alive, old_host if old in amnesiac else None)
    if host is None:
        actions.append(f"shard {shard}: replica {old} lost and no alive host without a replica of it")
        return None
    conf = leader[1]["conf"]
    used = [rid for rid, _ in spec.replicas] + conf["voters"] + conf["learners"]

    def begin(b: RepairBook) -> RepairBook:
        return b if shard in b.pending else b.begin(shard, old, old_host, host, used)

    pending = _update_book(meta, begin).pending[shard]
    actions.append(f"shard {shard}: replica {old} on {old_host} lost; "
                   f"replacing it with {pending.new} on {pending.host}")
    return pending


def _do_step(store: str, meta, shard: int, p: Pending, step: Step, leader: int, status: dict, handle,
             epoch: int) -> str | None:
    """Carry out ``step`` (one attempt); a description if it was done, None if not (yet)."""
    if step is Step.ADD_LEARNER:
        return _change(handle, ConfChangeKind.ADD_LEARNER, p.new, f"added {p.new} as a learner", epoch)
    if step is Step.PROMOTE:
        return _change(handle, ConfChangeKind.ADD_VOTER, p.new, f"learner {p.new} caught up; made it a voter", epoch)
    if step is Step.REMOVE_OLD:
        return _change(handle, ConfChangeKind.REMOVE_NODE, p.old, f"removed {p.old} from the group", epoch)
    if step is Step.TRANSFER_LEADER:
        peers = status.get("peers", {})
        target = max((v for v in status["conf"]["voters"] if v != p.old),
                     key=lambda v: (peers.get(v, {}).get("match", 0), v != p.new, -v))
        try:
            ray.get(handle.transfer_leader.remote(target), timeout=groups.STATUS_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 -- retried from the next observation
            log.info("shard %s: leader transfer to %s not started: %s", shard, target, e)
        return None
    if step is Step.UPDATE_MAP:
        epoch = _update_map(meta, shard, p)
        return f"shard map now has {p.new} on {p.host} instead of {p.old} (epoch {epoch})"
    if step is Step.FINISH:
        groups.kill_for_good(store, shard, p.old)
        _update_book(meta, lambda b: b.finish(shard) if shard in b.pending else b)
        return f"replica {p.old} killed for good; its directory on {p.old_host} goes once that host is alive"
    return None  # WAIT_CATCH_UP, WAIT_JOINT


def _change(handle, kind: ConfChangeKind, rid: int, done: str, epoch: int) -> str | None:
    """Ask the leader for a one-node change; ``done`` once applied, None if refused or unknown
    (the next observation of the leader's configuration decides what to do then). Raises
    :class:`DriverSupersededError` if the group follows a newer placement driver."""
    cc = ConfChange((ConfChangeSingle(kind, rid),), encode_driver(epoch) if epoch else b"")
    try:
        out = ray.get(handle.change_membership.remote(cc, 30.0), timeout=40.0)
    except Exception as e:  # noqa: BLE001 -- a dead or slow leader: observe again
        log.info("%s not done: %s", cc.describe(), e)
        return None
    if isinstance(out, DriverSupersededError):
        raise out
    if isinstance(out, Exception):
        log.info("%s not done: %s", cc.describe(), out)
        return None
    return done


def _abandon(store: str, meta, shard: int, p: Pending, epoch: int) -> list[str]:
    """The replacement's host died before the replacement became a voter: take it out again
    (if it is a learner) and drop the repair; the next pass starts a new one."""
    found = groups.leader(store, shard, [rid for rid, _ in read_shard_map(meta).by_id(shard).replicas])
    if found is None:
        return [f"shard {shard}: replacement {p.new} lost on {p.host}; no leader to drop it yet"]
    conf = found[1]["conf"]
    if p.new in conf["voters"]:
        return [f"shard {shard}: replacement {p.new} on lost host {p.host} is a voter; kept (repaired on its own)"]
    if p.new in conf["learners"] and not _change(found[2], ConfChangeKind.REMOVE_NODE, p.new, "dropped", epoch):
        return [f"shard {shard}: replacement {p.new} lost on {p.host}; its removal is not applied yet"]
    groups.kill_for_good(store, shard, p.new)
    _update_book(meta, lambda b: b.abandon(shard) if shard in b.pending and b.pending[shard] == p else b)
    return [f"shard {shard}: replacement {p.new} lost on {p.host}; repair dropped, next pass starts another"]


# -- removed replicas ---------------------------------------------------------------------------
def _clean_removed(store: str, meta, book: RepairBook, alive: list[str], data_dirs) -> list[str]:
    """Kill every removed replica's actor (again: idempotent) and delete the directories of
    those whose host is alive; they leave the book once their directory is gone."""
    cleaned, actions = [], []
    for shard, rid, host in book.removed:
        groups.kill_for_good(store, shard, rid)
        if host not in alive:
            continue
        try:
            root = data_dirs if isinstance(data_dirs, str) else data_dirs[host]
            if groups.remove_replica_data(host, root, store, shard, rid):
                actions.append(f"shard {shard}: deleted the data of removed replica {rid} on {host}")
            cleaned.append((shard, rid, host))
        except Exception as e:  # noqa: BLE001 -- retried on the next pass
            log.info("directory of removed replica %s/%s on %s not deleted yet: %s", shard, rid, host, e)
    if cleaned:
        _update_book(meta, lambda b: b.cleaned(cleaned))
    return actions


# -- observations -------------------------------------------------------------------------------
def _note_hosts(alive: list[str], smap: ShardMap, book: RepairBook) -> None:
    now = time.monotonic()
    known = ({h for spec in smap.shards for h in spec.hosts()} | {h for _, h in smap.meta}
             | {p.host for p in book.pending.values()})
    for host in known:
        if host in alive:
            _down_since.pop(host, None)
        else:
            _down_since.setdefault(host, now)


def _host_gone(host: str, alive: list[str], dead_after_s: float) -> bool:
    if host in alive:
        _down_since.pop(host, None)
        return False
    return time.monotonic() - _down_since.setdefault(host, time.monotonic()) >= dead_after_s


def _members_to_ask(spec: ShardSpec, p: Pending, alive: list[str]) -> list[int]:
    hosts = dict(spec.replicas)
    hosts[p.new] = p.host
    return [rid for rid, host in hosts.items() if host in alive]


def _caught_up(status: dict, rid: int) -> bool:
    peer = status.get("peers", {}).get(rid)
    return bool(peer) and peer["state"] == "replicate" and peer["match"] + CATCH_UP_SLACK >= status["last_index"]


# -- meta group records ------------------------------------------------------------------------
def _read_book(meta) -> RepairBook:
    return RepairBook.decode(meta.get(REPAIR_KEY))


def _update_book(meta, change) -> RepairBook:
    """Apply ``change(book) -> book`` to the book with compare-and-set, retrying on a race."""
    return RepairBook.decode(update_record(meta, REPAIR_KEY, lambda raw: change(RepairBook.decode(raw)).encode(),
                                           "repair book"))


def _update_map(meta, shard: int, p: Pending) -> int:
    """Put ``p.new`` in ``p.old``'s place in the map (compare-and-set, epoch + 1) unless it is
    there already; returns the epoch of the map holding it."""
    def change(smap: ShardMap) -> ShardMap:
        spec = smap.by_id(shard)
        target = repaired_spec(spec, p)
        return smap if target == spec else with_spec(smap, target)

    return update_shard_map(meta, change)[0].epoch