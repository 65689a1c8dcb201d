"""Value types of the Raft core: log entries, persistent state, configurations.

All types are frozen (hashable, safe to share between the core, the host and
tests). Node ids are positive ints; ``NONE`` (0) means "no node".
Indices and terms start at 1; index 0 / term 0 is the empty log's sentinel.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

NONE = 0
"""The node id meaning "nobody" (no vote, no known leader)."""

ENTRY_OVERHEAD_BYTES = 16
"""Fixed per-entry cost counted by size limits, on top of ``len(entry.data)``."""


class EntryKind(enum.IntEnum):
    """What an entry carries. The core only interprets ``CONF_CHANGE``."""

    NORMAL = 0
    CONF_CHANGE = 1


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. An empty NORMAL entry is a leader's no-op."""

    index: int
    term: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Bytes counted against message and proposal limits."""
        return len(self.data) + ENTRY_OVERHEAD_BYTES

    def describe(self) -> str:
        """One canonical line, used by logs and tests."""
        what = "noop" if not self.data and self.kind is EntryKind.NORMAL else self.kind.name.lower()
        return f"{self.index}@{self.term}:{what}[{len(self.data)}B]"


def entries_size(entries: "tuple[Entry, ...] | list[Entry]") -> int:
    """Sum of :meth:`Entry.size` over ``entries``."""
    return sum(e.size() for e in entries)


@dataclass(frozen=True, slots=True)
class HardState:
    """State that must be durable before any message depending on it is sent.

    Invariants (across restarts of one node): ``term`` never decreases; within
    one term ``vote`` never changes once set; ``commit`` never decreases.
    """

    term: int = 0
    vote: int = NONE
    commit: int = 0

    def describe(self) -> str:
        return f"term={self.term} vote={self.vote} commit={self.commit}"


@dataclass(frozen=True, slots=True)
class ConfState:
    """A membership configuration (possibly joint), as carried in snapshots.

    ``voters`` is the incoming majority; ``voters_outgoing`` is non-empty only in
    a joint configuration (then both majorities must agree). ``learners`` receive
    the log but never vote. ``learners_next`` are outgoing voters that become
    learners when the joint configuration is left. Every tuple is sorted.
    """

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    voters_outgoing: tuple[int, ...] = ()
    learners_next: tuple[int, ...] = ()
    auto_leave: bool = False

    @property
    def joint(self) -> bool:
        return bool(self.voters_outgoing)

    def members(self) -> tuple[int, ...]:
        """Every node with a progress entry in this configuration, sorted."""
        ids = set(self.voters) | set(self.learners) | set(self.voters_outgoing) | set(self.learners_next)
        return tuple(sorted(ids))

    def is_voter(self, node_id: int) -> bool:
        return node_id in self.voters or node_id in self.voters_outgoing

    def describe(self) -> str:
        text = f"voters={list(self.voters)}"
        if self.voters_outgoing:
            text += f"&{list(self.voters_outgoing)}"
        if self.learners:
            text += f" learners={list(self.learners)}"
        if self.learners_next:
            text += f" learners_next={list(self.learners_next)}"
        return text


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """What the core knows of a snapshot: it covers the log up to ``index``."""

    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)

    def describe(self) -> str:
        return f"snap {self.index}@{self.term} {self.conf.describe()}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot's metadata plus the host's opaque payload.

    The core never inspects ``data``: it hands the payload from the leader's
    storage to the follower's Ready untouched. A host may put the bytes there
    (the simulator does) or a reference it resolves by streaming chunks.
    """

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: object = None


class ConfChangeKind(enum.IntEnum):
    ADD_VOTER = 0
    ADD_LEARNER = 1
    REMOVE_NODE = 2


@dataclass(frozen=True, slots=True)
class ConfChangeSingle:
    kind: ConfChangeKind
    node_id: int


_CC_VERSION = 1
_CC_VERSION_CONTEXT = 2
_CC_HEADER = struct.Struct(">BBH")
_CC_ITEM = struct.Struct(">BQ")


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A membership change proposal, carried in the log as a CONF_CHANGE entry.

    * one voter added, removed or demoted (plus any learner changes): applied as
      a simple one-step change;
    * more than one voter changed: applied through a joint configuration
      (Raft §4.3) that the leader leaves automatically once it is applied;
    * no changes at all: leave the current joint configuration.

    ``context``: opaque to the core, carried in the entry for the host (raykv's replica engine
    puts the placement driver's epoch there and refuses a change from a superseded driver).
    """

    changes: tuple[ConfChangeSingle, ...] = ()
    context: bytes = b""

    def encode(self) -> bytes:
        """Versioned binary form: ``>BBH`` (version, reserved, count) + items, then (version 2,
        with a context) the context's bytes."""
        version = _CC_VERSION_CONTEXT if self.context else _CC_VERSION
        head = _CC_HEADER.pack(version, 0, len(self.changes))
        return head + b"".join(_CC_ITEM.pack(c.kind, c.node_id) for c in self.changes) + self.context

    @classmethod
    def decode(cls, data: bytes) -> "ConfChange":
        """Inverse of :meth:`encode`; raises ``ValueError`` on a malformed entry."""
        if len(data) < _CC_HEADER.size:
            raise ValueError(f"conf change entry of {len(data)} bytes is shorter than its header")
        version, _, count = _CC_HEADER.unpack_from(data, 0)
        if version not in (_CC_VERSION, _CC_VERSION_CONTEXT):
            raise ValueError(f"unknown conf change version {version}")
        items_end = _CC_HEADER.size + count * _CC_ITEM.size
        if len(data) < items_end or (version == _CC_VERSION) != (len(data) == items_end):
            raise ValueError("conf change entry has the wrong length")
        items = []
        for i in range(count):
            kind, node_id = _CC_ITEM.unpack_from(data, _CC_HEADER.size + i * _CC_ITEM.size)
            items.append(ConfChangeSingle(ConfChangeKind(kind), node_id))
        return cls(tuple(items), bytes(data[items_end:]))

    @property
    def leave_joint(self) -> bool:
        return not self.changes

    def describe(self) -> str:
        if self.leave_joint:
            return "leave-joint"
        return ",".join(f"{c.kind.name.lower()}({c.node_id})" for c in self.changes)


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the host may want to observe (not persisted)."""

    leader: int
    role: Role


@dataclass(frozen=True, slots=True)
class ReadState:
    """A confirmed ReadIndex: serve the read once applied index >= ``index``."""

    index: int
    ctx: bytes
