"""The public entry points: :func:`start`, :func:`connect`, :func:`stop` (re-exported as ``raykv.*``).

Where the store runs:

* inside a Ray job, task, actor or a notebook already connected to Ray: that cluster;
* otherwise ``address`` (or ``RAY_ADDRESS``), or a cluster running on this machine
  (``ray start``, found like ``ray.init(address="auto")``);
* otherwise an **embedded** Ray started in this process (single machine, its node
  labelled ``raykv-host=<hostname>``): the default for a laptop or a notebook. It
  lives as long as this process.

Replicas are pinned to Ray nodes carrying the ``raykv-host`` label (start nodes with
``ray start --labels raykv-host=<stable name>``): the label, not Ray's node id, names the
node-local data directory a replica reopens after a restart. Data lives under
``data_dir`` (default ``$RAYKV_DATA_DIR`` or ``~/.raykv/data``) on each node:
``{data_dir}/{store}/{shard}/{replica}``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import ray

from .errors import StoreNotFoundError, UnavailableError
from .replica.options import ReplicaOptions
from .protocol import HOST_LABEL, check_store_name
from .runtime.store import data_roots, default_data_dir, start_store, stop_store, store_running

__all__ = ["connect", "data_roots", "default_data_dir", "ensure_ray", "start", "stop", "store_running"]
log = logging.getLogger("raykv")


def start(name: str = "default", shards: int | None = None, replicas: int | None = None,
          data_dir: str | Mapping[str, str] | None = None, *, create: bool | None = None,
          options: ReplicaOptions | None = None, timeout_s: float = 10.0, address: str | None = None):
    """Reopen the store ``name`` on the current Ray cluster where it lives, or create it;
    returns a connected :class:`~raykv.client.Client`.

    ``data_dir`` is the node-local data root (the same path on every node), or a mapping
    ``raykv-host -> path`` for test clusters simulating several hosts on one machine;
    None: where each host's pointer says the store lives, else :func:`default_data_dir`.
    ``create``: None (default) creates the store only when no host holds any trace of it,
    True only creates (:class:`~raykv.errors.StoreExistsError` if it exists), False only
    reopens (:class:`~raykv.errors.StoreNotFoundError` if it does not). ``shards`` and
    ``replicas`` shape a new store (default 3 x 3) and, when given, must match an existing
    one (:class:`~raykv.errors.ConfigError`; resize with :meth:`Client.scale`). A store whose
    hosts are missing is refused with their names (:class:`~raykv.errors.UnavailableError`),
    never replaced by an empty one; see :mod:`raykv.placement.identity` for every rule.
    Raises :class:`~raykv.errors.InvalidRequestError` for a bad name or counts and
    :class:`~raykv.errors.UnavailableError` when no node carries the ``raykv-host`` label.
    """
    from .client import Client

    check_store_name(name)
    ensure_ray(address)
    if isinstance(data_dir, str):
        data_dir = os.path.abspath(os.path.expanduser(data_dir))  # replicas resolve it on their own nodes
    start_store(name, shards, replicas, data_dir or None, options, create=create)
    return Client(name, timeout_s=timeout_s, limits=options.limits if options else None)


def connect(name: str = "default", address: str | None = None, *, timeout_s: float = 10.0):
    """A :class:`~raykv.client.Client` of the running store ``name``.

    With no Ray cluster to join, starts an embedded Ray and a local store: it reopens the
    store where its data is, or creates one (3 shards x 3 replicas under
    :func:`default_data_dir`) when there is none. Raises
    :class:`~raykv.errors.StoreNotFoundError` if a cluster is joined but runs no such store.
    """
    from .client import Client

    check_store_name(name)
    embedded = ensure_ray(address)
    if not store_running(name):
        if not embedded:
            raise StoreNotFoundError(f"no store named {name!r} runs on this Ray cluster (create it with raykv.start)")
        start_store(name)
    return Client(name, timeout_s=timeout_s)


def stop(name: str = "default") -> str | dict[str, str] | None:
    """Shut the store down cleanly: pending writes finish or fail definitely, LMDB is closed.
    The data stays; :func:`start` reopens it. Returns the data root(s) the store used (None
    when only the replica actors of an unfinished start were found, and removed)."""
    check_store_name(name)
    ensure_ray(None, embedded_ok=False)
    return stop_store(name)


def recover(name: str, shard: int, *, replica: int | None = None, force: bool = False,
            address: str | None = None, timeout_s: float = 120.0) -> dict:
    """UNSAFE, for a shard whose majority of replicas is gone for good: re-found it from its best
    survivor (or ``replica``); shard 0 is the meta group. Needs no shard map, so it also works
    while the meta group has no majority. See :meth:`raykv.client.Client.recover` for the
    refusals and the report, and docs/operations.md for what it risks."""
    from .client.scaling import call_router

    check_store_name(name)
    ensure_ray(address, embedded_ok=False)
    return call_router(name, "recover", shard, replica, force, timeout_s=timeout_s)


@dataclass(frozen=True)
class StoreListing:
    """One store of a Ray cluster: whether it runs (its router exists), and the data root on
    each alive host that points to it and holds its data (empty: none does)."""

    name: str
    running: bool
    data_dirs: dict[str, str]


def list_stores(address: str | None = None) -> list[StoreListing]:
    """Every store of the Ray cluster at ``address`` (default: as :func:`connect` finds it; never
    an embedded one): the running ones and the stopped ones whose data an alive host holds."""
    from .runtime import identity
    from .runtime.catalog import cluster_hosts

    ensure_ray(address, embedded_ok=False)
    running = set(identity.running_stores())
    on_disk = identity.stores_on_hosts(cluster_hosts())
    return [StoreListing(name, name in running, on_disk.get(name, {})) for name in sorted(running | set(on_disk))]


def ensure_ray(address: str | None, embedded_ok: bool = True) -> bool:
    """Make sure this process is connected to Ray; True if it started an embedded Ray."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
        ray.init(address=address, log_to_driver=False)
        return False
    try:
        ray.init(address="auto", log_to_driver=False)
        return False
    except ConnectionError:
        if not embedded_ok:
            raise StoreNotFoundError("no Ray cluster is running here, so no store is either") from None
    ray.init(labels={HOST_LABEL: socket.gethostname()}, include_dashboard=False, log_to_driver=False)
    log.info("started an embedded single-machine Ray (node label %s=%s)", HOST_LABEL, socket.gethostname())
    return True


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast (``ray.init`` waits very long) when a ``host:port`` address does not answer."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", "local", "ray://...": Ray resolves these itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise UnavailableError(f"no Ray cluster answers at {address}: {e}") from None
