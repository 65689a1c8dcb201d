"""A whole store on Ray: the meta group, the shard groups and the router; start, reopen, stop.

Start-up (:func:`start_store`), idempotent and used for both a new store and a reopen:

1. find the hosts: alive Ray nodes carrying the ``raykv-host`` label;
2. ask every host which replica directories of this store it holds (a tiny task
   pinned to each host lists ``{data_dir}/{store}/``). If meta replicas
   (shard :data:`~raykv.placement.META_SHARD`) exist, they are restarted where they
   are; otherwise a new meta group is placed and created;
3. start the meta group and read the shard map from it (key ``shardmap``). A new
   store writes its first map with a compare-and-set from "absent", so two
   concurrent starts agree on one map;
4. start every shard group where the map places it: a new map creates every replica;
   a reopen restarts only replicas with data (each reopens its LMDB). A replica whose
   data is gone is *not* recreated as a founding member (it may have voted or
   acknowledged entries before; replacing it is a membership change, later work);
   start-up needs a majority of every group, not all of it;
5. start the router (:mod:`raykv.runtime.router`): a detached named actor that caches
   the map (a restart re-reads it from the meta group, so losing the router loses
   nothing) and drives resharding (:mod:`raykv.runtime.scale`).

The replica actors, the router and the map survive the driver. :func:`stop_store`
shuts every replica down cleanly (pending requests fail definitely, LMDB closed)
and removes the actors; the data stays for the next start.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping

import ray

from ..errors import InvalidRequestError, StoreNotFoundError, UnavailableError
from ..placement import META_SHARD, ShardMap, new_shard_map, plan_replicas
from .catalog import MAX_SHARDS, SHARD_MAP_KEY, cluster_hosts, update_shard_map
from ..replica.options import ReplicaOptions
from ..protocol import HOST_LABEL, NAMESPACE, check_store_name, router_name
from ..storage import layout
from . import groups
from .repair import rebalance_leaders
from .router import Router
from .shard import start_group

log = logging.getLogger("raykv.store")


@ray.remote(num_cpus=0)
def _list_replica_dirs(root: str, store: str) -> dict[int, list[int]]:
    """Shard id -> replica ids with a directory under ``root/store`` on this host."""
    return layout.list_replicas(root, store)


def discover(store: str, hosts: list[str], data_dirs: str | Mapping[str, str]) -> dict[int, dict[int, str]]:
    """Shard id -> {replica id -> host} of the replica directories of ``store`` found on disk.

    A directory seen from several hosts (one machine, or a shared file system) is given to
    the host the planner gives that replica, if it is among them, else the first.
    """
    refs = {h: _list_replica_dirs.options(label_selector={HOST_LABEL: h}).remote(_root(data_dirs, h), store)
            for h in hosts}
    seen: dict[int, dict[int, list[str]]] = {}
    for host, ref in refs.items():
        for shard, rids in ray.get(ref, timeout=60).items():
            for rid in rids:
                seen.setdefault(shard, {}).setdefault(rid, []).append(host)
    found: dict[int, dict[int, str]] = {}
    for shard, by_rid in seen.items():
        planned = dict(plan_replicas(shard, max(by_rid), hosts))
        found[shard] = {rid: planned[rid] if planned.get(rid) in hs else hs[0] for rid, hs in by_rid.items()}
    return found


def _root(data_dirs: str | Mapping[str, str], host: str) -> str:
    return str(data_dirs if isinstance(data_dirs, str) else data_dirs[host])


def check_counts(shards: object, replicas: object) -> None:
    for what, value, top in (("shards", shards, MAX_SHARDS), ("replicas", replicas, 7)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise InvalidRequestError(f"{what} must be an int in 1..{top}, got {value!r}")


def start_store(name: str, shards: int, replicas: int, data_dirs: str | Mapping[str, str],
                options: ReplicaOptions | None = None) -> ShardMap:
    """Create the store ``name``, or reopen it from its data directories; returns its shard map."""
    check_store_name(name)
    check_counts(shards, replicas)
    hosts = cluster_hosts()
    if not hosts:
        raise UnavailableError(f"no alive Ray node has the {HOST_LABEL!r} label: start nodes with "
                               f"`ray start --labels {HOST_LABEL}=<stable host name>`")
    if len(hosts) < replicas:
        log.warning("only %d hosts for %d replicas per shard: replicas share hosts (no fault tolerance "
                    "against losing a host)", len(hosts), replicas)
    found = discover(name, hosts, data_dirs)
    meta = tuple(sorted(found[META_SHARD].items())) if META_SHARD in found else plan_replicas(META_SHARD, replicas, hosts)
    start_group(name, META_SHARD, meta, data_dirs, options, wait=False, create=META_SHARD not in found)
    _await_majorities(name, [(META_SHARD, meta)])
    smap, created = _load_or_create_map(name, meta, shards, replicas, hosts)
    smap = _settle_meta(name, smap, meta)
    for spec in smap.shards:
        _start_shard_group(name, spec, found.get(spec.shard, {}), created, data_dirs, options)
    _await_majorities(name, [(spec.shard, spec.replicas) for spec in smap.shards])
    _await_leaders(name, smap)
    rebalance_leaders(name, smap)
    router = Router.options(name=router_name(name), namespace=NAMESPACE, lifetime="detached",
                            get_if_exists=True).remote(name, tuple(rid for rid, _ in smap.meta), data_dirs, options)
    ray.get(router.shard_map.remote())
    return smap


def _start_shard_group(name: str, spec, found: dict[int, str], created: bool, data_dirs, options) -> None:
    """A new map: create every replica. A reopen: restart only replicas that have data (a lost
    one is not recreated as a founding member; replacing it is a membership change)."""
    placement = spec.replicas if created else tuple((rid, host) for rid, host in spec.replicas if rid in found)
    for rid, host in spec.replicas:
        if not created and rid not in found:
            log.warning("replica %s of shard %s (host %s) has no data: not started", rid, spec.shard, host)
    start_group(name, spec.shard, placement, data_dirs, options, wait=False, create=created,
                voters=[rid for rid, _ in spec.replicas])


def _await_majorities(name: str, groups: list, timeout_s: float = 120.0) -> None:
    """Wait until a majority of every group's replicas answer; a minority may be missing.
    Raises :class:`UnavailableError` naming the first failure (e.g. a replica refusing its data)."""
    for shard, placement in groups:
        refs = [h.ping.remote() for h in _running(name, shard, placement).values()]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        answered, failure = 0, None
        for ref in ready:
            try:
                ray.get(ref)
                answered += 1
            except Exception as e:  # noqa: BLE001 -- reported below if it costs the majority
                failure = failure or e
        if answered * 2 <= len(placement):
            raise UnavailableError(f"shard {shard} of store {name!r}: only {answered} of {len(placement)} replicas "
                                   f"started within {timeout_s:g}s" + (f"; first failure: {failure}" if failure else ""))


def _running(name: str, shard: int, placement) -> dict:
    """Replica id -> actor handle of the replicas in ``placement`` that exist."""
    return groups.running(name, shard, [rid for rid, _ in placement])


def _await_leaders(name: str, smap: ShardMap, timeout_s: float = 10.0) -> None:
    """Best effort: wait (up to ``timeout_s`` in all) until every shard has a leader, so leaders
    can be spread across hosts at once (the router's driver spreads them again later)."""
    deadline = time.monotonic() + timeout_s
    for spec in smap.shards:
        rids = [rid for rid, _ in spec.replicas]
        while groups.leader(name, spec.shard, rids) is None and time.monotonic() < deadline:
            time.sleep(0.05)


def _load_or_create_map(name: str, meta: tuple[tuple[int, str], ...], shards: int, replicas: int,
                        hosts: list[str]) -> tuple[ShardMap, bool]:
    """The store's map from the meta group, or a new one written there; True if new."""
    from ..client import ShardClient

    with ShardClient(name, META_SHARD, tuple(rid for rid, _ in meta), timeout_s=60.0) as client:
        raw = client.get(SHARD_MAP_KEY)
        if raw is None:
            fresh = dataclasses.replace(new_shard_map(name, shards, replicas, hosts), meta=meta)
            if client.cas(SHARD_MAP_KEY, None, fresh.encode()):
                return fresh, True
            raw = client.get(SHARD_MAP_KEY)
    smap = ShardMap.decode(raw)
    if len(smap.shards) != shards:
        log.info("store %s reopened with its %d shards (asked for %d)", name, len(smap.shards), shards)
    return smap, False


def _settle_meta(name: str, smap: ShardMap, started: tuple[tuple[int, str], ...]) -> ShardMap:
    """The map with the meta group's replicas recorded (a map from before replica repair gets
    ``started``: compare-and-set, epoch + 1). Meta replicas started from a directory but no
    longer members (removed by repair while their host was away) are killed for good."""
    from ..client import ShardClient

    if not smap.meta:
        with ShardClient(name, META_SHARD, tuple(rid for rid, _ in started), timeout_s=60.0) as client:
            return update_shard_map(client, lambda current: current if current.meta else dataclasses.replace(
                current, epoch=current.epoch + 1, meta=started).validate())[0]
    members = {rid for rid, _ in smap.meta}
    for rid, host in started:
        if rid not in members:
            log.warning("meta replica %s on %s was removed from the group: not restarted", rid, host)
            for handle in _running(name, META_SHARD, [(rid, host)]).values():
                ray.kill(handle, no_restart=True)
    return smap


def stop_store(name: str) -> None:
    """Shut every replica of store ``name`` down cleanly and remove its actors (data stays)."""
    check_store_name(name)
    try:
        router = ray.get_actor(router_name(name), namespace=NAMESPACE)
    except ValueError:
        raise StoreNotFoundError(f"no store named {name!r} is running") from None
    try:  # first the placement driver: a repair pass meanwhile would take stopped replicas for dead ones
        ray.get(router.stop_driver.remote(), timeout=90)
    except Exception as e:  # noqa: BLE001 -- a dead router has no driver running
        log.warning("the router's placement driver did not stop cleanly: %s", e)
    smap = ShardMap.decode(ray.get(router.shard_map.remote()))
    meta = ray.get(router.meta_replicas.remote())
    groups = [(spec.shard, spec.replicas) for spec in smap.shards] + [(META_SHARD, [(rid, None) for rid in meta])]
    handles = [h for shard, placement in groups for h in _running(name, shard, placement).values()]
    refs = [h.shutdown.remote() for h in handles]
    for ref in refs:
        try:
            ray.get(ref, timeout=60)
        except Exception as e:  # noqa: BLE001 -- a dead or restarting replica has nothing to close
            log.warning("replica did not shut down cleanly: %s", e)
    for h in handles + [router]:
        ray.kill(h, no_restart=True)
