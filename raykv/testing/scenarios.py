"""Scripted simulations: one fault, staged on purpose, in the same world the seeded sweep uses.

:class:`Script` is a small harness over :class:`~raykv.testing.world.World`: one group,
clients whose operations can be aimed at a chosen replica, and a history checked for
linearizability at the end (the world's invariant checkers run throughout). The
functions below stage the faults a replica's shell meets -- each returns the violation
it caused (None: none) -- so tests can run them with raykv's shell and with an older,
unsafe :class:`~raykv.testing.world.ShellModel` and show that the simulator tells
them apart.
"""

from __future__ import annotations

from collections.abc import Callable

from ..replica.options import ReplicaOptions
from ..replica.startup import StartFacts, StartMode
from .history import HistoryRecorder
from .invariants import InvariantViolation
from .linearizability import check
from .network import LinkFaults
from .simclient import SimClient
from .world import US, ShellModel, World

KEY = b"k"


class Script:
    """One group of ``replicas`` on hosts ``1..replicas`` (plus spare hosts), clients, a history."""

    def __init__(self, seed: int, model: ShellModel | None = None, replicas: int = 3, spare_hosts: int = 1,
                 clients: int = 8, **options) -> None:
        self.world = World(seed, ReplicaOptions(**{"metrics": False, **options}), replicas + spare_hosts,
                           model=model, link_faults=LinkFaults(0.0, 0.0, (200, 1000)))
        self.group = self.world.add_group(list(range(1, replicas + 1)))
        self.recorder = HistoryRecorder(clock=lambda: self.world.now_us * 1000)
        self.clients = [SimClient(self.world, i, self.group, [KEY], self.recorder) for i in range(clients)]

    def run(self, seconds: float) -> None:
        self.world.run_for(int(seconds * US))

    def leader(self, timeout_s: float = 10.0, among: tuple[int, ...] | None = None):
        """The replica that leads (waiting up to ``timeout_s``), or None."""
        def found():
            lead = self.group.leader()
            return lead if lead is not None and (among is None or lead.id in among) else None

        self.world.run_until_true(lambda: found() is not None, int(timeout_s * US))
        return found()

    def shell(self, node_id: int):
        return self.group.replicas[node_id]

    def op(self, kind: str, at: int | None = None, client: int = 0, timeout_s: float = 8.0) -> str | None:
        """Run one operation on ``KEY`` (first sent to replica ``at``) to its end; its outcome
        ("ok", "failed", "indeterminate") or None if still running after ``timeout_s``."""
        c = self.clients[client]
        if at is not None:
            c._guess = at
        done: list[str] = []
        c.run(kind, KEY, done.append)
        self.world.run_until_true(lambda: bool(done), int(timeout_s * US))
        return done[0] if done else None

    def send(self, kind: str, at: int) -> list[str]:
        """Start one operation aimed at replica ``at`` (by an idle client other than client 0)
        without waiting; its outcome lands in the returned list."""
        c = next(c for c in self.clients[1:] if not c.busy)
        c._guess = at
        done: list[str] = []
        c.run(kind, KEY, done.append)
        return done

    def verdict(self) -> str | None:
        """The history's linearizability verdict (None: linearizable)."""
        result = check(self.recorder.history(), timeout_s=60)
        return None if result.ok is not False else f"linearizability: {result.explanation[:300]}"

    def cut(self, a: int, b: int) -> None:
        """Cut the hosts of replicas ``a`` and ``b`` apart (both directions)."""
        ha, hb = self.group.host_of[a], self.group.host_of[b]
        self.world.network.split([ha], [hb])

    def isolate(self, node_id: int) -> None:
        """Cut the host of ``node_id`` from every other replica host (clients still reach it)."""
        self.world.network.isolate(self.group.host_of[node_id], sorted(h for h in self.world.hosts if h))

    def others(self, node_id: int) -> list[int]:
        return [i for i in sorted(self.group.replicas) if i != node_id]


def staged(**defaults) -> Callable:
    """Turn ``fn(script)`` into ``run(seed, model=None, **options)``: a fresh :class:`Script`
    (``defaults`` and ``options`` are its replica options), the staging, then the verdict;
    an invariant violation is an answer too."""

    def wrap(fn: Callable[[Script], str | None]) -> Callable[..., str | None]:
        def run(seed: int, model: ShellModel | None = None, **options) -> str | None:
            s = Script(seed, model, **{**defaults, **options})
            try:
                return fn(s) or s.verdict()
            except InvariantViolation as v:
                return str(v)
            finally:
                s.world.close()

        run.__name__, run.__doc__ = fn.__name__, fn.__doc__
        return run

    return wrap


# -- 1. time observed per input -------------------------------------------------------------------
@staged(heartbeat_ticks=2)
def long_turns_at_a_follower(s: Script) -> str | None:
    """A follower's turns are long: between Raft inputs it serves a stale scan of about an
    election timeout. The third replica, cut off from the leader, campaigns just as such a
    turn ends. A turn that stamps every input with the time it began dates the leader's last
    heartbeats too early: the follower's catch-up ticks end its refusal to vote before the
    leader's lease -- counted from when it sent the heartbeat -- runs out. The new leader
    commits a write while the old one still answers lease reads from its old state."""
    s.leader()
    assert s.op("put") == "ok"
    leader = s.group.leader()
    follower, other = s.others(leader.id)
    s.cut(leader.id, other)
    lf = (s.group.host_of[leader.id], s.group.host_of[follower])
    s.world.network.slow[lf] = 5_000  # the leader's next heartbeat lands after the campaign
    slow, challenger = s.shell(follower), s.shell(other)

    def turn_ended() -> None:
        if s.world.now_us - state["stalled_at"] < 500_000:
            return
        state["stalled_at"] = 1 << 62
        challenger.post(lambda at: challenger.engine.node.campaign(pre=True))  # its election timer fires
        s.world.after(15_000, lambda: s.send("put", other))
        for delay_ms in (25, 40, 60, 90):
            s.world.after(delay_ms * 1000, lambda: s.send("lease", leader.id))

    state = {"stalled_at": 1 << 62}
    slow.after_turn = turn_ended
    for _ in range(5):
        state["stalled_at"] = s.world.now_us
        slow.post(lambda at: None, cost_us=520_000)
        s.run(1.5)
    s.world.network.heal()
    s.run(5)
    return None


