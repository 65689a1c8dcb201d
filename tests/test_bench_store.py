"""``python -m raykv.bench store --quick`` runs end to end on its own 3-raylet Ray cluster.

No assertion is about speed: only that the bare, 1-shard and 3-shard figures exist with
positive, finite values, that the 3-shard figures take the 1-shard figure as baseline (so
their ratio reads "3 shards vs 1") and that the machine facts are reported. The run gets its
own short ``RAY_TMPDIR`` (:mod:`quick_bench`).
"""

from __future__ import annotations

import math

import pytest
from quick_bench import run_quick_bench

BARE = ["rtt.bare.p50", "rtt.bare.p99", "rate.bare.threads1", "rate.bare.threads64", "bulk.bare", "scan.bare"]
PER_STORE = ["put.seq.p50", "put.seq.p99", "get.seq.linearizable.p50", "put.threads1", "put.threads64",
             "get.threads64.linearizable", "get.threads64.lease", "get.threads64.stale", "bulk", "scan"]
EXPECTED = BARE + [f"s1.{f}" for f in PER_STORE] + [f"s3.{f}" for f in PER_STORE]


@pytest.mark.timeout(90)
def test_quick_store_bench_reports_one_and_three_shards() -> None:
    proc, result = run_quick_bench("store", timeout_s=85)

    figures = result["figures"]
    assert list(figures) == EXPECTED
    for name, fig in figures.items():
        assert math.isfinite(fig["value"]) and fig["value"] > 0, f"{name} = {fig['value']!r}"
    for suffix in PER_STORE:
        s1, s3 = figures[f"s1.{suffix}"], figures[f"s3.{suffix}"]
        assert s1["baseline"] in BARE and s3["baseline"] == f"s1.{suffix}"
        assert math.isclose(s3["ratio"], s3["value"] / s1["value"])
        assert s1["detail"]["vs_bare"] > 0 and s3["detail"]["vs_bare"] > 0
    assert figures["s3.put.threads64"]["unit"] == "ops/s" and figures["s3.bulk"]["unit"] == "keys/s"

    assert result["config"]["keys"] == 2000
    machine = result["machine"]
    assert len(machine["loadavg_start"]) == len(machine["loadavg_end"]) == 3
    assert proc.stdout.startswith("# raykv store bench")
    assert "| s3.put.threads64 |" in proc.stdout
