"""The ``raykv`` command line (typer).

Store commands (each takes ``--store/--name/-n``, default ``$RAYKV_STORE`` else ``default``, and ``--address``, the Ray
address: default ``$RAY_ADDRESS``, else a Ray cluster running on this machine; they never start
an embedded Ray, which would die with the command):

``start``, ``status``, ``scale`` (online resharding, :mod:`raykv.runtime.scale`), ``put``, ``get``,
``delete``, ``scan``, ``count``, ``list``, ``stop``, ``backup``, ``restore`` (:mod:`raykv.backup`).

Other commands: ``demo`` (the main job: an embedded Ray and a 3x3 store, exercised and checked,
see :mod:`raykv.demo`), ``bench`` (``python -m raykv.bench full``: the complete report), ``sim`` (the Raft
simulator), ``version``.

Exit codes (:data:`EXIT_CODES`): 0 ok, 1 key not found, 2 bad input, 3 store not found or Ray
unreachable, 4 indeterminate (a write that may or may not have been applied), 5 any other raykv
or Ray error, 130 interrupted. Known errors print one ``error: ...`` line on stderr, never a
traceback (an unexpected exception, a bug, keeps its traceback).

Heavy modules (ray, the client) are imported inside commands so ``raykv --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from raykv.protocol import STORE_ENV

app = typer.Typer(
    name="raykv",
    help="raykv: a linearizable sharded key-value store on Ray",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3
EXIT_INDETERMINATE = 4
EXIT_OTHER = 5
EXIT_INTERRUPTED = 130
EXIT_CODES = {
    EXIT_OK: "ok",
    EXIT_NOT_FOUND: "key not found",
    EXIT_BAD_INPUT: "bad input (bad option, key, value or name)",
    EXIT_UNAVAILABLE: "store not found, or Ray / the store unreachable",
    EXIT_INDETERMINATE: "indeterminate: the write may or may not have been applied",
    EXIT_OTHER: "any other raykv or Ray error",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

NAME_HELP = "Store name (default: $RAYKV_STORE, else 'default')."
STORE_OPTION = typer.Option("default", "--store", "--name", "-n", envvar=STORE_ENV, help=NAME_HELP)
"""The store option every store command takes (one spelling, as in the jobs and notebooks)."""
ADDRESS_HELP = "Ray address (default: $RAY_ADDRESS, else a Ray cluster running on this machine)."
NO_CLUSTER_HINT = ("pass --address, set RAY_ADDRESS, or start a Ray node on this machine: "
                   "ray start --head --labels raykv-host=$(hostname)")


class Consistency(str, Enum):
    linearizable = "linearizable"
    lease = "lease"
    stale = "stale"


def package_version() -> str:
    """Return the installed distribution's version, else ``raykv.__version__`` (source checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("raykv")
    except PackageNotFoundError:
        import raykv

        return raykv.__version__


# -- errors and exit codes ---------------------------------------------------------------
def classify(exc: BaseException) -> tuple[int, str] | None:
    """``(exit code, message)`` for an error the CLI reports without a traceback, else None."""
    from raykv import errors

    if isinstance(exc, errors.IndeterminateError):
        return EXIT_INDETERMINATE, f"the write may or may not have been applied ({exc}); read the key back to find out"
    if isinstance(exc, errors.InvalidRequestError):
        return EXIT_BAD_INPUT, str(exc)
    if isinstance(exc, errors.StoreNotFoundError):
        return EXIT_UNAVAILABLE, str(exc)
    if isinstance(exc, (errors.UnavailableError, errors.ShutdownError, errors.SessionExpiredError)):
        return EXIT_UNAVAILABLE, f"the store did not answer: {exc}"
    if isinstance(exc, ConnectionError):
        return EXIT_UNAVAILABLE, f"cannot reach Ray: {exc}"
    if isinstance(exc, errors.RayKVError):
        return EXIT_OTHER, f"{type(exc).__name__}: {exc}"
    ray_exceptions = sys.modules.get("ray.exceptions")
    if ray_exceptions is not None and isinstance(exc, ray_exceptions.RayError):
        return EXIT_OTHER, f"Ray: {type(exc).__name__}: {exc}"
    return None


