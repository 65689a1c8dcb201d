"""The engine's two ports: the storage it persists through, and the shell it sends through.

Both are called only from the engine's one thread, synchronously. The engine
enforces the order of calls (persist before send, send before a separate apply);
an implementation only has to do what each call says before returning. The
simulator wraps both to inject crashes between the calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from ..kv.backend import KVBackend
from ..raft.messages import InstallSnapshot, Message
from ..raft.storage import LogReader
from ..raft.types import ConfState, Entry, HardState, Snapshot

SnapshotRows = Callable[[], Iterable[tuple[int, bytes, bytes]]]
"""Yields ``(table, key, value)`` rows replacing the state machine (table 0: user data, 1:
sessions keyed by 8-byte big-endian ids); may be called again if a transaction is retried."""


class ApplyTx(KVBackend, Protocol):
    """One apply transaction: the kv backend plus the records that commit with the data."""

    def set_applied(self, index: int) -> None: ...

    def set_conf(self, conf: ConfState) -> None: ...

    def set_hard_state(self, hs: HardState) -> None: ...


class StateView(Protocol):
    """A consistent read view of the applied state (a context manager)."""

    def get(self, key: bytes) -> bytes | None: ...

    def items_from(self, key: bytes) -> Iterator[tuple[bytes, bytes]]:
        """User-table rows with keys ``>= key``, ascending."""
        ...

    def __enter__(self) -> "StateView": ...

    def __exit__(self, *exc) -> None: ...


class ReplicaStorage(LogReader, Protocol):
    """What a replica keeps durably (implemented on LMDB by
    :class:`~raykv.storage.replica_store.ReplicaStore`, in memory by
    :class:`~raykv.replica.memstore.MemoryReplicaStore`).

    * :meth:`persist` makes one Ready durable in **one atomic, synced write** before it
      returns: snapshot (with its rows), hard state, entries (a conflicting suffix is
      replaced); with ``apply``, committed entries are applied in that same write
      (``apply(tx)`` must be deterministic: it may run again if the write is retried);
    * :meth:`apply` applies committed entries: data, sessions, applied index (and a
      configuration or commit-only hard state) in one atomic write;
    * both update what :meth:`hard_state`, :meth:`applied_index` and the log reader
      answer only once the write committed.
    """

    def hard_state(self) -> HardState: ...

    def applied_index(self) -> int: ...

    def persist(self, hard_state: HardState | None = None, entries: Iterable[Entry] = (),
                snapshot: Snapshot | None = None, snapshot_rows: SnapshotRows | None = None,
                apply: Callable[[ApplyTx], object] | None = None) -> object: ...

    def apply(self, body: Callable[[ApplyTx], object]) -> object: ...

    def create_snapshot(self, index: int, conf: ConfState, data: bytes | None) -> Snapshot: ...

    def compact(self, index: int) -> None: ...

    def view(self) -> StateView: ...

    def stat(self) -> dict: ...


class Shell(Protocol):
    """What the engine asks of the world around it. Every call returns at once; outcomes come
    back as inputs (:meth:`ReplicaEngine.unreachable`, ``snapshot_sent``, ``probe_failed``)."""

    def send(self, messages: list[Message]) -> None:
        """Send Raft (and quiescing) messages; losing any of them is safe."""
        ...

    def send_snapshot(self, message: InstallSnapshot) -> None:
        """Export the current applied state and stream it to ``message.to``; report the outcome
        with ``engine.snapshot_sent(peer, ok)``."""
        ...

    def probe(self, peer: int) -> None:
        """Ask ``peer``'s *engine loop* (not a side thread) whether it is alive; report a
        failure or a missed deadline with ``engine.probe_failed(peer, reason)``."""
        ...

    def snapshot_rows(self, data: bytes) -> SnapshotRows:
        """The rows of a received snapshot, named by its ``Snapshot.data``."""
        ...

    def drop_snapshot(self, data: bytes) -> None:
        """A received snapshot is installed or refused: its payload can go."""
        ...


class Observer(Protocol):
    """Optional: sees what the engine made durable and applied (the simulator's checkers)."""

    def persisted(self, hard_state: HardState | None, entries) -> None:
        """One write made ``hard_state`` (if not None) and ``entries`` durable."""
        ...

    def applied(self, entries: list[Entry]) -> None: ...

    def installed(self, index: int) -> None: ...

    def turned(self, node) -> None: ...
