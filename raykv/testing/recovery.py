"""Recovery after the worst, measured on real hosts: a replica healed from a network cut, and a
shard whose majority died for good (``python -m raykv.testing.recovery``, root, Linux).

**Rejoin** (``--cuts 5,60,300 --configs 120000/120000,1000/900000``): for each configuration
``RTO/KEEPALIVE`` -- the cap on TCP's retransmission backoff and Ray's gRPC keepalive timeout
(:mod:`raykv.tcpbackoff`; the kernel's and Ray's defaults are 120000/120000, raykv's deploy sets
1000/900000) -- a :class:`~raykv.testing.hosts.HostBed` using it, a 2-shard store under a steady write load, and for each cut length: the host that leads
shard 1 is cut from the other replica hosts (``peers``: the head still reaches it, so Ray never
declares it dead), healed, and timed until every replica of every shard has applied what its
leader had committed at the heal. Each row also shows what holds the healed replica back: at the
heal, the longest wait until the next retransmission on the peers' TCP connections to the cut
host (``ss -tino``), against baselines measured in the same run: a bare Ray actor round trip
from the driver to that host, and Raft's election timeout.

**Quorum loss** (``--quorum-loss``, on the bed of the last configuration): two hosts of one shard are
killed for good with their disks while writers put unique keys, chosen so that the meta group
and every other shard keep their majority. Measured: how long until ``status()`` reports the
shard's lost quorum, how long ``recover()`` takes and until the shard takes writes again, the
longest pause of the other shards' writes, and how many acknowledged writes are missing
afterwards (0 expected: the survivor was up to date).

Exit 0 when every replica caught up within ``--bound-s`` and the recovery lost no acknowledged
write, 1 otherwise, 3 when no bed can be built here.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass

from .hosts import RAY_ENV, HostBed, HostBedError, enter_netns, unavailable_reason
from .jepsen import caught_up_after, leader_hosts, log
from .nemesis import PeerPartition

_TIMER = re.compile(r"timer:\(on,([^,]+),")
_PART = re.compile(r"(\d+(?:\.\d+)?)(min|sec|ms)")


@dataclass
class Row:
    rto_max_ms: int
    keepalive_timeout_ms: int
    cut_s: float
    caught_up_s: float | None
    retransmit_wait_s: float
    """At the heal: the longest wait until a peer's next retransmission to the cut host."""
    reconnecting: int
    """At the heal: the peers' connections to the cut host being made again (``syn-sent``)."""
    actor_rtt_ms: float
    election_timeout_ms: float


def timer_seconds(text: str) -> float:
    """``22sec`` / ``164ms`` / ``1min2sec`` (ss's timer format) -> seconds."""
    scale = {"min": 60.0, "sec": 1.0, "ms": 0.001}
    return sum(float(n) * scale[unit] for n, unit in _PART.findall(text))


def connections_to(bed: HostBed, target) -> tuple[float, int]:
    """At this moment: the longest pending retransmission timer on the peers' established TCP
    connections to ``target``, and how many of their connections to it are still connecting
    (``syn-sent``: a connection TCP gave up on, being made again)."""
    waits, connecting = [0.0], 0
    for host in bed.hosts:
        if host is target:
            continue
        out = subprocess.run(host.exec_argv(["ss", "-tino", "state", "established", "dst", target.ip]),
                             capture_output=True, text=True).stdout
        waits += [timer_seconds(t) for t in _TIMER.findall(out)]
        out = subprocess.run(host.exec_argv(["ss", "-tn", "state", "syn-sent", "dst", target.ip]),
                             capture_output=True, text=True).stdout
        connecting += sum(1 for line in out.splitlines()[1:] if line.strip())
    return max(waits), connecting


def actor_rtt_ms(ray, host) -> float:
    """Median round trip of a bare actor call from the driver to an actor on ``host``."""
    from ..protocol import HOST_LABEL

    @ray.remote(num_cpus=0, label_selector={HOST_LABEL: host.name})
    class Echo:
        def ping(self) -> None:
            return None

    echo = Echo.remote()
    ray.get(echo.ping.remote())
    samples = []
    for _ in range(200):
        t = time.perf_counter()
        ray.get(echo.ping.remote())
        samples.append((time.perf_counter() - t) * 1000)
    ray.kill(echo)
    return statistics.median(samples)


