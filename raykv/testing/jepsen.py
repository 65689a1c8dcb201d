"""A Jepsen-style run of a raykv store on a host test bed (root only).

    python -m raykv.testing.jepsen --hosts 5 --nemesis partition[,kill] --time 60 --seed 1

builds a :class:`~raykv.testing.hosts.HostBed`, enters its head's network namespace, starts a
store on the hosts and runs, for ``--time`` seconds:

* a :class:`~raykv.testing.workload.Workload` of put/get/delete/cas on a few keys spread over
  every shard (linearizable reads, and lease reads on every third client), recorded as a history,
  from threads in the driver and from ``--task-clients`` Ray tasks on the hosts (their events go
  to files, so a task killed with its host leaves its history behind);
* a ledger writer putting keys that are never overwritten, to check that no acknowledged write is
  lost;
* with ``--scale``, online resharding back and forth between ``--shards + 1`` and ``--shards``;
* the nemeses on a schedule: ``--quiet-s`` of peace, then the faults for ``--fault-s``, then the
  heal; after each apply and each heal it measures how long until a write succeeds on every
  shard again (``failover_s``: while the fault lasts; ``recovery_s``: after the heal), and after
  each heal how long until every replica of every shard is back and caught up (``caught_up_s``).

At the end it checks the whole history with :func:`raykv.testing.linearizability.check`, reads
every acknowledged ledger key back, and prints one summary line (and ``--json FILE``). Exit
status: 0 when the history is linearizable, no acknowledged write is lost, every nemesis showed
evidence that it did something and every shard took writes again, with all its replicas caught
up, within ``--recovery-bound-s`` after each heal; 1 otherwise; 2 for bad arguments; 3 when no bed can be built here.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

from ..errors import RayKVError
from . import linearizability
from .. import tcpbackoff
from ..protocol import HOST_LABEL
from .history import EventLog, Op, load_events
from .hosts import RAY_ENV, HostBed, HostBedError, enter_netns, unavailable_reason
from .nemesis import Nemesis, make
from .workload import Workload

STORE = "jepsen"
KEY_CHARS = "0aglrz"
"""First characters of the workload's keys: spread over ``0..z``, so they fall in every shard
of a new store (its ranges split by a key's first character)."""


@dataclass
class Cycle:
    """One fault window: what broke, its evidence, and how long writes took to come back."""

    faults: list[str]
    evidence: dict[str, dict[str, int]]
    failover_s: float | None
    recovery_s: float | None
    caught_up_s: float | None = None
    leaders_hit: list[int] = field(default_factory=list)
    """The shards whose leader was on a target host when the fault began."""


@dataclass
class Report:
    nemesis: str
    hosts: int
    shards: int
    seed: int
    time_s: float
    cycles: list[Cycle] = field(default_factory=list)
    ops: int = 0
    ok: int = 0
    """Ops of the history (every client's) that completed; ``indeterminate`` the rest."""
    failed: int = 0
    """Ops the driver's clients saw fail definitely (left out of the history)."""
    indeterminate: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    verdict: str = "unchecked"
    violation: str = ""
    ledger_acked: int = 0
    ledger_lost: list[str] = field(default_factory=list)
    task_ops: int = 0
    scaled: list[str] = field(default_factory=list)
    scale_failures: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.verdict == "linearizable" and not self.ledger_lost and not self.problems

    def line(self) -> str:
        def figures(values):
            return "[" + ", ".join("-" if v is None else f"{v:.1f}" for v in values) + "]"

        return (f"jepsen {self.nemesis}: {'PASS' if self.passed else 'FAIL'} hosts={self.hosts} "
                f"shards={self.shards} seed={self.seed} time={self.time_s:.0f}s cycles={len(self.cycles)} "
                f"ops={self.ops} (tasks {self.task_ops}) ok={self.ok} failed={self.failed} indeterminate={self.indeterminate} "
                f"verdict={self.verdict} ledger={self.ledger_acked} lost={len(self.ledger_lost)} "
                f"failover_s={figures(c.failover_s for c in self.cycles)} "
                f"recovery_s={figures(c.recovery_s for c in self.cycles)} "
                f"caught_up_s={figures(c.caught_up_s for c in self.cycles)}"
                + (f" scaled={len(self.scaled)} scale_failed={len(self.scale_failures)}" if self.scaled or self.scale_failures else "")
                + (f" problems={'; '.join(self.problems)}" if self.problems else ""))


class Background:
    """A daemon thread running ``self._run()`` until :meth:`halt` (which ``_run`` polls as ``self._stop``)."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)

    def start(self):
        self._thread.start()
        return self

    def halt(self, timeout_s: float) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        raise NotImplementedError


class Ledger(Background):
    """One thread putting keys that are never overwritten: every acknowledged one must survive."""

    def __init__(self, client) -> None:
        super().__init__("ledger")
        self.client = client
        self.acked: list[str] = []

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            key = f"{KEY_CHARS[n % len(KEY_CHARS)]}-ledger-{n:07d}"
            n += 1
            try:
                self.client.put(key, n)
            except RayKVError:
                continue
            self.acked.append(key)

    def lost(self) -> list[str]:
        """Stop writing; the acknowledged keys a linearizable read no longer finds."""
        self.halt(60)
        found = self.client.get_batch(self.acked) if self.acked else []
        return [k for k, v in zip(self.acked, found) if v is None]


class Rescaler(Background):
    """One thread resharding the store online, back and forth between two shard counts, while
    the faults go on: each ``scale`` call waits for its operation to finish (or fail)."""

    def __init__(self, client, counts: tuple[int, int]) -> None:
        super().__init__("rescaler")
        self.client, self.counts = client, counts
        self.done: list[str] = []
        self.failed: list[str] = []

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(2.0):
            target = self.counts[n % 2]
            n += 1
            try:
                self.client.scale(target, timeout_s=120.0)
                self.done.append(f"-> {target}")
                log(f"scaled to {target} shards")
            except RayKVError as e:
                self.failed.append(f"-> {target}: {type(e).__name__}")
                log(f"scale to {target} failed: {e!r}")


def task_client(store: str, keys: list[str], seed: int, first_client: int, path: str, stop_path: str,
                timeout_s: float) -> int:
    """A Ray task's clients: two workload threads on ``keys`` recording to an
    :class:`~raykv.testing.history.EventLog` at ``path`` until ``stop_path`` exists; returns the
    ops that succeeded. Its history survives the task being killed with its host."""
    import raykv

    kv = raykv.connect(store, timeout_s=timeout_s)
    events = EventLog(path)
    workload = Workload(kv, keys, clients=2, seed=seed, consistency=("linearizable", "lease"),
                        first_client=first_client, recorder=events).start()
    while not os.path.exists(stop_path):
        time.sleep(0.1)
    workload.stop(timeout_s * 2)
    events.close()
    kv.close()
    return workload.stats.ok


class TaskClients:
    """``count`` :func:`task_client` tasks, one per host in turn (pinned by the ``raykv-host`` label)."""

    def __init__(self, bed: HostBed, keys: list[str], args: argparse.Namespace) -> None:
        import ray

        self.folder = bed.folder / "task-clients"
        self.folder.mkdir(exist_ok=True)
        self.stop_path = self.folder / "stop"
        self.paths = [self.folder / f"task-{i}.jsonl" for i in range(args.task_clients)]
        self.refs = []
        for i, path in enumerate(self.paths):
            host = bed.hosts[i % len(bed.hosts)].name
            run = ray.remote(num_cpus=0, max_retries=0, label_selector={HOST_LABEL: host})(task_client)
            self.refs.append(run.remote(STORE, keys, args.seed * 7919 + i, 100 + 10 * i, str(path),
                                        str(self.stop_path), args.op_timeout_s))

    def stop(self, origin_ns: int, timeout_s: float) -> list[Op]:
        """Tell the tasks to stop, wait for them (a task lost with its host is waited for no
        more), and return every op they recorded, timed from ``origin_ns``."""
        import ray

        self.stop_path.touch()
        ray.wait(self.refs, num_returns=len(self.refs), timeout=timeout_s)
        return [op for path in self.paths if path.exists() for op in load_events(path, origin_ns)]


def writable_after(client, since: float, until: float) -> float | None:
    """Seconds from ``since`` until a put succeeded on a key of every shard (None: not by ``until``)."""
    pending = list(KEY_CHARS)
    while pending and time.monotonic() < until:
        try:
            client.put(f"{pending[0]}-probe", time.time())
            pending.pop(0)
        except RayKVError:
            time.sleep(0.05)
    return None if pending else time.monotonic() - since


def leader_hosts(client) -> dict[int, str]:
    """Shard -> the host of its leader, as the replicas report it now (shards without one left out)."""
    try:
        status = client.status(timeout_s=2.0)
    except RayKVError:
        return {}
    return {s.shard: r.host for s in status.shards for r in s.replicas if r.replica == s.leader}


def caught_up_after(client, since: float, until: float) -> float | None:
    """Seconds from ``since`` until every replica of every shard answers and has applied what its
    leader had committed when that shard was first seen healthy in this wait (None: not by
    ``until``): the store has all its replicas back, a repaired or rejoined one included, also
    when resharding adds or removes shards meanwhile."""
    targets: dict[int, int] = {}
    while time.monotonic() < until:
        try:
            status = client.status(timeout_s=2.0)
        except RayKVError:
            time.sleep(0.2)
            continue
        for s in status.shards:
            if s.shard not in targets and s.healthy:
                targets[s.shard] = _leader_commit(s)
        if all(_caught_up(s, targets.get(s.shard)) for s in status.shards):
            return time.monotonic() - since
        time.sleep(0.2)
    return None


def _leader_commit(shard) -> int:
    return next(r.commit for r in shard.replicas if r.replica == shard.leader)


def _caught_up(shard, target: int | None) -> bool:
    return (target is not None and shard.leader is not None
            and all(r.alive and r.applied is not None and r.applied >= target for r in shard.replicas))


class Run:
    """One run: the store, the clients and the fault schedule; see the module docstring."""

    def __init__(self, bed: HostBed, nemeses: list[Nemesis], args: argparse.Namespace) -> None:
        self.bed = bed
        self.nemeses = nemeses
        self.args = args
        self.rng = random.Random(args.seed)
        self.report = Report(args.nemesis, args.hosts, args.shards, args.seed, args.time)

    def execute(self) -> Report:
        import ray

        import raykv

        ray.init(address=self.bed.head_address, log_to_driver=False, logging_level="ERROR")
        try:
            client = raykv.start(STORE, shards=self.args.shards, data_dir=self.bed.data_dirs(), create=True,
                                 timeout_s=self.args.op_timeout_s)
            self._drive(client)
        finally:
            ray.shutdown()
        return self.report

    def _drive(self, client) -> None:
        keys = [f"{c}-k{i}" for c in KEY_CHARS for i in range(2)]
        workload = Workload(client, keys, clients=self.args.clients, seed=self.args.seed,
                            consistency=("linearizable", "linearizable", "lease")).start()
        ledger = Ledger(client).start()
        tasks = TaskClients(self.bed, keys, self.args) if self.args.task_clients else None
        rescaler = Rescaler(client, (self.args.shards + 1, self.args.shards)).start() if self.args.scale else None
        started = time.monotonic()
        while time.monotonic() - started < self.args.time:
            self._cycle(client)
        if rescaler is not None:
            rescaler.halt(180)
            self.report.scaled, self.report.scale_failures = rescaler.done, rescaler.failed
            if not rescaler.done:
                self.report.problems.append("--scale: no resharding operation finished")
        task_ops = tasks.stop(workload.recorder.origin_ns, self.args.op_timeout_s * 4) if tasks else []
        history = workload.stop_with_final_reads(timeout_s=self.args.op_timeout_s * 2)
        self.report.task_ops = len(task_ops)
        self._check(sorted(history + task_ops, key=lambda op: op.call), workload, ledger)

    def _cycle(self, client) -> None:
        time.sleep(self.args.quiet_s)
        leaders = leader_hosts(client)
        faults = [n.apply(self.bed, self.rng) for n in self.nemeses]
        applied = time.monotonic()
        hit = sorted(shard for shard, host in leaders.items() if any(host in (h.name for h in n.targets) for n in self.nemeses))
        log(f"fault: {'; '.join(faults)} (leaders of shards {hit} there)")
        failover = writable_after(client, applied, applied + self.args.fault_s)
        time.sleep(max(0.0, applied + self.args.fault_s - time.monotonic()))
        evidence = {n.name: n.heal(self.bed) for n in self.nemeses}
        healed = time.monotonic()
        recovery = writable_after(client, healed, healed + self.args.recovery_bound_s)
        caught_up = caught_up_after(client, healed, healed + self.args.recovery_bound_s)
        log(f"healed: failover_s={failover} recovery_s={recovery} caught_up_s={caught_up} evidence={evidence}")
        self.report.cycles.append(Cycle(faults, evidence, failover, recovery, caught_up, hit))
        for name, shown in evidence.items():
            if not shown:
                self.report.problems.append(f"{name} did nothing ({faults})")
        if recovery is None:
            self.report.problems.append(f"no write on every shard within {self.args.recovery_bound_s}s of healing {faults}")
        if caught_up is None:
            self.report.problems.append(f"not every replica caught up within {self.args.recovery_bound_s}s of healing {faults}")

    def _check(self, history, workload: Workload, ledger: Ledger) -> None:
        r = self.report
        stats = workload.stats
        r.ops, r.failed, r.errors = len(history), stats.failed, stats.errors
        r.ok = sum(op.completed for op in history)
        r.indeterminate = r.ops - r.ok
        result = linearizability.check(history, timeout_s=self.args.check_timeout_s)
        r.verdict = {True: "linearizable", False: "NOT-linearizable", None: "check-timed-out"}[result.ok]
        if result.ok is not True:
            r.violation = result.explanation
        r.ledger_acked = len(ledger.acked)
        r.ledger_lost = ledger.lost()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raykv.testing.jepsen", description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=5, help="replica hosts (3..50)")
    p.add_argument("--nemesis", required=True, help="one or more of the nemeses, comma-separated")
    p.add_argument("--time", type=float, default=60.0, help="seconds of faults and load")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--clients", type=int, default=6, help="workload threads in the driver")
    p.add_argument("--task-clients", type=int, default=2,
                   help="Ray tasks on the hosts running two workload threads each (0: none)")
    p.add_argument("--quiet-s", type=float, default=3.0, help="peace before each fault")
    p.add_argument("--fault-s", type=float, default=10.0, help="how long each fault lasts")
    p.add_argument("--recovery-bound-s", type=float, default=60.0, help="a heal must bring writes back within this")
    p.add_argument("--op-timeout-s", type=float, default=10.0, help="client timeout of one operation")
    p.add_argument("--check-timeout-s", type=float, default=300.0, help="bound on the linearizability check")
    p.add_argument("--disk-mb", type=int, default=256, help="size of each host's data disk (ext4)")
    p.add_argument("--scale", action="store_true",
                   help="also reshard online all along, between --shards + 1 and --shards shards")
    p.add_argument("--tcp-rto-max-ms", type=int, default=tcpbackoff.RECOMMENDED_MS,
                   help="cap on TCP's retransmission backoff on every host (sysctl; default: what raykv's "
                        "deploy sets; 120000: the kernel's own)")
    p.add_argument("--keep-logs", action="store_true", help="keep the bed's folder (Ray session logs of every host)")
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    if not 3 <= args.hosts <= 50 or args.time <= 0 or args.shards < 1 or args.clients < 1:
        p.error("need 3..50 hosts, a positive --time, at least one shard and one client")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        nemeses = make(args.nemesis)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    reason = unavailable_reason()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 3
    os.environ.update(RAY_ENV)
    try:
        with HostBed(hosts=args.hosts, disk_mb=args.disk_mb, tcp_rto_max_ms=args.tcp_rto_max_ms,
                     keep_logs=args.keep_logs) as bed:
            log(f"bed up: {len(bed.hosts)} hosts, head {bed.head_address}")
            enter_netns(bed.head.netns)
            os.environ.update(bed.ray_env(bed.head))
            report = Run(bed, nemeses, args).execute()
    except HostBedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(report.line(), flush=True)
    if report.violation:
        print(report.violation, flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({**asdict(report), "passed": report.passed}, f, indent=1)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
