"""A deterministic world of hosts, a network and replica engines: the simulator's physics.

Time is an integer count of microseconds (:attr:`World.now_us`); everything that
happens is an event on one heap, ordered by time and then by insertion, so a seed
replays exactly. The world holds:

* **hosts** (:class:`Host`): each with its own clock (an offset and a small rate
  drift; a *boottime* reading that counts through a suspend and a *monotonic* one
  that stops during it), a "disk" of replica directories (:class:`Disk`: stores,
  creation records, directory locks), and a state: up, crashed, paused (SIGSTOP:
  nothing runs, clocks go on) or suspended (the machine sleeps: nothing runs and its
  monotonic clock stops);
* **the network** (:class:`~raykv.testing.network.Network`): per-message delay,
  loss, duplication, reordering and directed cuts between hosts;
* **replica incarnations** (:class:`~raykv.testing.simshell.SimShell`), each a model
  of the Ray shell around a real :class:`~raykv.replica.engine.ReplicaEngine` on a real
  store (in memory, or LMDB on disk);
* **groups** (:class:`Group`): a Raft group's incarnations by node id, its
  :class:`~raykv.testing.invariants.GroupChecker`, the newest configuration applied;
* **clients** (:class:`~raykv.testing.simclient.SimClient`) whose histories are
  checked for linearizability.

The world only moves bytes and time; scripted tests and the seeded sweep
(:mod:`raykv.testing.sim`) decide the faults.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ..raft.types import ConfState
from ..replica.options import ReplicaOptions
from .invariants import GroupChecker
from .network import LinkFaults, Network

US = 1_000_000
CLIENT_HOST = 0
"""The host clients run on (never crashed; cut only by a fault that names it)."""


@dataclass
class ShellModel:
    """How the modelled Ray shell behaves; the defaults are what raykv's shell does. The
    alternatives are earlier, unsafe behaviours, kept so tests can show the simulator
    catches them (mutation checks)."""

    stamp_per_input: bool = True
    """False: every input of a turn carries the time the turn began (ticks once per turn)."""
    clock: str = "boottime"
    """"monotonic": the clock stops while the machine is suspended."""
    lock: bool = True
    """False: a second incarnation opens the same store while the first still runs."""
    probe_by_loop: bool = True
    """False: liveness probes are answered by a side thread even when the loop is wedged."""
    start_rule: Callable | None = None
    """Replaces :func:`raykv.replica.startup.start_mode` (None: the real rule)."""


@dataclass
class Costs:
    """Simulated processing times, microseconds."""

    input_us: tuple[int, int] = (20, 200)
    process_us: tuple[int, int] = (50, 400)
    fsync_us: tuple[int, int] = (300, 3000)
    slow_input_us: tuple[int, int] = (5_000, 40_000)
    slow_fsync_us: tuple[int, int] = (50_000, 400_000)


@dataclass
class Disk:
    """One host's replica directories: ``(gid, node id) -> store``, creation records, locks."""

    stores: dict[tuple[int, int], object] = field(default_factory=dict)
    created: set[tuple[int, int]] = field(default_factory=set)
    locks: dict[tuple[int, int], int] = field(default_factory=dict)
    """Replica -> the incarnation number holding its directory lock."""


@dataclass
class Host:
    hid: int
    offset_us: int
    rate: float
    state: str = "up"
    suspended_us: int = 0
    """Host-clock microseconds spent suspended (the monotonic clock skips them)."""
    suspend_began: int = 0
    disk: Disk = field(default_factory=Disk)
    disk_full_until_us: int = 0
    """Until then the host's disk has no free space (its replicas are told so every turn)."""

    def boottime_us(self, now_us: int) -> int:
        return self.offset_us + int(now_us * self.rate)

    def clock_s(self, now_us: int, kind: str) -> float:
        t = self.boottime_us(now_us)
        if kind == "monotonic":
            t -= self.suspended_us + (t - self.suspend_began if self.state == "suspended" else 0)
        return t / US


