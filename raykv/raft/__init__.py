"""The pure Raft core: consensus as a deterministic state machine (stdlib only).

Entry points: :class:`Node` (one replica), :class:`Config`, the message union in
:mod:`raykv.raft.messages`, the Ready contract in :mod:`raykv.raft.ready`, the
log-reader interface and :class:`MemoryStorage` in :mod:`raykv.raft.storage`.
"""

from .config import Config
from .messages import Message, describe
from .node import Node
from .ready import Ready
from .storage import LogReader, MemoryStorage, bootstrap_snapshot
from .types import (
    NONE,
    ConfChange,
    ConfChangeKind,
    ConfChangeSingle,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

__all__ = [
    "NONE", "Config", "ConfChange", "ConfChangeKind", "ConfChangeSingle", "ConfState", "Entry",
    "EntryKind", "HardState", "LogReader", "MemoryStorage", "Message", "Node", "ReadState", "Ready",
    "Role", "Snapshot", "SnapshotMeta", "SoftState", "bootstrap_snapshot", "describe",
]
