"""The router of one store: a detached, named, restartable actor in front of the meta group.

* **Routing.** It caches the encoded shard map; clients read it at start and
  after a shard refused their keys (``ShardMapChangedError``). A restart re-reads
  the map from the meta group, so losing the router loses nothing.
* **Placement driver.** One thread (started with the actor, so a restarted router
  resumes) first claims the **lease** in the meta group (:func:`~raykv.runtime.catalog.claim_lease`:
  a new epoch naming this router), then does, in turn:

  - resharding (:mod:`raykv.runtime.scale`): the operation in flight, one phase per turn;
    every range change carries the lease's epoch, and groups refuse older epochs;
  - replica repair (:mod:`raykv.runtime.repair`): a pass every :data:`REPAIR_EVERY_S`
    replaces replicas lost with their host, dead for good or amnesiac (on by default; tests
    that drive repair by hand turn it off with :meth:`Router.set_auto_repair`, a switch kept in
    the meta group so that a restarted router keeps it). It runs while no resharding phase
    is due -- and a resharding phase that fails is retried after a growing pause, so a stuck
    scale never starves repair (the meta group's included); a scale call (the operator asking
    again) retries it at once;
  - leader balancing: after a repair and every :data:`BALANCE_EVERY_S`, leaders are
    spread over hosts with leadership transfers.

* **Recovery** (:meth:`Router.recover`, ``raykv recover``): an operator re-founds a group that
  lost its majority from its best survivor (:mod:`raykv.runtime.recovery`); the driver's repair
  then brings it back to full strength.

  One thread, so resharding and repair never change the same group at once. Map changes
  go through this process, which updates the cache when its compare-and-set succeeds (and
  re-reads the map after a repair). Two routers can run at once -- Ray restarts a detached
  actor elsewhere when its node is cut off from the GCS while the old one lives -- so before
  every turn the driver checks it still holds the lease; once another claimed it, it stops
  (a scale call on this router claims it back, and its driver runs again).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping

import ray

from ..errors import DriverSupersededError, InvalidRequestError, PlacementError, ShardMapError, UnavailableError
from ..placement import META_SHARD, ShardMap
from ..protocol import NAMESPACE
from .catalog import MAX_SHARDS, SHARD_MAP_KEY, auto_repair_enabled, claim_lease, lease_holder
from .catalog import set_auto_repair as record_auto_repair
from ..replica.options import ReplicaOptions
from .recovery import recover_group
from .repair import rebalance_leaders, repair_once
from .scale import Resharder
from .scaleop import DEFAULT_RETIRE_GRACE_S, check_target

log = logging.getLogger("raykv.router")
DRIVER_IDLE_S = 2.0
"""How often the placement driver looks for work when there is none (a scale call wakes it)."""
REPAIR_EVERY_S = 5.0
"""Seconds between repair passes (a host must also be gone ``REPAIR_DEAD_AFTER_S``)."""
REPAIR_DEAD_AFTER_S = 10.0
BALANCE_EVERY_S = 60.0
SCALE_BACKOFF_MAX_S = 30.0
"""The longest pause between retries of a failing resharding phase (repair runs meanwhile)."""


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=8)
class Router:
    """Caches the shard map of one store and drives its resharding (see the module docstring)."""

    def __init__(self, store: str, meta_replicas: tuple[int, ...], data_dirs: str | Mapping[str, str] | None = None,
                 options: ReplicaOptions | None = None) -> None:
        from ..client import ShardClient

        self.store = store
        self.meta = tuple(meta_replicas)
        self.client = ShardClient(store, META_SHARD, self.meta, timeout_s=30.0)
        self.cached: bytes | None = _map_copy(store)
        """The map this router read last; a restarted router starts from the copy it left in Ray's
        GCS (:func:`_keep_map_copy`), so it serves a map even while the meta group has no majority."""
        self.data_dirs, self.options = data_dirs, options
        self.resharder = Resharder(store, self.client, data_dirs, options, self._set_map) if data_dirs else None
        self.repairs: list[str] = []
        self.owner = uuid.uuid4().hex
        self._claiming = threading.Lock()
        self.epoch = 0
        """The lease epoch this router's driver holds (0: not claimed yet, or lost)."""
        self._wake = threading.Event()
        self._scale_now = False
        """Set by a scale call: the driver's next turn runs the resharding phase whatever its backoff."""
        self._stop = threading.Event()
        self._driver = threading.Thread(target=self._drive, daemon=True, name="raykv-placement-driver")
        self._driving = self.resharder is not None
        """Whether a driver thread runs and has not decided to stop (changed under ``_claiming``)."""
        if self.resharder is not None:
            self._driver.start()

    def shard_map(self, newer_than: int = 0) -> bytes:
        """The encoded shard map: the cached one, unless its epoch is not above ``newer_than``
        (a client that was refused with the map it has asks so): then it is re-read from the
        meta group, where another router's driver may have changed it."""
        if self.cached is None or (newer_than and ShardMap.decode(self.cached).epoch <= newer_than):
            try:
                return self.refresh()
            except Exception:  # noqa: BLE001 -- no meta majority: the map this router has, if any
                if self.cached is None:
                    raise
                log.warning("store %s: the meta group did not answer; serving the map read last", self.store)
        return self.cached

    def refresh(self) -> bytes:
        raw = self.client.get(SHARD_MAP_KEY)
        if raw is None:
            raise ShardMapError(f"store {self.store!r} has no shard map in its meta group")
        self._cache(raw)
        return raw

    def meta_replicas(self) -> tuple[int, ...]:
        """The meta group's replica ids: the map's (repair may have replaced some), else the founding ones."""
        return tuple(rid for rid, _ in ShardMap.decode(self.shard_map()).meta) or self.meta

    def data_roots(self) -> str | dict[str, str] | None:
        """The data root (or host -> root) the store's replicas use."""
        return self.data_dirs

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        """The Ray node this router runs on."""
        return ray.get_runtime_context().get_node_id()

    def scale(self, shards: int, retire_grace_s: float = DEFAULT_RETIRE_GRACE_S) -> dict:
        """Start resharding to ``shards`` shards (online); returns the operation's record as a dict.
        Raises InvalidRequestError for a bad count or while another scale runs."""
        check_target(shards, MAX_SHARDS)
        resharder = self._resharder()
        resharder.check_target(shards)  # refused, changing nothing (the lease included), while another target runs
        self._take_over()
        op = resharder.start(shards, retire_grace_s)
        self._scale_now = True  # asked again: a failing phase is retried now, not after its pause
        self._wake.set()
        return op.__dict__.copy()

    def recover(self, shard: int, replica: int | None = None, force: bool = False) -> dict:
        """UNSAFE, on an operator's request: re-found group ``shard`` (:data:`META_SHARD`: the meta
        group) from its best survivor, or ``replica`` (:mod:`raykv.runtime.recovery`); refused while
        the group has a majority, unless ``force``. The driver's repair then replaces the replicas
        it killed. Returns the report."""
        report = recover_group(self.store, shard, self._group_replicas(shard), replica, force)
        log.warning("store %s: shard %d re-founded from replica %d: %s", self.store, shard, report["survivor"], report)
        if shard == META_SHARD:
            try:
                self.refresh()  # its new leader answers at once
            except Exception:  # noqa: BLE001 -- the next client's request re-reads it
                pass
        self._wake.set()
        return report

    def _group_replicas(self, shard: int) -> tuple[int, ...]:
        """The replica ids the map lists for ``shard``, from the meta group, else from the last map
        this router read (the meta group may be the one without a majority)."""
        if shard == META_SHARD:  # without a meta majority, the map cannot have changed since it was read
            raw = self.cached
            return tuple(rid for rid, _ in ShardMap.decode(raw).meta) if raw else self.meta
        try:
            raw = self.refresh()
        except Exception:  # noqa: BLE001 -- said below
            raw = None
        if raw is None:
            raise UnavailableError(f"store {self.store!r}: the shard map cannot be read (its meta group has no "
                                   f"majority): recover the meta group first (raykv recover --shard {META_SHARD})")
        smap = ShardMap.decode(raw)
        try:
            return tuple(rid for rid, _ in smap.by_id(shard).replicas) or self.meta
        except KeyError:
            known = ", ".join(str(s.shard) for s in smap.shards)
            raise InvalidRequestError(f"store {self.store!r} has no shard {shard} (shards: {known}; "
                                      f"{META_SHARD}: the meta group)") from None

    def scale_status(self) -> dict | None:
        """The last resharding operation's record (``state`` running/done/failed), or None."""
        op, _ = self._resharder().load()
        return None if op is None else dict(op.__dict__, text=op.describe())

    def set_auto_repair(self, enabled: bool) -> None:
        """Turn the driver's repair passes on or off (tests drive :func:`repair_once` by hand).
        Recorded in the meta group: a restarted router (Ray restarts it with its creation
        arguments, on another node if its own was lost) keeps the setting."""
        record_auto_repair(self.client, bool(enabled))
        self._wake.set()

    def repair_log(self) -> list[str]:
        """What the driver's repair passes did (most recent last, at most 200 lines)."""
        return list(self.repairs)

    def stop_driver(self, timeout_s: float = 60.0) -> None:
        """Stop the placement driver after its current turn (the store is being stopped: a pass
        running meanwhile would take the stopped replicas for dead ones)."""
        self._stop.set()
        self._wake.set()
        if self._driver.is_alive():
            self._driver.join(timeout_s)

    def _take_over(self) -> None:
        """Asked to scale: hold the lease (claiming a newer epoch if this router lost it, which
        fences the driver that holds it now) and run a driver (again, if it stopped when it was
        superseded)."""
        if not self.epoch or not self._still_driver():
            self._claim(again=True)
        with self._claiming:
            if not self._driving and not self._stop.is_set():
                self._driving = True
                self._driver = threading.Thread(target=self._drive, daemon=True, name="raykv-placement-driver")
                self._driver.start()

    def _resharder(self) -> Resharder:
        if self.resharder is None:
            raise PlacementError(f"the router of store {self.store!r} was started without data dirs: it cannot scale")
        return self.resharder

    def _set_map(self, raw: bytes) -> None:
        self._cache(raw)

    def _cache(self, raw: bytes) -> None:
        if raw != self.cached:
            _keep_map_copy(self.store, raw)
        self.cached = raw

    def _repair_pass(self, skip_shards: tuple[int, ...] = ()) -> bool:
        """One repair pass; True if it acted (the map is re-read and leaders rebalanced)."""
        actions = repair_once(self.store, self.client, self.data_dirs, self.options, dead_after_s=REPAIR_DEAD_AFTER_S,
                              skip_shards=skip_shards, epoch=self.epoch)
        if not actions:
            return False
        log.info("store %s: repair: %s", self.store, "; ".join(actions))
        self.repairs = (self.repairs + actions)[-200:]
        rebalance_leaders(self.store, ShardMap.decode(self.refresh()))
        return True

    def lease(self) -> dict:
        """The placement-driver lease as this router sees it: its own epoch and the holder's."""
        epoch, owner = lease_holder(self.client)
        return {"epoch": self.epoch, "holder_epoch": epoch, "holds": owner == self.owner and epoch == self.epoch}

    def _claim(self, again: bool = False) -> None:
        """Claim the lease unless this router already holds an epoch (``again``: claim a newer
        one even so -- the caller saw another router's driver hold it)."""
        with self._claiming:
            if self.epoch and not again:
                return
            self.epoch = claim_lease(self.client, self.owner)
            self.resharder.epoch = self.epoch
        log.info("store %s: placement driver holds the lease at epoch %d", self.store, self.epoch)

    def _still_driver(self) -> bool:
        epoch, owner = lease_holder(self.client)
        return owner == self.owner and epoch == self.epoch

    def _drive(self) -> None:
        """The placement-driver loop (see the module docstring). A failing resharding phase is
        retried after a pause that grows to :data:`SCALE_BACKOFF_MAX_S`, repair going on
        meanwhile; every phase and every repair step is idempotent. Stops once another router's
        driver holds the lease (a scale call on this router takes it back: :meth:`_take_over`)."""
        scale_at, scale_backoff_s = 0.0, 0.5
        next_repair, next_balance = 0.0, time.monotonic() + BALANCE_EVERY_S
        while not self._stop.is_set():
            try:
                if self.epoch == 0:
                    self._claim()
                if not self._still_driver():
                    raise DriverSupersededError(f"store {self.store!r}: another router's driver holds the lease")
                if self._scale_now:
                    self._scale_now, scale_at, scale_backoff_s = False, 0.0, 0.5
                now = time.monotonic()
                if now >= scale_at:
                    try:
                        if self.resharder.run_once():
                            scale_backoff_s = 0.5
                            continue
                    except DriverSupersededError:
                        raise
                    except Exception as exc:  # noqa: BLE001 -- logged; the phase is retried later
                        log.warning("store %s: resharding: %s: %s (retrying in %.1fs)", self.store,
                                    type(exc).__name__, exc, scale_backoff_s)
                        scale_at, scale_backoff_s = now + scale_backoff_s, min(scale_backoff_s * 2, SCALE_BACKOFF_MAX_S)
                if now >= next_repair:
                    next_repair = now + REPAIR_EVERY_S
                    if auto_repair_enabled(self.client):
                        # a scale making progress keeps its two groups to itself; a failing one does not
                        moving = self.resharder.moving_shards() if scale_at <= now else ()
                        if self._repair_pass(moving):
                            continue
                if now >= next_balance:
                    next_balance = now + BALANCE_EVERY_S
                    rebalance_leaders(self.store, ShardMap.decode(self.refresh()))
                wait_s = scale_at - time.monotonic()
                self._wake.wait(DRIVER_IDLE_S if wait_s <= 0 else min(DRIVER_IDLE_S, wait_s))
                self._wake.clear()
            except DriverSupersededError as exc:
                with self._claiming:
                    try:
                        taken_back = bool(self.epoch) and self._still_driver()
                    except Exception:  # noqa: BLE001 -- cannot tell now: the loop's first check asks again
                        taken_back = True
                    if taken_back:
                        continue  # this router took the lease back meanwhile (a scale call)
                    log.warning("store %s: this router's placement driver stops: %s", self.store, exc)
                    self.epoch = 0
                    self._driving = False
                    return
            except Exception as exc:  # noqa: BLE001 -- logged; retried
                log.warning("store %s: placement driver: %s: %s (retrying in 1s)", self.store, type(exc).__name__, exc)
                self._stop.wait(1.0)


