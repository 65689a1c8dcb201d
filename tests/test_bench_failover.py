"""``python -m raykv.bench failover --quick`` runs end to end on its own 3-raylet Ray cluster.

Three leader kills (SIGKILL of the leader replica's process, Ray restarts it in place). No
assertion is about speed: only that every figure exists with a positive, finite value, that the
trial detail covers every kill, and that every acknowledged put was read back with its value.
The run gets its own short ``RAY_TMPDIR`` (:mod:`quick_bench`).
"""

from __future__ import annotations

import math

import pytest
from quick_bench import run_quick_bench

EXPECTED = ["rtt.bare.p50", "election.timeout.min", "election.timeout.max", "put.seq.p50", "election.p50",
            "failover.unavailable.p50", "failover.unavailable.p99", "failover.unavailable.max",
            "failover.gap.p50", "failover.gap.p99", "restart.p50", "restart.max", "verify.acked_read_back"]


@pytest.mark.timeout(150)
def test_quick_failover_bench_kills_three_leaders_and_loses_no_acked_put() -> None:
    proc, result = run_quick_bench("failover", timeout_s=140)

    figures = result["figures"]
    assert list(figures) == EXPECTED
    for name, fig in figures.items():
        assert math.isfinite(fig["value"]) and fig["value"] > 0, f"{name} = {fig['value']!r}"
    assert result["config"]["trials"] == 3 and result["config"]["mode"] == "sigkill"

    trials = figures["failover.unavailable.p50"]["detail"]["trials"]
    assert len(trials) == 3
    for trial in trials:
        assert trial["new_leader"] != trial["killed"]
        assert trial["unavailable_s"] > 0 and trial["restart_s"] > 0 and trial["election_s"] > 0

    verify = figures["verify.acked_read_back"]
    assert verify["detail"]["missing_count"] == verify["detail"]["mismatched_count"] == 0
    assert verify["value"] == verify["detail"]["acked"] > 0
    assert "# raykv failover bench" in proc.stdout  # (Ray prints the killed workers' deaths to stdout too)
    assert "| failover.unavailable.p99 |" in proc.stdout
