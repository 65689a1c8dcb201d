"""Backups of a whole store (Parquet files plus a manifest) and restores into a NEW store.

::

    import raykv.backup
    manifest = raykv.backup.backup("default", "/backups/monday")      # -> Manifest
    kv = raykv.backup.restore("/backups/monday", "monday-copy")        # -> a Client of the new store
    raykv.backup.backup("default", "s3://bucket/backups/monday")       # any filesystem pyarrow opens

A backup directory -- a local path, or a URL of any filesystem :mod:`pyarrow.fs` opens
(``file://``, ``s3://``, ``gs://``, ``hdfs://``; :mod:`raykv.storage.location`) -- holds one
``shard-<id>.parquet`` per shard (columns ``key``
and ``value``: the encoded key and the stored value bytes, see
:mod:`raykv.storage.backup`; nothing is unpickled, so a round trip is
lossless) and ``manifest.json`` (:class:`Manifest`,
:mod:`raykv.storage.backup_manifest`), written **last** (locally: temporary file,
fsync, rename; on an object store: one object): a directory without a manifest is an
incomplete backup and is refused by :func:`restore` and :func:`verify`.

The replica side (``export_backup``, ``backup_chunk``, ``backup_done`` on the
replica actor) is :mod:`raykv.storage.backup`.

Guarantees of :func:`backup`:

* **A consistent cut per shard.** Each shard's file holds that shard's whole
  user data at ONE applied index (one LMDB read transaction on its leader),
  taken after a ReadIndex confirmation like a linearizable read: it contains
  every write acknowledged before that shard's export was requested, and no
  partial batch. Shards are exported one after another, each at its own index:
  there is **no cut across shards** (a multi-shard ``put_batch`` may appear on
  one shard and not yet on another).
* Files are streamed from the leader in bounded chunks, fsynced (locally), and checked
  against the leader's SHA-256 and row count; a shard whose leader fails or
  changes mid-way is exported again (a fresh cut), until ``timeout_s`` per shard.
* Client sessions, Raft logs and replica placement are not backed up.

Guarantees of :func:`restore`:

* The manifest and every file (size, SHA-256, schema, row count, keys inside
  the shard's range, sizes within the new store's limits) are verified
  **before anything is created**; any damage raises
  :class:`~raykv.errors.BackupError` and no store is created.
* The target must be new: a running store of that name, or any trace of it on
  any host (its data, or a host's pointer to it), is refused
  (:class:`~raykv.errors.StoreExistsError`, an ``InvalidRequestError``).
* The new store (as many shards as the backup, unless ``shards`` is given) is
  created with :func:`raykv.start` and loaded with atomic batches of encoded
  pairs, several in flight. It is a new store: fresh Raft groups, no client
  sessions. If loading fails half-way, :class:`RestoreIncompleteError` says so:
  the store exists with part of the data (stop it and remove its data to retry).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from datetime import datetime, timezone
from fnmatch import fnmatch
from typing import Any

from .errors import (
    BackupError,
    InvalidRequestError,
    NotLeaderError,
    RestoreIncompleteError,
    ShardMapChangedError,
    StoreExistsError,
    UnavailableError,
)
from .kv.commands import Put
from .kv.limits import KVLimits
from .storage.backup_manifest import (
    FORMAT,
    MANIFEST,
    Manifest,
    ShardBackup,
    iter_batches,
    shard_file_name,
    verify,
)
from .storage.location import BackupLocation

__all__ = ["FORMAT", "MANIFEST", "Manifest", "RestoreIncompleteError", "ShardBackup", "backup", "check_target",
           "restore", "verify"]

CHUNK_BYTES = 4 << 20
"""Bytes per ``backup_chunk`` call (replicas cap it at 8 MiB)."""
CHUNKS_IN_FLIGHT = 4
LOAD_BATCH_OPS = 20_000
LOAD_BATCH_BYTES = 8 << 20
LOAD_BATCHES_IN_FLIGHT = 8


# -- backup ----------------------------------------------------------------------------------
def backup(store: Any, path: str | os.PathLike, *, force: bool = False, timeout_s: float = 120.0,
           address: str | None = None, progress: Callable[[ShardBackup], None] | None = None) -> Manifest:
    """Back up the store ``store`` (a name or a :class:`~raykv.client.Client`) into the directory ``path``.

    ``path`` is created; an existing non-empty directory is refused unless ``force``
    (which first removes an earlier backup's manifest and files there), a file is refused
    (:class:`~raykv.errors.InvalidRequestError`). ``timeout_s`` bounds each shard's export and
    transfer (retried on another leader meanwhile); ``progress`` is called once per shard done.
    """
    check_target(path, force)
    client, owned = _client_of(store, address)
    try:
        target = prepare_target(path, force)
        smap = _quiet_map(client)
        done = []
        for spec in smap.shards:
            done.append(_backup_shard(client.store, spec, target, timeout_s))
            if progress is not None:
                progress(done[-1])
        if client.refresh().epoch != smap.epoch:
            raise ShardMapChangedError(f"the shard map of store {client.store!r} changed during the backup "
                                       f"(epoch {smap.epoch} -> {client.shard_map.epoch}): back up again")
        manifest = Manifest(FORMAT, client.store, smap.epoch, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            _version(), tuple(done))
        target.write_whole(MANIFEST, manifest.to_json().encode())
        return manifest
    finally:
        if owned:
            client.close()


def check_target(path: str | os.PathLike, force: bool) -> BackupLocation:
    """Where the backup goes (a local directory or a URL: :mod:`raykv.storage.location`); refuses
    a URL that cannot be opened, a file, or a non-empty directory without ``force``
    (:class:`~raykv.errors.InvalidRequestError`). Changes nothing."""
    target = BackupLocation.parse(path)
    kind = target.kind()
    if kind == "file":
        raise InvalidRequestError(f"backup path {target.shown!r} is a file, not a directory")
    if not force and kind == "directory" and target.names():
        raise InvalidRequestError(f"backup path {target.shown!r} is not empty (force=True / --force overwrites "
                                  f"a backup there)")
    return target


def prepare_target(path: str | os.PathLike, force: bool) -> BackupLocation:
    """:func:`check_target`, then the directory created (with ``force``, an earlier backup's
    manifest removed first, then its files)."""
    target = check_target(path, force)
    target.delete(MANIFEST)  # first: a half-overwritten backup must never look complete
    for name in target.names():
        if fnmatch(name, "shard-*.parquet") or name.endswith((".part", ".tmp")):
            target.delete(name)
    target.make()
    return target


def _client_of(store: Any, address: str | None):
    from .client import Client

    if isinstance(store, Client):
        return store, False
    from .api import ensure_ray
    from .protocol import check_store_name

    check_store_name(store)
    ensure_ray(address, embedded_ok=False)
    return Client(store), True


def _quiet_map(client) -> Any:
    """The current shard map; UnavailableError while the store reshards (a backup's cuts per
    shard are only a consistent whole on one map: a moving range could be in two files, or none)."""
    from .client.scaling import operation_text

    smap = client.refresh()
    operation = operation_text(client.store)
    if operation:
        raise UnavailableError(f"store {client.store!r} is resharding ({operation}): back up once it is done")
    return smap


def _backup_shard(store: str, spec, target: BackupLocation, timeout_s: float) -> ShardBackup:
    """Export ``spec``'s shard at its leader and stream the file into ``target``; retried (a fresh
    cut each time) on a leader change or transfer failure until ``timeout_s``."""
    import ray

    deadline = time.monotonic() + timeout_s
    dest = shard_file_name(spec.shard)
    base = f"{int(time.time() * 1000)}-{os.urandom(4).hex()}-s{spec.shard}"
    attempts: list[tuple[Any, str]] = []
    last: BaseException | None = None
    try:
        for attempt in itertools.count(1):
            if time.monotonic() >= deadline:
                break
            backup_id = f"{base}-{attempt}"
            handle, cut = _export_at_leader(store, spec, backup_id, deadline, attempts)
            try:
                _download(handle, backup_id, cut, target, dest, deadline)
                return ShardBackup(spec.shard, spec.start, spec.end, cut["index"], cut["term"], cut["rows"],
                                   cut["bytes"], cut["sha256"], dest)
            except (ray.exceptions.RayError, _Transient) as e:
                last = e
                time.sleep(0.1)
    finally:
        for handle, backup_id in attempts:
            handle.backup_done.remote(backup_id)  # best effort; replicas also drop stale exports
    raise UnavailableError(f"shard {spec.shard} of store {store!r} could not be backed up within {timeout_s:g}s"
                           + (f" (last failure: {last})" if last else ""))


class _Transient(Exception):
    """A transfer failed in a way another attempt may not (export gone, short read, bad checksum)."""


def _export_at_leader(store: str, spec, backup_id: str, deadline: float, attempts: list) -> tuple[Any, dict]:
    """Ask replicas for the export until the leader answers (following NotLeader hints)."""
    import ray

    from .runtime.shard import replica_handle

    rids = [rid for rid, _ in spec.replicas]
    target, last = rids[0], None
    while time.monotonic() < deadline:
        answer = None
        try:
            handle = replica_handle(store, spec.shard, target)
            attempts.append((handle, backup_id))
            remaining = max(1.0, deadline - time.monotonic())
            answer = ray.get(handle.export_backup.remote(backup_id, remaining), timeout=remaining + 5.0)
        except (ValueError, ray.exceptions.RayError) as e:  # no such actor, dead, restarting, timed out
            last = e
        if isinstance(answer, dict):
            return handle, answer
        if isinstance(answer, (InvalidRequestError, BackupError)):
            raise answer
        last = answer if answer is not None else last
        hint = answer.leader_id if isinstance(answer, NotLeaderError) else None
        target = hint if hint in rids and hint != target else rids[(rids.index(target) + 1) % len(rids)]
        time.sleep(0.05 if hint else 0.2)
    raise UnavailableError(f"no leader of shard {spec.shard} exported a backup in time (last answer: {last})")


def _download(handle, backup_id: str, cut: dict, target: BackupLocation, dest: str, deadline: float) -> None:
    """Stream an export into file ``dest`` at ``target`` (a ``.part`` file, fsynced on a local
    filesystem, checked, renamed)."""
    part = dest + ".part"
    try:
        _stream_into(handle, backup_id, cut, target, part, deadline)
    except BaseException:
        target.delete(part)
        raise
    target.move(part, dest)


def _stream_into(handle, backup_id: str, cut: dict, target: BackupLocation, part: str, deadline: float) -> None:
    import ray

    digest = hashlib.sha256()
    offsets = deque(range(0, cut["bytes"], CHUNK_BYTES))
    pending: deque = deque()
    with target.writing(part) as f:
        while offsets or pending:
            while offsets and len(pending) < CHUNKS_IN_FLIGHT:
                offset = offsets.popleft()
                pending.append((offset, handle.backup_chunk.remote(backup_id, offset, CHUNK_BYTES)))
            offset, ref = pending.popleft()
            data = ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
            if not isinstance(data, bytes) or len(data) != min(CHUNK_BYTES, cut["bytes"] - offset):
                problem = data if isinstance(data, Exception) else "short read"
                raise _Transient(f"backup chunk at {offset} of {backup_id}: {problem}")
            f.write(data)
            digest.update(data)
    if digest.hexdigest() != cut["sha256"] or target.parquet(part).metadata.num_rows != cut["rows"]:
        raise _Transient(f"backup file of {backup_id} does not match the leader's checksum or row count")


def _version() -> str:
    from . import __version__

    return __version__


# -- restore ----------------------------------------------------------------------------------
def restore(path: str | os.PathLike, name: str, *, shards: int | None = None, replicas: int = 3,
            data_dir: str | Mapping[str, str] | None = None, options=None, timeout_s: float = 30.0,
            address: str | None = None, progress: Callable[[ShardBackup], None] | None = None):
    """Build the NEW store ``name`` from the backup at ``path``; returns a connected Client of it.

    Verifies everything first (:func:`verify`; :class:`BackupError`, nothing created), refuses
    an existing store ``name`` (running, or with data under ``data_dir``), then creates it
    (``shards``: default the backup's count; ``replicas``, ``data_dir``, ``options`` as for
    :func:`raykv.start`) and loads every file. ``progress`` is called once per file loaded.
    """
    from . import api
    from .protocol import check_store_name
    from .runtime.store import check_counts

    check_store_name(name)
    limits = options.limits if options is not None else KVLimits()
    where = BackupLocation.parse(path)
    manifest = verify(where, limits)
    check_counts(len(manifest.shards) if shards is None else shards, replicas)
    api.ensure_ray(address)
    if api.store_running(name):
        raise StoreExistsError(f"a store named {name!r} is running: restore builds a new store, choose another name")
    try:
        client = api.start(name, len(manifest.shards) if shards is None else shards, replicas,
                           _data_roots(data_dir) if data_dir else None, create=True, options=options,
                           timeout_s=timeout_s)
    except StoreExistsError:
        raise StoreExistsError(f"a store named {name!r} has data on this cluster's hosts: restore builds a new store, "
                               f"choose another name (or remove that data)") from None
    try:
        _load_all(client, where, manifest, limits, progress)
    except BaseException:
        client.close()
        raise
    return client


def _data_roots(data_dir: str | Mapping[str, str]) -> str | dict[str, str]:
    if isinstance(data_dir, str):
        return os.path.abspath(os.path.expanduser(data_dir))  # replicas resolve it on their own nodes
    return {str(host): str(root) for host, root in data_dir.items()}


def _load_all(client, where: BackupLocation, manifest: Manifest, limits: KVLimits, progress) -> None:
    """Put every row of every file, as encoded pairs, in atomic batches: the files in parallel,
    at most :data:`LOAD_BATCHES_IN_FLIGHT` batches in flight in all."""
    batch_limits = replace(limits, max_batch_ops=min(limits.max_batch_ops, LOAD_BATCH_OPS),
                           max_batch_bytes=min(limits.max_batch_bytes, LOAD_BATCH_BYTES))
    loader = _Loader(client, batch_limits)
    with ThreadPoolExecutor(max_workers=LOAD_BATCHES_IN_FLIGHT, thread_name_prefix="raykv-restore") as writes, \
            ThreadPoolExecutor(max_workers=len(manifest.shards), thread_name_prefix="raykv-restore-file") as files:
        started = {files.submit(loader.load_file, where, shard.file, writes): shard for shard in manifest.shards}
        errors = []
        for future in as_completed(started):
            try:
                future.result()
            except Exception as e:  # noqa: BLE001 -- reported below; the other files stop too
                loader.stop.set()
                errors.append(e)
                continue
            if progress is not None:
                progress(started[future])
    if errors:
        e = errors[0]
        raise RestoreIncompleteError(
            f"restoring into store {client.store!r} stopped after {loader.loaded} of {manifest.rows} rows: "
            f"{type(e).__name__}: {e}. The store exists with part of the data: stop it and remove its "
            f"data directories before restoring again") from e


class _Loader:
    """Loads backup files into a store client; counts rows written; ``stop`` ends every file's loop."""

    def __init__(self, client, batch_limits: KVLimits) -> None:
        self.client = client
        self.batch_limits = batch_limits
        self.stop = threading.Event()
        self.loaded = 0
        self._lock = threading.Lock()

    def load_file(self, where: BackupLocation, name: str, writes: ThreadPoolExecutor) -> None:
        from .client.batch import chunk

        smap, in_flight = self.client.shard_map, deque()
        try:
            for batch in iter_batches(where, name):
                keys, values = batch.column(0).to_pylist(), batch.column(1).to_pylist()
                for sid, ops in _by_shard(smap, keys, values).items():
                    for part in chunk(ops, self.batch_limits):
                        while len(in_flight) >= LOAD_BATCHES_IN_FLIGHT // 2 or (in_flight and self.stop.is_set()):
                            self._finish(in_flight.popleft())
                        if self.stop.is_set():
                            raise RestoreIncompleteError("stopped: another file failed to load")
                        in_flight.append(writes.submit(_write, self.client.shard_client(sid), part))
            while in_flight:
                self._finish(in_flight.popleft())
        finally:
            for future in in_flight:
                future.cancel()

    def _finish(self, future) -> None:
        ops = future.result()
        with self._lock:
            self.loaded += ops


def _by_shard(smap, keys: list[bytes], values: list[bytes]) -> dict[int, list[Put]]:
    out: dict[int, list[Put]] = {}
    for key, value in zip(keys, values):
        out.setdefault(smap.shard_for(key).shard, []).append(Put(key, value))
    return out


def _write(shard_client, part: tuple[Put, ...]) -> int:
    shard_client.write_batch(part)
    return len(part)
