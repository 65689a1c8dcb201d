"""What the notebooks under ``notebooks/`` compute and draw, as plain functions.

No logic lives only in a notebook: every table, measurement and figure a notebook shows
comes from a function here, callable (and tested) without Jupyter.

* **Opening a store for a notebook**: :func:`open_store` returns a :class:`NotebookStore`
  (a connected client and what the notebook started); :meth:`NotebookStore.close` stops
  only what it started: the store if this process created it, and Ray if this process
  embedded it (a joined cluster is only disconnected from). By default it behaves like
  :func:`raykv.connect` (join the Ray cluster of this process or of this machine, else
  embed one and start a 3 x 3 store). With
  ``$RAYKV_NOTEBOOK_PRIVATE_RAY=1`` (what CI sets) it never joins another Ray: it starts a
  fresh single-machine Ray in this process (under ``$RAY_TMPDIR``) and creates or reopens
  the store there. ``$RAYKV_STORE`` names the store (default ``"default"``), as for the CLI and the jobs.
* **Layout**: :func:`shard_layout` (one row per replica), :func:`raft_indices_table`
  (a pandas DataFrame with each replica's lag behind its shard's highest commit),
  :func:`leaders_per_host`.
* **Latency**: :func:`measure_latencies` (ms per sequential ``get``),
  :func:`measure_consistency_levels`, :func:`latency_summary`.
* **Bulk**: :func:`arrow_rows` (a key/value Arrow table), :func:`bulk_load` (``put_batch``
  in slices, timed), :func:`count_keys`.
* **Figures**: :func:`plot_shard_map`, :func:`plot_leaders_per_host`,
  :func:`plot_cluster`, :func:`plot_latency_histogram`. Each returns a
  ``matplotlib.figure.Figure`` (drawn on ``ax`` if given, else a new figure that is not
  registered with pyplot: nothing opens a window, no GUI backend is needed and the
  figure shows once as ``image/png`` in Jupyter). matplotlib is the optional extra
  ``raykv[notebook]``; without it the plotting functions raise
  :class:`OptionalDependencyError`.

Everything that reads a store takes a :class:`~raykv.client.Client` or the
:class:`~raykv.client.status.StoreStatus` it returned, so the layout and plotting
functions also work on a hand-built status (no Ray).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequestError, OptionalDependencyError, StoreNotFoundError, UnavailableError
from .protocol import STORE_ENV

PRIVATE_RAY_ENV = "RAYKV_NOTEBOOK_PRIVATE_RAY"
CONSISTENCY_LEVELS = ("linearizable", "lease", "stale")
LATENCY_KEY = "explore:latency"
ROLE_COLOURS = {"leader": "#f2b134", "follower": "#7fb3d5", "candidate": "#c39bd3", "dead": "#e74c3c"}


# -- opening and closing a store --------------------------------------------------------------
@dataclass
class NotebookStore:
    """A notebook's store: ``client``, its ``name``, and what :func:`open_store` started:
    ``started_store`` (it created the store's actors), ``started_ray`` (it embedded a Ray in
    this process) and ``connected_ray`` (it connected this process to Ray, embedded or joined)."""

    client: Any
    name: str
    started_store: bool
    started_ray: bool
    connected_ray: bool

    def close(self) -> str:
        """Close the client, stop the store if it was started here, shut down (or disconnect from)
        Ray if it was connected here; returns a line saying what was done."""
        import ray

        import raykv

        done = []
        try:
            self.client.close()
            done.append("client closed")
            if self.started_store:
                raykv.stop(self.name)
                done.append(f"store {self.name!r} stopped (its data stays)")
        finally:  # Ray goes down even if stopping the store failed (the error still propagates)
            if self.connected_ray:
                ray.shutdown()
                done.append("embedded Ray shut down" if self.started_ray else "disconnected from Ray")
        return "; ".join(done)


def open_store(name: str | None = None, *, private_ray: bool | None = None,
               leader_timeout_s: float = 120.0) -> NotebookStore:
    """Connect to (or start) the store ``name`` and wait until every shard is healthy.

    ``name`` defaults to ``$RAYKV_STORE`` or ``"default"``; ``private_ray`` to
    ``$RAYKV_NOTEBOOK_PRIVATE_RAY == "1"`` (see the module docstring). The store is created
    only on a Ray embedded here, as :func:`raykv.connect` does; on a joined cluster a missing
    store raises :class:`~raykv.errors.StoreNotFoundError`.
    """
    import ray

    import raykv
    import raykv.api
    from raykv.cli import fresh_or_joined_ray
    from raykv.protocol import check_store_name

    name = check_store_name(name or os.environ.get(STORE_ENV) or "default")
    if private_ray is None:
        private_ray = os.environ.get(PRIVATE_RAY_ENV, "") == "1"
    connected = not ray.is_initialized()
    started_ray = fresh_or_joined_ray(None) if private_ray else raykv.api.ensure_ray(None)
    try:
        running = raykv.api.store_running(name)
        if not running and not started_ray:
            raise StoreNotFoundError(f"no store named {name!r} runs on the Ray cluster this notebook joined: "
                                     f"start it (raykv start -n {name}) or name another one in ${STORE_ENV}")
        client = raykv.connect(name) if running else raykv.start(name)
    except BaseException:
        if connected:
            ray.shutdown()  # leave no embedded Ray (or connection) behind a failed open
        raise
    session = NotebookStore(client, name, not running, started_ray, connected)
    try:
        wait_until_healthy(client, leader_timeout_s)
    except BaseException:
        session.close()
        raise
    return session


def wait_until_healthy(client: Any, timeout_s: float = 120.0, poll_s: float = 0.2) -> Any:
    """Poll ``client.status()`` until every shard has a leader and a live majority; returns that
    status, or raises :class:`~raykv.errors.UnavailableError` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.status()
        if status.shards and status.healthy:
            return status
        if time.monotonic() > deadline:
            led = sum(s.leader is not None for s in status.shards)
            raise UnavailableError(f"store {client.store!r} not healthy after {timeout_s:g}s "
                                   f"({led} of {len(status.shards)} shards have a leader)")
        time.sleep(poll_s)


