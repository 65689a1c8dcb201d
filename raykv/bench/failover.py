"""``python -m raykv.bench failover``: write unavailability after a leader kill, p50/p99/max over trials.

Runs on its own ``ray.cluster_utils.Cluster`` (:func:`raykv.bench.shard.bench_cluster`: a head
with 2 CPUs and three 0-CPU raylets labelled ``raykv-host=h1..h3``) a store of **one shard of
three replicas** (:func:`raykv.bench.store.running_store`, default
:class:`~raykv.replica.options.ReplicaOptions`). A *writer* thread of this driver puts distinct
keys (``fo00000000``, ``fo00000001``, ...) one after the other through the store's client for
the whole run and records ``(sent, acked)`` -- ``time.perf_counter()`` just before the call and
just after it returned -- of every acknowledged put (a put that raised is recorded apart and
never counts as acknowledged).

Each of ``--trials`` trials (20 by default, 3 with ``--quick``):

1. waits until the group is **healthy**: all three replicas answer ``status()``, exactly one
   says ``role == "leader"``, the other two name it as leader in the same term and have applied
   at least the commit index the leader reported on the previous poll; then until the writer
   has ``settle_acks`` more acknowledged puts;
2. kills the leader at ``t_kill``: ``--mode sigkill`` (default) sends SIGKILL to the replica
   actor's process (``status()["pid"]``; every raylet runs on this machine), ``--mode ray-kill``
   calls ``ray.kill(handle, no_restart=False)``. Either way Ray restarts the actor in place
   (``max_restarts=-1``) and it recovers from its LMDB;
3. polls the two survivors' ``status()`` (every :data:`POLL_S`) and the killed replica's
   ``pid()`` (every :data:`RESTART_PROBE_S`) until a survivor leads and the killed one is back.

Per trial, all times from ``t_kill``:

* **unavailable** (the figure): until the *ack of the first put sent at or after t_kill*.
  The writer is sequential, so this put is sent only once the put in flight at the kill has
  come back; it measures how long after the kill a client that starts a write gets it done;
* **gap**: the longest interval between consecutive acks from the last ack before ``t_kill``
  to the ack of that first put (the stall a continuous writer sees; it starts before the kill);
* **election**: until a survivor first reports itself leader in a higher term (polled, so up to
  :data:`POLL_S` late);
* **restart**: until the killed replica answers ``pid()`` with a new pid -- Ray's own actor
  restart, constructor (LMDB recovery) included (probed, so up to :data:`RESTART_PROBE_S` late).

The election timer of a follower runs from the last heartbeat it heard, which came up to one
tick before the kill, so ``election`` can come out slightly below ``election.timeout.min``.

Same-run baselines: ``rtt.bare.p50`` (a bare sync actor's sequential round trip on ``h1``,
:func:`raykv.bench.baseline.measure`), ``put.seq.p50`` (sequential puts to the healthy store
before the trials), ``election.timeout.min/max`` (the configured randomized election timeout,
``[election_ticks, 2 * election_ticks) x tick_ms``). At the end every acknowledged key is read
back (``get_batch``, linearizable) and compared with the value put: ``verify.acked_read_back``
counts the matches, its detail lists ``acked``, ``missing`` and ``mismatched`` (a check printed
with the figures, not a timed assert). Percentiles are nearest-rank (with 20 trials p99 is the
maximum). Nothing here asserts speed.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, replace

import ray

from ..errors import InvalidRequestError, RayKVError
from ..replica.options import ReplicaOptions
from ..protocol import HOST_LABEL
from ..runtime.shard import replica_handle
from . import baseline, store
from .report import Figure, Report, percentile, p50_p99_us
from .shard import bench_cluster

LOCAL_RAY = False
MODES = ("sigkill", "ray-kill")
POLL_S = 0.01
"""Interval of the recovery and health polls."""
CALL_TIMEOUT_S = 1.0
"""Deadline of one poll call (a restarting replica does not answer)."""
RESTART_PROBE_S = 0.02
"""Interval of the ``pid()`` probes of the killed replica (they may overlap)."""
VERIFY_CHUNK = 1000


@dataclass(frozen=True)
class Config:
    """Settings of one run; :meth:`quick` is for tests (figures not worth reading)."""

    trials: int = 20
    ops: int = 500
    settle_acks: int = 50
    mode: str = "sigkill"
    trial_timeout_s: float = 60.0

    @classmethod
    def quick(cls) -> Config:
        return cls(trials=3, ops=30, settle_acks=10)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``failover`` beyond the common ``--quick`` and ``--json`` (given ones override ``--quick``)."""
    parser.add_argument("--trials", type=int, help="leader kills (default 20; 3 with --quick)")
    parser.add_argument("--ops", type=int, help="sequential puts (and bare round trips) of the baselines (default 500)")
    parser.add_argument("--mode", choices=MODES, default="sigkill",
                        help="sigkill: SIGKILL the leader's process; ray-kill: ray.kill(handle, no_restart=False)")


