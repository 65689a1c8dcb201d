"""``raykv demo`` (also ``python -m raykv.demo``): the store's main job, end to end, checked.

On a fresh machine it starts an embedded single-machine Ray (never a cluster that happens to
run here, unless ``--address`` names one), creates the store ``demo`` (3 shards x 3 replicas,
LMDB under a temporary directory or ``--data-dir``) and exercises it:

1. writes ``keys`` keys (default 2,000): half with ``put`` from a pool of threads, half
   with one ``put_batch``;
2. reads them all back at each consistency level: ``linearizable`` (one ``get`` per key),
   ``lease`` and ``stale`` (``get_batch``; a stale replica may lag, so keys it does not
   have yet are read again until it catches up);
3. scans the whole store, a range crossing shard boundaries, a prefix and a limit;
4. compare-and-sets (a wrong expected value must fail, the right one succeed, an absent key
   be created) and deletes (``delete`` and ``delete_batch``), then scans again;
5. reshards online to one shard more and back (:meth:`Client.scale`) while a thread keeps
   reading, then scans again;
6. prints the status table and a report (ops, time, ops per second, mean latency);
7. stops the store cleanly (:func:`raykv.stop`) and shuts down the Ray it started.

Every read is compared with a model of what was written; the demo exits 0 if every check
passed and 1 otherwise (raykv errors are reported by the CLI with its exit codes).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
"""First characters of the demo keys: they spread the keys over the initial shard ranges."""
PUT_THREADS = 32
STALE_CATCH_UP_S = 15.0
LEADER_WAIT_S = 120.0


@dataclass(frozen=True)
class DemoConfig:
    keys: int = 2000
    name: str = "demo"
    address: str | None = None
    shards: int = 3
    replicas: int = 3
    data_dir: str | None = None


@dataclass
class Step:
    """One timed line of the report; ``ops=None`` for setup steps (time only)."""

    what: str
    ops: int | None
    seconds: float
    latencies: list[float] = field(default_factory=list)

    def line(self) -> str:
        if self.ops is None:
            return f"  {self.what:<42} {'':>10} {1000 * self.seconds:>10.1f} ms"
        rate = f"{self.ops / self.seconds:>10,.0f} ops/s" if self.seconds > 0 else ""
        lat = self.latencies or ([self.seconds] if self.ops == 1 else [])
        mean = f"  {1000 * sum(lat) / len(lat):8.2f} ms/op" if lat else ""
        return f"  {self.what:<42} {self.ops:>6} ops {1000 * self.seconds:>10.1f} ms {rate}{mean}"


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append((what, bool(ok), detail))
        say(f"  [{'ok' if ok else 'FAILED'}] {what}" + (f": {detail}" if detail and not ok else ""))
        return bool(ok)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)

    def lines(self) -> list[str]:
        good = sum(1 for _, ok, _ in self.checks if ok)
        out = ["Report", f"  {'step':<42} {'ops':>10} {'time':>13} {'throughput':>16} {'mean latency':>16}",
               *(s.line() for s in self.steps)]
        if not self.checks:
            out.append("no checks ran")
        elif self.passed:
            out.append(f"all {good} checks passed")
        else:
            out.append(f"{len(self.checks) - good} of {len(self.checks)} checks FAILED:")
            out += [f"  {what}: {detail}" for what, ok, detail in self.checks if not ok]
        return out


def say(line: str = "") -> None:
    print(line, flush=True)


# -- keys, values and the model ---------------------------------------------------------
def demo_key(i: int) -> str:
    return f"{ALPHABET[i % len(ALPHABET)]}-{i:06d}"


def demo_value(i: int, run: str) -> dict:
    return {"i": i, "square": i * i, "run": run}


def mismatches(model: dict[str, Any], keys: Iterable[str], values: Iterable[Any], limit: int = 3) -> list[str]:
    """Up to ``limit`` descriptions of keys whose value read differs from the model."""
    bad = []
    for key, value in zip(keys, values):
        if value != model.get(key):
            bad.append(f"{key!r}: read {value!r}, wrote {model.get(key)!r}")
            if len(bad) == limit:
                break
    return bad


# -- Ray and the store ----------------------------------------------------------------------
def start_ray(address: str | None) -> bool:
    """Join ``address``, or start a fresh embedded single-machine Ray; True if it started one
    (see :func:`raykv.cli.fresh_or_joined_ray`: the CLI is the Ray-facing shell)."""
    from .cli import fresh_or_joined_ray

    return fresh_or_joined_ray(address)


def stop_ray() -> None:
    from .cli import shutdown_ray

    shutdown_ray()


@contextmanager
def data_root(path: str | None) -> Iterator[str]:
    """``path``, or a temporary directory removed afterwards."""
    if path:
        yield path
        return
    root = tempfile.mkdtemp(prefix="raykv-demo-")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def start_store(config: DemoConfig, root: str):
    """A client of the new store (refusing to touch a store of that name that already runs)."""
    import raykv.api

    from .errors import InvalidRequestError

    if raykv.api.store_running(config.name):
        raise InvalidRequestError(f"a store named {config.name!r} already runs on this Ray cluster: "
                                  "the demo needs its own (pass another --name)")
    return raykv.api.start(config.name, config.shards, config.replicas, root, create=True, timeout_s=30.0)


def wait_for_leaders(client: Any, timeout: float = LEADER_WAIT_S) -> Any:
    from .cli import wait_for_leaders as wait

    return wait(client, timeout)


# -- the exercise ---------------------------------------------------------------------------
def timed(report: Report, what: str, ops: int | None, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    result = fn()
    report.steps.append(Step(what, ops, time.perf_counter() - t0))
    return result


def each_timed(report: Report, what: str, items: list, fn: Callable[[Any], Any]) -> list:
    """``fn`` over ``items`` from a thread pool, timing each call; results in order."""
    latencies: list[float] = [0.0] * len(items)

    def one(pair: tuple[int, Any]) -> Any:
        idx, item = pair
        t0 = time.perf_counter()
        out = fn(item)
        latencies[idx] = time.perf_counter() - t0
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(PUT_THREADS) as pool, progress(what, len(items)) as advance:
        results = []
        for out in pool.map(one, enumerate(items)):
            results.append(out)
            advance()
    report.steps.append(Step(what, len(items), time.perf_counter() - t0, latencies))
    return results


@contextmanager
def progress(what: str, total: int) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr (a terminal only); yields ``advance()``."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(what, total=total)
        yield lambda: bar.advance(task)


def write_keys(client: Any, report: Report, model: dict[str, Any], run: str, n: int) -> None:
    half = n // 2
    singles = [(demo_key(i), demo_value(i, run)) for i in range(half)]
    each_timed(report, f"put, one key per call ({PUT_THREADS} threads)", singles, lambda kv: client.put(*kv))
    model.update(singles)
    batch = {demo_key(i): demo_value(i, run) for i in range(half, n)}
    timed(report, "put_batch, one call", len(batch), lambda: client.put_batch(batch))
    model.update(batch)


def read_keys(client: Any, report: Report, model: dict[str, Any]) -> None:
    keys = sorted(model)
    got = each_timed(report, f"get linearizable ({PUT_THREADS} threads)", keys, lambda k: client.get(k))
    bad = mismatches(model, keys, got)
    report.check(f"get (linearizable) returns all {len(keys)} values written", not bad, "; ".join(bad))
    got = timed(report, "get_batch lease", len(keys), lambda: list(client.get_batch(keys, consistency="lease")))
    bad = mismatches(model, keys, got)
    report.check(f"get_batch (lease) returns all {len(keys)} values written", not bad, "; ".join(bad))
    got = timed(report, "get_batch stale", len(keys), lambda: list(client.get_batch(keys, consistency="stale")))
    report.check(*stale_check(client, model, keys, got))


def stale_check(client: Any, model: dict[str, Any], keys: list[str], got: list) -> tuple[str, bool, str]:
    """Stale reads may lag but never invent: each value is the one written or absent, and the
    absent ones appear within :data:`STALE_CATCH_UP_S`."""
    what = f"get_batch (stale) returns only values written, all {len(keys)} once replicas catch up"
    wrong = [f"{k!r}: read {v!r}" for k, v in zip(keys, got) if v is not None and v != model[k]]
    if wrong:
        return what, False, "; ".join(wrong[:3])
    lagging = [k for k, v in zip(keys, got) if v is None]
    deadline = time.monotonic() + STALE_CATCH_UP_S
    while lagging and time.monotonic() < deadline:
        time.sleep(0.1)
        again = list(client.get_batch(lagging, consistency="stale"))
        wrong = [f"{k!r}: read {v!r}" for k, v in zip(lagging, again) if v is not None and v != model[k]]
        if wrong:
            return what, False, "; ".join(wrong[:3])
        lagging = [k for k, v in zip(lagging, again) if v is None]
    return what, not lagging, f"{len(lagging)} keys still absent after {STALE_CATCH_UP_S:g}s"


def scan_checks(client: Any, report: Report, model: dict[str, Any], ranges: list[tuple[bytes, bytes | None]],
                label: str) -> None:
    """Full scan, a range crossing shard boundaries, a prefix and a limit, against the model."""
    expected = sorted(model.items())
    rows = timed(report, f"scan everything ({label})", len(expected), lambda: list(client.scan()))
    report.check(f"scan ({label}) returns exactly the {len(expected)} keys in key order, values as written",
                 rows == expected, scan_diff(rows, expected))
    spanned = shards_spanned([k for k, _ in rows], ranges)
    report.check(f"scan ({label}) crosses shard boundaries ({spanned} of {len(ranges)} shards hold keys)",
                 spanned == len(ranges) or spanned >= 2, "the keys did not spread over the shards")
    lo, hi = expected[len(expected) // 5][0], expected[4 * len(expected) // 5][0]
    want = [(k, v) for k, v in expected if lo <= k < hi]
    rows = list(client.scan(start=lo, end=hi))
    across = shards_spanned([k for k, _ in want], ranges)
    report.check(f"scan [{lo!r}, {hi!r}) ({label}, {across} shards) returns the {len(want)} keys of that range",
                 rows == want, scan_diff(rows, want))
    prefix = ALPHABET[-1]
    want = [(k, v) for k, v in expected if k.startswith(prefix)]
    rows = list(client.scan(prefix=prefix))
    report.check(f"scan prefix {prefix!r} ({label}) returns its {len(want)} keys", rows == want,
                 scan_diff(rows, want))
    rows = list(client.scan(limit=10, consistency="lease"))
    report.check(f"scan limit 10 ({label}, lease) returns the first 10 keys", rows == expected[:10],
                 scan_diff(rows, expected[:10]))


def scan_diff(rows: list, expected: list) -> str:
    if rows == expected:
        return ""
    got, want = dict(rows), dict(expected)
    missing = [k for k in want if k not in got][:3]
    extra = [k for k in got if k not in want][:3]
    changed = [k for k in want if k in got and got[k] != want[k]][:3]
    order = "" if [k for k, _ in rows] == sorted(k for k, _ in rows) else "; keys out of order"
    return f"{len(rows)} rows, expected {len(expected)}; missing {missing}, extra {extra}, changed {changed}{order}"


def shard_ranges(client: Any) -> list[tuple[bytes, bytes | None]]:
    """The ``[start, end)`` encoded-key range of each shard, from the client's shard map."""
    return [(spec.start, spec.end) for spec in client.shard_map.shards]


