"""Raft's safety properties (paper Figure 3) checked incrementally, one group at a time.

The checker is fed every durable and observable event of every replica of one
group and raises :class:`InvariantViolation` on the first broken property:

* **election safety** -- at most one leader per term;
* **log matching** -- an (index, term) pair identifies one entry and one
  predecessor term, so any two logs holding it agree on it and (by induction)
  on everything before it;
* **committed uniqueness** -- no two replicas ever consider different entries
  committed at the same index;
* **leader completeness** -- a new leader's log holds every entry committed so far;
* **state machine safety** -- every replica that applied index ``i`` has the same
  state-machine digest at ``i``;
* **durable monotonicity** -- per replica, across crashes: term never decreases,
  a vote never changes within a term, commit and applied never decrease;
* **read safety** -- a ReadIndex answer covers every entry committed (anywhere)
  before the read was requested.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..raft import Node
from ..raft.storage import MemoryStorage
from ..raft.types import NONE, Entry, HardState, ReadState


class InvariantViolation(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass
class _Durable:
    term: int = 0
    vote: int = NONE
    commit: int = 0
    applied: int = 0


class GroupChecker:
    def __init__(self, group: int) -> None:
        self.group = group
        self.leaders: dict[int, int] = {}
        self.entries: dict[tuple[int, int], tuple[int, bytes, int]] = {}
        self.committed: dict[int, int] = {}
        self.max_committed = 0
        self.digests: dict[int, bytes] = {}
        self.durable: dict[int, _Durable] = {}
        self.commit_seen: dict[int, int] = {}
        self.read_floors: dict[bytes, int] = {}
        self.elections = 0

    def _fail(self, kind: str, detail: str) -> None:
        raise InvariantViolation(kind, f"group {self.group}: {detail}")

    # -- persistence -------------------------------------------------------------
    def on_persist(self, node_id: int, hard: HardState | None, entries: tuple[Entry, ...], storage: MemoryStorage) -> None:
        if hard is not None:
            self._check_hard_state(node_id, hard)
        for e in entries:
            if e.index <= storage.first_index() - 1:
                continue
            key = (e.index, e.term)
            value = (int(e.kind), e.data, storage.term(e.index - 1))
            known = self.entries.setdefault(key, value)
            if known != value:
                self._fail("log matching", f"node {node_id} holds a different entry {e.index}@{e.term}")

    def _check_hard_state(self, node_id: int, hard: HardState) -> None:
        d = self.durable.setdefault(node_id, _Durable())
        if hard.term < d.term:
            self._fail("durable term", f"node {node_id} term {d.term} -> {hard.term}")
        if hard.term == d.term and d.vote != NONE and hard.vote != d.vote:
            self._fail("vote", f"node {node_id} voted {d.vote} then {hard.vote} in term {hard.term}")
        if hard.commit < d.commit:
            self._fail("durable commit", f"node {node_id} commit {d.commit} -> {hard.commit}")
        d.term, d.vote, d.commit = hard.term, hard.vote, hard.commit

    # -- commit, leadership --------------------------------------------------------
    def on_node_state(self, node_id: int, node: Node) -> None:
        """Call after every Ready turn of a live node."""
        self._check_new_commits(node_id, node)
        if node.role.value == "leader" and self.leaders.get(node.term) != node_id:
            self._check_new_leader(node_id, node)

    def _check_new_commits(self, node_id: int, node: Node) -> None:
        seen = self.commit_seen.get(node_id, 0)
        commit = node.log.committed
        for index in range(max(seen + 1, node.log.first_index()), commit + 1):
            term = node.log.term(index)
            known = self.committed.setdefault(index, term)
            if known != term:
                self._fail("committed uniqueness", f"node {node_id} committed {index}@{term}, others {index}@{known}")
        self.commit_seen[node_id] = max(seen, commit)
        self.max_committed = max(self.max_committed, commit)

    def _check_new_leader(self, node_id: int, node: Node) -> None:
        other = self.leaders.setdefault(node.term, node_id)
        if other != node_id:
            self._fail("election safety", f"nodes {other} and {node_id} both lead term {node.term}")
        self.elections += 1
        for index in range(node.log.first_index(), self.max_committed + 1):
            want = self.committed.get(index)
            if want is not None and node.log.term_or_zero(index) != want:
                self._fail(
                    "leader completeness",
                    f"leader {node_id} of term {node.term} lacks committed entry {index}@{want}",
                )

    def on_restart(self, node_id: int) -> None:
        """A restarted node's commit restarts from its durable hard state."""
        self.commit_seen[node_id] = 0

    def on_wiped(self, node_id: int) -> None:
        """The node's disk was lost on purpose (a fault): its durable state may start over.
        Safety must then hold *despite* the loss -- what the start rule is for."""
        self.durable.pop(node_id, None)
        self.commit_seen[node_id] = 0

    # -- applying ------------------------------------------------------------------
    def on_apply(self, node_id: int, index: int, digest: bytes) -> None:
        d = self.durable.setdefault(node_id, _Durable())
        if index <= d.applied:
            self._fail("applied monotonicity", f"node {node_id} applied {index} after {d.applied}")
        d.applied = index
        known = self.digests.setdefault(index, digest)
        if known != digest:
            self._fail("state machine safety", f"node {node_id} diverged at applied index {index}")

    # -- reads ---------------------------------------------------------------------
    def on_read_requested(self, ctx: bytes) -> None:
        self.read_floors[ctx] = self.max_committed

    def on_read_state(self, node_id: int, rs: ReadState) -> None:
        floor = self.read_floors.pop(rs.ctx, None)
        if floor is None:
            self._fail("read safety", f"node {node_id} answered unknown read {rs.ctx!r}")
        if rs.index < floor:
            self._fail(
                "read safety",
                f"node {node_id} answered read {rs.ctx!r} at {rs.index} < {floor} committed before it",
            )
