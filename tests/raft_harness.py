"""A tiny deterministic network of :class:`sim_replica.SimReplica` for rule-level Raft tests.

No threads, no clocks: time is ``Net.tick``, delivery is ``Net.deliver_all`` (FIFO), faults are link
cuts, a message filter, and crashes that keep only what the replica persisted. Every message any
node hands to the network is appended to ``Net.sent`` so tests can count them.
"""

from __future__ import annotations

import random
from collections import defaultdict, deque
from collections.abc import Callable, Iterable

from raykv.raft import Config, Entry, MemoryStorage, Role
from raykv.raft.messages import InstallSnapshot, Message
from sim_replica import ReadyOutcome, SimReplica

MAX_STEPS = 100_000


class Net:
    """Replicas keyed by id, a FIFO of in-flight messages, and fault controls.

    ``cfg`` overrides :class:`Config` fields (defaults: ``election_ticks=10, heartbeat_ticks=1``).
    ``storages`` maps ids to prepared storage; the others are bootstrapped with all ``ids`` as voters.
    ``filter`` (set directly, or via :meth:`drop`) sees each message at delivery and returns it,
    a rewritten copy, or ``None`` to lose it. Lost InstallSnapshots are reported to the sender.
    """

    def __init__(self, ids: Iterable[int] = (1, 2, 3), seed: int = 0, storages=None, **cfg) -> None:
        ids = tuple(ids)
        self.seed, self.cfg = seed, {"election_ticks": 10, "heartbeat_ticks": 1, **cfg}
        self.reps: dict[int, SimReplica] = {}
        self.queue: deque[Message] = deque()
        self.sent: list[Message] = []
        self.cuts: set[tuple[int, int]] = set()
        self.filter: Callable[[Message], Message | None] | None = None
        self.reads: dict[int, list] = defaultdict(list)  # id -> ReadStates emitted
        self.dropped_reads: dict[int, list[bytes]] = defaultdict(list)
        self.confs: dict[int, list] = defaultdict(list)  # id -> (index, ConfState) applied
        for i in ids:
            self.add(i, (storages or {}).get(i) or MemoryStorage.bootstrap(ids))

    def add(self, i: int, storage: MemoryStorage, **cfg) -> SimReplica:
        """Start replica ``i`` on ``storage`` (e.g. an empty ``MemoryStorage()`` for a new member)."""
        config = Config(id=i, **{**self.cfg, **cfg})
        self.reps[i] = SimReplica(config, storage, random.Random(self.seed * 1000 + i))
        return self.reps[i]

    def node(self, i: int):
        return self.reps[i].node

    # -- time and delivery ------------------------------------------------------------
    def tick(self, n: int = 1, ids: Iterable[int] | None = None, deliver: bool = True) -> None:
        """``n`` rounds: tick every live node in ``ids`` (default all), then deliver unless told not to."""
        for _ in range(n):
            for i in sorted(ids if ids is not None else self.reps):
                if self.reps[i].alive:
                    self.reps[i].node.tick()
            if deliver:
                self.deliver_all()

    def ready(self, i: int) -> list[ReadyOutcome]:
        """Run node ``i``'s Ready loop (persist, enqueue messages, apply) without delivering."""
        rep, outs = self.reps[i], []
        while rep.alive and rep.node.has_ready():
            out = rep.handle_ready()
            self.reads[i].extend(out.read_states)
            self.dropped_reads[i].extend(out.dropped_reads)
            self.confs[i].extend(out.conf_changes)
            self.queue.extend(out.messages)
            self.sent.extend(out.messages)
            outs.append(out)
        return outs

    def deliver_all(self) -> None:
        """Run every Ready loop and deliver queued messages one at a time until nothing moves."""
        for _ in range(MAX_STEPS):
            for i in sorted(self.reps):
                self.ready(i)
            if not self.queue:
                return
            self._deliver(self.queue.popleft())
        raise AssertionError("network did not quiesce")

    def _deliver(self, m: Message) -> None:
        rep = self.reps.get(m.to)
        if (m.frm, m.to) in self.cuts or rep is None or not rep.alive:
            m2 = None
        else:
            m2 = self.filter(m) if self.filter else m
        if m2 is not None:
            rep.node.step(m2)
        sender = self.reps.get(m.frm)
        if isinstance(m, InstallSnapshot) and sender is not None and sender.alive:
            sender.node.report_snapshot(m.to, ok=m2 is not None)  # what a real transport reports

    # -- faults -------------------------------------------------------------------------
    def cut(self, a: int, b: int) -> None:
        self.cuts |= {(a, b), (b, a)}

    def cut_one_way(self, a: int, b: int) -> None:
        """Messages from ``a`` to ``b`` are lost; ``b`` to ``a`` still flow."""
        self.cuts.add((a, b))

    def isolate(self, i: int) -> None:
        for j in self.reps:
            if j != i:
                self.cut(i, j)

    def heal(self) -> None:
        """Restore every link and remove the message filter."""
        self.cuts.clear()
        self.filter = None

    def drop(self, pred: Callable[[Message], bool] | None) -> None:
        """Lose every message for which ``pred`` is true (``None`` clears the filter)."""
        self.filter = None if pred is None else (lambda m: None if pred(m) else m)

    def crash(self, i: int) -> None:
        self.reps[i].crash()

    def restart(self, i: int) -> None:
        self.reps[i].restart()

    # -- helpers ------------------------------------------------------------------------
    def leader(self) -> int | None:
        """The live leader of the highest term (stale leaders of lower terms may still exist)."""
        leaders = [(r.node.term, i) for i, r in self.reps.items() if r.alive and r.node.role is Role.LEADER]
        terms = [t for t, _ in leaders]
        assert len(terms) == len(set(terms)), f"two leaders in one term: {leaders}"
        return max(leaders)[1] if leaders else None

    def elect(self, i: int, tries: int = 3) -> None:
        """Make ``i`` leader: a real election at a new term, started the way TimeoutNow starts one
        (``transfer=True`` bypasses pre-vote and the voters' check-quorum lease, but every voter
        still applies the one-vote-per-term and up-to-date-log rules)."""
        for _ in range(tries):
            self.node(i).campaign(pre=False, transfer=True)
            self.deliver_all()
            if self.node(i).role is Role.LEADER:
                return
        raise AssertionError(f"node {i} could not be elected: {self.node(i).describe()}")

    def propose(self, i: int, data: bytes, deliver: bool = True) -> int:
        index = self.node(i).propose(data)
        if deliver:
            self.deliver_all()
        return index

    def log(self, i: int) -> list[Entry]:
        """Every entry node ``i``'s log holds after its snapshot (persisted or not)."""
        lg = self.node(i).log
        return lg.entries_from(lg.first_index(), 1 << 62)