def shards_spanned(keys: list[str], ranges: list[tuple[bytes, bytes | None]]) -> int:
    from .userdata import encode_key

    hit = set()
    for key in keys:
        raw = encode_key(key)
        for idx, (start, end) in enumerate(ranges):
            if start <= raw and (end is None or raw < end):
                hit.add(idx)
    return len(hit)


def cas_and_delete(client: Any, report: Report, model: dict[str, Any], run: str) -> None:
    key = demo_key(0)
    old, new = model[key], {"i": 0, "square": 0, "run": run, "swapped": True}
    swapped = timed(report, "cas, wrong expected value", 1, lambda: client.cas(key, {"not": "it"}, new))
    report.check("cas with a wrong expected value fails and changes nothing",
                 swapped is False and client.get(key) == old, f"cas returned {swapped!r}")
    swapped = timed(report, "cas, right expected value", 1, lambda: client.cas(key, old, new))
    model[key] = new
    report.check("cas with the current value swaps it", swapped is True and client.get(key) == new,
                 f"cas returned {swapped!r}, value now {client.get(key)!r}")
    fresh = "~created-by-cas"
    created = client.cas(fresh, None, "hello")
    model[fresh] = "hello"
    report.check("cas with expected None creates an absent key",
                 created is True and client.get(fresh, consistency="lease") == "hello", f"cas returned {created!r}")
    gone = demo_key(1)
    existed = timed(report, "delete", 1, lambda: client.delete(gone))
    del model[gone]
    again = client.delete(gone)
    report.check("delete removes a key (True), a second delete finds nothing (False)",
                 existed is True and again is False and client.get(gone) is None,
                 f"delete returned {existed!r} then {again!r}")
    batch = [demo_key(i) for i in range(2, 12)]
    timed(report, "delete_batch", len(batch), lambda: client.delete_batch(batch))
    for k in batch:
        model.pop(k, None)
    left = [v for v in client.get_batch(batch) if v is not None]
    report.check(f"delete_batch removes its {len(batch)} keys", not left, f"{len(left)} still there")


