"""The one place that knows how a replica lays out its files on its host.

Under a host's data root, replica ``R`` of shard ``S`` of store ``N`` owns::

    {root}/{N}/{S}/{R}/            the LMDB environment (raykv.storage.replica_store)
    {root}/{N}/{S}/{R}.snapshots/  snapshot files being streamed in or out
    {root}/{N}/{S}/{R}.backups/    backup exports being streamed out
    {root}/{N}/{S}/{R}.created     creation record: this replica existed (raykv.replica.startup)
    {root}/{N}/{S}/{R}.lock        held (flock) by the one process running the replica
    {root}/{N}/identity.json       the store's identity (raykv.placement.identity)

and under the raykv home of each host (``$RAYKV_HOME``, default ``~/.raykv``)::

    {home}/stores/{N}@{host}.json  pointer: the data root that holds store N on this host

The creation record sits *beside* the replica's directory so that a wiped directory
is noticed: a replica whose record exists but whose directory does not comes back
amnesiac, never as an empty voter. The lock keeps two incarnations of a replica (an
old worker that outlived a partition or its raylet, and the restarted actor) from
writing one LMDB environment: the second opener fails with
:class:`~raykv.errors.ReplicaLockedError`, and its shell exits (crash-only: Ray
restarts it, and it gets the lock once the old process is gone).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path

from ..errors import ReplicaLockedError
from .replica_store import ReplicaId, write_atomically


def replica_dir(root: str | os.PathLike, ident: ReplicaId) -> Path:
    return ident.path(root)


def _beside(root: str | os.PathLike, ident: ReplicaId, suffix: str) -> Path:
    """``{replica directory}{suffix}``: a file or directory next to the replica's own."""
    path = replica_dir(root, ident)
    return path.with_name(path.name + suffix)


def snapshots_dir(root: str | os.PathLike, ident: ReplicaId) -> Path:
    return _beside(root, ident, ".snapshots")


def backups_dir(root: str | os.PathLike, ident: ReplicaId) -> Path:
    return _beside(root, ident, ".backups")


def _creation_record(root: str | os.PathLike, ident: ReplicaId) -> Path:
    return _beside(root, ident, ".created")


def _lock_file(root: str | os.PathLike, ident: ReplicaId) -> Path:
    return _beside(root, ident, ".lock")


def has_data(root: str | os.PathLike, ident: ReplicaId) -> bool:
    """Whether the replica's directory exists (its store opens, or names its damage)."""
    return replica_dir(root, ident).exists()


def was_created(root: str | os.PathLike, ident: ReplicaId) -> bool:
    return _creation_record(root, ident).exists()


def record_creation(root: str | os.PathLike, ident: ReplicaId, wall_ms: int) -> None:
    """Write the creation record (durably, idempotent) before the replica's node first runs."""
    record = _creation_record(root, ident)
    if not record.exists():
        write_atomically(record, f"store={ident.store} shard={ident.shard} replica={ident.replica} "
                                 f"created_ms={wall_ms}\n".encode())


# -- the store's identity and each host's pointer to it -------------------------------------
IDENTITY_FILE = "identity.json"


def identity_file(root: str | os.PathLike, store: str) -> Path:
    return Path(root) / store / IDENTITY_FILE


def pointer_file(home: str | os.PathLike, store: str, host: str) -> Path:
    """One pointer per host label, so hosts simulated on one machine keep their own."""
    return Path(os.path.expanduser(home)) / "stores" / f"{store}@{host}.json"


def pointer_stores(home: str | os.PathLike, host: str) -> list[str]:
    """The names of the stores ``host`` has a pointer for (under ``home``)."""
    directory, suffix = Path(os.path.expanduser(home)) / "stores", f"@{host}.json"
    if not directory.is_dir():
        return []
    return sorted(p.name[: -len(suffix)] for p in directory.iterdir() if p.name.endswith(suffix))


def read_if_exists(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def write_identity(root: str | os.PathLike, store: str, raw: bytes) -> None:
    write_atomically(identity_file(root, store), raw)


def write_pointer(home: str | os.PathLike, store: str, host: str, raw: bytes) -> None:
    write_atomically(pointer_file(home, store, host), raw)


def holds_store(root: str | os.PathLike, store: str) -> bool:
    """Whether ``root`` holds anything of ``store`` (its identity or a replica directory)."""
    return identity_file(root, store).exists() or bool(list_replicas(root, store))


class ReplicaLock:
    """An exclusive ``flock`` on the replica's lock file, held until :meth:`release` (or the
    process exits: the kernel drops it, so a crash never leaves a stale lock)."""

    def __init__(self, root: str | os.PathLike, ident: ReplicaId, wait_s: float = 10.0) -> None:
        self.path = _lock_file(root, ident)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "?"
                    os.close(self._fd)
                    raise ReplicaLockedError(f"another process (pid {holder}) runs this replica; not opening its "
                                             f"store for {wait_s:g}s", str(self.path)) from None
                time.sleep(0.05)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def remove_replica(root: str | os.PathLike, ident: ReplicaId) -> bool:
    """Delete everything replica ``ident`` keeps under ``root`` (it left its group for good);
    True if anything existed."""
    paths = (replica_dir(root, ident), snapshots_dir(root, ident), backups_dir(root, ident),
             _creation_record(root, ident), _lock_file(root, ident))
    existed = False
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            existed = True
        elif path.exists():
            path.unlink(missing_ok=True)
            existed = True
    return existed


def remove_shard(root: str | os.PathLike, store: str, shard: int) -> bool:
    """Delete every file of shard ``shard`` of ``store`` under ``root`` (a retired shard)."""
    path = Path(root) / store / str(shard)
    if not path.is_dir():
        return False
    shutil.rmtree(path)
    return True


def list_replicas(root: str | os.PathLike, store: str) -> dict[int, list[int]]:
    """Shard id -> replica ids with a data directory under ``root`` for ``store``."""
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
