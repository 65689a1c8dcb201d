"""The consistency check (``jobs/consistency_check.py``): a concurrent
:class:`~raykv.testing.workload.Workload` on fresh keys, optional chaos (kill or move shard leaders),
then the linearizability checker; the verdict is the exit code."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..errors import RayKVError
from .common import (EXIT_CHECK_FAILED, EXIT_OK, EXIT_UNKNOWN, KEY_ALPHABET, add_store_argument, connect_store,
                     positive, run_main)


def check_keys(count: int, run_id: str) -> list[str]:
    """``count`` fresh keys of this run, spread over the key space (so over every shard)."""
    return [f"{KEY_ALPHABET[(i * 17) % len(KEY_ALPHABET)]}cc-{run_id}-{i}" for i in range(count)]


@dataclass(frozen=True)
class ChaosEvent:
    at_s: float
    action: str
    shard: int
    replica: int | None
    detail: str = ""


def chaos_step(client, action: str, turn: int, started: float) -> ChaosEvent:
    """Kill (with restart) or move away the leader of one shard, shards taken in turn."""
    import ray

    from ..runtime.shard import replica_handle

    shards = client.status(timeout_s=2.0).shards
    shard = shards[turn % len(shards)]
    at = time.monotonic() - started
    if shard.leader is None:
        return ChaosEvent(at, "skip", shard.shard, None, "no leader seen")
    handle = replica_handle(client.store, shard.shard, shard.leader)
    if action == "kill":
        ray.kill(handle, no_restart=False)
        return ChaosEvent(at, "kill", shard.shard, shard.leader, "ray.kill, restarted by Ray")
    others = [r.replica for r in shard.replicas if r.alive and r.replica != shard.leader]
    if not others:
        return ChaosEvent(at, "skip", shard.shard, shard.leader, "no other alive replica")
    target = others[turn % len(others)]
    ray.get(handle.transfer_leader.remote(target), timeout=10)
    return ChaosEvent(at, "transfer", shard.shard, shard.leader, f"to replica {target}")


def run_with_chaos(client, seconds: float, action: str | None, interval_s: float) -> list[ChaosEvent]:
    """Wait ``seconds`` (the workload runs meanwhile); every ``interval_s`` apply one chaos step (if ``action``)."""
    started = time.monotonic()
    deadline = started + seconds
    events: list[ChaosEvent] = []
    next_at = started + interval_s
    while (now := time.monotonic()) < deadline:
        time.sleep(max(0.0, min(deadline, next_at) - now))
        if action and time.monotonic() < deadline:
            try:
                events.append(chaos_step(client, action, len(events), started))
            except Exception as e:  # noqa: BLE001 -- a failed nemesis step is reported, not fatal
                events.append(ChaosEvent(time.monotonic() - started, "failed", -1, None, f"{type(e).__name__}: {e}"))
        next_at += interval_s
    return events


def consistency_check_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="consistency_check.py", description="Record a concurrent history against a "
                                "running raykv store (optionally killing or moving leaders) and check that it is "
                                "linearizable; exit 0 only if it is.")
    add_store_argument(p)
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS, as set inside a Ray job)")
    p.add_argument("--seconds", type=positive(float), default=20.0, help="how long to run (default 20)")
    p.add_argument("--clients", type=positive(int), default=6, help="concurrent client threads (default 6)")
    p.add_argument("--keys", type=positive(int), default=12, help="keys (fresh per run) the clients contend on")
    p.add_argument("--consistency", choices=("linearizable", "lease"), default="linearizable",
                   help="consistency level of the reads (stale reads are not linearizable by design)")
    p.add_argument("--chaos", choices=("kill", "transfer"), default=None,
                   help="during the run, kill (ray.kill with restart) or move a shard leader, shards in turn")
    p.add_argument("--chaos-interval", type=positive(float), default=5.0, help="seconds between chaos steps")
    p.add_argument("--check-timeout", type=positive(float), default=300.0,
                   help="give up checking after this many seconds (exit 6)")
    p.add_argument("--history", default=None, help="also write the history here (JSONL, raykv.testing.history)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=positive(float), default=10.0, help="per-request deadline in seconds")
    return p


def consistency_check_main(argv: Sequence[str] | None = None) -> int:
    args = consistency_check_parser().parse_args(argv)

    def body() -> int:
        from ..testing.history import dump_jsonl
        from ..testing.linearizability import check
        from ..testing.workload import Workload

        run_id = uuid.uuid4().hex[:8]
        keys = check_keys(args.keys, run_id)
        with connect_store(args.store, args.address, args.timeout) as client:
            workload = Workload(client, keys, clients=args.clients, seed=args.seed,
                                consistency=args.consistency).start()
            events = run_with_chaos(client, args.seconds, args.chaos, args.chaos_interval)
            history = workload.stop_with_final_reads()
            _delete_quietly(client, keys)
        if args.history:
            dump_jsonl(history, args.history)
        result = check(history, timeout_s=args.check_timeout)
        verdict = {True: "linearizable", False: "NOT linearizable", None: "unknown (checker gave up)"}[result.ok]
        stats = workload.stats
        print(f"history of {len(history)} ops on {len(keys)} keys ({stats.ok} completed, {stats.indeterminate} "
              f"indeterminate, {len(keys)} final reads; {stats.failed} failed definitely, left out): {verdict}")
        if result.ok is not True:
            print("\n".join(result.explanation.splitlines()[:80]))
        print(json.dumps({
            "job": "consistency_check", "store": args.store, "run_id": run_id, "seconds": args.seconds,
            "clients": args.clients, "keys": len(keys), "consistency": args.consistency, "chaos": args.chaos,
            "events": [asdict(e) for e in events], "ops": len(history), "ok_ops": workload.stats.ok,
            "indeterminate": workload.stats.indeterminate, "failed": workload.stats.failed,
            "errors": workload.stats.errors, "linearizable": result.ok, "check_s": result.elapsed_s,
            "states_explored": result.states_explored, "history": args.history}), flush=True)
        if workload.stats.ok == 0:
            print("error: no operation succeeded: nothing was checked", file=sys.stderr)
            return EXIT_CHECK_FAILED
        return {True: EXIT_OK, False: EXIT_CHECK_FAILED, None: EXIT_UNKNOWN}[result.ok]

    return run_main(body)


def _delete_quietly(client, keys: list[str]) -> None:
    """Remove this run's keys (outside the recorded history); a failure only leaves them behind."""
    try:
        client.delete_batch(keys)
    except RayKVError as e:
        print(f"warning: the run's keys were not deleted: {e}", file=sys.stderr)
