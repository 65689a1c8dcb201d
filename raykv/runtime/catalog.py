"""Names and keys shared by the store's bootstrap, its router and its placement driver.

The meta group (shard :data:`~raykv.placement.META_SHARD`) is a kv group like any
other; these are the keys it holds (bytes keys, not user keys):

* :data:`SHARD_MAP_KEY` -- the encoded :class:`~raykv.placement.ShardMap`, changed
  only by compare-and-set from the exact previous bytes, its epoch one higher;
* :data:`SCALE_OP_KEY` -- the record of the last resharding operation
  (:class:`~raykv.runtime.scale.ScaleOp`, JSON), changed by compare-and-set;
* :data:`LEASE_KEY` -- the placement driver's lease: the epoch and owner of the router
  thread allowed to change placement (:func:`claim_lease`).

Every record changes only by compare-and-set from its exact previous bytes (:func:`update_record`).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import ray

from ..errors import PlacementError, ShardMapError
from ..placement import ShardMap
from ..placement.identity import StoreIdentity
from ..protocol import HOST_LABEL

SHARD_MAP_KEY = b"shardmap"
"""The meta group's key holding the encoded :class:`~raykv.placement.ShardMap` (as a bytes key)."""
MAX_SHARDS = 1024
"""The most shards a store may have (start and scale refuse more)."""
SCALE_OP_KEY = b"scaleop"
"""The meta group's key holding the last resharding operation's record (JSON)."""
LEASE_KEY = b"driverlease"
"""The meta group's key holding the placement driver's lease (JSON ``{"epoch", "owner"}``)."""
IDENTITY_KEY = b"identity"
"""The meta group's key holding the store's identity (:class:`~raykv.placement.identity.StoreIdentity`)."""
AUTO_REPAIR_KEY = b"autorepair"
"""The meta group's key holding whether the placement driver repairs replicas (``b"off"`` or
``b"on"``; absent: on). In the meta group, not in the router, so a restarted router keeps it."""


def cluster_hosts() -> list[str]:
    """The ``raykv-host`` labels of the alive Ray nodes, sorted."""
    return sorted({n["Labels"][HOST_LABEL] for n in ray.nodes() if n.get("Alive") and HOST_LABEL in n.get("Labels", {})})


def read_shard_map(meta) -> ShardMap:
    """The store's map from the meta group (``meta``: its ShardClient)."""
    raw = meta.get(SHARD_MAP_KEY)
    if raw is None:
        raise ShardMapError("the meta group holds no shard map")
    return ShardMap.decode(raw)


def update_record(meta, key: bytes, change: Callable[[bytes | None], bytes | None], what: str) -> bytes | None:
    """Apply ``change(stored bytes) -> wanted bytes`` to the meta record ``key`` with
    compare-and-set, retried on a race; returning the stored bytes themselves writes nothing.
    Returns the bytes that hold afterwards. Raises what ``change`` raises, or
    :class:`PlacementError` if the record kept changing (``what`` names it)."""
    for _ in range(20):
        raw = meta.get(key)
        wanted = change(raw)
        if wanted == raw or meta.cas(key, raw, wanted):
            return wanted
    raise PlacementError(f"the {what} kept changing under compare-and-set")


def update_shard_map(meta, change: Callable[[ShardMap], ShardMap]) -> tuple[ShardMap, bytes]:
    """Apply ``change(current) -> wanted`` to the map with compare-and-set (see :func:`update_record`);
    ``change`` returns ``current`` itself when there is nothing to do. Returns the map that holds
    afterwards and its stored bytes."""
    def on_bytes(raw: bytes | None) -> bytes:
        if raw is None:
            raise ShardMapError("the meta group holds no shard map")
        current = ShardMap.decode(raw)
        wanted = change(current)
        return raw if wanted == current else wanted.encode()

    raw = update_record(meta, SHARD_MAP_KEY, on_bytes, "shard map")
    return ShardMap.decode(raw), raw


def claim_lease(meta, owner: str) -> int:
    """Become the placement driver: the lease's epoch grows by one and names ``owner``; returns
    the new epoch. Every placement change this driver makes carries it, and groups refuse any
    change from an older epoch, so a router that lost the lease (a restarted copy runs
    elsewhere) cannot move a range any more once its successor touched that group."""
    def bump(raw: bytes | None) -> bytes:
        epoch = json.loads(raw)["epoch"] if raw else 0
        return json.dumps({"epoch": epoch + 1, "owner": owner}, sort_keys=True).encode()

    return json.loads(update_record(meta, LEASE_KEY, bump, "placement driver lease"))["epoch"]


def auto_repair_enabled(meta) -> bool:
    """Whether the placement driver's repair passes are on (see :data:`AUTO_REPAIR_KEY`)."""
    return meta.get(AUTO_REPAIR_KEY) != b"off"


def set_auto_repair(meta, enabled: bool) -> None:
    """Turn the placement driver's repair passes on or off, for every router of the store."""
    update_record(meta, AUTO_REPAIR_KEY, lambda _: b"on" if enabled else b"off", "auto-repair switch")


def lease_holder(meta) -> tuple[int, str | None]:
    """``(epoch, owner)`` of the placement driver's lease (``(0, None)`` if nobody claimed it)."""
    raw = meta.get(LEASE_KEY)
    if raw is None:
        return 0, None
    doc = json.loads(raw)
    return doc["epoch"], doc["owner"]


def settle_identity(meta, proposed: StoreIdentity) -> StoreIdentity:
    """The store's identity as the meta group holds it: ``proposed`` if it held none (compare-and-set
    from absent, so concurrent creators agree on one), else the stored one."""
    raw = update_record(meta, IDENTITY_KEY, lambda stored: stored or proposed.encode(), "store identity")
    return StoreIdentity.decode(raw, "meta group record 'identity'")
