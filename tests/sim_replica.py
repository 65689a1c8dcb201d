"""A minimal Node driver for the rule-level Raft tests (``tests/test_raft_rules.py``), not a replica.

The product's replica is :class:`raykv.replica.engine.ReplicaEngine`, simulated with the
real kv machine by :mod:`raykv.testing.sim`. The Raft *core* is tested rule by rule at
Node level, where a test must hold every message in its hand; this driver runs the
Ready contract around a bare Node for that.

A :class:`SimReplica` owns *durable* state (a :class:`MemoryStorage` and a
:class:`DigestMachine`) that survives :meth:`SimReplica.crash`, and a volatile
:class:`~raykv.raft.Node` that does not. :meth:`SimReplica.handle_ready` runs
one turn of the Ready contract (persist -> send -> apply -> advance) and
returns what happened, so callers (the simulator, rule tests) can deliver the
messages and check invariants.

The state machine is a hash chain over applied entries: two replicas agree on
the state at index ``i`` iff their digests at ``i`` are equal, which is what
state machine safety asks, at the cost of one hash per entry.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from raykv.raft import Config, MemoryStorage, Node
from raykv.raft.messages import Message
from raykv.raft.types import ConfChange, ConfState, Entry, EntryKind, HardState, ReadState, Snapshot


@dataclass
class DigestMachine:
    """Durable state machine: applied index, running digest, applied configuration."""

    applied: int = 0
    digest: bytes = b""
    conf: ConfState = field(default_factory=ConfState)
    payloads: int = 0

    def apply(self, entry: Entry) -> None:
        assert entry.index == self.applied + 1, f"apply {entry.index} after {self.applied}"
        h = hashlib.blake2b(self.digest, digest_size=16)
        h.update(f"{entry.index}/{entry.term}/{int(entry.kind)}/".encode())
        h.update(entry.data)
        self.digest = h.digest()
        self.applied = entry.index
        if entry.kind is EntryKind.NORMAL and entry.data:
            self.payloads += 1

    def snapshot_data(self) -> bytes:
        """The machine as bytes (what a snapshot carries): applied index, payload count, digest."""
        return struct.pack(">QQ", self.applied, self.payloads) + self.digest

    def restore(self, snapshot: Snapshot) -> None:
        if snapshot.data:
            self.applied, self.payloads = struct.unpack_from(">QQ", snapshot.data)
            self.digest = bytes(snapshot.data[16:])
        else:  # a founding snapshot: the empty machine at the bootstrap index
            self.applied, self.payloads, self.digest = snapshot.meta.index, 0, b""
        assert self.applied == snapshot.meta.index, "snapshot payload does not match its metadata"
        self.conf = snapshot.meta.conf


@dataclass
class ReadyOutcome:
    """What one turn of the Ready loop did (for delivery and invariant checks)."""

    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    applied: list[tuple[Entry, bytes]] = field(default_factory=list)
    conf_changes: list[tuple[int, ConfState]] = field(default_factory=list)
    read_states: tuple[ReadState, ...] = ()
    dropped_reads: tuple[bytes, ...] = ()
    role_changed: bool = False


class SimReplica:
    """One replica: durable storage + machine, and a node rebuilt from them on restart."""

    def __init__(
        self, config: Config, storage: MemoryStorage, rng: random.Random, reopen: Callable[[], object] | None = None
    ) -> None:
        """``storage`` is a MemoryStorage or a durable store with the same API (e.g. the LMDB
        ReplicaStore); with ``reopen``, every restart closes it and opens it again from disk."""
        self.config = config
        self.storage = storage
        self.reopen = reopen
        self.machine = DigestMachine()
        snap = storage.snapshot()
        if snap.meta.index:
            self.machine.restore(snap)
        self.rng = rng
        self.node: Node | None = None
        self._started = False
        self.restart()

    @property
    def id(self) -> int:
        return self.config.id

    @property
    def alive(self) -> bool:
        return self.node is not None

    def restart(self) -> None:
        """Rebuild the node from durable state alone (what a restarted actor does)."""
        if self.reopen is not None and self._started:
            self.storage.close()
            self.storage = self.reopen()
        self._started = True
        self.machine.conf = self.storage.initial_state()[1]
        self.node = Node(self.config, self.storage, self.rng, applied=self.machine.applied)

    def close(self) -> None:
        """Stop for good (retired): crash and release the store's files."""
        self.crash()
        close = getattr(self.storage, "close", None)
        if close is not None:
            close()

    def crash(self) -> None:
        """Lose everything volatile: the node, its unsent messages, its unpersisted state."""
        self.node = None

    def handle_ready(self, crash_after_persist: bool = False) -> ReadyOutcome:
        """Run one Ready turn. With ``crash_after_persist`` the node dies before sending."""
        node = self.node
        rd = node.ready()
        out = ReadyOutcome(rd.hard_state, rd.snapshot, rd.entries, (), [], [], rd.read_states, rd.dropped_reads)
        out.role_changed = rd.soft_state is not None
        self._persist(rd.hard_state, rd.snapshot, rd.entries)
        if crash_after_persist:
            self.crash()
            return out
        out.messages = rd.messages
        for entry in rd.committed_entries:
            self._apply(entry, out)
        node.advance(rd)
        return out

    def _persist(self, hard: HardState | None, snapshot: Snapshot | None, entries: tuple[Entry, ...]) -> None:
        """One atomic, synced write: hard state, snapshot (and its payload), entries."""
        self.storage.persist(hard_state=hard, entries=entries, snapshot=snapshot)
        if snapshot is not None:
            self.machine.restore(snapshot)

    def _apply(self, entry: Entry, out: ReadyOutcome) -> None:
        if entry.index <= self.machine.applied:
            return
        self.machine.apply(entry)
        if entry.kind is EntryKind.CONF_CHANGE:
            conf = self.node.apply_conf_change(ConfChange.decode(entry.data))
            self.machine.conf = conf
            self.storage.set_conf_state(conf)
            out.conf_changes.append((entry.index, conf))
        out.applied.append((entry, self.machine.digest))

    def compact(self) -> int:
        """Snapshot the machine at its applied index and drop the log up to it; returns the index."""
        index = self.machine.applied
        if index <= self.storage.snapshot().meta.index or index > self.storage.last_index():
            return 0
        self.storage.create_snapshot(index, self.machine.conf, self.machine.snapshot_data())
        self.storage.compact(index)
        return index
