"""``python -m raykv.bench shard --quick`` runs end to end on its own 3-raylet Ray cluster and
reports every figure the one-shard bench promises (no assertion is about speed)."""

from __future__ import annotations

import math

import pytest
from quick_bench import run_quick_bench

EXPECTED = [
    "rtt.bare.p50", "rtt.bare.p99", "put.seq.p50", "put.seq.p99",
    "get.seq.linearizable.p50", "get.seq.linearizable.p99", "get.seq.lease.p50", "get.seq.lease.p99",
    "get.seq.stale.p50", "get.seq.stale.p99", "put.threads1", "put.threads8", "put.threads64",
    "get.threads64.linearizable", "get.threads64.stale", "failover.median",
]


@pytest.mark.timeout(120)
def test_quick_shard_bench_reports_latency_throughput_and_failover() -> None:
    proc, result = run_quick_bench("shard", timeout_s=115)
    figures = result["figures"]
    assert list(figures) == EXPECTED
    for name, fig in figures.items():
        assert math.isfinite(fig["value"]) and fig["value"] > 0, f"{name} = {fig['value']!r}"
    assert figures["put.seq.p50"]["baseline"] == "rtt.bare.p50"
    assert figures["put.threads64"]["baseline"] == "put.threads1"
    assert "| failover.median |" in proc.stdout