def config(args: argparse.Namespace) -> Config:
    """The run's :class:`Config`; :class:`~raykv.errors.InvalidRequestError` for a bad count."""
    cfg = Config.quick() if args.quick else Config()
    given = {"trials": args.trials, "ops": args.ops, "mode": args.mode}
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    if cfg.trials < 1 or cfg.ops < 1:
        raise InvalidRequestError(f"--trials and --ops must be >= 1, got {cfg.trials} and {cfg.ops}")
    return cfg


def run(args: argparse.Namespace) -> Report:
    """Measure the baselines, then the trials, on a cluster and store of its own."""
    cfg = config(args)
    options = ReplicaOptions()
    report = Report("raykv failover bench", {**asdict(cfg), "replicas": store.REPLICAS, "shards": 1,
                                             "tick_ms": options.tick_ms, "election_ticks": options.election_ticks})
    with bench_cluster() as root:
        _bare_rtt(report, cfg.ops)
        _election_timeout(report, options)
        with store.running_store(root, 1) as client:
            _put_p50(report, client, cfg.ops)
            group = shard_group(client)
            writer = Writer(client)
            writer.start()
            try:
                trials = [one_trial(group, writer, cfg) for _ in range(cfg.trials)]
            finally:
                writer.stop()
            _trial_figures(report, trials, cfg, client.stats())
            _verify(report, client, writer)
    report.finish()
    return report