class Writers:
    """Threads putting unique keys (``w<thread>:<n>``) until stopped; every acknowledged put is
    recorded with when it was acknowledged, so a lost write and a pause of a shard both show."""

    def __init__(self, kv, n: int = 4) -> None:
        self.kv, self.stop = kv, threading.Event()
        self.acked: dict[str, tuple[int, float]] = {}
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _loop(self, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            key = f"{'aknw'[i % 4]}{i}:{n}"  # spread over the key space, so over the shards
            try:
                self.kv.put(key, n)
                self.acked[key] = (n, time.monotonic())
            except Exception:  # noqa: BLE001 -- fails while a shard fails over or lost its quorum
                time.sleep(0.05)
            n += 1

    def halt(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def longest_pause_s(self, keys_of, since: float, until: float) -> float:
        """The longest time without an acknowledged put among keys ``keys_of(key)`` accepts."""
        times = sorted(t for key, (_, t) in list(self.acked.items()) if keys_of(key) and since <= t <= until)
        edges = [since, *times, until]
        return max(b - a for a, b in zip(edges, edges[1:]))


@dataclass
class QuorumLoss:
    shard: int
    killed_hosts: list[str]
    reported_s: float | None
    """From the kill until ``status()`` showed the shard's lost quorum."""
    recover_s: float
    """How long ``recover()`` took (choose, kill the rest, force, restart, elect)."""
    writable_s: float | None
    """From the start of ``recover()`` until a put on the shard succeeded."""
    others_longest_pause_s: float
    """The longest time the other shards went without an acknowledged put, kill to the end."""
    others_failed_over: list[int]
    """Other shards whose leader was on a killed host (their pause includes a failover)."""
    router_host: str | None
    """Where the store's router ran when the hosts were killed (head: the head node)."""
    acked: int
    lost: int
    """Acknowledged puts missing afterwards (all shards)."""
    report: dict


def victims(smap) -> tuple[int, list[str]] | None:
    """A shard and two of its hosts whose loss leaves the meta group and every other shard a
    majority (None: the placement has no such pair)."""
    groups = [smap.meta_spec(), *smap.shards]
    for spec in smap.shards:
        hosts = spec.hosts()
        for i, a in enumerate(hosts):
            for b in hosts[i + 1:]:
                others = [g for g in groups if g.shard != spec.shard]
                if all(2 * len({a, b} & set(g.hosts())) < len(g.hosts()) for g in others):
                    return spec.shard, [a, b]
    return None


def quorum_loss(kv, bed: HostBed, writers: Writers) -> QuorumLoss:
    """Kill two hosts of one shard for good (see the module docstring) and recover the shard."""
    caught_up_after(kv, time.monotonic(), time.monotonic() + 60)
    smap = kv.refresh(newest=False)
    found = victims(smap)
    if found is None:
        raise HostBedError(f"no two hosts of one shard spare every other group's majority: {smap}")
    shard, hosts = found
    spec = smap.by_id(shard)
    failed_over = sorted(sid for sid, host in leader_hosts(kv).items() if sid != shard and host in hosts)
    router = router_host(kv)
    log(f"quorum loss: killing {hosts} (shard {shard} on {spec.hosts()}; leaders of {failed_over} there too)")
    killed = time.monotonic()
    for name in hosts:
        bed.kill_host(bed.host(name))
        bed.wipe_disk(bed.host(name))
    reported = None
    while time.monotonic() - killed < 60:
        try:
            if any(s.shard == shard and s.quorum_lost for s in kv.status(timeout_s=1.0).shards):
                reported = time.monotonic() - killed
                break
        except Exception:  # noqa: BLE001 -- status itself may time out meanwhile
            pass
        time.sleep(0.1)
    log(f"  quorum lost reported after {reported}s; recovering")
    began = time.monotonic()
    report = kv.recover(shard)
    recover_s = time.monotonic() - began
    writable = None
    key = next(k for k in (f"probe{i}" for i in range(10_000)) if spec.contains(_encoded(k)))
    while time.monotonic() - began < 120:
        try:
            kv.put(key, 1)
            writable = time.monotonic() - began
            break
        except Exception:  # noqa: BLE001 -- not yet
            time.sleep(0.1)
    time.sleep(2.0)
    writers.halt()
    ended = time.monotonic()
    others = writers.longest_pause_s(lambda k: not spec.contains(_encoded(k)), killed, ended)
    kv.refresh()
    keys = sorted(writers.acked)
    values = kv.get_batch(keys)
    lost = sum(v != writers.acked[k][0] for k, v in zip(keys, values))
    log(f"  recovered in {recover_s:.2f}s, writable after {writable}s, others' longest pause {others:.2f}s, "
        f"lost {lost} of {len(keys)} acknowledged puts")
    return QuorumLoss(shard, hosts, reported, recover_s, writable, others, failed_over, router, len(keys), lost,
                      report)


def router_host(kv) -> str | None:
    """The ``raykv-host`` label of the node running the store's router ("head" without one)."""
    import ray

    from ..protocol import HOST_LABEL, NAMESPACE, router_name

    try:
        node = ray.get(ray.get_actor(router_name(kv._store), namespace=NAMESPACE).node_id.remote(), timeout=10)
    except Exception:  # noqa: BLE001 -- a diagnostic only
        return None
    labels = {n["NodeID"]: n["Labels"] for n in ray.nodes()}
    return labels.get(node, {}).get(HOST_LABEL, "head")


def _encoded(key: str) -> bytes:
    from ..userdata import encode_key

    return encode_key(key)


def measure(args: argparse.Namespace) -> dict:
    """All cuts on one bed with one cap, then the quorum loss if asked (this process enters the
    bed's head namespace)."""
    os.environ.update(RAY_ENV)
    with HostBed(hosts=args.hosts, tcp_rto_max_ms=args.rto, keepalive_timeout_ms=args.keepalive,
                 keep_logs=args.keep_logs) as bed:
        enter_netns(bed.head.netns)
        os.environ.update(bed.ray_env(bed.head))
        import ray

        import raykv
        from ..replica.options import ReplicaOptions

        ray.init(address=bed.head_address, log_to_driver=False, logging_level="ERROR")
        try:
            kv = raykv.start("recovery", shards=2, data_dir=bed.data_dirs(), create=True)
            options = ReplicaOptions()
            election_ms = options.tick_ms * options.election_ticks
            writers = Writers(kv)
            rows = []
            for cut in args.cuts:
                settled = caught_up_after(kv, time.monotonic(), time.monotonic() + 60)
                target = bed.host(leader_hosts(kv).get(1) or bed.hosts[0].name)
                rtt = actor_rtt_ms(ray, target)
                log(f"rto_max={args.rto}ms keepalive={args.keepalive}ms cut {cut}s of {target.name} "
                    f"(settled in {settled}s)")
                nemesis = PeerPartition()
                nemesis.targets = (target,)
                nemesis.start(bed)
                time.sleep(cut)
                wait, connecting = connections_to(bed, target)
                nemesis.stop(bed)
                healed = time.monotonic()
                caught = caught_up_after(kv, healed, healed + args.bound_s)
                log(f"  healed: caught_up_s={caught} retransmit_wait_s={wait:.2f} reconnecting={connecting}")
                rows.append(Row(args.rto, args.keepalive, cut, caught, wait, connecting, rtt, election_ms))
            lost = asdict(quorum_loss(kv, bed, writers)) if args.quorum_loss else None
            writers.halt()
            return {"rows": [asdict(r) for r in rows], "quorum_loss": lost}
        finally:
            ray.shutdown()


def table(rows: list[Row]) -> str:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="a replica healed from a cut: seconds until every replica caught up")
    for col in ("tcp_rto_max_ms", "keepalive ms", "cut s", "caught up s", "next retransmit at heal s", "reconnecting at heal",
                "actor RTT ms", "election timeout ms"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r.rto_max_ms), str(r.keepalive_timeout_ms), f"{r.cut_s:g}", "-" if r.caught_up_s is None else f"{r.caught_up_s:.2f}",
                  f"{r.retransmit_wait_s:.2f}", str(r.reconnecting), f"{r.actor_rtt_ms:.2f}",
                  f"{r.election_timeout_ms:g}")
    console = Console(file=io.StringIO(), width=120)
    console.print(t)
    return console.file.getvalue()


