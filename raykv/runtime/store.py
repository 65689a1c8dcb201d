"""A whole store on Ray: the meta group, the shard groups and the router; start, reopen, stop.

Start-up (:func:`start_store`), idempotent and used for both a new store and a reopen:

1. find the hosts: alive Ray nodes carrying the ``raykv-host`` label;
2. ask every host which replica directories of this store it holds (a tiny task
   pinned to each host lists ``{data_dir}/{store}/``). If meta replicas
   (shard :data:`~raykv.placement.META_SHARD`) exist, they are restarted where they
   are; otherwise a new meta group is placed;
3. start the meta group and read the shard map from it (key ``shardmap``). A new
   store writes its first map with a compare-and-set from "absent", so two
   concurrent starts agree on one map;
4. start every shard group where the map places it (each replica reopens its LMDB);
5. start the router: a detached named actor that caches the map (a restart
   re-reads it from the meta group, so losing the router loses nothing).

The replica actors, the router and the map survive the driver. :func:`stop_store`
shuts every replica down cleanly (pending requests fail definitely, LMDB closed)
and removes the actors; the data stays for the next start.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import ray

from ..errors import InvalidRequestError, ShardMapError, StoreNotFoundError, UnavailableError
from ..placement import META_SHARD, ShardMap, new_shard_map, plan_replicas
from .options import ReplicaOptions
from .protocol import NAMESPACE, replica_actor_name
from .replica import HOST_LABEL
from .shard import start_group

log = logging.getLogger("raykv.store")
SHARD_MAP_KEY = b"shardmap"
"""The meta group's key holding the encoded :class:`~raykv.placement.ShardMap` (as a bytes key)."""
MAX_SHARDS = 1024


def router_name(store: str) -> str:
    return f"raykv:{store}:router"


def check_store_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > 100 or not name.replace("-", "").replace("_", "").isalnum():
        raise InvalidRequestError(f"a store name must be 1-100 letters, digits, '-' or '_', got {name!r}")
    return name


def cluster_hosts() -> list[str]:
    """The ``raykv-host`` labels of the alive Ray nodes, sorted."""
    return sorted({n["Labels"][HOST_LABEL] for n in ray.nodes() if n.get("Alive") and HOST_LABEL in n.get("Labels", {})})


@ray.remote(num_cpus=0)
def _list_replica_dirs(root: str, store: str) -> dict[int, list[int]]:
    """Shard id -> replica ids with a directory under ``root/store`` on this host."""
    found: dict[int, list[int]] = {}
    base = Path(root) / store
    if not base.is_dir():
        return found
    for shard_dir in base.iterdir():
        if shard_dir.name.isdigit() and shard_dir.is_dir():
            rids = [int(p.name) for p in shard_dir.iterdir() if p.name.isdigit() and p.is_dir()]
            if rids:
                found[int(shard_dir.name)] = sorted(rids)
    return found


def discover_meta(store: str, hosts: list[str], data_dirs: str | Mapping[str, str]) -> tuple[tuple[int, str], ...]:
    """The meta group's existing placement ``(replica id, host)`` found on disk, or ``()``."""
    refs = {h: _list_replica_dirs.options(label_selector={HOST_LABEL: h}).remote(_root(data_dirs, h), store)
            for h in hosts}
    found: dict[int, list[str]] = {}
    for host, ref in refs.items():
        for rid in ray.get(ref, timeout=60).get(META_SHARD, []):
            found.setdefault(rid, []).append(host)
    # A directory seen from several hosts (one machine, or a shared file system) belongs to
    # the host the planner gave that replica, if it is among them.
    planned = dict(plan_replicas(0, max(found, default=1), hosts))
    return tuple(sorted((rid, planned[rid] if planned.get(rid) in hs else hs[0]) for rid, hs in found.items()))


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
    meta = discover_meta(name, hosts, data_dirs) or plan_replicas(0, replicas, hosts)
    start_group(name, META_SHARD, meta, data_dirs, options)
    smap = _load_or_create_map(name, meta, shards, replicas, hosts)
    for spec in smap.shards:
        start_group(name, spec.shard, spec.replicas, data_dirs, options, wait=False)
    for spec in smap.shards:
        for rid, _ in spec.replicas:
            ray.get(ray.get_actor(replica_actor_name(name, spec.shard, rid), namespace=NAMESPACE).ping.remote())
    balance_leaders(name, smap)
    router = Router.options(name=router_name(name), namespace=NAMESPACE, lifetime="detached",
                            get_if_exists=True).remote(name, tuple(rid for rid, _ in meta))
    ray.get(router.shard_map.remote())
    return smap


