"""How soon a replica healed from a network cut catches up, by cut length and TCP backoff cap.

``python -m raykv.testing.rejoin --cuts 5,60,300 --rto-max-ms 120000,1000`` (root, Linux): for each
cap, a :class:`~raykv.testing.hosts.HostBed` of three hosts whose namespaces cap TCP's
retransmission backoff at that value (:mod:`raykv.tcpbackoff`), a 2-shard store under a steady
write load, and for each cut length: the host that leads shard 1 is cut from the other replica
hosts (``peers``: the head still reaches it, so Ray never declares it dead), healed, and timed
until every replica of every shard has applied what its leader had committed at the heal.

Each row also shows what holds the healed replica back: at the heal, the longest wait until the
next retransmission on the peers' TCP connections to the cut host (``ss -tino``), against the
baselines measured in the same run: a bare Ray actor round trip from the driver to that host, and
Raft's election timeout. Exit 0 when every replica caught up within ``--bound-s``, 1 otherwise,
3 when no bed can be built here.
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
    cut_s: float
    caught_up_s: float | None
    retransmit_wait_s: float
    """At the heal: the longest wait until a peer's next retransmission to the cut host."""
    actor_rtt_ms: float
    election_timeout_ms: float


def timer_seconds(text: str) -> float:
    """``22sec`` / ``164ms`` / ``1min2sec`` (ss's timer format) -> seconds."""
    scale = {"min": 60.0, "sec": 1.0, "ms": 0.001}
    return sum(float(n) * scale[unit] for n, unit in _PART.findall(text))


def retransmit_wait_s(bed: HostBed, target) -> float:
    """The longest pending retransmission timer on any peer's TCP connection to ``target``."""
    waits = [0.0]
    for host in bed.hosts:
        if host is target:
            continue
        out = subprocess.run(host.exec_argv(["ss", "-tino", "state", "established", "dst", target.ip]),
                             capture_output=True, text=True).stdout
        waits += [timer_seconds(t) for t in _TIMER.findall(out)]
    return max(waits)


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


def writers(kv, stop: threading.Event, n: int = 4) -> list[threading.Thread]:
    def loop(i: int) -> None:
        k = 0
        while not stop.is_set():
            try:
                kv.put(f"w{i}:{k % 500}", k)
                k += 1
            except Exception:  # noqa: BLE001 -- writes fail while a shard fails over; the load goes on
                time.sleep(0.05)

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def measure(args: argparse.Namespace) -> list[Row]:
    """All cuts on one bed with one cap (this process enters the bed's head namespace)."""
    os.environ.update(RAY_ENV)
    with HostBed(hosts=3, tcp_rto_max_ms=args.rto) as bed:
        enter_netns(bed.head.netns)
        os.environ.update(bed.ray_env(bed.head))
        import ray

        import raykv
        from ..replica.options import ReplicaOptions

        ray.init(address=bed.head_address, log_to_driver=False, logging_level="ERROR")
        try:
            kv = raykv.start("rejoin", shards=2, data_dir=bed.data_dirs(), create=True)
            options = ReplicaOptions()
            election_ms = options.tick_ms * options.election_ticks
            stop = threading.Event()
            writers(kv, stop)
            rows = []
            for cut in args.cuts:
                settled = caught_up_after(kv, time.monotonic(), time.monotonic() + 60)
                target = bed.host(leader_hosts(kv).get(1) or bed.hosts[0].name)
                rtt = actor_rtt_ms(ray, target)
                log(f"rto_max={args.rto}ms cut {cut}s of {target.name} (settled in {settled}s)")
                nemesis = PeerPartition()
                nemesis.targets = (target,)
                nemesis.start(bed)
                time.sleep(cut)
                wait = retransmit_wait_s(bed, target)
                nemesis.stop(bed)
                healed = time.monotonic()
                caught = caught_up_after(kv, healed, healed + args.bound_s)
                log(f"  healed: caught_up_s={caught} retransmit_wait_s={wait:.2f}")
                rows.append(Row(args.rto, cut, caught, wait, rtt, election_ms))
            stop.set()
            return rows
        finally:
            ray.shutdown()


def table(rows: list[Row]) -> str:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="a replica healed from a cut: seconds until every replica caught up")
    for col in ("tcp_rto_max_ms", "cut s", "caught up s", "next retransmit at heal s", "actor RTT ms",
                "election timeout ms"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r.rto_max_ms), f"{r.cut_s:g}", "-" if r.caught_up_s is None else f"{r.caught_up_s:.2f}",
                  f"{r.retransmit_wait_s:.2f}", f"{r.actor_rtt_ms:.2f}", f"{r.election_timeout_ms:g}")
    console = Console(file=io.StringIO(), width=120)
    console.print(t)
    return console.file.getvalue()


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raykv.testing.rejoin", description=__doc__.split("\n\n")[0])
    p.add_argument("--cuts", default="5,60,300", help="cut lengths in seconds, comma-separated")
    p.add_argument("--rto-max-ms", default="120000,1000",
                   help="caps on TCP's retransmission backoff to compare, one bed each (1000..120000)")
    p.add_argument("--bound-s", type=float, default=180.0, help="give up waiting for a catch-up after this")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--rto", type=int, help=argparse.SUPPRESS)  # one cap, in this process
    args = p.parse_args(argv)
    try:
        args.cuts = [float(c) for c in args.cuts.split(",") if c.strip()]
        args.caps = [int(c) for c in args.rto_max_ms.split(",") if c.strip()]
    except ValueError:
        p.error("--cuts and --rto-max-ms take comma-separated numbers")
    if not args.cuts or min(args.cuts) <= 0 or not args.caps or not all(1000 <= c <= 120_000 for c in args.caps):
        p.error("need positive cut lengths and caps within 1000..120000 ms")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    reason = unavailable_reason()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 3
    if args.rto is not None:
        rows = measure(args)
        print(json.dumps([asdict(r) for r in rows]), flush=True)
        return 0
    rows = []
    for cap in args.caps:  # one process per bed: entering a bed's namespace cannot be undone
        cmd = [sys.executable, "-m", "raykv.testing.rejoin", "--cuts", ",".join(f"{c:g}" for c in args.cuts),
               "--bound-s", str(args.bound_s), "--rto", str(cap)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            print(f"error: the run with tcp_rto_max_ms={cap} failed (exit {proc.returncode})", file=sys.stderr)
            return 3 if proc.returncode == 3 else 1
        rows += [Row(**r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]
    print(table(rows), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([asdict(r) for r in rows], f, indent=1)
    return 0 if all(r.caught_up_s is not None for r in rows) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HostBedError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