def quorum_line(q: dict) -> str:
    def s(v):
        return "-" if v is None else f"{v:.2f}"

    r = q["report"]
    return (f"quorum loss of shard {q['shard']} (hosts {', '.join(q['killed_hosts'])} killed with their disks): "
            f"reported after {s(q['reported_s'])} s; recover() {s(q['recover_s'])} s (survivor {r['survivor']}, "
            f"kept index {r['kept_index']}, commit before {r['commit_before']}); writable {s(q['writable_s'])} s "
            f"after recover() began; other shards' longest pause {s(q['others_longest_pause_s'])} s "
            f"(leaders that failed over: {q['others_failed_over'] or 'none'}; router on {q['router_host']}); "
            f"acknowledged puts lost: {q['lost']} of {q['acked']}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raykv.testing.recovery", description=__doc__.split("\n\n")[0])
    p.add_argument("--cuts", default="5,60,300", help="cut lengths in seconds, comma-separated (none: '')")
    p.add_argument("--configs", default="120000/120000,1000/900000",
                   help="RTO/KEEPALIVE pairs to compare, one bed each: the cap on TCP's retransmission backoff "
                        "(1000..120000 ms) and Ray's gRPC keepalive timeout (ms)")
    p.add_argument("--quorum-loss", action="store_true", help="then kill two hosts of a shard and recover it")
    p.add_argument("--hosts", type=int, default=5, help="replica hosts of each bed (4..20)")
    p.add_argument("--bound-s", type=float, default=180.0, help="give up waiting for a catch-up after this")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--keep-logs", action="store_true", help="keep each bed's folder (Ray session logs of every host)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # one configuration, in this process
    args = p.parse_args(argv)
    try:
        args.cuts = [float(c) for c in args.cuts.split(",") if c.strip()]
        args.configs = [tuple(int(v) for v in c.split("/")) for c in (args.one or args.configs).split(",") if c.strip()]
    except ValueError:
        p.error("--cuts takes comma-separated numbers, --configs comma-separated RTO/KEEPALIVE pairs")
    if any(c <= 0 for c in args.cuts) or not args.configs or not all(
            len(c) == 2 and 1000 <= c[0] <= 120_000 and c[1] >= 1000 for c in args.configs):
        p.error("need positive cut lengths, caps within 1000..120000 ms and keepalive timeouts of 1000 ms or more")
    args.rto, args.keepalive = args.configs[-1]
    if not 4 <= args.hosts <= 20:
        p.error("need 4..20 hosts")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    reason = unavailable_reason()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 3
    if args.one is not None:
        print(json.dumps(measure(args)), flush=True)
        return 0
    rows, lost = [], None
    for i, (rto, keepalive) in enumerate(args.configs):  # one process per bed: a namespace entered is for good
        cmd = [sys.executable, "-m", "raykv.testing.recovery", "--cuts", ",".join(f"{c:g}" for c in args.cuts),
               "--bound-s", str(args.bound_s), "--hosts", str(args.hosts), "--one", f"{rto}/{keepalive}"]
        if args.keep_logs:
            cmd.append("--keep-logs")
        if args.quorum_loss and i == len(args.configs) - 1:
            cmd.append("--quorum-loss")
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            print(f"error: the run with {rto}/{keepalive} failed (exit {proc.returncode})", file=sys.stderr)
            return 3 if proc.returncode == 3 else 1
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        rows += [Row(**r) for r in out["rows"]]
        lost = out["quorum_loss"] or lost
    if rows:
        print(table(rows), flush=True)
    if lost:
        print(quorum_line(lost), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"rows": [asdict(r) for r in rows], "quorum_loss": lost}, f, indent=1)
    ok = all(r.caught_up_s is not None for r in rows) and (lost is None or (lost["lost"] == 0 and lost["writable_s"]))
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HostBedError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