def balance_leaders(name: str, smap: ShardMap, timeout_s: float = 10.0) -> int:
    """Best effort: move each shard's leadership to its first replica, whose host the
    planner rotates per shard, so leaders (and their load) spread across hosts.
    Returns how many transfers were started; shards without a leader yet are skipped."""
    moved = 0
    for spec in smap.shards:
        preferred = spec.replicas[0][0]
        handles = {rid: ray.get_actor(replica_actor_name(name, spec.shard, rid), namespace=NAMESPACE)
                   for rid, _ in spec.replicas}
        leader = _wait_leader(handles, timeout_s)
        if leader is not None and leader != preferred:
            try:
                ray.get(handles[leader].transfer_leader.remote(preferred), timeout=timeout_s)
                moved += 1
            except Exception as e:  # noqa: BLE001 -- balancing is an optimisation, never a failure
                log.info("leader transfer in shard %s not started: %s", spec.shard, e)
    return moved


def _wait_leader(handles: dict, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for rid, status in zip(handles, ray.get([h.status.remote() for h in handles.values()], timeout=timeout_s)):
            if status["role"] == "leader":
                return rid
        time.sleep(0.05)
    return None


def _load_or_create_map(name: str, meta: tuple[tuple[int, str], ...], shards: int, replicas: int,
                        hosts: list[str]) -> ShardMap:
    from ..client import ShardClient

    with ShardClient(name, META_SHARD, tuple(rid for rid, _ in meta), timeout_s=60.0) as client:
        raw = client.get(SHARD_MAP_KEY)
        if raw is None:
            fresh = new_shard_map(name, shards, replicas, hosts)
            if client.cas(SHARD_MAP_KEY, None, fresh.encode()):
                return fresh
            raw = client.get(SHARD_MAP_KEY)
    smap = ShardMap.decode(raw)
    if len(smap.shards) != shards:
        log.info("store %s reopened with its %d shards (asked for %d)", name, len(smap.shards), shards)
    return smap


def stop_store(name: str) -> None:
    """Shut every replica of store ``name`` down cleanly and remove its actors (data stays)."""
    check_store_name(name)
    try:
        router = ray.get_actor(router_name(name), namespace=NAMESPACE)
    except ValueError:
        raise StoreNotFoundError(f"no store named {name!r} is running") from None
    smap = ShardMap.decode(ray.get(router.shard_map.remote()))
    meta = ray.get(router.meta_replicas.remote())
    groups = [(spec.shard, [rid for rid, _ in spec.replicas]) for spec in smap.shards] + [(META_SHARD, list(meta))]
    handles = []
    for shard, rids in groups:
        for rid in rids:
            try:
                handles.append(ray.get_actor(replica_actor_name(name, shard, rid), namespace=NAMESPACE))
            except ValueError:
                pass
    refs = [h.shutdown.remote() for h in handles]
    for ref in refs:
        try:
            ray.get(ref, timeout=60)
        except Exception as e:  # noqa: BLE001 -- a dead or restarting replica has nothing to close
            log.warning("replica did not shut down cleanly: %s", e)
    for h in handles + [router]:
        ray.kill(h, no_restart=True)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=8)
class Router:
    """Caches the shard map of one store; a restart re-reads it from the meta group.

    Read-only today (the map changes only with resharding, later work): it
    answers :meth:`shard_map` from its cache and :meth:`refresh` from the meta group.
    """

    def __init__(self, store: str, meta_replicas: tuple[int, ...]) -> None:
        from ..client import ShardClient

        self.store = store
        self.meta = tuple(meta_replicas)
        self.client = ShardClient(store, META_SHARD, self.meta, timeout_s=30.0)
        self.cached: bytes | None = None

    def shard_map(self) -> bytes:
        """The encoded shard map (cached)."""
        return self.cached or self.refresh()

    def refresh(self) -> bytes:
        raw = self.client.get(SHARD_MAP_KEY)
        if raw is None:
            raise ShardMapError(f"store {self.store!r} has no shard map in its meta group")
        self.cached = raw
        return raw

    def meta_replicas(self) -> tuple[int, ...]:
        return self.meta

    def pid(self) -> int:
        return os.getpid()