def _map_key(store: str) -> bytes:
    return f"raykv:{store}:shard-map".encode()


def _keep_map_copy(store: str, raw: bytes) -> None:
    """Keep ``raw`` (the map this router read) in Ray's GCS key-value store: a router that Ray
    restarts (its node lost) then has a map to serve while the meta group has no majority."""
    from ray.experimental import internal_kv

    try:
        internal_kv._internal_kv_put(_map_key(store), raw, overwrite=True, namespace=NAMESPACE)
    except Exception as e:  # noqa: BLE001 -- only a copy: the meta group has the map
        log.warning("store %s: the map's copy in the GCS was not written: %s", store, e)


def _map_copy(store: str) -> bytes | None:
    """The copy :func:`_keep_map_copy` left, if any (possibly older than the meta group's map:
    a client refused with it asks for a newer one, which is then read from the meta group)."""
    from ray.experimental import internal_kv

    try:
        return internal_kv._internal_kv_get(_map_key(store), namespace=NAMESPACE)
    except Exception:  # noqa: BLE001 -- no copy: read from the meta group
        return None


def forget_map_copy(store: str) -> None:
    """Delete the copy (a store stopped, or about to get a new router: a later store of the same
    name must never start from another one's map)."""
    from ray.experimental import internal_kv

    try:
        internal_kv._internal_kv_del(_map_key(store), namespace=NAMESPACE)
    except Exception as e:  # noqa: BLE001 -- nothing to delete, or the GCS is gone with the cluster
        log.info("store %s: the map's copy in the GCS was not deleted: %s", store, e)