# -- the whole run ------------------------------------------------------------------------
def check_config(config: DemoConfig) -> None:
    from .errors import InvalidRequestError
    from .protocol import check_store_name
    from .runtime.store import check_counts

    check_store_name(config.name)
    check_counts(config.shards, config.replicas)
    if isinstance(config.keys, bool) or not isinstance(config.keys, int) or not 20 <= config.keys <= 1_000_000:
        raise InvalidRequestError(f"keys must be an int in 20..1000000, got {config.keys!r}")


def exercise(client: Any, config: DemoConfig, report: Report) -> dict[str, Any]:
    """Steps 1-4 of the module docstring, every answer checked against the model (returned)."""
    run = f"{time.time_ns():x}"
    model: dict[str, Any] = {}
    existing = [key for key, _ in client.scan(limit=1)]
    if not report.check("the store starts empty", not existing,
                        f"it holds {existing[:1]!r}...: use an empty --data-dir"):
        return model
    say(f"writing {config.keys} keys")
    write_keys(client, report, model, run, config.keys)
    say("reading them back")
    read_keys(client, report, model)
    ranges = shard_ranges(client)
    say(f"scanning across {len(ranges)} shards")
    scan_checks(client, report, model, ranges, "after writes")
    say("compare-and-set and delete")
    cas_and_delete(client, report, model, run)
    scan_checks(client, report, model, ranges, "after cas and delete")
    return model


