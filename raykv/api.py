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
from pathlib import Path

import ray

from .errors import StoreNotFoundError, UnavailableError
from .replica.options import ReplicaOptions
from .protocol import HOST_LABEL, NAMESPACE, check_store_name, router_name
from .runtime.store import start_store, stop_store

log = logging.getLogger("raykv")


def default_data_dir() -> str:
    return os.environ.get("RAYKV_DATA_DIR") or str(Path.home() / ".raykv" / "data")


def start(name: str = "default", shards: int = 3, replicas: int = 3, data_dir: str | Mapping[str, str] | None = None, *,
          options: ReplicaOptions | None = None, timeout_s: float = 10.0, address: str | None = None):
    """Create the store ``name`` on the current Ray cluster, or reopen it from its data
    directories if it exists; returns a connected :class:`~raykv.client.Client`.

    ``shards`` and ``replicas`` apply to a new store (an existing one keeps its own).
    ``data_dir`` is the node-local data root (the same path on every node), or a
    mapping ``raykv-host -> path`` for test clusters simulating several hosts on one machine.
    Raises :class:`~raykv.errors.InvalidRequestError` for a bad name or counts and
    :class:`~raykv.errors.UnavailableError` when no node carries the ``raykv-host`` label.
    """
    from .client import Client

    check_store_name(name)
    ensure_ray(address)
    data_dir = data_dir or default_data_dir()
    if isinstance(data_dir, str):
        data_dir = os.path.abspath(os.path.expanduser(data_dir))  # replicas resolve it on their own nodes
    start_store(name, shards, replicas, data_dir, options)
    return Client(name, timeout_s=timeout_s, limits=options.limits if options else None)


def connect(name: str = "default", address: str | None = None, *, timeout_s: float = 10.0):
    """A :class:`~raykv.client.Client` of the running store ``name``.

    With no Ray cluster to join, starts an embedded Ray and a local store (3 shards x 3
    replicas under :func:`default_data_dir`), reopening its data if present. Raises
    :class:`~raykv.errors.StoreNotFoundError` if a cluster is joined but runs no such store.
    """
    from .client import Client

    check_store_name(name)
    embedded = ensure_ray(address)
    if not store_running(name):
        if not embedded:
            raise StoreNotFoundError(f"no store named {name!r} runs on this Ray cluster (create it with raykv.start)")
        start_store(name, 3, 3, default_data_dir())
    return Client(name, timeout_s=timeout_s)


def stop(name: str = "default") -> None:
    """Shut the store down cleanly: pending writes finish or fail definitely, LMDB is closed.
    The data stays; :func:`start` reopens it."""
    check_store_name(name)
    ensure_ray(None, embedded_ok=False)
    stop_store(name)


def store_running(name: str) -> bool:
    try:
        ray.get_actor(router_name(name), namespace=NAMESPACE)
        return True
    except ValueError:
        return False


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
