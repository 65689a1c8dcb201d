"""A whole store on Ray: the meta group, the shard groups and the router; start, reopen, stop.

Start-up (:func:`start_store`), idempotent and used for both a new store and a reopen:

1. find the hosts: alive Ray nodes carrying the ``raykv-host`` label;
2. ask every host what it holds of the store (a tiny task pinned to each host): its
   pointer (which data root holds the store there), the store's identity and the
   replica directories under that root (:mod:`raykv.runtime.identity`). The pure
   rules of :mod:`raykv.placement.identity` decide: create (no trace anywhere),
   reopen, or refuse before anything starts (a data directory other than where the
   store lives, ``create`` for a store that exists, no majority of the meta group on
   alive hosts: the missing hosts are named);
3. a new store records a draft identity and pointers on every host first (a start
   interrupted after that leaves a creation the next start finishes: founders that
   never existed may still be created, on hosts holding the draft), then places and
   creates its meta group; a reopen restarts the meta replicas where their
   directories are. The map is read
   from the meta group (key ``shardmap``); a new store writes its first map with a
   compare-and-set from "absent", so two concurrent starts agree on one map (and on
   one identity, key ``identity``). A reopen refuses ``shards``/``replicas`` other
   than the store has, and shard groups without a majority on alive hosts;
4. start every shard group where the map places it: a new map creates every replica;
   a reopen restarts only replicas with data (each reopens its LMDB). A replica whose
   data is gone is *not* recreated as a founding member (repair replaces it);
   start-up needs a majority of every group, not all of it;
5. record the identity and pointers on every alive host again (hosts added since),
   then start the router (:mod:`raykv.runtime.router`): a detached named actor that
   caches the map (a restart re-reads it from the meta group, so losing the router
   loses nothing) and drives resharding and repair.

A start that fails, is refused after step 3 or is interrupted (Ctrl-C) kills the replica
actors it started, unless the store was already running; their data stays. Starts of one
store run one at a time (:mod:`raykv.runtime.startguard`): a second waits for the first, so
the actors one removes are never another's.

The replica actors, the router and the map survive the driver. :func:`stop_store`
shuts every replica down cleanly (pending requests fail definitely, LMDB closed)
and removes the actors (also those an unfinished start left); the data stays for
the next start.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Mapping

import ray

from ..errors import ConfigError, InvalidRequestError, StoreNotFoundError, UnavailableError
from ..placement import META_SHARD, ShardMap, new_shard_map, plan_replicas
from ..placement.identity import StartMode, StartPlan, StoreIdentity, check_reopen, plan_start
from .catalog import MAX_SHARDS, SHARD_MAP_KEY, cluster_hosts, settle_identity, update_shard_map
from ..replica.options import ReplicaOptions
from ..protocol import HOST_LABEL, NAMESPACE, check_store_name, router_name
from . import groups, identity
from .repair import rebalance_leaders
from .router import Router, forget_map_copy
from .shard import start_group
from .startguard import one_start_at_a_time, start_in_progress

log = logging.getLogger("raykv.store")

DEFAULT_SHARDS = 3
DEFAULT_REPLICAS = 3


def default_data_dir() -> str:
    """``$RAYKV_DATA_DIR``, else ``~/.raykv/data`` (resolved where the start runs)."""
    return os.path.abspath(os.path.expanduser(os.environ.get("RAYKV_DATA_DIR") or "~/.raykv/data"))


def check_counts(shards: object, replicas: object) -> None:
    """``shards`` and ``replicas``: None (the store's own, or 3 for a new store) or an int in range."""
    for what, value, top in (("shards", shards, MAX_SHARDS), ("replicas", replicas, 7)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top):
            raise InvalidRequestError(f"{what} must be an int in 1..{top}, got {value!r}")


def start_store(name: str, shards: int | None = None, replicas: int | None = None,
                data_dirs: str | Mapping[str, str] | None = None, options: ReplicaOptions | None = None,
                create: bool | None = None) -> ShardMap:
    """Reopen the store ``name`` where it lives, or create it; returns its shard map.

    ``data_dirs``: the data root (one path, or host -> path); None: where each host's pointer
    says the store lives, else :func:`default_data_dir`. ``create``: None creates only when no
    host holds any trace of the store, True only creates, False only reopens. ``shards`` and
    ``replicas`` shape a new store and must match an existing one (None: as it is). Every
    refusal (:mod:`raykv.placement.identity`) comes before anything is created; a start that
    fails, is refused or is interrupted removes the replica actors it started (their data stays).
    """
    check_store_name(name)
    check_counts(shards, replicas)
    hosts = cluster_hosts()
    if not hosts:
        raise UnavailableError(
            f"no alive Ray node has the {HOST_LABEL!r} label (replicas are pinned to hosts by it, so that a "
            f"restarted replica finds its data): start Ray with ray.init(labels={{{HOST_LABEL!r}: "
            f"socket.gethostname()}}) in a script or notebook, or `ray start --head --labels "
            f"{HOST_LABEL}=$(hostname)` (each node: a stable host name)")
    if len(hosts) < (replicas or DEFAULT_REPLICAS):
        log.warning("only %d hosts for %d replicas per shard: replicas share hosts (no fault tolerance "
                    "against losing a host)", len(hosts), replicas or DEFAULT_REPLICAS)
    asked = _asked_roots(data_dirs, hosts)
    with one_start_at_a_time(name):  # a concurrent start's actors are never this one's leftovers
        traces = identity.read_traces(name, hosts, asked, default_data_dir())
        plan = plan_start(name, traces, create, data_dir_asked=asked is not None)
        roots = {t.host: t.root for t in traces}
        try:
            return _open(name, plan, shards, replicas, hosts, roots, options)
        except BaseException:  # a refusal, a failure or Ctrl-C: leave no replica actor behind
            if not store_running(name):
                identity.kill_leftovers(name)
            raise


def store_running(name: str) -> bool:
    """Whether the router of store ``name`` exists (the store finished starting)."""
    try:
        ray.get_actor(router_name(name), namespace=NAMESPACE)
        return True
    except ValueError:
        return False


def data_roots(name: str) -> str | dict[str, str] | None:
    """The data root (or host -> root) the running store ``name`` uses."""
    try:
        router = ray.get_actor(router_name(name), namespace=NAMESPACE)
    except ValueError:
        raise StoreNotFoundError(f"no store named {name!r} is running") from None
    return ray.get(router.data_roots.remote(), timeout=60)


def _asked_roots(data_dirs: str | Mapping[str, str] | None, hosts: list[str]) -> dict[str, str] | None:
    if data_dirs is None:
        return None
    if isinstance(data_dirs, str):
        return {h: data_dirs for h in hosts}
    missing = [h for h in hosts if h not in data_dirs]
    if missing:
        raise ConfigError(f"data_dir names no directory for hosts {', '.join(missing)}")
    return {h: str(data_dirs[h]) for h in hosts}


def _open(name: str, plan: StartPlan, shards: int | None, replicas: int | None, hosts: list[str],
          roots: dict[str, str], options: ReplicaOptions | None) -> ShardMap:
    data_root = _compact(roots)
    known, members, founding = _meta_group(name, plan, shards, replicas, hosts, roots)
    if known is not None and plan.mode is not StartMode.REOPEN:
        shards, replicas = shards or known.shards, replicas or known.replicas
    started = tuple((rid, host) for rid, host in members if rid in plan.found.get(META_SHARD, {}) or host in founding)
    start_group(name, META_SHARD, started, data_root, options, wait=False, create=bool(founding),
                voters=[rid for rid, _ in members])
    _await_majorities(name, [(META_SHARD, members)])
    smap, created = _load_or_create_map(name, members, shards or DEFAULT_SHARDS, replicas or DEFAULT_REPLICAS, hosts)
    if not created:
        check_reopen(name, smap, shards, replicas, set(hosts))
    smap = _settle_meta(name, smap, started)
    for spec in smap.shards:  # a map just written: no shard group existed before it
        _start_shard_group(name, spec, plan.found.get(spec.shard, {}), set(hosts) if created else founding,
                           data_root, options)
    _await_majorities(name, [(spec.shard, spec.replicas) for spec in smap.shards])
    _await_leaders(name, smap)
    rebalance_leaders(name, smap)
    identity.record_identity(_settle_identity(name, smap, known, roots), roots)
    if not store_running(name):
        forget_map_copy(name)  # a copy left by an earlier store of this name
    router = Router.options(name=router_name(name), namespace=NAMESPACE, lifetime="detached",
                            get_if_exists=True).remote(name, tuple(rid for rid, _ in smap.meta), data_root, options)
    ray.get(router.shard_map.remote())
    return smap


def _meta_group(name: str, plan: StartPlan, shards: int | None, replicas: int | None, hosts: list[str],
                roots: dict[str, str]) -> tuple[StoreIdentity | None, tuple[tuple[int, str], ...], set[str]]:
    """``(identity, meta group members, hosts where missing replicas may found)``. A new store
    places its meta group and records its draft identity first, so a start interrupted from
    here on leaves a creation the next start finishes; a reopen starts the meta replicas
    found on disk and founds nothing."""
    if plan.mode is StartMode.CREATE:
        meta = plan_replicas(META_SHARD, replicas or DEFAULT_REPLICAS, hosts)
        draft = StoreIdentity(name, uuid.uuid4().hex, int(time.time() * 1000), shards or DEFAULT_SHARDS,
                              replicas or DEFAULT_REPLICAS, roots, meta, complete=False)
        identity.record_identity(draft, roots)
        return draft, meta, set(hosts)
    if plan.mode is StartMode.RESUME:
        return plan.identity, plan.identity.meta, set(plan.founding_hosts)
    return plan.identity, tuple(sorted(plan.found[META_SHARD].items())), set()


def _settle_identity(name: str, smap: ShardMap, known: StoreIdentity | None, roots: dict[str, str]) -> StoreIdentity:
    """The identity the meta group holds (concurrent creators agree on the first one written;
    a store from before identities gets one, its shape taken from its map), with this start's
    hosts added: what every host records."""
    from ..client import ShardClient

    proposed = known or StoreIdentity(name, uuid.uuid4().hex, int(time.time() * 1000), len(smap.shards),
                                      max(len(s.replicas) for s in smap.shards), {}, smap.meta)
    with ShardClient(name, META_SHARD, tuple(rid for rid, _ in smap.meta), timeout_s=60.0) as client:
        settled = settle_identity(client, dataclasses.replace(proposed, complete=True))
    return dataclasses.replace(settled, complete=True, data_dirs={**settled.data_dirs, **roots})


def _compact(roots: dict[str, str]) -> str | dict[str, str]:
    """One path if every host uses the same (hosts that join later use it too), else the mapping."""
    paths = set(roots.values())
    return paths.pop() if len(paths) == 1 else dict(roots)


def _start_shard_group(name: str, spec, found: dict[int, str], founding: set[str], data_root, options) -> None:
    """Start the replicas with data; create, as founding members, those without data on the
    ``founding`` hosts (a new store, or one whose creation is being finished: each replica's
    own start rule still refuses to found where it existed before). Elsewhere a replica
    without data is not started: replacing it is repair's membership change."""
    placement = tuple((rid, host) for rid, host in spec.replicas if rid in found or host in founding)
    for rid, host in spec.replicas:
        if (rid, host) not in placement:
            log.warning("replica %s of shard %s (host %s) has no data: not started", rid, spec.shard, host)
    start_group(name, spec.shard, placement, data_root, options, wait=False, create=bool(founding),
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
    return ShardMap.decode(raw), False


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


def stop_store(name: str) -> str | dict[str, str] | None:
    """Shut every replica of store ``name`` down cleanly and remove its actors (data stays).
    Returns the data root(s) the store ran with (what reopens it), None if only the replica
    actors of a start that did not finish were found (and removed). Raises
    :class:`StoreNotFoundError` if nothing of the store runs."""
    check_store_name(name)
    try:
        router = ray.get_actor(router_name(name), namespace=NAMESPACE)
    except ValueError:
        if start_in_progress(name, wait_s=15.0):
            raise InvalidRequestError(f"store {name!r} is being started by another process: stop it once that "
                                      f"start ended (an interrupted start removes what it started)") from None
        if identity.kill_leftovers(name):
            return None
        raise StoreNotFoundError(f"no store named {name!r} is running") from None
    try:  # first the placement driver: a repair pass meanwhile would take stopped replicas for dead ones
        ray.get(router.stop_driver.remote(), timeout=90)
    except Exception as e:  # noqa: BLE001 -- a dead router has no driver running
        log.warning("the router's placement driver did not stop cleanly: %s", e)
    try:
        raw = ray.get(router.refresh.remote(), timeout=90)
    except Exception as e:  # noqa: BLE001 -- the meta group has no majority: the map the router read last
        log.warning("the shard map could not be re-read (%s); stopping the replicas of the router's map", e)
        raw = ray.get(router.shard_map.remote(), timeout=30)
    smap = ShardMap.decode(raw)
    meta = ray.get(router.meta_replicas.remote())
    roots = ray.get(router.data_roots.remote())
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
    forget_map_copy(name)
    identity.kill_leftovers(name)  # replicas the map no longer names (a retired group's, say)
    return roots
