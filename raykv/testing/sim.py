"""Seeded deterministic simulation of Raft groups under faults, with invariant checks.

    python -m raykv.testing.sim --seeds A:B [--groups K] [--replicas 3|5] [--ticks N] [--jobs J]
                                [--storage memory|lmdb]

Each seed draws its own fault profile, then runs two phases:

1. **Faults** (``--ticks`` ticks): message drop, duplication, delay and
   reordering; symmetric, asymmetric (one-way), split and partial (one link
   cut, both ends still reaching the rest) partitions; host
   crashes (every replica on the host loses its volatile state), crashes aimed
   at current leaders (a Jepsen-style nemesis), with restarts
   from durable state; crashes right after a Ready was persisted but before its
   messages went out (aimed especially at leaders that just appended entries:
   the recipe of the paper's Figure 8); paused hosts (no ticks, no messages) that resume with
   catch-up ticks like a real ticker reading the monotonic clock; log
   compaction (forcing InstallSnapshot); random membership changes (learners,
   promotion, removal, demotion, joint replacement, leader removal);
   leadership transfers; proposals and ReadIndex / lease reads at any node
   that believes it leads, stale leaders included.
2. **Heal**: faults stop, every host comes back, links deliver in order without loss.
   Liveness: each group must elect a leader within ``LEADER_BOUND_TICKS``, then
   commit a marker proposal applied by every member and answer a ReadIndex,
   never going ``STALL_BOUND_TICKS`` without some member storing or applying a
   new entry
   (a slow configuration, e.g. one entry per append, may take long to catch a
   new learner up, but a stuck one is caught), within ``LIVENESS_BOUND_TICKS``.

Safety invariants are checked after every Ready turn (see
:mod:`raykv.testing.invariants`); the core's own assertions count as violations
too. The same seed always gives the same trace hash.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

from ..errors import RaftError
from .cluster import SimCluster, SimGroup, Stats
from .invariants import InvariantViolation
from .network import LinkFaults, Network
from .scenario import Scenario, change_membership, draw_scenario, partition

STEPS_PER_TICK = 4
LEADER_BOUND_TICKS = 150
"""After healing, every group must have a leader within this many ticks."""
STALL_BOUND_TICKS = 200
"""...and no group may go this long without any member storing or applying a new entry before it is done."""
LIVENESS_BOUND_TICKS = 3000
"""...and each group must be done (marker applied everywhere, a read answered) within this many."""


@dataclass
class SeedResult:
    seed: int
    violation: str | None
    trace_hash: str
    stats: Stats
    ticks: int


class Simulation:
    def __init__(self, seed: int, groups: int = 1, replicas: int = 3, data_dir: str | None = None) -> None:
        self.rng = random.Random(seed)
        self.scenario: Scenario = draw_scenario(self.rng)
        self.replicas = replicas
        hosts = list(range(1, replicas + 3))
        net = Network(random.Random(self.rng.getrandbits(64)), self.scenario.link_faults)
        self.cluster = SimCluster(self.rng, net, hosts, self.scenario.node_config, data_dir)
        self.cluster.crash_after_persist_rate = self.scenario.crash_after_persist_rate
        self.cluster.leader_crash_after_persist_rate = self.scenario.leader_crash_after_persist_rate
        for _ in range(groups):
            self.cluster.add_group(replicas)
        self.heal_partition_at: int | None = None
        self.host_restart_at: dict[int, int] = {}
        self.paused_until: dict[int, int] = {}
        self.replica_restart_at: dict[tuple[int, int], int] = {}
        self.next_client_seq = 0

    # -- running ---------------------------------------------------------------------
    def run_tick(self) -> None:
        c = self.cluster
        for _ in range(STEPS_PER_TICK):
            c.run_step(STEPS_PER_TICK)

    def run_faults(self, ticks: int) -> None:
        for _ in range(ticks):
            self._inject_faults()
            self._client_ops()
            self.run_tick()

    def _inject_faults(self) -> None:
        s, rng, c = self.scenario, self.rng, self.cluster
        self._heal_or_partition()
        self._restart_due()
        up = [h for h in c.hosts if h not in c.down_hosts and h not in self.paused_until]
        leader_hosts = sorted({g.host_of[r.id] for g in c.groups for r in self._leaders(g)})
        if up and rng.random() < s.crash_rate:
            self._crash(rng.choice(up))
        elif leader_hosts and rng.random() < s.leader_crash_rate:
            self._crash(rng.choice(leader_hosts))
        elif up and rng.random() < s.pause_rate:
            host = rng.choice(up)
            self.paused_until[host] = c.tick + rng.randint(2, 30)
            c.pause_host(host)
        for group in c.groups:
            self._group_faults(group)

    def _crash(self, host: int) -> None:
        self.cluster.crash_host(host)
        self.host_restart_at[host] = self.cluster.tick + self.rng.randint(1, 40)

    def _heal_or_partition(self) -> None:
        c = self.cluster
        if self.heal_partition_at is not None:
            if c.tick >= self.heal_partition_at:
                c.network.heal()
                self.heal_partition_at = None
        elif self.rng.random() < self.scenario.partition_rate:
            partition(self.rng, c.network, c.hosts)
            self.heal_partition_at = c.tick + self.rng.randint(5, 60)

    def _restart_due(self) -> None:
        c = self.cluster
        for host, at in sorted(self.host_restart_at.items()):
            if c.tick >= at:
                del self.host_restart_at[host]
                c.restart_host(host)
        for host, at in sorted(self.paused_until.items()):
            if c.tick >= at:
                del self.paused_until[host]
                c.resume_host(host)
        for group in c.groups:
            for node_id in sorted(group.replicas):
                key = (group.gid, node_id)
                if group.replicas[node_id].alive or group.host_of[node_id] in c.down_hosts:
                    continue
                at = self.replica_restart_at.setdefault(key, c.tick + self.rng.randint(1, 40))
                if c.tick >= at:
                    del self.replica_restart_at[key]
                    c.restart_replica(group, node_id)

    def _group_faults(self, group: SimGroup) -> None:
        s, rng, c = self.scenario, self.rng, self.cluster
        live = group.live()
        if live and rng.random() < s.compact_rate:
            if rng.choice(live).compact():
                c._record("compact", group.gid)
        leaders = self._leaders(group)
        if leaders and rng.random() < s.conf_rate:
            change_membership(rng, c, group, rng.choice(leaders), self.replicas)
        if leaders and rng.random() < s.transfer_rate:
            self._transfer(group, rng.choice(leaders))
        c.retire_removed(group)

    def _transfer(self, group: SimGroup, leader) -> None:
        voters = [v for v in leader.node.tracker.voter_ids() if v != leader.id]
        if voters:
            try:
                leader.node.transfer_leader(self.rng.choice(voters))
                self.cluster.stats.transfers += 1
            except RaftError:
                pass

    def _leaders(self, group: SimGroup) -> list:
        """Every live node that believes it leads, stale ones included."""
        return [r for r in group.live() if r.node.role.value == "leader" and not self.cluster.is_paused(group, r)]

    def _client_ops(self) -> None:
        s, rng = self.scenario, self.rng
        for group in self.cluster.groups:
            leaders = self._leaders(group)
            if not leaders:
                continue
            if rng.random() < s.propose_rate:
                self._propose(group, rng.choice(leaders), rng.randint(1, 3))
            for _ in range(int(s.read_rate) + (rng.random() < s.read_rate % 1)):
                self._read(group, rng.choice(leaders), lease=rng.random() < 0.5)

    def _propose(self, group: SimGroup, leader, count: int) -> int | None:
        datas = []
        for _ in range(count):
            self.next_client_seq += 1
            datas.append(f"g{group.gid}c{self.next_client_seq}".encode())
        try:
            index = leader.node.propose_many(datas)
        except RaftError:
            return None
        self.cluster.stats.proposals += count
        return index

    def _read(self, group: SimGroup, leader, lease: bool) -> bytes | None:
        self.next_client_seq += 1
        ctx = f"r{self.next_client_seq}".encode()
        group.checker.on_read_requested(ctx)
        try:
            leader.node.read_index(ctx, lease=lease)
        except RaftError:
            group.checker.read_floors.pop(ctx, None)
            return None
        self.cluster.stats.reads += 1
        return ctx

    # -- healing and liveness ------------------------------------------------------------
    def heal(self) -> None:
        c = self.cluster
        c.network.heal()
        c.network.faults = LinkFaults(0.0, 0.0, 1)  # healthy links: no loss, in order
        c.crash_after_persist_rate = c.leader_crash_after_persist_rate = 0.0
        for host in sorted(self.paused_until):
            c.resume_host(host)
        for host in sorted(c.down_hosts):
            c.restart_host(host)
        for group in c.groups:
            for node_id in sorted(group.replicas):
                c.restart_replica(group, node_id)
        self.paused_until.clear()
        self.host_restart_at.clear()

    def check_liveness(self) -> None:
        start = self.cluster.tick
        pending = {g.gid: _LivenessProbe() for g in self.cluster.groups}
        while pending:
            elapsed = self.cluster.tick - start
            for group in self.cluster.groups:
                probe = pending.get(group.gid)
                if probe is not None and self._advance_probe(group, probe):
                    del pending[group.gid]
            if not pending:
                return
            for gid, probe in sorted(pending.items()):
                self._check_probe(self.cluster.groups[gid], probe, elapsed)
            self.run_tick()

    def _check_probe(self, group: SimGroup, probe: "_LivenessProbe", elapsed: int) -> None:
        """Fail if the group has no leader, stopped making progress, or ran out of time."""
        if probe.leader_tick is None and elapsed > LEADER_BOUND_TICKS:
            raise InvariantViolation("liveness", f"group {group.gid}: no leader {elapsed} ticks after healing")
        progress = sum(r.machine.applied + r.storage.last_index() for r in group.replicas.values())
        if progress > probe.progress:
            probe.progress, probe.progress_tick = progress, self.cluster.tick
        stalled = self.cluster.tick - (probe.progress_tick or self.cluster.tick)
        if stalled > STALL_BOUND_TICKS or elapsed > LIVENESS_BOUND_TICKS:
            why = f"stalled for {stalled} ticks" if stalled > STALL_BOUND_TICKS else f"not done after {elapsed} ticks"
            raise InvariantViolation("liveness", f"group {group.gid}: {why}: {probe.describe()}")

    def _advance_probe(self, group: SimGroup, probe: "_LivenessProbe") -> bool:
        leader = group.leader()
        if leader is None:
            return False
        if probe.leader_tick is None:
            probe.leader_tick = self.cluster.tick
        state = probe.marker_state(group, leader)
        if state == "lost":
            index = self._propose(group, leader, 1)
            probe.marker = (index, leader.node.term) if index is not None else None
        if state != "committed":
            return False
        index = probe.marker[0]
        members = [group.replicas[i] for i in group.conf.members() if i in group.replicas]
        if not members or any(r.machine.applied < index for r in members):
            return False
        if probe.read_ctx is None or probe.read_ctx in group.checker.read_floors and probe.read_leader != leader.id:
            probe.read_ctx, probe.read_leader = self._read(group, leader, lease=False), leader.id
            return False
        return probe.read_ctx not in group.checker.read_floors


@dataclass
class _LivenessProbe:
    leader_tick: int | None = None
    marker: tuple[int, int] | None = None
    read_ctx: bytes | None = None
    read_leader: int = 0
    progress: int = -1
    """Sum of the members' applied and last log indices when last seen growing, and the tick it grew."""
    progress_tick: int | None = None

    def marker_state(self, group: SimGroup, leader) -> str:
        """"committed"; "in flight" under the leader that took it; or "lost" (to be proposed again)."""
        if self.marker is None:
            return "lost"
        index, term = self.marker
        committed_term = group.checker.committed.get(index)
        if committed_term == term:
            return "committed"
        if committed_term is None and leader.node.term == term:
            return "in flight"
        return "lost"

    def describe(self) -> str:
        return f"marker={self.marker} read={self.read_ctx!r} leader_since={self.leader_tick}"