# -- baselines -----------------------------------------------------------------------------
def _bare_rtt(report: Report, ops: int) -> None:
    """``rtt.bare.p50`` (µs): sequential ``put(100 B)`` round trips to a bare sync actor on ``h1``."""
    actor = baseline.SyncActor.options(label_selector={HOST_LABEL: "h1"}).remote()
    variant = baseline.RTT_VARIANTS[0]
    baseline.measure(actor, variant, max(1, ops // 10), sequential=True)
    sample = baseline.measure(actor, variant, ops, sequential=True)
    report.add(Figure("rtt.bare.p50", p50_p99_us(sample.latencies)[0], "µs",
                      "bare Ray actor round trip (100 B), sequential, p50"))
    ray.kill(actor, no_restart=True)


def _election_timeout(report: Report, options: ReplicaOptions) -> None:
    """``election.timeout.min/max`` (ms): the configured randomized election timeout range."""
    low = options.election_ticks * options.tick_ms
    report.add(Figure("election.timeout.min", low, "ms",
                      f"configured: election_ticks {options.election_ticks} x tick {options.tick_ms} ms"))
    report.add(Figure("election.timeout.max", 2 * low, "ms", "configured: 2 x election_ticks x tick (exclusive)"))


def _put_p50(report: Report, client, ops: int) -> None:
    """``put.seq.p50`` (µs): sequential 100 B puts to the healthy store, one thread."""
    client.put("warm", store.VALUE)
    took = []
    for i in range(ops):
        t = time.perf_counter()
        client.put(f"seq{i % 100:03d}", store.VALUE)
        took.append(time.perf_counter() - t)
    report.add(Figure("put.seq.p50", p50_p99_us(took)[0], "µs", "sequential put (100 B) to the healthy store, p50",
                      "rtt.bare.p50"))


# -- the writer ----------------------------------------------------------------------------
def put_key(i: int) -> str:
    return f"fo{i:08d}"


def put_value(i: int) -> bytes:
    """100 B, distinct per key (so the read-back check sees a wrong value, not just a present key)."""
    return put_key(i).encode().ljust(100, b"v")


class Writer:
    """A thread putting ``put_key(0), put_key(1), ...`` one at a time until :meth:`stop`.

    ``acks[i] = (i, sent, acked)`` for every acknowledged put in order (perf_counter seconds);
    ``failures`` holds ``(i, sent, failed, repr(error))`` of puts that raised. Readers wait on
    :attr:`changed` (notified after every ack)."""

    def __init__(self, client) -> None:
        self.client = client
        self.acks: list[tuple[int, float, float]] = []
        self.failures: list[tuple[int, float, float, str]] = []
        self.changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="failover-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            sent = time.perf_counter()
            try:
                self.client.put(put_key(i), put_value(i))
            except RayKVError as exc:  # not acknowledged: never verified, reported in the detail
                self.failures.append((i, sent, time.perf_counter(), repr(exc)))
            else:
                with self.changed:
                    self.acks.append((i, sent, time.perf_counter()))
                    self.changed.notify_all()
            i += 1

    def wait_for(self, predicate, timeout_s: float, what: str) -> None:
        """Block until ``predicate(acks)`` holds; RuntimeError after ``timeout_s``."""
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self.acks), timeout=timeout_s):
                raise RuntimeError(f"failover bench: no {what} within {timeout_s:g} s "
                                   f"({len(self.acks)} acks, last failure {self.failures[-1:]})")

    def wait_acks(self, count: int, timeout_s: float) -> None:
        """Block until ``count`` more puts are acknowledged than now."""
        target = len(self.acks) + count
        self.wait_for(lambda acks: len(acks) >= target, timeout_s, f"{count} acks")

    def first_sent_after(self, t: float, timeout_s: float) -> tuple[int, float, float]:
        """The first acknowledged put sent at or after ``t`` (waiting for it)."""
        self.wait_for(lambda acks: bool(acks) and acks[-1][1] >= t, timeout_s, "ack of a put sent after the kill")
        with self.changed:
            return next(a for a in self.acks if a[1] >= t)

    def longest_gap(self, since: float, until: float) -> float:
        """The longest interval between consecutive acks, from the last ack before ``since`` to ``until``."""
        with self.changed:
            times = [a[2] for a in self.acks if a[2] <= until]
        before = [x for x in times if x < since]
        window = ([before[-1]] if before else [since]) + [x for x in times if x >= since]
        return max((b - a for a, b in zip(window, window[1:])), default=0.0)


# -- one trial -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Trial:
    """One leader kill; times in seconds from the kill."""

    killed: int
    new_leader: int
    unavailable_s: float
    gap_s: float
    election_s: float
    restart_s: float
    put_failures: int


def shard_group(client) -> dict[int, object]:
    """Replica id -> actor handle of the store's only data shard."""
    (spec,) = client.shard_map.shards
    return {rid: replica_handle(client.store, spec.shard, rid) for rid, _ in spec.replicas}