def fail(code: int, message: str) -> typer.Exit:
    """Print ``error: message`` on stderr; return the :class:`typer.Exit` to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def handled() -> Iterator[None]:
    """Turn the errors :func:`classify` knows into a message and an exit code."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except BrokenPipeError:
        if stdout_closed():  # `raykv scan | head`: the reader has all it wanted
            raise typer.Exit(EXIT_OK) from None
        raise fail(EXIT_UNAVAILABLE, "cannot reach Ray: broken pipe") from None
    except KeyboardInterrupt:
        raise fail(EXIT_INTERRUPTED, "interrupted (a write in flight may or may not have been applied)") from None
    except Exception as exc:  # noqa: BLE001 -- classify() decides; unknown errors keep their traceback
        known = classify(exc)
        if known is None:
            raise
        raise fail(*known) from None


def stdout_closed() -> bool:
    """Whether our standard output is a pipe whose reader went away; if so it is pointed at
    ``/dev/null``, so that Python's flush at exit does not report the broken pipe again."""
    import select

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # no real stdout (captured, closed): not a pipe to mind
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if not any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0)):
        return False
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return True


# -- Ray and the store -----------------------------------------------------------------------
def quiet_ray() -> None:
    """Silence Ray's INFO/WARNING lines ("Connecting to existing Ray cluster...") in this
    process unless ``RAY_LOGGER_LEVEL`` is set; must run before ``import ray``."""
    os.environ.setdefault("RAY_LOGGER_LEVEL", "error")


