"""Simulated Raft groups placed on hosts: replicas, delivery, Ready turns, membership.

A :class:`SimGroup` is one Raft group whose replicas live on hosts; a host
crash takes down every replica on it. Node ids are per group and never reused.
The :class:`SimCluster` owns the groups, the network and the clock, runs each
replica's Ready loop, feeds every event to the group's
:class:`~raykv.testing.invariants.GroupChecker`, and hashes a trace of what
happened so the same seed provably replays the same run.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from ..errors import RaftError
from ..raft import Config, MemoryStorage, bootstrap_snapshot
from ..raft.messages import InstallSnapshot
from ..raft.quorum import VoteResult, joint_vote
from ..raft.types import ConfChange, ConfChangeKind, ConfChangeSingle, ConfState, HardState, Role
from .host import SimReplica
from .invariants import GroupChecker
from .network import Network


@dataclass
class Stats:
    commits: int = 0
    elections: int = 0
    messages: int = 0
    proposals: int = 0
    reads: int = 0
    snapshots: int = 0
    conf_changes: int = 0
    transfers: int = 0
    crashes: int = 0


@dataclass
class SimGroup:
    gid: int
    replicas: dict[int, SimReplica]
    host_of: dict[int, int]
    checker: GroupChecker
    next_node_id: int
    conf: ConfState = field(default_factory=ConfState)
    """The newest configuration applied by any replica, and its index."""
    conf_index: int = 0
    adding: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Node id -> (index, term) of the proposal adding it, until it is applied or lost."""

    def live(self) -> list[SimReplica]:
        return [self.replicas[i] for i in sorted(self.replicas) if self.replicas[i].alive]

    def leader(self) -> SimReplica | None:
        """The live leader of the highest term, if any."""
        leaders = [r for r in self.live() if r.node.role is Role.LEADER]
        return max(leaders, key=lambda r: r.node.term, default=None)


