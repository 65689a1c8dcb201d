"""The mixed workload (``jobs/mixed_workload.py``): a weighted mix of puts, gets at each consistency
level, compare-and-sets and short scans from many threads (in the driver or in Ray tasks) for a fixed
time; ops/s and latency percentiles per operation (:func:`summarize`, :func:`format_table`)."""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..bench.report import percentile
from ..errors import IndeterminateError, InvalidRequestError, RayKVError, UnavailableError
from .common import (EXIT_CHECK_FAILED, EXIT_OK, KEY_ALPHABET, add_store_argument, connect_store,
                     positive, run_main)

OPS = ("put", "get_linearizable", "get_lease", "get_stale", "cas", "scan")
DEFAULT_MIX = {"put": 0.25, "get_linearizable": 0.25, "get_lease": 0.15, "get_stale": 0.15, "cas": 0.1, "scan": 0.1}


def parse_mix(text: str) -> dict[str, float]:
    """``"put=3,get_linearizable=5,scan=1"`` -> weights normalized to sum 1 (absent ops: 0)."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        op, sep, value = part.partition("=")
        if not sep or op not in OPS:
            raise InvalidRequestError(f"bad mix entry {part!r}: expected OP=WEIGHT with OP one of {', '.join(OPS)}")
        try:
            weights[op] = float(value)
        except ValueError:
            raise InvalidRequestError(f"bad weight in mix entry {part!r}") from None
        if weights[op] < 0:
            raise InvalidRequestError(f"negative weight in mix entry {part!r}")
    total = sum(weights.values())
    if total <= 0:
        raise InvalidRequestError(f"the mix {text!r} has no positive weight")
    return {op: weights.get(op, 0.0) / total for op in OPS}


@dataclass(frozen=True)
class MixedConfig:
    store: str
    seconds: float = 10.0
    threads: int = 8
    keys: int = 1000
    value_bytes: int = 100
    scan_limit: int = 10
    mix: dict = field(default_factory=lambda: dict(DEFAULT_MIX))
    seed: int = 0
    timeout_s: float = 10.0


@dataclass
class Samples:
    """What one thread (or a merge of many) measured: latencies in seconds and errors, per op."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    errors: dict[str, Counter] = field(default_factory=lambda: {op: Counter() for op in OPS})
    cas_swapped: int = 0
    elapsed_s: float = 0.0

    def merge(self, other: "Samples") -> "Samples":
        for op in OPS:
            self.latencies[op].extend(other.latencies[op])
            self.errors[op].update(other.errors[op])
        self.cas_swapped += other.cas_swapped
        self.elapsed_s = max(self.elapsed_s, other.elapsed_s)
        return self


def mixed_keys(count: int) -> list[str]:
    return [f"{KEY_ALPHABET[i % len(KEY_ALPHABET)]}mw{i:06d}" for i in range(count)]


PRELOAD_BATCH_KEYS = 500
PRELOAD_ATTEMPTS = 3


def preload(client, config: MixedConfig) -> None:
    """Write every key once (so reads find values and scans find keys), in batches. A batch that
    failed or timed out is sent again (puts of the same values are idempotent), at most
    :data:`PRELOAD_ATTEMPTS` times; the last error is raised."""
    keys = mixed_keys(config.keys)
    for start in range(0, len(keys), PRELOAD_BATCH_KEYS):
        batch = {k: b"0".ljust(config.value_bytes, b".") for k in keys[start:start + PRELOAD_BATCH_KEYS]}
        for attempt in range(PRELOAD_ATTEMPTS):
            try:
                client.put_batch(batch)
                break
            except (IndeterminateError, UnavailableError):
                if attempt == PRELOAD_ATTEMPTS - 1:
                    raise


class _MixedThread:
    """One load thread: picks ops by weight and keys uniformly until the deadline."""

    def __init__(self, client, config: MixedConfig, seed: int, known: dict) -> None:
        self.client, self.config, self.known = client, config, known
        self.rng = random.Random(seed)
        self.tag = f"{seed}-"
        self.keys = mixed_keys(config.keys)
        self.samples = Samples()
        self.count = 0

    def value(self) -> bytes:
        self.count += 1
        return f"{self.tag}{self.count}".encode().ljust(self.config.value_bytes, b".")

    def call(self, op: str, key: str) -> None:
        c = self.client
        if op == "put":
            value = self.value()
            c.put(key, value)
            self.known[key] = value
        elif op.startswith("get_"):
            self.known[key] = c.get(key, consistency=op[len("get_"):])
        elif op == "cas":
            new = self.value()
            if c.cas(key, self.known.get(key), new):
                self.samples.cas_swapped += 1
                self.known[key] = new
        else:
            list(c.scan(start=key, limit=self.config.scan_limit))

    def run(self, deadline: float) -> Samples:
        ops, weights = list(self.config.mix), list(self.config.mix.values())
        start = time.monotonic()
        while time.monotonic() < deadline:
            op = self.rng.choices(ops, weights)[0]
            key = self.rng.choice(self.keys)
            began = time.perf_counter()
            try:
                self.call(op, key)
            except RayKVError as e:
                self.samples.errors[op][type(e).__name__] += 1
                continue
            self.samples.latencies[op].append(time.perf_counter() - began)
        self.samples.elapsed_s = time.monotonic() - start
        return self.samples