def run(config: DemoConfig) -> int:
    """The demo; 0 if every check passed, 1 otherwise. raykv errors propagate (after cleanup)."""
    check_config(config)
    report = Report()
    with data_root(config.data_dir) as root:
        started = start_ray(config.address)
        try:
            say(f"raykv demo: store {config.name!r}, {config.shards} shards x {config.replicas} replicas, "
                f"data under {root}" + (" (embedded single-machine Ray)" if started else ""))
            client = timed(report, "start the store", None, lambda: start_store(config, root))
            with store_stopped_at_exit(config.name, report):
                try:
                    use_store(client, config, report)
                finally:
                    client.close()
        finally:
            if started:
                stop_ray()
    say("")
    for line in report.lines():
        say(line)
    return 0 if report.passed else 1


def use_store(client: Any, config: DemoConfig, report: Report) -> None:
    status = timed(report, "wait for a leader in every shard", None, lambda: wait_for_leaders(client))
    say(f"store {config.name!r} is up: {len(status.shards)} shards, each with a leader")
    model = exercise(client, config, report)
    if model:
        scale_online(client, config, report, model)
    say("")
    say(str(client.status()))


def scale_online(client: Any, config: DemoConfig, report: Report, model: dict[str, Any]) -> None:
    """Step 5: reshard to one shard more and back while a thread keeps reading; every read and
    the final scan must match the model."""
    import threading

    keys = sorted(model)[:: max(1, len(model) // 200)]
    stop, reads, bad = threading.Event(), [0], []

    def reader() -> None:
        while not stop.is_set():
            try:
                got = client.get_batch(keys)
                bad.extend(mismatches(model, keys, got, limit=1))
                reads[0] += len(keys)
            except Exception as exc:  # noqa: BLE001 -- reported by the check below
                bad.append(f"{type(exc).__name__}: {exc}")
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for target in (config.shards + 1, config.shards):
            say(f"scaling online to {target} shards while reading")
            record = timed(report, f"scale to {target} shards (online)", None,
                           lambda target=target: client.scale(target, retire_grace_s=1.0))
            report.check(f"scale to {target} shards: {record['steps_done']} steps, {record['moved_keys']} keys moved",
                         record["state"] == "done" and len(client.shard_map.shards) == target, str(record))
    finally:
        stop.set()
        thread.join(timeout=60)
    report.check(f"reads during the scale ({reads[0]} keys) all returned the values written", reads[0] > 0 and not bad,
                 "; ".join(bad[:3]))
    scan_checks(client, report, model, shard_ranges(client), "after scaling")


@contextmanager
def store_stopped_at_exit(name: str, report: Report) -> Iterator[None]:
    """Stop the store when the block ends; if the block raised, try to stop it and re-raise."""
    import raykv.api

    try:
        yield
    except BaseException:
        try:
            raykv.api.stop(name)
        except Exception as exc:  # noqa: BLE001 -- the first error is the one to report
            print(f"(could not stop store {name!r} after the error: {exc})", file=sys.stderr)
        raise
    timed(report, "stop the store", None, lambda: raykv.api.stop(name))
    report.check("the store stopped cleanly", not raykv.api.store_running(name))


def main(argv: list[str] | None = None) -> int:
    """``python -m raykv.demo [options]``: the same as ``raykv demo [options]``."""
    import typer

    from .cli import demo_command

    solo = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    solo.command()(demo_command)  # a one-command app: no subcommand name to type
    try:
        solo(sys.argv[1:] if argv is None else argv, prog_name="python -m raykv.demo")
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
