"""Helpers every raykv bench shares: percentiles, figures with baselines, machine facts, output.

A bench builds a :class:`Report`: the machine facts (taken when the report is made, and the
load average again by :meth:`Report.finish`), the settings it ran with, and a list of
:class:`Figure`. Each figure may name a *baseline* figure measured in the same run; its
``ratio`` is then ``value / baseline value`` (so for rates above 1 is faster, for times and
CPU costs above 1 is slower). Absolute numbers on a shared 2-core machine are noisy; the
ratios, the CPU costs and the load averages are what to compare across runs.
No Ray import here: the Ray version is read from the installed package metadata.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TextIO


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``samples``, nearest-rank; raises ValueError if empty."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def p50_p99_us(seconds: Sequence[float]) -> tuple[float, float]:
    """(p50, p99) of a list of durations in seconds, both in microseconds."""
    return percentile(seconds, 50) * 1e6, percentile(seconds, 99) * 1e6


def median(values: Sequence[float]) -> float:
    """The median of a non-empty list (mean of the middle two for an even length)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


@dataclass
class Figure:
    """One measured number. ``name`` is a stable id (tests and JSON readers key on it),
    ``note`` says in words what was measured, ``baseline`` names another figure of the same
    report and ``ratio`` (filled by :meth:`Report.add`) is ``value / baseline's value``.
    ``detail`` holds secondary numbers (counts, splits, per-round values) for the JSON and table."""

    name: str
    value: float
    unit: str
    note: str = ""
    baseline: str | None = None
    ratio: float | None = None
    detail: dict = field(default_factory=dict)


def machine_facts() -> dict:
    """Host, CPU count, versions and the load average now (as ``loadavg_start``)."""
    try:
        ray_version = metadata.version("ray")
    except metadata.PackageNotFoundError:
        ray_version = "not installed"
    return {
        "hostname": socket.gethostname(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "ray": ray_version, "platform": platform.platform(), "loadavg_start": list(os.getloadavg()),
    }


@dataclass
class Report:
    """What one bench run produced; ``figures`` keep the order they were added in."""

    title: str
    config: dict
    facts: dict = field(default_factory=machine_facts)
    figures: list[Figure] = field(default_factory=list)

    def get(self, name: str) -> Figure:
        """The figure called ``name``; KeyError if there is none."""
        for f in self.figures:
            if f.name == name:
                return f
        raise KeyError(name)

    def add(self, figure: Figure) -> Figure:
        """Append ``figure``, computing its ratio from its baseline (which must already be added)."""
        if any(f.name == figure.name for f in self.figures):
            raise ValueError(f"duplicate figure {figure.name!r}")
        if figure.baseline is not None:
            base = self.get(figure.baseline).value
            figure.ratio = figure.value / base if base else None
        self.figures.append(figure)
        return figure

    def finish(self) -> None:
        """Record the load average at the end of the run (``loadavg_end``)."""
        self.facts["loadavg_end"] = list(os.getloadavg())

    def to_json(self) -> dict:
        """Plain data: title, facts, config and ``figures`` as a name -> fields mapping (in order)."""
        return {"title": self.title, "machine": self.facts, "config": self.config,
                "figures": {f.name: asdict(f) for f in self.figures}}

    def write_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_json` to ``path`` (indented, trailing newline)."""
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def markdown(self) -> str:
        """The report as Markdown: a heading, the machine facts and settings, then the figure table."""
        f = self.facts
        load = lambda key: " ".join(f"{x:.2f}" for x in f.get(key, [])) or "-"  # noqa: E731
        lines = [
            f"# {self.title}\n",
            f"- host {f['hostname']}, {f['cpu_count']} CPUs, Python {f['python']}, Ray {f['ray']}, {f['platform']}",
            f"- load average at start: {load('loadavg_start')}; at end: {load('loadavg_end')}",
            "- settings: " + ", ".join(f"{k}={v}" for k, v in self.config.items()),
            "- ratio = value / baseline value (rates: above 1 is faster; times and CPU: above 1 costs more)\n",
            "| figure | value | unit | baseline | ratio | what |",
            "|---|---:|---|---|---:|---|",
        ]
        lines += [_row(fig) for fig in self.figures]
        return "\n".join(lines) + "\n"

    def print(self, out: TextIO | None = None) -> None:
        """Print :meth:`markdown` to ``out`` (default stdout)."""
        print(self.markdown(), file=out or sys.stdout, end="", flush=True)


def _number(x: float) -> str:
    """A figure value for the table: thousands separators, fewer decimals as it grows."""
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:,.1f}" if abs(x) >= 10 else f"{x:,.2f}"


def _row(fig: Figure) -> str:
    """One Markdown table row of ``fig``."""
    ratio = f"{fig.ratio:.2f}" if fig.ratio is not None else "-"
    cells = [fig.name, _number(fig.value), fig.unit, fig.baseline or "-", ratio, fig.note]
    return "| " + " | ".join(cells) + " |"