def one_trial(group: dict[int, object], writer: Writer, cfg: Config) -> Trial:
    """Wait until healthy, kill the leader, watch the recovery (see the module docstring)."""
    leader, statuses = wait_healthy(group, cfg.trial_timeout_s)
    writer.wait_acks(cfg.settle_acks, cfg.trial_timeout_s)
    failures = len(writer.failures)
    old_pid, old_term = statuses[leader]["pid"], statuses[leader]["term"]
    killed_at = time.perf_counter()
    if cfg.mode == "sigkill":
        os.kill(old_pid, signal.SIGKILL)
    else:
        ray.kill(group[leader], no_restart=False)
    election_s, restart_s = watch_recovery(group, leader, old_pid, old_term, killed_at, cfg.trial_timeout_s)
    first = writer.first_sent_after(killed_at, cfg.trial_timeout_s)
    new_leader, _ = wait_healthy(group, cfg.trial_timeout_s)
    return Trial(leader, new_leader, first[2] - killed_at, writer.longest_gap(killed_at, first[2]), election_s,
                 restart_s, len(writer.failures) - failures)


def _poll(ref):
    """The call's result, or None if it failed or took longer than :data:`CALL_TIMEOUT_S`."""
    try:
        return ray.get(ref, timeout=CALL_TIMEOUT_S)
    except Exception:  # noqa: BLE001 -- a dead or restarting replica: any Ray error means "not yet"
        return None


def watch_recovery(group: dict, killed: int, old_pid: int, old_term: int, killed_at: float,
                   timeout_s: float) -> tuple[float, float]:
    """``(election_s, restart_s)`` after ``killed_at``: a survivor leads in a term above
    ``old_term``; ``killed`` answers ``pid()`` with a pid other than ``old_pid``.

    The replicas are polled independently, no call waiting for another: a survivor is asked
    :data:`POLL_S` after its previous answer (at once if a call went unanswered for
    :data:`CALL_TIMEOUT_S`); the killed replica every :data:`RESTART_PROBE_S` whatever is still
    outstanding, since a call that reached the dying process may hang until Ray gives up on it."""
    def ask(rid: int):
        return (group[rid].pid if rid == killed else group[rid].status).remote()

    def reached(rid: int, answer) -> bool:
        if rid == killed:
            return answer != old_pid
        return answer["role"] == "leader" and answer["term"] > old_term

    seen: dict[str, float] = {}
    due = {rid: killed_at for rid in group}  # replica -> when to ask it next
    outstanding: dict = {}  # ref -> (replica, asked at)
    while not ("election" in seen and "restart" in seen):
        now = time.perf_counter()
        if now > killed_at + timeout_s:
            raise RuntimeError(f"failover bench: no recovery within {timeout_s:g} s (seen {seen})")
        for rid in [rid for rid, at in due.items() if at <= now]:
            outstanding[ask(rid)] = (rid, now)
            due[rid] = now + RESTART_PROBE_S if rid == killed else float("inf")  # survivors: after the answer
        ready, _ = ray.wait(list(outstanding), num_returns=len(outstanding), timeout=POLL_S / 2)
        now = time.perf_counter()
        for ref, (rid, asked) in list(outstanding.items()):
            if ref in ready:
                answer = _poll(ref)
                if answer is not None and reached(rid, answer):
                    seen.setdefault("restart" if rid == killed else "election", now - killed_at)
            elif now - asked < CALL_TIMEOUT_S:
                continue
            del outstanding[ref]
            if rid != killed:
                due[rid] = max(now, asked + POLL_S)
    return seen["election"], seen["restart"]


def wait_healthy(group: dict, timeout_s: float) -> tuple[int, dict[int, dict]]:
    """``(leader id, statuses)`` once every replica answers, exactly one leads, the others follow
    it in its term and have applied the commit index it reported on the previous poll."""
    deadline = time.perf_counter() + timeout_s
    previous: tuple[int, int] | None = None  # (leader, its commit) at the previous poll
    while time.perf_counter() < deadline:
        statuses = {rid: _poll(h.status.remote()) for rid, h in group.items()}
        leader = _sole_leader(statuses)
        if leader is not None:
            term = statuses[leader]["term"]
            floor = previous[1] if previous and previous[0] == leader else None
            if floor is not None and all(s["leader"] == leader and s["term"] == term and s["applied"] >= floor
                                         for rid, s in statuses.items() if rid != leader):
                return leader, statuses
            previous = (leader, statuses[leader]["commit"])
        time.sleep(POLL_S)
    raise RuntimeError(f"failover bench: the group was not healthy within {timeout_s:g} s")


