"""Seeded deterministic simulation of raykv replicas -- the real engine -- under faults.

    python -m raykv.testing.sim --seeds A:B [--groups K] [--replicas 3|5] [--seconds S] [--jobs J]
                                [--storage memory|lmdb]

Every replica is a real :class:`~raykv.replica.engine.ReplicaEngine` with the real kv
machine, on an in-memory store or a real synced LMDB store, driven by a model of the
Ray shell (:mod:`raykv.testing.simshell`) in a world of hosts and a network
(:mod:`raykv.testing.world`). Each seed draws a fault profile and runs two phases:

1. **Faults** (``--seconds`` of simulated time): message loss, duplication, delay and
   reordering; symmetric, asymmetric, split and partial partitions; host crashes
   (some coming back with an empty disk), crashes aimed at leaders, single replica
   crashes, crashes right after a persist or a send; paused hosts (SIGSTOP) and
   suspended ones (their monotonic clock stops); wedged loops (the process lives,
   the loop runs nothing); slow inputs and slow disks; a replica's directory lost;
   two incarnations of one replica at once; log compaction forcing snapshot
   transfers; membership changes (learners, promotion, replacement, removal,
   demotion), replacement of replicas that lost their data, leadership transfers --
   while clients run puts, linearizable and lease gets, deletes and compare-and-sets
   with exactly-once retries.
2. **Heal**: faults stop, hosts come back, links deliver without loss. Liveness:
   every group must elect a leader, replace members that lost their data, and then
   complete a write and a linearizable read applied by every member, within bounds.

Raft's safety invariants are checked after every turn of every replica (see
:mod:`raykv.testing.invariants`), state machines are compared by a digest of the
entries they applied, and every client history is checked for linearizability.
The same seed always gives the same trace hash.
"""

from __future__ import annotations

import argparse
import logging
import hashlib
import os
import random
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

from ..raft.types import ConfChangeKind, ConfChange, ConfChangeSingle
from ..replica.startup import StartMode
from .history import HistoryRecorder
from .invariants import InvariantViolation
from .linearizability import check
from .network import LinkFaults
from .scenario import Profile, draw_profile, membership_change, partition
from .simclient import SimClient
from .simshell import state_digest
from .world import US, ShellModel, World

STEP_US = 50_000


def keys(gid: int) -> list[bytes]:
    """The keys clients of group ``gid`` use (distinct per group: each group is its own key space)."""
    return [f"g{gid}k{i}".encode() for i in range(4)]

LEADER_BOUND_US = 10 * US
"""After healing, every group must have a leader within this long."""
LIVENESS_BOUND_US = 60 * US
"""...and be done (members that lost data replaced, a write and a read through, applied everywhere)."""
CHECK_TIMEOUT_S = 60.0


@dataclass
class SeedResult:
    seed: int
    violation: str | None
    trace_hash: str
    stats: dict = field(default_factory=dict)
    ops: int = 0
    sim_s: float = 0.0