def probe_address(address: Optional[str], timeout: float = 5.0) -> None:
    """Fail fast (ConnectionError: exit 3) if nothing listens at a ``host:port`` address:
    ``ray.init`` would retry an unreachable address for many minutes. An ``http(s)://``
    address is refused (InvalidRequestError: exit 2) with the form that works."""
    named = "--address" if address else "$RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith(("http://", "https://")):
        from urllib.parse import urlparse

        from raykv.errors import InvalidRequestError

        host = urlparse(address).hostname or "127.0.0.1"
        raise InvalidRequestError(
            f"{named} {address!r} is the Ray dashboard's HTTP address (what `ray job submit` takes); raykv joins "
            f"the cluster itself: use the head's GCS address, {host}:6379 by default (`ray start --head --port`), "
            f"or 'auto' on a node of the cluster")
    if not address or "://" in address or address in ("auto", "local"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {address} ({exc})") from None


def connect_ray(address: Optional[str]) -> None:
    """Join the Ray cluster at ``address`` (or ``$RAY_ADDRESS``, or this machine's); never start one.

    Raises StoreNotFoundError (no cluster here) or ConnectionError (unreachable address): exit 3.
    """
    quiet_ray()
    probe_address(address)
    import atexit

    import ray

    from raykv.api import ensure_ray
    from raykv.errors import StoreNotFoundError

    joining = not ray.is_initialized()
    try:
        ensure_ray(address, embedded_ok=False)
    except StoreNotFoundError as exc:
        raise StoreNotFoundError(f"{exc}: {NO_CLUSTER_HINT}") from None
    if joining:
        # Disconnect before Ray's own exit hook, which sleeps 0.5 s so that worker log lines streamed
        # to the driver get printed; with log_to_driver=False there are none, yet every command waited.
        atexit.register(ray.shutdown)


def fresh_or_joined_ray(address: Optional[str]) -> bool:
    """For ``raykv demo``: join ``address``, or start a fresh embedded single-machine Ray (its
    node labelled ``raykv-host=<hostname>``); True if it started one. Without ``address`` it
    never joins a cluster already running here (``address="local"``; ``RAY_ADDRESS`` is
    ignored). A process already connected to Ray keeps its connection (False)."""
    import logging

    import ray

    from raykv.protocol import HOST_LABEL

    if ray.is_initialized():
        return False
    quiet = dict(log_to_driver=False, logging_level=logging.WARNING)
    if address:
        probe_address(address)
        ray.init(address=address, **quiet)
        return False
    ray.init(address="local", labels={HOST_LABEL: socket.gethostname()}, include_dashboard=False, **quiet)
    return True


def shutdown_ray() -> None:
    import ray

    ray.shutdown()


@contextmanager
def open_client(name: str, address: Optional[str]) -> Iterator[Any]:
    """A client of the running store ``name`` (StoreNotFoundError if none: exit 3), closed on exit."""
    quiet_ray()
    from raykv.protocol import check_store_name

    check_store_name(name)
    connect_ray(address)
    import raykv.api

    client = raykv.api.connect(name)
    try:
        yield client
    finally:
        client.close()


# -- output ------------------------------------------------------------------------------
def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


@contextmanager
def spinner(message: str) -> Iterator[None]:
    """A spinner on stderr while a long call runs (only on a terminal)."""
    console = stderr_console()
    if not console.is_terminal:
        yield
        return
    with console.status(message):
        yield


def parse_value(text: str, as_json: bool) -> Any:
    """The value to store: ``text`` itself, or ``text`` parsed as JSON (bad JSON: exit 2)."""
    if not as_json:
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(EXIT_BAD_INPUT, f"VALUE is not valid JSON ({exc})") from None
    if value is None:
        raise fail(EXIT_BAD_INPUT, "VALUE null cannot be stored (`raykv delete KEY` removes a key)")
    return value


def to_json(value: Any) -> str:
    """One-line JSON; bytes and other non-JSON values are written as their ``repr``."""
    return json.dumps(value, ensure_ascii=False, default=repr)


def format_value(value: Any, as_json: bool) -> str:
    """How ``get``/``scan`` print a value: a str as is, anything else (or with --json) as JSON."""
    if isinstance(value, str) and not as_json:
        return value
    return to_json(value)


def format_key(key: Any) -> str:
    return key if isinstance(key, str) else repr(key)


# -- commands ----------------------------------------------------------------------------
@app.command("version")
def version_command() -> None:
    """Print the installed version as "raykv <version>"."""
    typer.echo(f"raykv {package_version()}")


@app.command("start")
def start_command(
    name: str = STORE_OPTION,
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    shards: Optional[int] = typer.Option(
        None, "--shards", help="Shards of a new store (default 3); an existing store must have this many."),
    replicas: Optional[int] = typer.Option(
        None, "--replicas", help="Replicas per shard of a new store (default 3); an existing store must have this many."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Node-local data root on every host (default: where the store lives, else "
                                 "$RAYKV_DATA_DIR or ~/.raykv/data)."
    ),
    create: Optional[bool] = typer.Option(
        None, "--create/--reopen", help="Only create a new store (refused if it exists) / only reopen an existing "
                                        "one. Default: reopen it, or create it when no host holds any trace of it."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for every shard to elect a leader."),
) -> None:
    """Reopen the store where its data lives, or create it. Refuses (and starts nothing) when hosts
    holding it are missing, or when --shards/--replicas/--data-dir contradict the store."""
    with handled():
        quiet_ray()
        from raykv.protocol import check_store_name
        from raykv.runtime.store import check_counts

        check_store_name(name)
        check_counts(shards, replicas)
        if timeout <= 0:
            raise fail(EXIT_BAD_INPUT, f"--timeout must be > 0, got {timeout}")
        root = str(data_dir.expanduser().resolve()) if data_dir is not None else None  # replicas have another cwd
        connect_ray(address)
        import raykv.api

        existed = raykv.api.store_running(name)
        with spinner(f"starting store {name!r}"):
            client = raykv.api.start(name, shards, replicas, root, create=create)
        with client:
            status = wait_for_leaders(client, timeout)
        verb = "was already running" if existed else "is running"
        typer.echo(f"store {name!r} {verb}: {describe_layout(status)}; data under "
                   f"{describe_roots(raykv.api.data_roots(name))}")


def describe_roots(roots: Any) -> str:
    if isinstance(roots, dict):
        return ", ".join(f"{root} on {host}" for host, root in sorted(roots.items()))
    return str(roots)


def reopen_command(name: str, roots: Any, address: Optional[str]) -> str:
    """The exact command that reopens a stopped store."""
    from raykv.api import default_data_dir

    command = f"raykv start -n {name}"
    if isinstance(roots, str) and roots != default_data_dir():
        command += f" --data-dir {shlex.quote(roots)}"
    if address:
        command += f" --address {shlex.quote(address)}"
    return command


def describe_layout(status: Any) -> str:
    replicas = max((len(shard.replicas) for shard in status.shards), default=0)
    return f"{len(status.shards)} shards x {replicas} replicas"


def wait_for_leaders(client: Any, timeout: float) -> Any:
    """Poll ``client.status()`` until every shard has a leader (a progress bar on a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = stderr_console()
    deadline = time.monotonic() + timeout
    with Progress(TextColumn("waiting for shard leaders"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("leaders", total=None)
        while True:
            status = client.status()
            shards = status.shards
            led = sum(1 for shard in shards if shard.leader is not None)
            progress.update(task, total=len(shards), completed=led)
            if shards and led == len(shards):
                return status
            if time.monotonic() > deadline:
                from raykv.errors import UnavailableError

                raise UnavailableError(f"only {led} of {len(shards)} shards elected a leader within {timeout:g}s")
            time.sleep(0.2)


@app.command("status")
def status_command(
    name: str = STORE_OPTION,
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Per shard: key range and leader; per replica: role, term, commit, applied, size."""
    with handled(), open_client(name, address) as client:
        status = client.status()
        if as_json:
            typer.echo(json.dumps(status.to_dict(), indent=2, default=repr))
        else:
            typer.echo(str(status))


@app.command("scale")
def scale_command(
    shards: int = typer.Option(..., "--shards", help="The number of shards to reach (1..1024)."),
    name: str = STORE_OPTION,
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the operation to finish (a progress bar)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds to wait at most (it goes on after)."),
    retire_grace: float = typer.Option(10.0, "--retire-grace",
                                       help="Seconds a merged-away shard keeps answering retries before removal."),
) -> None:
    """Reshard the store online: split (at the median key by bytes) or merge ranges until there are SHARDS.

    Clients keep reading and writing meanwhile; the operation survives the death of the router,
    the meta leader and the shards' leaders (it resumes). `raykv status` shows it in flight."""
    with handled(), open_client(name, address) as client:
        if timeout is not None and timeout <= 0:
            raise fail(EXIT_BAD_INPUT, f"--timeout must be > 0, got {timeout}")
        if not 0 <= retire_grace <= 3600:
            raise fail(EXIT_BAD_INPUT, f"--retire-grace must be in 0..3600 seconds, got {retire_grace}")
        from raykv.errors import OperationTimeoutError

        try:
            with scale_progress(shards) as on_progress:
                record = client.scale(shards, wait=wait, timeout_s=timeout, retire_grace_s=retire_grace,
                                      on_progress=on_progress)
        except OperationTimeoutError as exc:
            raise fail(EXIT_INDETERMINATE, f"{exc}; `raykv status -n {name}` shows its progress") from None
        except KeyboardInterrupt:  # only the waiting stops: the store's placement driver goes on
            raise fail(EXIT_INTERRUPTED, f"stopped waiting; the scale goes on in the store (`raykv status -n {name}` "
                                         f"shows it, `raykv scale -n {name} --shards {shards}` waits for it "
                                         f"again)") from None
        if not wait:
            typer.echo(f"started: {record.get('text') or describe_record(record)}")
            return
        typer.echo(f"store {name!r} now has {len(client.shard_map.shards)} shards (map epoch "
                   f"{client.shard_map.epoch}); {describe_record(record)}")


@app.command("recover")
def recover_command(
    shard: int = typer.Option(..., "--shard", help="The shard that lost its quorum (0: the meta group)."),
    name: str = STORE_OPTION,
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    from_replica: Optional[int] = typer.Option(None, "--from", help="Re-found from this replica id "
                                               "(default: the survivor with the most of the log)."),
    force: bool = typer.Option(False, "--force", help="Even if a majority answers: loses what only the others hold."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """UNSAFE: re-found a shard whose majority of replicas is gone for good from its best survivor.

    For a shard `raykv status` shows as having lost its quorum (two of three hosts died with their
    disks). The survivor keeps and applies its whole log, becomes the only replica, and repair adds
    fresh ones; every other replica of the shard is killed for good. Writes the lost majority
    committed that never reached the survivor are gone. Refused while a majority answers, unless
    --force. See docs/operations.md."""
    with handled():
        if shard < 0 or (from_replica is not None and from_replica < 1):
            raise fail(EXIT_BAD_INPUT, "--shard must be >= 0 and --from >= 1")
        quiet_ray()
        connect_ray(address)
        import raykv.api

        report = raykv.api.recover(name, shard, replica=from_replica, force=force)
        if as_json:
            typer.echo(json.dumps(report, indent=2))
            return
        typer.echo(f"shard {shard} re-founded from replica {report['survivor']} in {report['seconds']:g} s: it kept "
                   f"every entry up to index {report['kept_index']} (term {report['kept_term']}) and leads alone in "
                   f"term {report['term']}; replicas {', '.join(map(str, report['killed'])) or '-'} were removed, "
                   f"repair adds new ones (`raykv status -n {name}`).")
        if report["unconfirmed_entries"]:
            typer.echo(f"{report['unconfirmed_entries']} entries after index {report['commit_before']} were not yet "
                       f"known committed: they were applied (their writers may have seen a timeout).")
        typer.echo(f"Writes the lost replicas committed after index {report['kept_index']}, if any, are gone.")


def describe_record(record: dict) -> str:
    moved = record.get("moved_bytes", 0)
    copy_s = record.get("copy_s", 0.0)
    rate = f", {moved / copy_s / 1e6:.1f} MB/s while copying" if copy_s > 0 else ""
    return (f"{record.get('steps_done', 0)} of {record.get('steps_total', 0)} steps, moved "
            f"{record.get('moved_keys', 0)} keys / {moved} bytes{rate}")


@contextmanager
def scale_progress(target: int) -> Iterator[Any]:
    """A progress bar of resharding steps on stderr (only on a terminal); yields the update callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = stderr_console()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(f"scaling to {target} shards", total=None)

        def on_progress(record: dict) -> None:
            step = record.get("step") or {}
            phase = f" ({step.get('kind')} shard {step.get('src')}: {step.get('phase')})" if step else ""
            progress.update(task, total=max(record.get("steps_total", 0), 1), completed=record.get("steps_done", 0),
                            description=f"scaling to {target} shards{phase}")

        yield on_progress


@app.command("put")
def put_command(
    key: str = typer.Argument(..., help="The key (a string)."),
    value: str = typer.Argument(..., help="The value: a string, or JSON with --json."),
    as_json: bool = typer.Option(False, "--json", help="Parse VALUE as JSON (numbers, lists, objects...)."),
    name: str = STORE_OPTION,
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
) -> None:
    """Set KEY to VALUE (linearizable, applied exactly once)."""
    parsed = parse_value(value, as_json)
    with handled(), open_client(name, address) as client:
        client.put(key, parsed)
    typer.echo("OK")


@app.command("get")
def get_command(
    key: str = typer.Argument(..., help="The key (a string)."),
    consistency: Consistency = typer.Option(
        Consistency.linearizable, "--consistency", "-c", case_sensitive=False,
        help="linearizable (leader, ReadIndex), lease (leader lease) or stale (any replica, may lag).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the value as JSON (strings quoted)."),
    name: str = STORE_OPTION,
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
) -> None:
    """Print the value of KEY (exit 1 if it is absent)."""
    with handled(), open_client(name, address) as client:
        value = client.get(key, consistency=consistency.value)
    if value is None:
        raise fail(EXIT_NOT_FOUND, f"key not found: {key!r}")
    typer.echo(format_value(value, as_json))


@app.command("delete")
def delete_command(
    key: str = typer.Argument(..., help="The key (a string)."),
    name: str = STORE_OPTION,
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
) -> None:
    """Remove KEY (exit 1 if it was absent)."""
    with handled(), open_client(name, address) as client:
        existed = client.delete(key)
    if not existed:
        raise fail(EXIT_NOT_FOUND, f"key not found: {key!r}")
    typer.echo("OK")


@app.command("scan")
def scan_command(
    prefix: Optional[str] = typer.Option(None, "--prefix", help="Only keys starting with this prefix."),
    start: Optional[str] = typer.Option(None, "--start", help="First key (inclusive)."),
    end: Optional[str] = typer.Option(None, "--end", help="Last key (exclusive)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most this many keys."),
    consistency: Consistency = typer.Option(
        Consistency.linearizable, "--consistency", "-c", case_sensitive=False, help="As for get."
    ),
    as_json: bool = typer.Option(False, "--json", help='One JSON object per line: {"key": ..., "value": ...}.'),
    keys_only: bool = typer.Option(False, "--keys-only", help="Print the keys only (JSON: {\"key\": ...})."),
    name: str = STORE_OPTION,
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
) -> None:
    """Print the keys in key order, one line each: KEY<TAB>VALUE (or JSON lines with --json)."""
    if limit is not None and limit < 0:
        raise fail(EXIT_BAD_INPUT, f"--limit must be >= 0, got {limit}")
    with handled(), open_client(name, address) as client:
        rows = client.scan(start=start, end=end, prefix=prefix, limit=limit, consistency=consistency.value)
        print_rows(rows, as_json, keys_only)


@app.command("count")
def count_command(
    prefix: Optional[str] = typer.Option(None, "--prefix", help="Only keys starting with this prefix."),
    start: Optional[str] = typer.Option(None, "--start", help="First key (inclusive)."),
    end: Optional[str] = typer.Option(None, "--end", help="Last key (exclusive)."),
    consistency: Consistency = typer.Option(
        Consistency.linearizable, "--consistency", "-c", case_sensitive=False, help="As for get."
    ),
    name: str = STORE_OPTION,
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
) -> None:
    """Print how many keys there are (in the range or with the prefix), read as scan reads them."""
    with handled(), open_client(name, address) as client:
        rows = client.scan(start=start, end=end, prefix=prefix, consistency=consistency.value)
        typer.echo(sum(1 for _ in rows))


def print_rows(rows: Any, as_json: bool, keys_only: bool = False) -> int:
    """Print scanned ``(key, value)`` pairs; a counter on stderr when stdout is redirected."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = stderr_console()
    show = console.is_terminal and not sys.stdout.isatty()
    count = 0
    with Progress(SpinnerColumn(), TextColumn("scanned {task.completed} keys"), TimeElapsedColumn(),
                  console=console, transient=True, disable=not show) as progress:
        task = progress.add_task("scan", total=None)
        for key, value in rows:
            if as_json:
                line = to_json({"key": key} if keys_only else {"key": key, "value": value})
            elif keys_only:
                line = format_key(key)
            else:
                line = f"{format_key(key)}\t{format_value(value, False)}"
            typer.echo(line)
            count += 1
            if count % 256 == 0:
                progress.update(task, completed=count)
    return count


@app.command("list")
def list_command(
    as_json: bool = typer.Option(False, "--json", help="One JSON object per store."),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
) -> None:
    """The stores of the Ray cluster: running, or stopped with data on an alive host (and where)."""
    with handled():
        connect_ray(address)
        import raykv

        for store in raykv.list_stores():
            roots = sorted(set(store.data_dirs.values()))
            if as_json:
                typer.echo(to_json({"name": store.name, "running": store.running, "data_dirs": store.data_dirs}))
            else:
                where = ", ".join(roots) if roots else "no data on an alive host"
                typer.echo(f"{store.name}\t{'running' if store.running else 'stopped'}\t{where}")


@app.command("stop")
def stop_command(
    name: str = STORE_OPTION,
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
) -> None:
    """Shut the store down cleanly (pending writes finish or fail definitely); its data stays."""
    with handled():
        quiet_ray()
        from raykv.protocol import check_store_name

        check_store_name(name)
        connect_ray(address)
        import raykv.api

        with spinner(f"stopping store {name!r}"):
            roots = raykv.api.stop(name)
    if roots is None:
        typer.echo(f"store {name!r} had not finished starting: removed the replica actors it left (their data "
                   f"stays; `{reopen_command(name, None, address)}` reopens it)")
    else:
        typer.echo(f"store {name!r} stopped (its data stays; `{reopen_command(name, roots, address)}` reopens it)")


@app.command("backup")
def backup_command(
    path: str = typer.Argument(..., help="Directory or URL (file://, s3://, gs://, ...: any pyarrow filesystem) to "
                                         "write: shard-<id>.parquet files and manifest.json (last)."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty directory (replaces a backup there)."),
    name: str = STORE_OPTION,
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds allowed per shard (export and transfer)."),
) -> None:
    """Write a consistent snapshot of every shard (one Raft index each) as Parquet, plus a manifest."""
    with handled():
        if timeout <= 0:
            raise fail(EXIT_BAD_INPUT, f"--timeout must be > 0, got {timeout}")
        import raykv.backup

        where = raykv.backup.check_target(path, force)  # a bad PATH fails before Ray is joined
        started = time.monotonic()
        with open_client(name, address) as client:
            manifest = raykv.backup.backup(client, path, force=force, timeout_s=timeout,
                                           progress=lambda shard: typer.echo(describe_shard_backup(shard)))
        seconds = time.monotonic() - started
    typer.echo(f"backup of store {name!r} (map epoch {manifest.epoch}) written to {where.shown}: "
               f"{manifest.rows} rows, {manifest.bytes} bytes in {len(manifest.shards)} files, {seconds:.1f}s "
               f"({manifest.rows / max(seconds, 1e-9):,.0f} rows/s)")


def backup_shown(path: str) -> str:
    """How messages name the backup at ``path`` (a URL without its query options, or an absolute path)."""
    from raykv.storage.location import BackupLocation

    return BackupLocation.parse(path).shown


def describe_shard_backup(shard: Any) -> str:
    return (f"shard {shard.shard}: {shard.rows} rows, {shard.bytes} bytes at raft index {shard.index} "
            f"(term {shard.term}) -> {shard.file}")


@app.command("restore")
def restore_command(
    path: str = typer.Argument(..., help="A directory or URL written by `raykv backup`."),
    name: str = typer.Option(..., "--name", "-n", help="Name of the NEW store (must not exist)."),
    shards: Optional[int] = typer.Option(None, "--shards", help="Shards of the new store (default: the backup's)."),
    replicas: int = typer.Option(3, "--replicas", help="Replicas per shard of the new store."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Node-local data root on every host (default: $RAYKV_DATA_DIR or ~/.raykv/data)."
    ),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
) -> None:
    """Verify a backup (checksums, row counts) and build a new store NAME from it."""
    with handled():
        quiet_ray()
        import raykv.backup
        from raykv.errors import BackupError

        root = str(data_dir.expanduser().resolve()) if data_dir is not None else None
        loaded: list[int] = []

        def loaded_file(shard: Any) -> None:
            loaded.append(shard.rows)
            typer.echo(f"backup shard {shard.shard}: {shard.rows} rows loaded")

        started = time.monotonic()
        try:
            connect_ray(address)
            client = raykv.backup.restore(path, name, shards=shards, replicas=replicas, data_dir=root,
                                          progress=loaded_file)
        except BackupError as exc:
            raise fail(EXIT_BAD_INPUT, str(exc)) from None
        except raykv.backup.RestoreIncompleteError as exc:
            raise fail(EXIT_INDETERMINATE, str(exc)) from None
        with client:
            count = len(client.shard_map.shards)
        seconds = time.monotonic() - started
    typer.echo(f"store {name!r} restored from {backup_shown(path)}: {sum(loaded)} rows into {count} shards, "
               f"{seconds:.1f}s")


@app.command("demo")
def demo_command(
    keys: int = typer.Option(2000, "--keys", help="How many keys to write and check."),
    name: str = typer.Option("demo", "--name", "-n", help=NAME_HELP),
    address: Optional[str] = typer.Option(
        None, "--address", help="Use this Ray cluster (default: a fresh embedded single-machine Ray)."
    ),
    shards: int = typer.Option(3, "--shards", help="Shards of the demo store."),
    replicas: int = typer.Option(3, "--replicas", help="Replicas per shard."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Data root (default: a temporary directory, removed afterwards)."
    ),
) -> None:
    """Start a store, write, read back, scan, cas, delete, check every answer, report, stop."""
    with handled():
        from raykv import demo

        config = demo.DemoConfig(keys=keys, name=name, address=address, shards=shards, replicas=replicas,
                                 data_dir=str(data_dir.expanduser().resolve()) if data_dir else None)
        raise typer.Exit(demo.run(config))


@app.command("bench")
def bench_command(
    quick: bool = typer.Option(False, "--quick", help="Small counts: a fast smoke run."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the figures as JSON to this file."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write bench.json, bench.md and bench.png here."),
) -> None:
    """Run `python -m raykv.bench full` (its own private 3-raylet Ray cluster) and stream its output."""
    raise typer.Exit(subprocess.call(bench_argv(quick, json_path, out)))


def bench_argv(quick: bool, json_path: Optional[Path], out: Optional[Path] = None) -> list[str]:
    """The ``python -m raykv.bench full`` argv equivalent to the ``raykv bench`` options."""
    argv = [sys.executable, "-m", "raykv.bench", "full"]
    if quick:
        argv.append("--quick")
    if json_path is not None:
        argv += ["--json", str(json_path)]
    if out is not None:
        argv += ["--out", str(out)]
    return argv


def sim_argv(
    seeds: str, groups: int, replicas: int, jobs: int, seconds: Optional[float], storage: str = "memory"
) -> list[str]:
    """Build the ``raykv.testing.sim`` argv equivalent to the ``raykv sim`` options.

    ``--seconds`` is passed only when given, so the simulator's own default applies otherwise.
    """
    argv = ["--seeds", seeds, "--groups", str(groups), "--replicas", str(replicas), "--jobs", str(jobs)]
    if storage != "memory":
        argv += ["--storage", storage]
    if seconds is not None:
        argv += ["--seconds", f"{seconds:g}"]
    return argv


@app.command("sim")
def sim_command(
    seeds: str = typer.Option(..., "--seeds", help='Seed range "A:B" (half-open, A inclusive).'),
    groups: int = typer.Option(1, "--groups", help="Raft groups per simulation."),
    replicas: int = typer.Option(3, "--replicas", help="Replicas per group."),
    jobs: int = typer.Option(1, "--jobs", help="Worker processes running seeds in parallel."),
    seconds: Optional[float] = typer.Option(None, "--seconds",
                                            help="Simulated seconds of faults per seed (simulator default if omitted)."),
    storage: str = typer.Option("memory", "--storage", help="Where replicas keep their state: memory or lmdb."),
) -> None:
    """Run the deterministic simulator of the replica engine over a seed range; exit non-zero on any violation."""
    from raykv.testing import sim

    raise typer.Exit(int(sim.main(sim_argv(seeds, groups, replicas, jobs, seconds, storage))))


if __name__ == "__main__":
    app()
