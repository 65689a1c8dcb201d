"""What ``python -m raykv.bench full`` writes: the targets verdict, Markdown, JSON and a plot.

:class:`FullReport` is a :class:`~raykv.bench.report.Report` that also carries the exact
command and the :class:`Target` rows of issue 8, judged on the 1-shard store
(:data:`JUDGED`: one Raft group of three, the analogue of the 3-member etcd the targets
were set against) with the 3-shard value shown beside each. Its
Markdown is the figure table, then the targets table, then the command.
:func:`write_out` writes ``bench.json``, ``bench.md`` and ``bench.png`` into a directory;
the plot needs matplotlib (the ``notebook`` extra) and is skipped with a note on stderr,
never an error, when it is missing. No Ray here: everything works on a hand-built report.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .report import Report, _number

JUDGED = "s1"
"""The store the targets are judged on: 1 shard x 3 replicas, one Raft group like a 3-member
etcd (the scaling target compares the 3-shard store with it)."""
REFERENCE = "s3"
PUT_TARGET_OPS = 7_500
BULK_TARGET_KEYS = 75_000
GET_TARGET_OPS = 5_000
SEQ_PUT_MAX_RTT_RATIO = 2.5
SCALE_MIN_RATIO = 1.8


@dataclass(frozen=True)
class Target:
    """One target: ``measured`` (None if its figures are missing) against ``threshold``;
    ``at_least`` says which side passes; ``also`` shows related values in words."""

    what: str
    threshold: float
    unit: str
    at_least: bool
    measured: float | None
    also: str = ""

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured >= self.threshold if self.at_least else self.measured <= self.threshold

    def row(self) -> str:
        """One Markdown table row."""
        required = f"{'≥' if self.at_least else '≤'} {_number(self.threshold)} {self.unit}"
        measured = "-" if self.measured is None else f"{_number(self.measured)} {self.unit}"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[self.met]
        return f"| {self.what} | {required} | {measured} | {verdict} | {self.also} |"


def _value(report: Report, name: str) -> float | None:
    try:
        return report.get(name).value
    except KeyError:
        return None


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return top / bottom if top is not None and bottom else None


def _shown(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{_number(value)} {unit}"


def judge(report: Report) -> list[Target]:
    """Issue 8's targets, judged on the :data:`JUDGED` store's figures of ``report``."""
    v = lambda name: _value(report, name)  # noqa: E731
    j, r = JUDGED, REFERENCE
    seq_ratio = lambda s: _ratio(v(f"{s}.put.seq.p50"), v("rtt.bare.p50"))  # noqa: E731
    ref_ratio = seq_ratio(r)
    return [
        Target("puts, 64 client threads", PUT_TARGET_OPS, "ops/s", True, v(f"{j}.put.threads64"),
               f"64 clients as 4 Ray tasks: {_shown(v(f'{j}.put.tasks64'), 'ops/s')}; "
               f"3 shards: {_shown(v(f'{r}.put.threads64'), 'ops/s')}"),
        Target("bulk load (put_batch of a pyarrow Table, 100 B values)", BULK_TARGET_KEYS, "keys/s", True,
               v(f"{j}.bulk"), f"3 shards: {_shown(v(f'{r}.bulk'), 'keys/s')}"),
        Target("linearizable gets, 64 client threads", GET_TARGET_OPS, "ops/s", True,
               v(f"{j}.get.threads64.linearizable"),
               f"3 shards: {_shown(v(f'{r}.get.threads64.linearizable'), 'ops/s')}"),
        Target("sequential put p50 / bare actor RTT p50 (same run)", SEQ_PUT_MAX_RTT_RATIO, "x", False, seq_ratio(j),
               f"put p50 {_shown(v(f'{j}.put.seq.p50'), 'µs')}, RTT p50 {_shown(v('rtt.bare.p50'), 'µs')}; "
               f"3 shards: {_shown(ref_ratio, 'x')}"),
        Target("put throughput at 64 client threads, 3 shards / 1 shard", SCALE_MIN_RATIO, "x", True,
               _ratio(v("s3.put.threads64"), v("s1.put.threads64")),
               f"with 64 clients as 4 tasks: {_shown(_ratio(v('s3.put.tasks64'), v('s1.put.tasks64')), 'x')}"),
    ]


@dataclass
class FullReport(Report):
    """A :class:`Report` with the command that produced it and the targets verdict."""

    command: str = ""
    targets: list[Target] = field(default_factory=list)

    def judge(self) -> None:
        """Fill :attr:`targets` from the figures (call after the last one is added)."""
        self.targets = judge(self)

    def to_json(self) -> dict:
        data = super().to_json()
        data["command"] = self.command
        data["targets"] = [{**asdict(t), "met": t.met} for t in self.targets]
        return data

    def markdown(self) -> str:
        lines = [super().markdown(), targets_markdown(self.targets)]
        if self.command:
            lines.append(f"Command: `{self.command}`\n")
        return "\n".join(lines)


def targets_markdown(targets: list[Target]) -> str:
    """The targets section: a heading saying which store is judged, then one row per target."""
    lines = [
        "## Targets (issue 8)\n",
        f"Judged on the {JUDGED[1:]}-shard store (3 replicas per shard); values of the {REFERENCE[1:]}-shard "
        "store and of the clients-as-tasks runs are shown beside them.\n",
        "| target | required | measured | verdict | also |",
        "|---|---|---:|---|---|",
    ]
    return "\n".join(lines + [t.row() for t in targets]) + "\n"


def write_out(report: FullReport, directory: str | Path) -> list[Path]:
    """Write ``bench.json``, ``bench.md`` and (with matplotlib) ``bench.png`` into ``directory``
    (created if needed); returns the paths written. A missing matplotlib prints a note on stderr."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "bench.json")
    (out / "bench.md").write_text(report.markdown())
    written = [out / "bench.json", out / "bench.md"]
    if plot(report, out / "bench.png"):
        written.append(out / "bench.png")
    else:
        print(f"note: {out / 'bench.png'} not written: plotting needs matplotlib "
              "(pip install 'raykv[notebook]'); bench.json and bench.md were written", file=sys.stderr)
    return written