class Simulation:
    """One seed: a world, its groups, clients and the chaos that drives its faults."""

    def __init__(self, seed: int, groups: int = 1, replicas: int = 3, storage: str = "memory",
                 data_dir: str | None = None, model: ShellModel | None = None, profile: Profile | None = None) -> None:
        rng = random.Random(seed)
        self.profile = profile or draw_profile(rng)
        self.rng = random.Random(rng.getrandbits(64))
        self.replicas = replicas
        self.world = World(seed, self.profile.options, replicas + 2, storage, data_dir, model,
                           link_faults=self.profile.link_faults)
        self.world.raft = dict(self.profile.raft)
        self.world.crash_after_persist_rate = self.profile.crash_after_persist
        self.world.crash_after_send_rate = self.profile.crash_after_send
        self.world.leader_crash_after_persist_rate = self.profile.leader_crash_after_persist
        self.hosts = sorted(h for h in self.world.hosts if h)
        for g in range(groups):
            self.world.add_group([self.hosts[(g + i) % len(self.hosts)] for i in range(replicas)])
        self.recorder = HistoryRecorder(clock=lambda: self.world.now_us * 1000)
        self.clients: list[SimClient] = []
        for group in self.world.groups.values():
            for _ in range(self.profile.clients):
                self.clients.append(SimClient(self.world, len(self.clients), group, keys(group.gid), self.recorder))
        self.undo: list = []
        self.healing = False

    # -- running -----------------------------------------------------------------------------------
    def run(self, fault_s: float) -> None:
        for client in self.clients:
            client.start()
        end = self.world.now_us + int(fault_s * US)
        while self.world.now_us < end:
            self.chaos_step()
            self.world.run_for(STEP_US)
        self.heal()
        self.check_liveness()
        self.finish_history()
        self.check_states()

    def chaos_step(self) -> None:
        p, rng, w = self.profile, self.rng, self.world
        self._draw(p.partition, self._partition)
        self._draw(p.crash_host, lambda: self._crash_host(rng.choice(self.hosts)))
        self._draw(p.crash_leader_host, self._crash_leader_host)
        self._draw(p.crash_replica, lambda: self._on_replica(lambda s: s.crash()))
        self._draw(p.lose_directory, self._lose_directory)
        self._draw(p.pause, lambda: self._freeze(w.pause_host))
        self._draw(p.suspend, lambda: self._freeze(w.suspend_host))
        self._draw(p.wedge, self._wedge)
        self._draw(p.slow, self._slow)
        self._draw(p.twin, self._twin)
        self._draw(p.disk_full, self._disk_full)
        for group in w.groups.values():
            self._draw(p.propose, lambda: self._propose_anywhere(group))
            self._draw(p.conf, lambda: self._change_membership(group))
            self._draw(p.transfer, lambda: self._transfer(group))
            self._repair(group)
            w.retire_removed(group)

    def _draw(self, rate: float, fault) -> None:
        if rate and self.rng.random() < rate:
            fault()

    def _later(self, low_us: int, high_us: int, undo) -> None:
        self.undo.append(undo)
        self.world.after(self.rng.randint(low_us, high_us), undo)

    # -- faults -------------------------------------------------------------------------------------
    def _partition(self) -> None:
        if self.world.network.cut:
            return
        kind = partition(self.rng, self.world.network, self.hosts)
        self.world.record("partition", kind)
        self._later(250_000, 3 * US, self.world.network.heal)

    def _crash_host(self, hid: int) -> None:
        w = self.world
        if w.hosts[hid].state == "down":
            return
        wipe = self.rng.random() < self.profile.wipe_on_restart and self._can_lose_host(hid)
        w.crash_host(hid)
        if wipe:
            for shell in w.shells_on(hid, alive=False):
                shell.group.checker.on_wiped(shell.id)
        self._later(50_000, 2 * US, lambda: w.restart_host(hid, wipe=wipe))

    def _crash_leader_host(self) -> None:
        leaders = [g.leader() for g in self.world.groups.values()]
        hosts = sorted({s.hid for s in leaders if s is not None})
        if hosts:
            self._crash_host(self.rng.choice(hosts))

    def _on_replica(self, act) -> None:
        shells = [s for g in self.world.groups.values() for s in g.live()]
        if shells:
            act(self.rng.choice(shells))

    def _lose_directory(self) -> None:
        """A replica's directory vanishes (a wiped directory, or with its creation record a
        replaced disk); its process dies, and Ray restarts it."""
        shells = [s for g in self.world.groups.values() for s in g.live() if self._can_lose(s.group, {s.id})]
        if not shells:
            return
        shell = self.rng.choice(shells)
        disk = self.world.hosts[shell.hid].disk
        self.world.record("lose-dir", shell.key)
        shell.crash()
        store = disk.stores.pop(shell.key, None)
        if store is not None and hasattr(store, "close") and self.world.storage == "memory":
            store.close()
        if self.rng.random() < 0.5:
            disk.created.discard(shell.key)
        shell.group.checker.on_wiped(shell.id)

    def _freeze(self, freeze) -> None:
        hid = self.rng.choice(self.hosts)
        if self.world.hosts[hid].state != "up":
            return
        freeze(hid)
        self._later(100_000, 2 * US, lambda: self.world.resume_host(hid))

    def _wedge(self) -> None:
        def wedge(shell) -> None:
            shell.wedged = True
            self.world.record("wedge", shell.key)

            def unwedge() -> None:
                shell.wedged = False
                shell.kick()

            self._later(200_000, 3 * US, unwedge)

        self._on_replica(wedge)

    def _slow(self) -> None:
        def slow(shell) -> None:
            until = self.world.now_us + self.rng.randint(200_000, 2 * US)
            if self.rng.random() < 0.5:
                shell.slow_inputs_until_us = until
            else:
                shell.slow_disk_until_us = until

        self._on_replica(slow)

    def _disk_full(self) -> None:
        """A host's disk fills up for a while: its replicas refuse writes and take in no entries."""
        host = self.world.hosts[self.rng.choice(self.hosts)]
        host.disk_full_until_us = self.world.now_us + self.rng.randint(200_000, 3 * US)
        self.world.record("disk_full", host.hid)
        self.world.count("disks_filled")

    def _twin(self) -> None:
        """A second incarnation starts while the first still runs (an old worker outlived its
        raylet); the older one dies a little later."""
        from .simshell import SimShell

        w = self.world
        shells = [s for g in w.groups.values() for s in g.live() if not g.extra.get(s.id)]
        if not shells:
            return
        old = self.rng.choice(shells)
        group = old.group
        w.record("twin", old.key)
        twin = SimShell(w, group, old.id, old.hid, old.founders, old.create, reconstructed=True)
        group.extra[old.id] = [twin]

        def old_dies() -> None:
            if group.replicas.get(old.id) is old:
                old.kill()
                group.replicas[old.id] = twin
                if not twin.alive:  # it waits for the lock (or for its host): Ray restarts it
                    twin.restart_later(self.rng.randint(50_000, 500_000))
            group.extra.pop(old.id, None)

        self._later(100_000, 2 * US, old_dies)

    def _can_lose_host(self, hid: int) -> bool:
        return all(self._can_lose(g, {i for i, h in g.host_of.items() if h == hid}) for g in self.world.groups.values())

    def _can_lose(self, group, node_ids: set[int]) -> bool:
        """Would the group keep a majority of voters with their data if ``node_ids`` lost theirs?
        Asked only of a settled group (a leader, no membership change under way): losing a
        majority is data loss no consensus protocol survives, not what this simulator tests."""
        if not node_ids:
            return True
        leader = group.leader()
        if leader is None or self.world.now_us < group.settled_after_us:
            return False
        node = leader.engine.node
        if node.tracker.conf != group.conf or group.conf.joint or node.pending_conf_index > node.log.applied:
            return False
        voters = group.conf.voters
        intact = [v for v in set(voters) if v not in node_ids and v in group.replicas
                  and group.replicas[v].mode is not StartMode.AMNESIAC
                  and (group.gid, v) in self.world.hosts[group.host_of[v]].disk.stores]
        return len(intact) * 2 > len(set(voters)) + 1

    # -- membership and leadership ----------------------------------------------------------------------
    def _change_membership(self, group) -> None:
        leader = group.leader()
        if leader is None or self._lost_members(group):
            return  # like raykv's repair: replace what lost its data before changing anything else
        free = [h for h in self.hosts if h not in group.host_of.values() and self.world.hosts[h].state == "up"]
        op, cc = membership_change(self.rng, leader.engine.node, self.replicas, bool(free))
        if op == "add_learner":
            node_id = self.world.add_member(group, self.rng.choice(free))
            cc = ConfChange((ConfChangeSingle(ConfChangeKind.ADD_LEARNER, node_id),))
            self._propose_conf(group, leader, cc, adding=node_id)
        elif cc is not None:
            self._propose_conf(group, leader, cc)

    def _propose_conf(self, group, leader, cc: ConfChange, adding: int = 0) -> None:
        """Propose ``cc`` at ``leader`` (through its inbox, like any request). A replica being
        added stays while its proposal may still commit (see ``World.retire_removed``)."""
        self.world.record("conf", group.gid, cc.describe())
        group.settled_after_us = self.world.now_us + 2 * US
        if adding:
            group.adding[adding] = (0, self.world.now_us + 5 * US)  # not proposed yet

        def start(rid, at) -> None:
            engine = leader.engine
            before = engine.node.pending_conf_index
            engine.change_membership(rid, cc, at)
            if adding and engine.node.pending_conf_index != before:
                group.adding[adding] = (engine.node.pending_conf_index, engine.node.term)
            elif adding:
                group.adding.pop(adding, None)  # refused: the new replica goes

        leader.request(start, lambda value: None)

    def _propose_anywhere(self, group) -> None:
        """Proposals at every replica that believes it leads, stale leaders included (session
        registrations: real commands that every client makes), to grow divergent logs."""
        for shell in group.live():
            if shell.is_leader():
                for _ in range(self.rng.randint(1, 3)):
                    shell.request(lambda rid, at, s=shell: s.engine.register_session(rid, at), lambda value: None)

    def _transfer(self, group) -> None:
        leader = group.leader()
        if leader is None:
            return
        voters = [v for v in leader.engine.node.tracker.voter_ids() if v != leader.id]
        if voters:
            target = self.rng.choice(voters)
            leader.request(lambda rid, at: leader.engine.transfer_leader(rid, target, at), lambda value: None)
            self.world.count("transfers")

    def _repair(self, group) -> None:
        """What raykv's repair does for a replica that lost its data: remove it from the group
        (a fresh replica is added by the membership changes, or after healing)."""
        leader = group.leader()
        if leader is None:
            return
        node = leader.engine.node
        conf = node.tracker.conf
        if conf.joint or node.pending_conf_index > node.log.applied:
            return
        lost = [i for i in self._lost_members(group) if i in conf.members() and i != leader.id]
        if lost:
            self.world.count("repairs")
            self._propose_conf(group, leader, ConfChange((ConfChangeSingle(ConfChangeKind.REMOVE_NODE, lost[0]),)))
        elif self.healing and len(conf.voters) < self.replicas:
            self._grow(group, leader, conf)

    def _lost_members(self, group) -> list[int]:
        """Members whose replica runs amnesiac (it lost its data)."""
        return [i for i in sorted(group.replicas) if group.replicas[i].alive
                and group.replicas[i].mode is StartMode.AMNESIAC]

    def _grow(self, group, leader, conf) -> None:
        """After healing: bring the group back to its size (add a learner, promote it)."""
        caught_up = [i for i in conf.learners if leader.engine.node.tracker.progress[i].match >= leader.engine.node.log.committed]
        if caught_up:
            self._propose_conf(group, leader, ConfChange((ConfChangeSingle(ConfChangeKind.ADD_VOTER, caught_up[0]),)))
            return
        free = [h for h in self.hosts if h not in group.host_of.values()]
        if not conf.learners and free:
            node_id = self.world.add_member(group, self.rng.choice(free))
            self._propose_conf(group, leader, ConfChange((ConfChangeSingle(ConfChangeKind.ADD_LEARNER, node_id),)),
                               adding=node_id)

    # -- healing and liveness -------------------------------------------------------------------------
    def heal(self) -> None:
        w = self.world
        self.healing = True
        w.network.faults = LinkFaults(0.0, 0.0, w.network.faults.delay_us)
        w.crash_after_persist_rate = w.crash_after_send_rate = w.leader_crash_after_persist_rate = 0.0
        for undo in self.undo:
            undo()
        self.undo.clear()
        for host in w.hosts.values():
            host.disk_full_until_us = 0
        for group in w.groups.values():
            for shell in group.replicas.values():
                shell.wedged, shell.slow_inputs_until_us, shell.slow_disk_until_us = False, 0, 0
                shell.kick()
                if not shell.alive:
                    shell.restart_later(self.rng.randint(50_000, 500_000))

    def check_liveness(self) -> None:
        w = self.world
        start = w.now_us
        for group in w.groups.values():
            if not w.run_until_true(lambda: group.leader() is not None, LEADER_BOUND_US - (w.now_us - start)):
                raise InvariantViolation("liveness", f"group {group.gid}: no leader {(w.now_us - start) / US:.1f}s after healing")
        for group in w.groups.values():
            self._await_done(group, start)

    def _await_done(self, group, start: int) -> None:
        w = self.world
        deadline = start + LIVENESS_BOUND_US
        while True:
            self.chaos_step_heal(group)
            if self._whole(group):
                break
            if w.now_us >= deadline:
                raise InvariantViolation("liveness", f"group {group.gid}: members not replaced within "
                                         f"{LIVENESS_BOUND_US / US:.0f}s: {self._describe(group)}")
            w.run_for(STEP_US)
        probe = SimClient(w, 10_000 + group.gid, group, [b"liveness"], self.recorder)
        outcome: list[str] = []
        for kind in ("put", "get"):
            outcome.clear()
            probe.run(kind, b"liveness", outcome.append, deadline_us=deadline)
            w.run_until_true(lambda: bool(outcome), max(deadline - w.now_us, STEP_US))
            if outcome != ["ok"]:
                raise InvariantViolation("liveness", f"group {group.gid}: a {kind} after healing did not complete "
                                         f"({outcome or 'pending'}): {self._describe(group)}")
        commit = group.leader().engine.node.log.committed if group.leader() else 0
        if not w.run_until_true(lambda: self._applied_everywhere(group, commit), max(deadline - w.now_us, STEP_US)):
            raise InvariantViolation("liveness", f"group {group.gid}: not applied everywhere: {self._describe(group)}")

    def chaos_step_heal(self, group) -> None:
        self._repair(group)
        self.world.retire_removed(group)

    def _whole(self, group) -> bool:
        conf = group.conf
        return (not conf.joint and len(conf.voters) >= min(self.replicas, len(self.hosts))
                and all(i in group.replicas and group.replicas[i].running for i in conf.members()))

    def _applied_everywhere(self, group, index: int) -> bool:
        members = [group.replicas[i] for i in group.conf.members() if i in group.replicas]
        return all(s.running and s.storage.applied_index() >= index for s in members)

    def _describe(self, group) -> str:
        parts = [f"conf={group.conf.voters}/{group.conf.learners}"]
        for i, s in sorted(group.replicas.items()):
            if s.running:
                st = s.engine.node
                parts.append(f"{i}@h{s.hid}:{st.role.value} t{st.term} c{st.log.committed} a{s.storage.applied_index()}")
            else:
                parts.append(f"{i}@h{s.hid}:{'amnesiac' if s.alive else 'down'}")
        return " ".join(parts)

    def finish_history(self) -> None:
        """Stop the clients, read every key once more (acknowledged writes must show), check."""
        w = self.world
        for client in self.clients:
            client.stop()
        w.run_until_true(lambda: not any(c.busy for c in self.clients), 2 * 6 * US)
        for group in w.groups.values():
            client = next(c for c in self.clients if c.group is group)
            for key in keys(group.gid):
                done: list[str] = []
                client.run("get", key, done.append)
                w.run_until_true(lambda: bool(done), 10 * US)
        result = check(self.recorder.history(), timeout_s=CHECK_TIMEOUT_S)
        if result.ok is False:
            raise InvariantViolation("linearizability", result.explanation)


    def check_states(self) -> None:
        """Once every member applied the same index, their state machines must be identical
        (data and sessions: the entry digests say they applied the same entries, this says
        those entries had the same effects -- snapshot installs included)."""
        w = self.world
        for group in w.groups.values():
            members = lambda: [group.replicas[i] for i in group.conf.members() if i in group.replicas]
            same = lambda: len({s.storage.applied_index() for s in members() if s.running}) == 1
            w.run_until_true(same, 10 * US)
            digests = {s.id: (s.storage.applied_index(), state_digest(s.storage)) for s in members() if s.running}
            if len(set(digests.values())) > 1:
                raise InvariantViolation("state machine safety", f"group {group.gid}: replicas differ in state at "
                                         f"their applied indices: {digests}")