class SimCluster:
    def __init__(
        self, rng: random.Random, network: Network, hosts: list[int], node_config: dict, data_dir: str | None = None
    ) -> None:
        """With ``data_dir``, every replica keeps its log in a real LMDB ReplicaStore there
        (reopened from disk on each restart); without, in a MemoryStorage."""
        self.data_dir = data_dir
        self.rng = rng
        self.network = network
        self.hosts = hosts
        self.node_config = node_config
        self.down_hosts: set[int] = set()
        self.paused_since: dict[int, int] = {}
        """Paused hosts (a frozen process: no ticks, no messages) and the tick they froze at."""
        self.groups: list[SimGroup] = []
        self.step = 0
        self.tick = 0
        self.stats = Stats()
        self.trace = hashlib.blake2b(digest_size=16)
        self.crash_after_persist_rate = 0.0
        self.leader_crash_after_persist_rate = 0.0
        """A leader that persisted new entries or a new commit index dies before sending
        anything (the recipe of the paper's Figure 8)."""

    # -- building --------------------------------------------------------------------
    def add_group(self, replicas: int) -> SimGroup:
        gid = len(self.groups)
        start = gid % len(self.hosts)
        placed = [self.hosts[(start + i) % len(self.hosts)] for i in range(replicas)]
        voters = tuple(range(1, replicas + 1))
        group = SimGroup(gid, {}, {}, GroupChecker(gid), replicas + 1, ConfState(voters=voters), 1)
        for node_id, host in zip(voters, placed):
            self._place(group, node_id, host, voters)
        self.groups.append(group)
        return group

    def _place(self, group: SimGroup, node_id: int, host: int, founders: tuple[int, ...] = ()) -> SimReplica:
        """Create replica ``node_id`` on ``host``: a founding member if ``founders``, else empty."""
        config = Config(id=node_id, **self.node_config)
        storage, reopen = self._new_storage(group.gid, node_id, founders)
        replica = SimReplica(config, storage, random.Random(self.rng.getrandbits(64)), reopen)
        group.replicas[node_id] = replica
        group.host_of[node_id] = host
        if host in self.down_hosts:
            replica.crash()
        return replica

    def _new_storage(self, gid: int, node_id: int, founders: tuple[int, ...]):
        if self.data_dir is None:
            return (MemoryStorage.bootstrap(founders) if founders else MemoryStorage()), None
        from ..storage.replica_store import ReplicaId, ReplicaStore

        ident = ReplicaId("sim", gid, node_id)
        store = ReplicaStore(self.data_dir, ident)
        if founders:
            snapshot = bootstrap_snapshot(founders)
            store.persist(HardState(term=snapshot.meta.term, commit=snapshot.meta.index), snapshot=snapshot)
        return store, lambda: ReplicaStore(self.data_dir, ident, create=False)

    def close(self) -> None:
        """Close every replica's store (LMDB environments hold file handles)."""
        for group in self.groups:
            for replica in group.replicas.values():
                replica.close()

    def _record(self, *fields) -> None:
        self.trace.update(repr(fields).encode())

    # -- time --------------------------------------------------------------------------
    def run_step(self, steps_per_tick: int) -> None:
        """One step: maybe tick everyone, deliver due messages, run every Ready turn."""
        self.step += 1
        if self.step % steps_per_tick == 0:
            self.tick += 1
            for group in self.groups:
                for replica in group.live():
                    if group.host_of[replica.id] not in self.paused_since:
                        replica.node.tick()
        self._deliver()
        self.process_readies()

    def _deliver(self) -> None:
        for (gid, m), up in self.network.due(self.step):
            group = self.groups[gid]
            target = group.replicas.get(m.to)
            if up and target is not None and target.alive and group.host_of[m.to] not in self.paused_since:
                self.stats.messages += 1
                self._record("d", gid, type(m).__name__, m.frm, m.to, m.term)
                target.node.step(m)
                if isinstance(m, InstallSnapshot):
                    self._report_snapshot(group, m, ok=True)
            elif isinstance(m, InstallSnapshot):
                self._report_snapshot(group, m, ok=False)

    def _report_snapshot(self, group: SimGroup, m: InstallSnapshot, ok: bool) -> None:
        """A real host's transport knows when a snapshot stream completed or failed, and says so."""
        sender = group.replicas.get(m.frm)
        if sender is not None and sender.alive:
            sender.node.report_snapshot(m.to, ok=ok)

    def process_readies(self) -> None:
        for group in self.groups:
            for replica in group.live():
                while replica.alive and replica.node.has_ready():
                    self._ready_turn(group, replica)

    def _ready_turn(self, group: SimGroup, replica: SimReplica) -> None:
        rate = self.crash_after_persist_rate
        node = replica.node
        if node.role is Role.LEADER and (node.log.unstable or node.log.committed > replica.storage.hard_state().commit):
            rate = max(rate, self.leader_crash_after_persist_rate)
        crash = self.rng.random() < rate
        out = replica.handle_ready(crash_after_persist=crash)
        checker = group.checker
        checker.on_persist(replica.id, out.hard_state, out.entries, replica.storage)
        if out.snapshot is not None:
            self.stats.snapshots += 1
            checker.on_apply(replica.id, out.snapshot.meta.index, replica.machine.digest)
        if crash:
            self.stats.crashes += 1
            self._record("crash-mid", group.gid, replica.id)
            return
        for entry, digest in out.applied:
            checker.on_apply(replica.id, entry.index, digest)
        for rs in out.read_states:
            checker.on_read_state(replica.id, rs)
        for ctx in out.dropped_reads:
            checker.read_floors.pop(ctx, None)
        before = checker.max_committed
        checker.on_node_state(replica.id, replica.node)
        self.stats.commits += checker.max_committed - before
        if out.role_changed:
            self._record("role", group.gid, replica.id, replica.node.role.value, replica.node.term)
        src = group.host_of[replica.id]
        for m in out.messages:
            dst = group.host_of.get(m.to, 0)
            if dst in self.down_hosts and replica.alive:
                replica.node.report_unreachable(m.to)  # a real transport's call fails at once
            if not self.network.send(self.step, src, dst, (group.gid, m)) and isinstance(m, InstallSnapshot):
                self._report_snapshot(group, m, ok=False)
        for index, conf in out.conf_changes:
            self._on_conf_applied(group, index, conf)

    # -- crashes -------------------------------------------------------------------------
    def crash_host(self, host: int) -> None:
        self.down_hosts.add(host)
        self._record("crash-host", host)
        for group in self.groups:
            for node_id, h in group.host_of.items():
                if h == host and group.replicas[node_id].alive:
                    group.replicas[node_id].crash()
                    self.stats.crashes += 1

    def restart_host(self, host: int) -> None:
        self.down_hosts.discard(host)
        self._record("restart-host", host)
        for group in self.groups:
            for node_id, h in group.host_of.items():
                if h == host:
                    self.restart_replica(group, node_id)

    def pause_host(self, host: int) -> None:
        self.paused_since[host] = self.tick
        self._record("pause-host", host)

    def resume_host(self, host: int) -> None:
        """A frozen host wakes up; its ticker notices the elapsed time and catches up at once."""
        missed = self.tick - self.paused_since.pop(host)
        self._record("resume-host", host, missed)
        for group in self.groups:
            for node_id in sorted(group.host_of):
                replica = group.replicas[node_id]
                if group.host_of[node_id] == host and replica.alive:
                    for _ in range(missed):
                        replica.node.tick()

    def is_paused(self, group: SimGroup, replica: SimReplica) -> bool:
        return group.host_of[replica.id] in self.paused_since

    def restart_replica(self, group: SimGroup, node_id: int) -> None:
        replica = group.replicas[node_id]
        if not replica.alive and group.host_of[node_id] not in self.down_hosts:
            replica.rng = random.Random(self.rng.getrandbits(64))
            replica.restart()
            group.checker.on_restart(node_id)

    # -- membership ----------------------------------------------------------------------
    def _on_conf_applied(self, group: SimGroup, index: int, conf) -> None:
        """Applied means committed: remember the newest configuration applied anywhere.

        Configurations form one sequence by log index (state machine safety), so
        only one applied at a higher index than any before is news.
        """
        self.stats.conf_changes += 1
        if index <= group.conf_index:
            return
        group.conf_index, group.conf = index, conf
        for node_id in list(group.adding):
            if node_id in conf.members():
                del group.adding[node_id]

    def retire_removed(self, group: SimGroup) -> None:
        """Stop replicas the newest configuration removed, once it no longer needs them.

        A removed replica keeps running until a quorum of the new voters has
        applied its removal: before that, they may still need its vote (a
        joint configuration) or its log to learn that the removal committed.
        """
        members = group.conf.members()
        stale = [i for i in sorted(group.replicas) if i not in members and not self._may_join(group, i)]
        if stale and self._quorum_applied(group, group.conf_index):
            for node_id in stale:
                self._retire(group, node_id)

    def _may_join(self, group: SimGroup, node_id: int) -> bool:
        """Can the proposal that adds ``node_id`` still commit?"""
        proposal = group.adding.get(node_id)
        if proposal is None:
            return False
        index, term = proposal
        committed_term = group.checker.committed.get(index)
        lost = (committed_term is not None and committed_term != term) or group.conf_index >= index
        if lost:
            del group.adding[node_id]
        return not lost

    def _quorum_applied(self, group: SimGroup, index: int) -> bool:
        applied = {i: True for i, r in group.replicas.items() if r.machine.applied >= index}
        return joint_vote(group.conf.voters, group.conf.voters_outgoing, applied) is VoteResult.WON

    def _retire(self, group: SimGroup, node_id: int) -> None:
        self._record("retire", group.gid, node_id)
        group.replicas[node_id].close()
        del group.replicas[node_id]
        del group.host_of[node_id]

    def add_member(self, group: SimGroup, leader: SimReplica, as_voter: bool) -> None:
        used = set(group.host_of.values())
        free = [h for h in self.hosts if h not in used]
        if not free:
            return
        node_id = group.next_node_id
        kind = ConfChangeKind.ADD_VOTER if as_voter else ConfChangeKind.ADD_LEARNER
        index = self.propose_conf(group, leader, ConfChange((ConfChangeSingle(kind, node_id),)))
        if index:
            group.next_node_id += 1
            group.adding[node_id] = (index, leader.node.term)
            self._place(group, node_id, self.rng.choice(free))

    def propose_conf(self, group: SimGroup, leader: SimReplica, cc: ConfChange) -> int:
        """Propose ``cc`` at ``leader``; returns its log index, or 0 if refused."""
        try:
            index = leader.node.propose_conf_change(cc)
        except RaftError:
            return 0
        self._record("conf", group.gid, cc.describe())
        return index