# -- layout -----------------------------------------------------------------------------------
def role_of(replica: Any) -> str:
    """``leader``/``follower``/``candidate``/..., or ``dead`` for a replica that did not answer."""
    return replica.role if replica.alive and replica.role else "dead"


def shard_layout(status: Any) -> list[dict[str, Any]]:
    """One dict per replica, in shard then replica order: shard, range, replica, host, node
    (Ray node id, first 8 hex digits), role, leader (bool), term, commit, applied, alive."""
    rows = []
    for shard in status.shards:
        for r in shard.replicas:
            rows.append({"shard": shard.shard, "range": shard.range_text(), "replica": r.replica,
                         "host": r.host, "node": (r.node_id or "")[:8], "role": role_of(r),
                         "leader": r.replica == shard.leader, "term": r.term, "commit": r.commit,
                         "applied": r.applied, "alive": r.alive})
    return rows


def raft_indices_table(status: Any) -> Any:
    """A pandas DataFrame of :func:`shard_layout` plus ``lag``: the shard's highest commit index
    minus this replica's applied index (None for a dead replica)."""
    import pandas as pd

    rows = shard_layout(status)
    top: dict[int, int] = {}
    for row in rows:
        if row["commit"] is not None:
            top[row["shard"]] = max(top.get(row["shard"], 0), row["commit"])
    for row in rows:
        applied = row["applied"]
        row["lag"] = None if applied is None or row["shard"] not in top else top[row["shard"]] - applied
    columns = ["shard", "replica", "host", "role", "term", "commit", "applied", "lag", "alive"]
    integers = {c: "Int64" for c in ("term", "commit", "applied", "lag")}  # nullable: a dead replica has none
    return pd.DataFrame(rows, columns=columns).astype(integers)


def leaders_per_host(status: Any) -> dict[str, tuple[int, int]]:
    """Host -> (replicas it holds, leaders among them), hosts sorted by name."""
    counts: dict[str, list[int]] = {}
    for shard in status.shards:
        for r in shard.replicas:
            held = counts.setdefault(r.host, [0, 0])
            held[0] += 1
            held[1] += int(r.replica == shard.leader)
    return {host: (held[0], held[1]) for host, held in sorted(counts.items())}