def run_seed(seed: int, groups: int = 1, replicas: int = 3, seconds: float = 20.0, storage: str = "memory",
             model: ShellModel | None = None, profile: Profile | None = None) -> SeedResult:
    """Run one seed; never raises for a safety or liveness failure (it is reported)."""
    tmp = tempfile.TemporaryDirectory(prefix="raykv-sim-", dir=_fast_tmp()) if storage == "lmdb" else nullcontext()
    with tmp as data_dir:
        sim = Simulation(seed, groups, replicas, storage, data_dir, model, profile)
        try:
            violation = _run(sim, seconds)
        finally:
            sim.world.close()
    w = sim.world
    digest = hashlib.blake2b(w.trace.digest(), digest_size=16)
    digest.update(repr(sorted(w.stats.items())).encode())
    return SeedResult(seed, violation, digest.hexdigest(), dict(w.stats), len(sim.recorder.history()), w.now_us / US)


def _run(sim: Simulation, seconds: float) -> str | None:
    try:
        sim.run(seconds)
    except InvariantViolation as v:
        return str(v)
    except AssertionError as e:
        return f"core assertion: {e}"
    return None


def _fast_tmp() -> str | None:
    """LMDB syncs on every write: on tmpfs that costs nothing, so the sweep runs at memory speed."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


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
    parser.add_argument("--seconds", type=float, default=20.0, help="simulated seconds of faults per seed")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--storage", choices=("memory", "lmdb"), default="memory",
                        help="where replicas keep their state (lmdb: real synced stores, on tmpfs when available)")
    args = parser.parse_args(argv)
    if args.groups < 1 or args.seconds <= 0 or args.jobs < 1:
        parser.error("--groups and --jobs must be >= 1 and --seconds > 0")
    logging.getLogger("raykv.replica").setLevel(logging.ERROR)  # replicas' warnings (a full disk) are expected here
    started = time.perf_counter()
    totals: dict[str, int] = {}
    violations, ops, sim_s = 0, 0, 0.0
    trace = hashlib.blake2b(digest_size=16)
    for result in _results(args):
        trace.update(result.trace_hash.encode())
        ops += result.ops
        sim_s += result.sim_s
        for k, v in result.stats.items():
            totals[k] = totals.get(k, 0) + v
        if result.violation:
            violations += 1
            print(f"seed {result.seed}: VIOLATION {result.violation}")
            print(f"  replay: python -m raykv.testing.sim --seeds {result.seed}:{result.seed + 1} --groups {args.groups} "
                  f"--replicas {args.replicas} --seconds {args.seconds:g} --storage {args.storage}")
    elapsed = time.perf_counter() - started
    n = len(args.seeds)
    counted = " ".join(f"{k}={totals.get(k, 0)}" for k in ("commits", "crashes", "crashes_mid_turn", "snapshots_installed",
                                                            "conf_changes", "amnesiac_starts", "lock_refusals", "repairs",
                                                            "disks_filled"))
    print(f"engine=ReplicaEngine storage={args.storage} seeds={n} violations={violations} ops={ops} {counted} "
          f"messages={totals.get('messages', 0)} sim_s={sim_s:.0f} elapsed={elapsed:.1f}s seeds/s={n / elapsed:.2f} "
          f"trace={trace.hexdigest()[:16]}")
    sys.stdout.flush()
    return 1 if violations else 0


def _results(args):
    work = [(seed, args.groups, args.replicas, args.seconds, args.storage) for seed in args.seeds]
    if args.jobs == 1:
        return (run_seed(*w) for w in work)
    import multiprocessing

    pool = multiprocessing.get_context("fork").Pool(args.jobs)
    return _drain(pool, pool.imap(_run_packed, work, chunksize=1))


def _drain(pool, results):
    with pool:
        yield from results


def _run_packed(work: tuple) -> SeedResult:
    return run_seed(*work)


if __name__ == "__main__":
    sys.exit(main())
