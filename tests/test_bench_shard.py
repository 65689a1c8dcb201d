"""``python -m raykv.bench shard --quick`` runs end to end on its own 3-raylet Ray cluster and
reports every figure the one-shard bench promises (no assertion is about speed)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = [
    "rtt.bare.p50", "rtt.bare.p99", "put.seq.p50", "put.seq.p99",
    "get.seq.linearizable.p50", "get.seq.linearizable.p99", "get.seq.lease.p50", "get.seq.lease.p99",
    "get.seq.stale.p50", "get.seq.stale.p99", "put.threads1", "put.threads8", "put.threads64",
    "get.threads64.linearizable", "get.threads64.stale", "failover.median",
]


@pytest.mark.timeout(120)
def test_quick_shard_bench_reports_latency_throughput_and_failover() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="rkb-", dir="/tmp"))  # short: Ray socket paths < 107 bytes
    try:
        out = tmp / "shard.json"
        env = {**os.environ, "RAY_TMPDIR": str(tmp)}
        proc = subprocess.run([sys.executable, "-m", "raykv.bench", "shard", "--quick", "--json", str(out)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=115)
        assert proc.returncode == 0, proc.stderr[-3000:]
        figures = json.loads(out.read_text())["figures"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert list(figures) == EXPECTED
    for name, fig in figures.items():
        assert math.isfinite(fig["value"]) and fig["value"] > 0, f"{name} = {fig['value']!r}"
    assert figures["put.seq.p50"]["baseline"] == "rtt.bare.p50"
    assert figures["put.threads64"]["baseline"] == "put.threads1"
    assert "| failover.median |" in proc.stdout
