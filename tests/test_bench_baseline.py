"""``python -m raykv.bench baseline --quick`` runs end to end on a private local Ray.

No assertion is about speed: only that every figure exists with a positive, finite value,
that figures with a baseline carry its ratio, and that the Markdown table and the JSON agree.
The run gets its own ``RAY_TMPDIR`` (everything else in the environment is left as is).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from raykv.bench import report

ROOT = Path(__file__).resolve().parent.parent
RTT = ("sync", "async", "group")
PIPELINED = ("sync", "async", "group", "group_oneway", "sync_batch", "async_batch", "group_oneway_batch")
EXPECTED = (
    [f"rtt.{v}.{q}" for v in RTT for q in ("p50", "p99")]
    + [f"{kind}.{v}" for kind in ("rate", "cpu") for v in PIPELINED]
    + ["lmdb.commit"]
)


@pytest.fixture
def ray_tmpdir(tmp_path) -> Iterator[Path]:
    """A RAY_TMPDIR: ``tmp_path``, or a short directory in /tmp (removed afterwards) when Ray's
    socket paths (``<dir>/ray/session_<date>_<pid>/sockets/plasma_store``, < 108 bytes) would not fit."""
    if len(str(tmp_path)) <= 36:  # + "/ray/session_<date>_<pid>/sockets/plasma_store" (~70)
        yield tmp_path
        return
    short = Path(tempfile.mkdtemp(prefix="rkb-"))
    try:
        yield short
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.mark.timeout(120)
def test_quick_baseline_reports_every_figure(tmp_path, ray_tmpdir) -> None:
    out = tmp_path / "baseline.json"
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmpdir)}
    proc = subprocess.run(
        [sys.executable, "-m", "raykv.bench", "baseline", "--quick", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    figures = result["figures"]
    assert list(figures) == EXPECTED

    for name, fig in figures.items():
        assert fig["name"] == name and fig["unit"], name
        assert math.isfinite(fig["value"]) and fig["value"] > 0, f"{name} = {fig['value']!r}"
        if fig["baseline"] is not None:
            base = figures[fig["baseline"]]["value"]
            assert math.isclose(fig["ratio"], fig["value"] / base), name
        else:
            assert fig["ratio"] is None, name
    assert figures["rate.async"]["baseline"] == "rate.sync"
    assert figures["cpu.group_oneway"]["baseline"] == "cpu.sync"
    assert figures["rate.sync_batch"]["unit"] == "items/s"

    machine = result["machine"]
    assert machine["cpu_count"] > 0 and machine["ray"] and machine["python"] and machine["hostname"]
    assert len(machine["loadavg_start"]) == len(machine["loadavg_end"]) == 3
    assert result["config"]["rounds"] == 1

    stdout = proc.stdout
    assert stdout.startswith("# raykv baseline")
    assert "| figure | value | unit | baseline | ratio | what |" in stdout
    for name in EXPECTED:
        assert f"| {name} |" in stdout, name


def test_percentile_and_ratios() -> None:
    assert report.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert report.percentile(list(range(1, 101)), 99) == 99
    assert report.p50_p99_us([0.001] * 10) == (1000.0, 1000.0)
    with pytest.raises(ValueError):
        report.percentile([], 50)
    r = report.Report("t", {})
    r.add(report.Figure("a", 2.0, "calls/s"))
    assert r.add(report.Figure("b", 3.0, "calls/s", baseline="a")).ratio == 1.5
    with pytest.raises(ValueError):
        r.add(report.Figure("a", 1.0, "calls/s"))
    r.finish()
    assert "| b | 3.00 | calls/s | a | 1.50 |" in r.markdown()


def test_unknown_subcommand_is_rejected() -> None:
    from raykv.bench.__main__ import main

    with pytest.raises(SystemExit):
        main(["no-such-bench"])