# -- 2. a restarted replica without its directory ---------------------------------------------------
@staged()
def restart_without_directory(s: Script) -> str | None:
    """A committed write is on the leader and one follower only (the third is cut off). The
    leader's host dies, and the follower comes back from a Ray restart without its directory.
    As an empty founding voter it would help the stale third replica become leader without
    the write; amnesiac, it votes for nobody, and the shard waits for the leader's host."""
    s.leader()
    assert s.op("put") == "ok"
    leader = s.group.leader()
    follower, stale = s.others(leader.id)
    s.isolate(stale)
    assert s.op("put", leader.id) == "ok"
    s.world.crash_host(s.group.host_of[leader.id])
    shell = s.shell(follower)
    disk = s.world.hosts[shell.hid].disk
    shell.crash()
    disk.stores.pop(shell.key)
    s.group.checker.on_wiped(follower)
    s.world.network.heal()
    s.run(5)
    s.op("get", stale, timeout_s=3)  # a leader without the write would answer this
    s.world.restart_host(s.group.host_of[leader.id])
    s.run(3)
    s.op("get", leader.id)
    return None


def founders_forever(facts: StartFacts) -> StartMode:
    """The earlier start rule: a replica created as a founder founds whenever it has no data."""
    if facts.has_data:
        return StartMode.OPEN
    return StartMode.FOUND if facts.founder else StartMode.FRESH


# -- 3. two incarnations of one replica -------------------------------------------------------------
@staged()
def two_incarnations(s: Script) -> str | None:
    """An old worker outlives its raylet while Ray restarts the replica elsewhere on the same
    host: both open one directory. Elections then meet two voters with one name."""
    from .simshell import SimShell

    s.leader()
    leader = s.group.leader()
    target = s.others(leader.id)[0]
    old = s.shell(target)
    twin = SimShell(s.world, s.group, target, old.hid, old.founders, old.create, reconstructed=True)
    s.group.extra[target] = [twin]
    for _ in range(6):  # elections and writes while both run
        lead = s.leader(5)
        s.op("put", lead.id if lead else None, timeout_s=2)
        if lead is not None:
            lead.crash()
        s.run(1.5)
    old.kill()
    s.group.replicas[target] = twin
    s.group.extra.pop(target, None)
    s.run(3)
    s.op("get")
    return None


# -- 4. a wedged leader of a quiet group --------------------------------------------------------------
@staged(quiesce_after_ticks=4, quiet_probe_ticks=5)
def wedged_quiet_leader(s: Script) -> str | None:
    """An idle group goes quiet; then its leader's loop wedges (a hung fsync) while its process
    lives. Probes answered by the loop fail, and the followers elect a new leader within about
    a second; probes answered by a side thread keep them asleep with nobody leading."""
    s.leader()
    assert s.op("put") == "ok"
    s.world.run_until_true(lambda: all(r.engine.quiet.quiesced for r in s.group.live()), 10 * US)
    leader = s.group.leader()
    leader.wedged = True
    if s.leader(6, among=tuple(s.others(leader.id))) is None:
        return "liveness: a wedged leader of a quiet group was not replaced within 6 s"
    return None


# -- 5. a suspended leader ----------------------------------------------------------------------------
@staged()
def suspended_leader(s: Script) -> str | None:
    """The leader's machine sleeps (suspend) while cut off; the others elect a new leader that
    commits a write. A lease read reaches the old leader while it sleeps. On resume, a clock
    that kept counting expires its lease; one that stopped lets it answer the old value."""
    s.leader()
    assert s.op("put") == "ok"
    leader = s.group.leader()
    assert s.op("lease", leader.id) == "ok"
    s.isolate(leader.id)
    s.world.suspend_host(s.group.host_of[leader.id])
    if s.leader(8, among=tuple(s.others(leader.id))) is None:
        return "liveness: no new leader while the old one slept"
    assert s.op("put", s.group.leader().id) == "ok"
    s.send("lease", leader.id)
    s.run(0.5)
    s.world.resume_host(s.group.host_of[leader.id])
    s.run(3)
    s.world.network.heal()
    s.run(3)
    return None


HOLES: dict[str, tuple[Callable[..., str | None], ShellModel]] = {
    "time per turn": (long_turns_at_a_follower, ShellModel(stamp_per_input=False)),
    "founders forever": (restart_without_directory, ShellModel(start_rule=founders_forever)),
    "no directory lock": (two_incarnations, ShellModel(lock=False)),
    "probes off the loop": (wedged_quiet_leader, ShellModel(probe_by_loop=False)),
    "a clock that stops in a suspend": (suspended_leader, ShellModel(clock="monotonic")),
}
"""Each hole of the replica's shell: the staging that exposes it, and the old behaviour that had it."""