def run_seed(seed: int, groups: int = 1, replicas: int = 3, ticks: int = 500, storage: str = "memory") -> SeedResult:
    """Run one seed; never raises for a safety or liveness failure (it is reported).

    ``storage="lmdb"`` keeps every replica's log in a real LMDB store in a
    temporary folder (removed afterwards) instead of memory.
    """
    with tempfile.TemporaryDirectory(prefix="raykv-sim-") if storage == "lmdb" else nullcontext() as data_dir:
        sim = Simulation(seed, groups, replicas, data_dir)
        try:
            violation = _run(sim, ticks)
        finally:
            sim.cluster.close()
    c = sim.cluster
    c.stats.elections = sum(g.checker.elections for g in c.groups)
    return SeedResult(seed, violation, c.trace.hexdigest(), c.stats, c.tick)


def _run(sim: Simulation, ticks: int) -> str | None:
    try:
        sim.run_faults(ticks)
        sim.heal()
        sim.check_liveness()
    except InvariantViolation as v:
        return str(v)
    except AssertionError as e:
        return f"core assertion: {e}"
    return None


def _parse_seeds(text: str) -> range:
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must be A:B with integers A < B, got {text!r}") from None
    if b <= a:
        raise argparse.ArgumentTypeError(f"--seeds {text}: the range is empty")
    return range(a, b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raykv.testing.sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=_parse_seeds, required=True, help="half-open range A:B")
    parser.add_argument("--groups", type=int, default=1)
    parser.add_argument("--replicas", type=int, choices=(3, 5), default=3)
    parser.add_argument("--ticks", type=int, default=500, help="ticks of the fault phase per seed")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--storage", choices=("memory", "lmdb"), default="memory", help="where replicas keep their Raft log"
    )
    args = parser.parse_args(argv)
    if args.groups < 1 or args.ticks < 1 or args.jobs < 1:
        parser.error("--groups, --ticks and --jobs must be >= 1")
    started = time.perf_counter()
    totals, violations, ticks = Stats(), 0, 0
    trace = hashlib.blake2b(digest_size=16)
    for result in _results(args):
        ticks += result.ticks
        trace.update(result.trace_hash.encode())
        for k, v in asdict(result.stats).items():
            setattr(totals, k, getattr(totals, k) + v)
        if result.violation:
            violations += 1
            print(f"seed {result.seed}: VIOLATION {result.violation}")
            print(
                f"  replay: python -m raykv.testing.sim --seeds {result.seed}:{result.seed + 1} "
                f"--groups {args.groups} --replicas {args.replicas} --ticks {args.ticks} --storage {args.storage}"
            )
    elapsed = time.perf_counter() - started
    n = len(args.seeds)
    print(
        f"seeds={n} violations={violations} commits={totals.commits} elections={totals.elections} "
        f"messages={totals.messages} crashes={totals.crashes} snapshots={totals.snapshots} "
        f"conf_changes={totals.conf_changes} transfers={totals.transfers} reads={totals.reads} "
        f"ticks={ticks} elapsed={elapsed:.1f}s seeds/s={n / elapsed:.2f} ticks/s={ticks / elapsed:.0f} "
        f"trace={trace.hexdigest()[:16]}"
    )
    sys.stdout.flush()
    return 1 if violations else 0


def _results(args):
    work = [(seed, args.groups, args.replicas, args.ticks, args.storage) for seed in args.seeds]
    if args.jobs == 1:
        return (run_seed(*w) for w in work)
    import multiprocessing

    pool = multiprocessing.get_context("fork").Pool(args.jobs)
    return _drain(pool, pool.imap(_run_packed, work, chunksize=2))


def _drain(pool, results):
    with pool:
        yield from results


def _run_packed(work: tuple[int, int, int, int, str]) -> SeedResult:
    return run_seed(*work)


if __name__ == "__main__":
    sys.exit(main())