def run_mixed_threads(client, config: MixedConfig, seed: int) -> Samples:
    """``config.threads`` threads against ``client`` for ``config.seconds``; their samples merged."""
    known: dict = {}
    workers = [_MixedThread(client, config, seed * 1000 + i, known) for i in range(config.threads)]
    deadline = time.monotonic() + config.seconds
    threads = [threading.Thread(target=w.run, args=(deadline,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = Samples()
    for w in workers:
        total.merge(w.samples)
    return total


def _mixed_task(config: MixedConfig, seed: int) -> Samples:
    """The body of one ``--tasks`` Ray task: its own client, ``config.threads`` threads."""
    import raykv

    with raykv.connect(config.store, timeout_s=config.timeout_s) as client:
        return run_mixed_threads(client, config, seed)


def run_mixed_tasks(config: MixedConfig, tasks: int, task_cpus: float) -> Samples:
    import ray

    remote = ray.remote(num_cpus=task_cpus, max_retries=0)(_mixed_task)
    total = Samples()
    for samples in ray.get([remote.remote(config, config.seed * 1000 + i + 1) for i in range(tasks)]):
        total.merge(samples)
    return total


def summarize(samples: Samples) -> dict:
    """Per op: count, ops/s, p50/p90/p99/max latency in ms and errors; plus totals.
    Rates divide by the longest thread's (or task's) elapsed time."""
    elapsed = samples.elapsed_s or float("nan")
    by_op = {}
    for op in OPS:
        lat = samples.latencies[op]
        row = {"count": len(lat), "ops_per_s": len(lat) / elapsed, "errors": sum(samples.errors[op].values())}
        for name, q in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99), ("max_ms", 100)):
            row[name] = percentile(lat, q) * 1e3 if lat else None
        if samples.errors[op]:
            row["error_types"] = dict(samples.errors[op])
        by_op[op] = row
    ok = sum(r["count"] for r in by_op.values())
    return {"ops": ok, "ops_per_s": ok / elapsed, "errors": sum(r["errors"] for r in by_op.values()),
            "cas_swapped": samples.cas_swapped, "elapsed_s": samples.elapsed_s, "by_op": by_op}


def format_table(summary: dict) -> str:
    """A Markdown table of :func:`summarize`'s rows (ops never run are left out)."""
    ms = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    lines = ["| op | count | ops/s | p50 ms | p90 ms | p99 ms | max ms | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for op, r in summary["by_op"].items():
        if r["count"] or r["errors"]:
            lines.append(f"| {op} | {r['count']} | {r['ops_per_s']:.1f} | {ms(r['p50_ms'])} | {ms(r['p90_ms'])} "
                         f"| {ms(r['p99_ms'])} | {ms(r['max_ms'])} | {r['errors']} |")
    lines.append(f"| all | {summary['ops']} | {summary['ops_per_s']:.1f} | | | | | {summary['errors']} |")
    return "\n".join(lines)


def mixed_workload_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixed_workload.py", description="A timed mixed workload against a running "
                                "raykv store: ops/s and latency percentiles per operation.")
    add_store_argument(p)
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS, as set inside a Ray job)")
    p.add_argument("--seconds", type=positive(float), default=10.0, help="how long to run (default 10)")
    p.add_argument("--threads", type=positive(int), default=8, help="client threads (per task with --tasks)")
    p.add_argument("--tasks", type=int, default=0, help="run in this many Ray tasks instead of this driver")
    p.add_argument("--task-cpus", type=float, default=1.0, help="logical CPUs each task requests (default 1)")
    p.add_argument("--keys", type=positive(int), default=1000, help="size of the key set (default 1000)")
    p.add_argument("--value-bytes", type=positive(int), default=100, help="value size (default 100)")
    p.add_argument("--scan-limit", type=positive(int), default=10, help="keys per scan (default 10)")
    p.add_argument("--mix", type=str, default=",".join(f"{k}={v:g}" for k, v in DEFAULT_MIX.items()),
                   help="op weights, e.g. put=1,get_linearizable=1 (ops: " + ", ".join(OPS) + ")")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=positive(float), default=10.0, help="per-request deadline in seconds")
    p.add_argument("--no-preload", action="store_true", help="do not write the key set first")
    return p


def mixed_workload_main(argv: Sequence[str] | None = None) -> int:
    args = mixed_workload_parser().parse_args(argv)

    def body() -> int:
        if args.tasks < 0 or args.task_cpus < 0:
            raise InvalidRequestError("--tasks and --task-cpus must be >= 0")
        config = MixedConfig(args.store, args.seconds, args.threads, args.keys, args.value_bytes,
                             args.scan_limit, parse_mix(args.mix), args.seed, args.timeout)
        with connect_store(args.store, args.address, args.timeout) as client:
            if not args.no_preload:
                preload(client, config)
            samples = (run_mixed_tasks(config, args.tasks, args.task_cpus) if args.tasks
                       else run_mixed_threads(client, config, args.seed))
        summary = summarize(samples)
        print(format_table(summary))
        head = {"job": "mixed_workload", "store": args.store, "seconds": args.seconds, "threads": args.threads,
                "tasks": args.tasks, "keys": args.keys, "value_bytes": args.value_bytes, "mix": config.mix}
        print(json.dumps({**head, **summary}), flush=True)
        if summary["ops"] == 0:
            print("error: no operation succeeded", file=sys.stderr)
            return EXIT_CHECK_FAILED
        return EXIT_OK

    return run_main(body)
