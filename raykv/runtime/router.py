"""The router of one store: a detached, named, restartable actor in front of the meta group.

* **Routing.** It caches the encoded shard map; clients read it at start and
  after a shard refused their keys (``ShardMapChangedError``). A restart re-reads
  the map from the meta group, so losing the router loses nothing.
* **Placement driver.** One thread (started with the actor, so a restarted router
  resumes) advances the store's resharding operation (:mod:`raykv.runtime.scale`)
  phase by phase. Every map change goes through this process, which updates the
  cache as soon as its compare-and-set succeeds.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping

import ray

from ..errors import ShardMapError
from ..placement import META_SHARD
from .catalog import MAX_SHARDS, SHARD_MAP_KEY
from .options import ReplicaOptions
from .scale import DEFAULT_RETIRE_GRACE_S, Resharder, check_target

log = logging.getLogger("raykv.router")
DRIVER_IDLE_S = 1.0
"""How often the placement driver looks for work when there is none (a scale call wakes it)."""


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
        self.resharder = Resharder(store, self.client, data_dirs, options, self._set_map) if data_dirs else None
        self._wake = threading.Event()
        self._stop = threading.Event()
        if self.resharder is not None:
            threading.Thread(target=self._drive, daemon=True, name="raykv-placement-driver").start()

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

    def stop_driver(self) -> None:
        self._stop.set()
        self._wake.set()

    def _resharder(self) -> Resharder:
        if self.resharder is None:
            raise ShardMapError(f"the router of store {self.store!r} was started without data dirs: it cannot scale")
        return self.resharder

    def _set_map(self, raw: bytes) -> None:
        self.cached = raw

    def _drive(self) -> None:
        """The placement-driver loop: advance resharding; on failure, back off and retry (phases are idempotent)."""
        backoff_s = 0.5
        while not self._stop.is_set():
            try:
                if self.resharder.run_once():
                    backoff_s = 0.5
                    continue
                self._wake.wait(DRIVER_IDLE_S)
                self._wake.clear()
            except Exception as exc:  # noqa: BLE001 -- logged; the phase is retried
                log.warning("store %s: placement driver: %s: %s (retrying in %.1fs)", self.store,
                            type(exc).__name__, exc, backoff_s)
                self._stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
