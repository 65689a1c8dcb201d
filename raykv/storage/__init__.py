"""Durable replica state on LMDB (no Ray): the log, hard state, data and sessions of one
replica in one environment, and snapshots as Arrow IPC streams. See docs/storage.md."""

from .apply import ApplyTxn
from .replica_store import FORMAT_VERSION, ReplicaId, ReplicaStore
from .snapshot import export_snapshot, install_snapshot, iter_snapshot_rows, read_snapshot_meta

__all__ = [
    "FORMAT_VERSION", "ApplyTxn", "ReplicaId", "ReplicaStore", "export_snapshot", "install_snapshot",
    "iter_snapshot_rows", "read_snapshot_meta",
]