def _sole_leader(statuses: dict[int, dict | None]) -> int | None:
    """The one replica reporting ``role == "leader"`` if every replica answered, else None."""
    if any(s is None for s in statuses.values()):
        return None
    leaders = [rid for rid, s in statuses.items() if s["role"] == "leader"]
    return leaders[0] if len(leaders) == 1 else None


# -- figures -------------------------------------------------------------------------------
def _trial_figures(report: Report, trials: list[Trial], cfg: Config, client_stats: dict) -> None:
    """``failover.unavailable.*``, ``failover.gap.*``, ``election.p50`` and ``restart.*`` (ms)."""
    ms = lambda field: [getattr(t, field) * 1e3 for t in trials]  # noqa: E731
    unavailable, gap, election, restart = ms("unavailable_s"), ms("gap_s"), ms("election_s"), ms("restart_s")
    kill = "SIGKILL of its process" if cfg.mode == "sigkill" else "ray.kill(no_restart=False)"
    n = f"{len(trials)} leader kills ({kill})"
    per_trial = {"trials": [asdict(t) for t in trials], "client_stats": client_stats}
    report.add(Figure("election.p50", percentile(election, 50), "ms",
                      f"kill -> a survivor reports itself leader in a new term (polled every {POLL_S * 1e3:g} ms), p50",
                      "election.timeout.min", detail={"all_ms": election}))
    for q in (50, 99):
        report.add(Figure(f"failover.unavailable.p{q}", percentile(unavailable, q), "ms",
                          f"write unavailability: kill -> ack of the first put sent after it, p{q} of {n}",
                          "election.timeout.max", detail={"all_ms": unavailable, **per_trial} if q == 50 else {}))
    report.add(Figure("failover.unavailable.max", max(unavailable), "ms", f"write unavailability, max of {n}",
                      "election.timeout.max"))
    for q in (50, 99):
        report.add(Figure(f"failover.gap.p{q}", percentile(gap, q), "ms",
                          f"longest gap between consecutive put acks around the kill, p{q}", "election.timeout.max",
                          detail={"all_ms": gap} if q == 50 else {}))
    report.add(Figure("restart.p50", percentile(restart, 50), "ms",
                      "Ray's actor restart: kill -> the killed replica answers pid() with a new pid, p50",
                      detail={"all_ms": restart}))
    report.add(Figure("restart.max", max(restart), "ms", "Ray's actor restart, max"))


def _verify(report: Report, client, writer: Writer) -> None:
    """``verify.acked_read_back``: how many acknowledged puts read back with the value put."""
    acked = [i for i, _, _ in writer.acks]
    missing, mismatched = [], []
    for start in range(0, len(acked), VERIFY_CHUNK):
        chunk = acked[start:start + VERIFY_CHUNK]
        for i, value in zip(chunk, client.get_batch([put_key(i) for i in chunk])):
            if value is None:
                missing.append(put_key(i))
            elif value != put_value(i):
                mismatched.append(put_key(i))
    ok = len(acked) - len(missing) - len(mismatched)
    report.add(Figure("verify.acked_read_back", ok, "keys",
                      f"acknowledged puts read back with their value, of {len(acked)} acknowledged "
                      f"({len(writer.failures)} puts failed)",
                      detail={"acked": len(acked), "missing": missing[:20], "mismatched": mismatched[:20],
                              "missing_count": len(missing), "mismatched_count": len(mismatched),
                              "put_failures": [f[3] for f in writer.failures[:5]],
                              "put_failures_count": len(writer.failures)}))
