"""The router of one store: a detached, named, restartable actor in front of the meta group.

* **Routing.** It caches the encoded shard map; clients read it at start and
  after a shard refused their keys (``ShardMapChangedError``). A restart re-reads
  the map from the meta group, so losing the router loses nothing.
* **Placement driver.** One thread (started with the actor, so a restarted router
  resumes) does, in turn:

  - resharding (:mod:`raykv.runtime.scale`): the operation in flight, one phase per turn;
  - replica repair (:mod:`raykv.runtime.repair`): when no resharding runs, a pass every
    :data:`REPAIR_EVERY_S` replaces replicas lost with their host or dead for good
    (``auto_repair``, on by default; tests that drive repair by hand turn it off);
  - leader balancing: after a repair and every :data:`BALANCE_EVERY_S`, leaders are
    spread over hosts with leadership transfers.

  One thread, so resharding and repair never change the same group at once. Map changes
  go through this process, which updates the cache when its compare-and-set succeeds (and
  re-reads the map after a repair).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping

import ray

from ..errors import PlacementError, ShardMapError
from ..placement import META_SHARD, ShardMap
from .catalog import MAX_SHARDS, SHARD_MAP_KEY
from ..replica.options import ReplicaOptions
from .repair import rebalance_leaders, repair_once
from .scale import DEFAULT_RETIRE_GRACE_S, Resharder, check_target

log = logging.getLogger("raykv.router")
DRIVER_IDLE_S = 2.0
"""How often the placement driver looks for work when there is none (a scale call wakes it)."""
REPAIR_EVERY_S = 5.0
"""Seconds between repair passes (a host must also be gone ``REPAIR_DEAD_AFTER_S``)."""
REPAIR_DEAD_AFTER_S = 10.0
BALANCE_EVERY_S = 60.0


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=8)
class Router:
    """Caches the shard map of one store and drives its resharding (see the module docstring)."""

    def __init__(self, store: str, meta_replicas: tuple[int, ...], data_dirs: str | Mapping[str, str] | None = None,
                 options: ReplicaOptions | None = None) -> None:
        from ..client import ShardClient

        self.store = store
        self.meta = tuple(meta_replicas)
        self.client = ShardClient(store, META_SHARD, self.meta, timeout_s=30.0)
        self.cached: bytes | None = None
        self.data_dirs, self.options = data_dirs, options
        self.resharder = Resharder(store, self.client, data_dirs, options, self._set_map) if data_dirs else None
        self.auto_repair = True
        self.repairs: list[str] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._driver = threading.Thread(target=self._drive, daemon=True, name="raykv-placement-driver")
        if self.resharder is not None:
            self._driver.start()

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
        """The meta group's replica ids: the map's (repair may have replaced some), else the founding ones."""
        return tuple(rid for rid, _ in ShardMap.decode(self.shard_map()).meta) or self.meta

    def pid(self) -> int:
        return os.getpid()

    def scale(self, shards: int, retire_grace_s: float = DEFAULT_RETIRE_GRACE_S) -> dict:
        """Start resharding to ``shards`` shards (online); returns the operation's record as a dict.
        Raises InvalidRequestError for a bad count or while another scale runs."""
        check_target(shards, MAX_SHARDS)
        op = self._resharder().start(shards, retire_grace_s)
        self._wake.set()
        return op.__dict__.copy()

    def scale_status(self) -> dict | None:
        """The last resharding operation's record (``state`` running/done/failed), or None."""
        op, _ = self._resharder().load()
        return None if op is None else dict(op.__dict__, text=op.describe())

    def set_auto_repair(self, enabled: bool) -> None:
        """Turn the driver's repair passes on or off (tests drive :func:`repair_once` by hand)."""
        self.auto_repair = bool(enabled)
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

    def _resharder(self) -> Resharder:
        if self.resharder is None:
            raise PlacementError(f"the router of store {self.store!r} was started without data dirs: it cannot scale")
        return self.resharder

    def _set_map(self, raw: bytes) -> None:
        self.cached = raw

    def _repair_pass(self) -> bool:
        """One repair pass; True if it acted (the map is re-read and leaders rebalanced)."""
        actions = repair_once(self.store, self.client, self.data_dirs, self.options, dead_after_s=REPAIR_DEAD_AFTER_S)
        if not actions:
            return False
        log.info("store %s: repair: %s", self.store, "; ".join(actions))
        self.repairs = (self.repairs + actions)[-200:]
        rebalance_leaders(self.store, ShardMap.decode(self.refresh()))
        return True

    def _drive(self) -> None:
        """The placement-driver loop (see the module docstring); a failing turn is logged and
        retried after a backoff (every phase and every repair step is idempotent)."""
        backoff_s, next_repair, next_balance = 0.5, 0.0, time.monotonic() + BALANCE_EVERY_S
        while not self._stop.is_set():
            try:
                if self.resharder.run_once():
                    backoff_s = 0.5
                    continue
                now = time.monotonic()
                if self.auto_repair and now >= next_repair:
                    next_repair = now + REPAIR_EVERY_S
                    if self._repair_pass():
                        continue
                if now >= next_balance:
                    next_balance = now + BALANCE_EVERY_S
                    rebalance_leaders(self.store, ShardMap.decode(self.refresh()))
                self._wake.wait(DRIVER_IDLE_S)
                self._wake.clear()
            except Exception as exc:  # noqa: BLE001 -- logged; the phase is retried
                log.warning("store %s: placement driver: %s: %s (retrying in %.1fs)", self.store,
                            type(exc).__name__, exc, backoff_s)
                self._stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