# -- latency ----------------------------------------------------------------------------------
def measure_latencies(client: Any, n: int = 200, consistency: str = "linearizable",
                      key: Any = LATENCY_KEY, warmup: int = 5) -> list[float]:
    """Milliseconds of ``n`` sequential ``client.get(key, consistency=...)`` calls (after
    ``warmup`` untimed ones). Writes ``key`` first if it is absent."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidRequestError(f"n must be a positive int, got {n!r}")
    if client.get(key) is None:
        client.put(key, "latency probe")
    for _ in range(warmup):
        client.get(key, consistency=consistency)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.get(key, consistency=consistency)
        samples.append(1000.0 * (time.perf_counter() - t0))
    return samples


def measure_consistency_levels(client: Any, n: int = 200,
                               levels: Sequence[str] = CONSISTENCY_LEVELS) -> dict[str, list[float]]:
    """:func:`measure_latencies` at each consistency level: level -> samples in ms."""
    return {level: measure_latencies(client, n, level) for level in levels}


def latency_summary(samples_by_label: Mapping[str, Sequence[float]]) -> Any:
    """A pandas DataFrame, one row per label: n, mean, p50, p90, p99, max (ms)."""
    import numpy as np
    import pandas as pd

    _check_samples(samples_by_label)
    rows = []
    for label, samples in samples_by_label.items():
        data = np.asarray(samples, dtype=float)
        p50, p90, p99 = np.percentile(data, [50, 90, 99])
        rows.append({"label": label, "n": len(data), "mean_ms": data.mean(), "p50_ms": p50, "p90_ms": p90,
                     "p99_ms": p99, "max_ms": data.max()})
    return pd.DataFrame(rows).set_index("label").round(3)


def _check_samples(samples_by_label: Any) -> None:
    if not isinstance(samples_by_label, Mapping) or not samples_by_label:
        raise InvalidRequestError("samples_by_label must be a non-empty mapping label -> samples (ms)")
    for label, samples in samples_by_label.items():
        if isinstance(samples, (str, bytes)) or len(samples) == 0:
            raise InvalidRequestError(f"samples of {label!r} must be a non-empty sequence of ms")


# -- bulk -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BulkLoad:
    """What :func:`bulk_load` did: ``rows`` written in ``seconds`` (``keys_per_s``)."""

    rows: int
    seconds: float

    @property
    def keys_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        return f"{self.rows:,} keys in {self.seconds:.2f} s: {self.keys_per_s:,.0f} keys/s"


def arrow_rows(n: int, prefix: str = "bulk:", start: int = 0) -> Any:
    """A pyarrow Table of ``n`` rows: ``key`` (``f"{prefix}{i:08d}"``, string) and ``value``
    (a struct ``{i, square}``: each value reads back as a dict)."""
    import pyarrow as pa

    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidRequestError(f"n must be an int >= 0, got {n!r}")
    ids = list(range(start, start + n))
    values = pa.StructArray.from_arrays([pa.array(ids, pa.int64()), pa.array([i * i for i in ids], pa.int64())],
                                        names=["i", "square"])
    return pa.table({"key": pa.array([f"{prefix}{i:08d}" for i in ids], pa.string()), "value": values})


def bulk_load(client: Any, table: Any, batch_rows: int = 5000) -> BulkLoad:
    """Write ``table`` (columns ``key``, ``value``) with one ``put_batch`` per ``batch_rows`` rows."""
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise InvalidRequestError(f"batch_rows must be a positive int, got {batch_rows!r}")
    t0 = time.perf_counter()
    for offset in range(0, table.num_rows, batch_rows):
        client.put_batch(table.slice(offset, batch_rows))
    return BulkLoad(table.num_rows, time.perf_counter() - t0)


def count_keys(client: Any, prefix: Any = None, consistency: str = "linearizable") -> int:
    """How many keys start with ``prefix`` (all keys if None): one ordered ``scan_arrow``."""
    return client.scan_arrow(prefix=prefix, consistency=consistency).num_rows


# -- figures ----------------------------------------------------------------------------------
def _figure(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    """``(figure, axes)``: ``ax`` and its figure, or a new pyplot-free figure with one axes."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise OptionalDependencyError("plotting needs matplotlib: pip install 'raykv[notebook]'") from None
    if ax is not None:
        return ax.figure, ax
    _show_figures_in_ipython(Figure)
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _show_figures_in_ipython(figure_type: type) -> None:
    """In an IPython shell whose matplotlib integration is off (no ``%matplotlib``, pyplot not
    imported), register a PNG formatter for figures, so a returned figure shows as an image."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    png = shell.display_formatter.formatters["image/png"]
    if png.type_printers.get(figure_type) is None:
        from IPython.core.pylabtools import print_figure

        png.for_type(figure_type, lambda fig: print_figure(fig, "png"))


def plot_shard_map(status: Any, ax: Any = None) -> Any:
    """Shards (rows, labelled with their key ranges) x replicas (columns): each cell coloured by
    role (leaders highlighted) and labelled with the replica's host, term and applied index."""
    fig, ax = _figure(ax, (8.0, 1.0 + 0.9 * max(1, len(status.shards))))
    from matplotlib.patches import Patch, Rectangle

    width = max((len(s.replicas) for s in status.shards), default=1)
    for row, shard in enumerate(status.shards):
        for col, r in enumerate(shard.replicas):
            role = role_of(r)
            lead = r.replica == shard.leader
            ax.add_patch(Rectangle((col, row), 0.94, 0.9, facecolor=ROLE_COLOURS.get(role, "#bbbbbb"),
                                   edgecolor="black", linewidth=2.5 if lead else 0.5))
            text = f"r{r.replica}{' (leader)' if lead else ''}\n{r.host}\nterm {_dash(r.term)} applied {_dash(r.applied)}"
            ax.text(col + 0.47, row + 0.45, text, ha="center", va="center", fontsize=8,
                    fontweight="bold" if lead else "normal")
    ax.set_xlim(-0.05, width)
    ax.set_ylim(len(status.shards), -0.1)
    ax.set_yticks([i + 0.45 for i in range(len(status.shards))],
                  [f"shard {s.shard}\n{s.range_text()}" for s in status.shards], fontsize=8)
    ax.set_xticks([i + 0.47 for i in range(width)], [f"replica slot {i + 1}" for i in range(width)], fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(f"store {status.store!r}: shard map (epoch {status.epoch})")
    roles = [Patch(facecolor=c, edgecolor="black", label=r) for r, c in ROLE_COLOURS.items()]
    ax.legend(handles=roles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


def plot_leaders_per_host(status: Any, ax: Any = None) -> Any:
    """Per host (Ray node label): replicas held and shard leaders among them, as bars."""
    fig, ax = _figure(ax, (5.0, 3.0))
    counts = leaders_per_host(status)
    hosts = list(counts)
    xs = range(len(hosts))
    ax.bar([x - 0.2 for x in xs], [counts[h][0] for h in hosts], width=0.4, label="replicas",
           color=ROLE_COLOURS["follower"])
    ax.bar([x + 0.2 for x in xs], [counts[h][1] for h in hosts], width=0.4, label="leaders",
           color=ROLE_COLOURS["leader"])
    ax.set_xticks(list(xs), hosts)
    ax.set_ylabel("count")
    ax.set_ylim(0, 1.35 * max((held for pair in counts.values() for held in pair), default=1))  # room for the legend
    ax.set_title("replicas and leaders per host")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, ncols=2, loc="upper center")
    return fig


def plot_cluster(status: Any) -> Any:
    """:func:`plot_shard_map` and :func:`plot_leaders_per_host` side by side in one figure."""
    fig, ax = _figure(None, (13.0, 1.5 + 0.9 * max(1, len(status.shards))))
    fig.clear()
    left, right = fig.subplots(1, 2, width_ratios=[2.4, 1.0])
    plot_shard_map(status, left)
    plot_leaders_per_host(status, right)
    return fig


def plot_latency_histogram(samples_by_label: Mapping[str, Sequence[float]], ax: Any = None,
                           bins: int = 40) -> Any:
    """Overlaid histograms of latency samples (ms) per label, on log-spaced bins; the legend
    gives each label's median and 99th percentile."""
    import numpy as np

    _check_samples(samples_by_label)
    fig, ax = _figure(ax, (8.0, 4.0))
    from matplotlib.ticker import FuncFormatter

    everything = np.concatenate([np.asarray(s, dtype=float) for s in samples_by_label.values()])
    low, high = max(everything.min(), 1e-3), max(everything.max(), 1e-3)
    edges = np.geomspace(low * 0.9, high * 1.1, bins + 1)
    for label, samples in samples_by_label.items():
        data = np.asarray(samples, dtype=float)
        p50, p99 = np.percentile(data, [50, 99])
        ax.hist(data, bins=edges, alpha=0.55, label=f"{label}: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.3, 2, 40 rather than 3x10^-1
    wide = high / low > 20  # over a decade or so: label only the 2s and 5s between powers of ten
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if not wide or _leading_digit(v) in (2, 5)
                                               else ""))
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("requests")
    ax.set_title("get latency by consistency level")
    ax.legend(fontsize=8)
    return fig


def _leading_digit(value: float) -> int:
    import math

    return round(value / 10 ** math.floor(math.log10(value))) if value > 0 else 0


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)