@dataclass
class Group:
    gid: int
    checker: GroupChecker
    replicas: dict[int, object] = field(default_factory=dict)
    """Node id -> its current incarnation (a SimShell), alive or not."""
    host_of: dict[int, int] = field(default_factory=dict)
    conf: ConfState = field(default_factory=ConfState)
    conf_index: int = 0
    next_node_id: int = 1
    extra: dict[int, list] = field(default_factory=dict)
    """Node id -> further incarnations running at the same time (the two-incarnation fault)."""
    chains: dict[int, bytes] = field(default_factory=dict)
    """Node id -> digest of the entries its state machine applied (state machine safety)."""
    settled_after_us: int = 0
    """No fault takes data from this group before then (a membership change may be in flight)."""
    adding: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Node id -> (index, term) of the proposal adding it, until it is applied or lost; (0, t):
    its proposal is on its way to the leader and may be made until time t."""

    def live(self) -> list:
        return [self.replicas[i] for i in sorted(self.replicas) if self.replicas[i].running]

    def leader(self):
        leaders = [r for r in self.live() if r.is_leader()]
        return max(leaders, key=lambda r: r.engine.node.term, default=None)


class World:
    """The event loop and everything in it (see the module docstring)."""

    def __init__(self, seed: int, options: ReplicaOptions, hosts: int = 5, storage: str = "memory",
                 data_dir: str | None = None, model: ShellModel | None = None, costs: Costs | None = None,
                 link_faults: LinkFaults | None = None) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.options = options
        self.storage = storage
        self.data_dir = data_dir
        self.model = model or ShellModel()
        self.costs = costs or Costs()
        self.now_us = 0
        self._events: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self.hosts = {h: Host(h, self.rng.randrange(10 * US, 1000 * US), 1.0 + self.rng.uniform(-0.001, 0.001))
                      for h in range(CLIENT_HOST, hosts + 1)}
        self.network = Network(random.Random(self.rng.getrandbits(64)), link_faults or LinkFaults())
        self.groups: dict[int, Group] = {}
        self.trace = hashlib.blake2b(digest_size=16)
        self.stats: dict[str, int] = {}
        self.crash_after_persist_rate = 0.0
        self.leader_crash_after_persist_rate = 0.0
        self.crash_after_send_rate = 0.0
        self.written: dict[bytes, set[bytes]] = {}
        """Every value a client asked to write, per key (stale reads may return only these)."""
        self.raft: dict = {}
        """Further raft Config fields for every engine (flow control variations)."""
        self._last_id = 0
        self._snapshots: dict[bytes, tuple] = {}

    # -- the event loop ----------------------------------------------------------------------------
    def at(self, t_us: int, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._events, (max(t_us, self.now_us), self._seq, fn))

    def after(self, dt_us: int, fn: Callable[[], None]) -> None:
        self.at(self.now_us + dt_us, fn)

    def run_until(self, t_us: int) -> None:
        """Run every event due up to ``t_us``; time then stands at ``t_us``."""
        while self._events and self._events[0][0] <= t_us:
            t, _, fn = heapq.heappop(self._events)
            self.now_us = t
            fn()
        self.now_us = max(self.now_us, t_us)

    def run_for(self, dt_us: int) -> None:
        self.run_until(self.now_us + dt_us)

    def run_until_true(self, predicate: Callable[[], bool], timeout_us: int, step_us: int = 10_000) -> bool:
        deadline = self.now_us + timeout_us
        while not predicate():
            if self.now_us >= deadline:
                return False
            self.run_for(step_us)
        return True

    def record(self, *fields) -> None:
        self.trace.update(repr(fields).encode())

    def count(self, what: str, n: int = 1) -> None:
        self.stats[what] = self.stats.get(what, 0) + n

    def draw_us(self, bounds: tuple[int, int]) -> int:
        return self.rng.randint(*bounds)

    def next_id(self) -> int:
        """A number unique in this world (request ids, incarnations, snapshot copies)."""
        self._last_id += 1
        return self._last_id

    # -- groups ------------------------------------------------------------------------------------
    def add_group(self, hosts: list[int]) -> Group:
        """A new group of founding members, one on each of ``hosts``."""
        from .simshell import SimShell

        gid = len(self.groups)
        voters = tuple(range(1, len(hosts) + 1))
        group = Group(gid, GroupChecker(gid), conf=ConfState(voters=voters), conf_index=1,
                      next_node_id=len(hosts) + 1)
        group.checker.digests[1] = b""
        self.groups[gid] = group
        for node_id, host in zip(voters, hosts):
            group.host_of[node_id] = host
            group.replicas[node_id] = SimShell(self, group, node_id, host, founders=voters, create=True)
        return group

    def add_member(self, group: Group, host: int) -> int:
        """Create an empty replica (a new node id) on ``host``, to be added by a membership change."""
        from .simshell import SimShell

        node_id = group.next_node_id
        group.next_node_id += 1
        group.host_of[node_id] = host
        group.replicas[node_id] = SimShell(self, group, node_id, host, founders=(), create=True)
        return node_id

    def retire(self, group: Group, node_id: int) -> None:
        """Stop a removed replica for good and delete its directory."""
        self.record("retire", group.gid, node_id)
        for shell in [group.replicas.pop(node_id)] + group.extra.pop(node_id, []):
            shell.kill()
        host = self.hosts[group.host_of.pop(node_id)]
        store = host.disk.stores.pop((group.gid, node_id), None)
        if store is not None and hasattr(store, "close"):
            store.close()
        host.disk.created.discard((group.gid, node_id))

    def conf_applied(self, group: Group, index: int, conf: ConfState) -> None:
        """Applied means committed: remember the newest configuration applied anywhere
        (configurations form one sequence by log index, so only a higher index is news)."""
        self.count("conf_changes")
        if index > group.conf_index:
            group.conf_index, group.conf = index, conf
            for node_id in [i for i in group.adding if i in conf.members()]:
                del group.adding[node_id]

    def retire_removed(self, group: Group) -> None:
        """Stop replicas the newest configuration removed, once a quorum of it applied the
        removal (before that they may still be needed: a joint vote, or their log)."""
        members = group.conf.members()
        stale = [i for i in sorted(group.replicas) if i not in members and not self._may_join(group, i)]
        if stale and self._quorum_applied(group, group.conf_index):
            for node_id in stale:
                self.retire(group, node_id)

    def _may_join(self, group: Group, node_id: int) -> bool:
        """Can the proposal that adds ``node_id`` still commit?"""
        proposal = group.adding.get(node_id)
        if proposal is None:
            return False
        index, term = proposal
        if index == 0:  # not proposed yet: (0, until when it may still be)
            if self.now_us < term:
                return True
            del group.adding[node_id]
            return False
        committed_term = group.checker.committed.get(index)
        if (committed_term is not None and committed_term != term) or group.conf_index >= index:
            del group.adding[node_id]
            return False
        return True

    def _quorum_applied(self, group: Group, index: int) -> bool:
        from ..raft.quorum import VoteResult, joint_vote

        applied = {i: True for i, r in group.replicas.items() if r.running and r.storage.applied_index() >= index}
        return joint_vote(group.conf.voters, group.conf.voters_outgoing, applied) is VoteResult.WON

    # -- routing -----------------------------------------------------------------------------------
    def send(self, src_host: int, dst_host: int, deliver: Callable[[], None], lost: Callable[[], None] | None = None,
             extra_us: int = 0, once: bool = False) -> None:
        """Carry one payload from host to host: ``deliver`` runs on arrival if the link is up then.
        A payload lost on the way (dropped, or its link cut) runs ``lost`` (if given) at the
        sender's call deadline, as a Ray call that got no answer would. The network may deliver a
        payload twice unless ``once`` (a client's call: Ray runs an actor call at most once)."""
        self.count("messages")
        sent = self.now_us
        deadline = sent + int(self.options.call_deadline_s * US)

        def on_loss() -> None:
            if lost is not None:
                self.at(deadline, lost)

        dues = self.network.plan(sent, src_host, dst_host, once)
        if not dues:
            on_loss()
        for due in dues:
            def arrive() -> None:
                if self.network.up(src_host, dst_host) and self.hosts[dst_host].state != "down":
                    deliver()
                else:
                    on_loss()
            self.at(due + extra_us, arrive)

    def target(self, group: Group, node_id: int):
        """The incarnation a message for ``node_id`` reaches now (one of several, if two run)."""
        shells = [s for s in [group.replicas.get(node_id)] + group.extra.get(node_id, []) if s is not None and s.alive]
        if not shells:
            return None
        return shells[0] if len(shells) == 1 else self.rng.choice(shells)

    # -- snapshots in flight -----------------------------------------------------------------------
    def keep_snapshot(self, key: bytes, meta, rows) -> None:
        self._snapshots[key] = (meta, rows)

    def copy_snapshot(self, key: bytes) -> bytes:
        """A payload of its own for one delivery (the network may duplicate it; each copy is
        installed or dropped on its own, like each streamed file in raykv)."""
        n = self.next_id()
        meta, rows = self._snapshots[key]
        copy = key + f"#{n}".encode()
        if self.storage == "lmdb":
            import shutil

            copy = key + f".{n}".encode()
            shutil.copyfile(key.decode(), copy.decode())
        self._snapshots[copy] = (meta, rows)
        return copy

    def snapshot_payload(self, key: bytes):
        return self._snapshots.get(key)

    def drop_snapshot(self, key: bytes) -> None:
        self._snapshots.pop(key, None)

    # -- host faults ---------------------------------------------------------------------------------
    def crash_host(self, hid: int) -> None:
        host = self.hosts[hid]
        if host.state == "down":
            return
        self.record("crash-host", hid)
        self.count("crashes")
        if host.state == "suspended":
            self._end_suspend(host)
        host.state = "down"
        for shell in self.shells_on(hid):
            shell.crash()

    def restart_host(self, hid: int, wipe: bool = False) -> None:
        """Bring a crashed host back (with its disk, or ``wipe``: an empty one); Ray restarts its
        replica actors (reconstructions)."""
        host = self.hosts[hid]
        if host.state != "down":
            return
        self.record("restart-host", hid, wipe)
        if wipe:
            for store in host.disk.stores.values():
                if hasattr(store, "close"):
                    store.close()
            host.disk = Disk()
        host.state = "up"
        for shell in self.shells_on(hid, alive=False):
            shell.restart_later(self.draw_us((50_000, 1_500_000)))

    def pause_host(self, hid: int) -> None:
        host = self.hosts[hid]
        if host.state == "up":
            self.record("pause-host", hid)
            host.state = "paused"

    def suspend_host(self, hid: int) -> None:
        host = self.hosts[hid]
        if host.state == "up":
            self.record("suspend-host", hid)
            host.state = "suspended"
            host.suspend_began = host.boottime_us(self.now_us)

    def _end_suspend(self, host: Host) -> None:
        host.suspended_us += host.boottime_us(self.now_us) - host.suspend_began

    def resume_host(self, hid: int) -> None:
        host = self.hosts[hid]
        if host.state not in ("paused", "suspended"):
            return
        self.record("resume-host", hid)
        if host.state == "suspended":
            self._end_suspend(host)
        host.state = "up"
        for shell in self.shells_on(hid):
            shell.kick()

    def shells_on(self, hid: int, alive: bool = True) -> list:
        out = []
        for group in self.groups.values():
            for node_id in sorted(group.replicas):
                if group.host_of.get(node_id) == hid:
                    for shell in [group.replicas[node_id]] + group.extra.get(node_id, []):
                        if shell.alive == alive:
                            out.append(shell)
        return out

    def host_runs(self, hid: int) -> bool:
        return self.hosts[hid].state == "up"

    # -- the end ---------------------------------------------------------------------------------------
    def close(self) -> None:
        for group in self.groups.values():
            for shell in list(group.replicas.values()) + [s for ss in group.extra.values() for s in ss]:
                shell.kill()
        for host in self.hosts.values():
            for store in host.disk.stores.values():
                if hasattr(store, "close"):
                    store.close()