# -- the plot ------------------------------------------------------------------------------
THROUGHPUT = (("put.threads1", "put\n1 thr"), ("put.threads8", "put\n8 thr"), ("put.tasks8", "put\n8 in tasks"),
              ("put.threads64", "put\n64 thr"), ("put.tasks64", "put\n64 in tasks"),
              ("get.threads64.linearizable", "get lin\n64 thr"), ("get.threads64.lease", "get lease\n64 thr"),
              ("get.threads64.stale", "get stale\n64 thr"))
LATENCY = (("put.seq.p50", "put seq\np50"), ("put.seq.p99", "put seq\np99"),
           ("put.threads64.p99", "put 64 thr\np99"), ("put.tasks64.p99", "put 64 tasks\np99"),
           ("get.threads64.linearizable.p99", "get lin 64\np99"))
STORES = (("s1", "1 shard", "tab:blue"), ("s3", "3 shards", "tab:orange"))


def plot(report: Report, path: str | Path) -> bool:
    """Draw three panels (throughput, bulk load, latency: 1 vs 3 shards, with each figure's bare
    baseline as a grey bar and the targets as red lines) to a PNG at ``path``; False (nothing
    written) without matplotlib. Missing figures draw as 0."""
    try:
        from matplotlib.figure import Figure as PlotFigure
    except ImportError:
        return False
    fig = PlotFigure(figsize=(16, 5.5), layout="constrained")
    ops_ax, bulk_ax, lat_ax = fig.subplots(1, 3, width_ratios=[4, 1.2, 3])
    _bars(ops_ax, report, THROUGHPUT, "ops/s", "Throughput (more is better)", bare=True)
    _target(ops_ax, PUT_TARGET_OPS, 2.6, 4.4, "put target (64 clients)")
    _target(ops_ax, GET_TARGET_OPS, 4.6, 5.4, "linearizable get target")
    _bars(bulk_ax, report, (("bulk", "bulk load\n100 B values"),), "keys/s", "Bulk load (put_batch)", bare=False)
    _target(bulk_ax, BULK_TARGET_KEYS, -0.5, 0.5, "target")
    _bars(lat_ax, report, LATENCY, "µs (log)", "Latency (less is better)", bare=True)
    lat_ax.set_yscale("log")
    rtt = _value(report, "rtt.bare.p50")
    if rtt:
        _target(lat_ax, SEQ_PUT_MAX_RTT_RATIO * rtt, -0.5, 0.5, "put p50 target: 2.5x bare RTT p50")
    for ax in (ops_ax, bulk_ax, lat_ax):
        ax.legend(fontsize=8)
    load = report.facts.get("loadavg_start", [0.0])[0]
    fig.suptitle(f"{report.title}: {report.facts.get('hostname', '?')}, {report.facts.get('cpu_count', '?')} CPUs, "
                 f"load {load:.2f} at start; grey: bare Ray actor with the same clients", fontsize=11)
    fig.savefig(path, dpi=100)
    return True


def _bare_of(report: Report, name: str) -> float:
    """The value of the bare baseline of the first store's figure ``name`` (0 if none)."""
    try:
        base = report.get(f"{STORES[0][0]}.{name}").baseline
    except KeyError:
        return 0.0
    return (_value(report, base) or 0.0) if base else 0.0


def _bars(ax, report: Report, names: tuple[tuple[str, str], ...], unit: str, title: str, bare: bool) -> None:
    """Grouped bars: one group per figure suffix, one bar per store (and the bare baseline if ``bare``)."""
    series = [(label, color, [_value(report, f"{prefix}.{name}") or 0.0 for name, _ in names])
              for prefix, label, color in STORES]
    if bare:
        series.append(("bare Ray actor", "tab:gray", [_bare_of(report, name) for name, _ in names]))
    width = 0.8 / len(series)
    for k, (label, color, values) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, values, width, label=label, color=color)
    ax.set_xticks(range(len(names)), [label for _, label in names], fontsize=8)
    ax.set_ylabel(unit)
    ax.set_title(title, fontsize=10)


def _target(ax, y: float, x0: float, x1: float, label: str) -> None:
    ax.hlines(y, x0, x1, colors="red", linestyles="--", label=label)
