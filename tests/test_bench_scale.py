"""``python -m raykv.bench scale --quick`` runs end to end on its own 3-raylet Ray cluster.

No assertion is about speed. The figures the module promises exist with finite values, and
the figures that are correctness checks hold: the foreground threads saw no error during
either scale, and after the split and the merge back (1 -> 2 -> 1 shards in quick mode) every
loaded key holds its last acknowledged value. The run gets its own short ``RAY_TMPDIR`` (:mod:`quick_bench`).
"""

from __future__ import annotations

import math

import pytest
from quick_bench import run_quick_bench

from raykv.bench.scale import Window, fenced_spans

BARE = ["rtt.bare.p50", "rtt.bare.p99", "page.bare.blob", "page.bare.rows", "page.bare.rate"]
PER_SCALE = ["moved.bytes", "moved.keys", "copy.s", "copy.rate", "wall.s", "fenced.s", "fg.before", "fg.during",
             "fg.during.min", "fg.after", "fg.fenced", "fg.dip", "fg.stall.before", "fg.stall.max", "fg.errors"]
EXPECTED = BARE + [f"{op}.{f}" for op in ("split", "merge") for f in PER_SCALE] + ["check.mismatched"]
MAY_BE_ZERO_OR_LESS = ("fg.during.min", "fg.fenced", "fg.dip", "fg.errors", "check.mismatched")
# (fenced.s is > 0: every step fences its range for a moment)


@pytest.mark.timeout(240)
def test_quick_scale_bench_reports_the_figures_no_errors_and_every_key_kept() -> None:
    proc, result = run_quick_bench("scale", timeout_s=230)

    figures = result["figures"]
    assert sorted(figures) == sorted(EXPECTED)
    for name, fig in figures.items():
        value = fig["value"]
        assert math.isfinite(value), f"{name} = {value!r}"
        if not name.endswith(MAY_BE_ZERO_OR_LESS):
            assert value > 0, f"{name} = {value!r}"
    for op in ("split", "merge"):
        errors = figures[f"{op}.fg.errors"]
        assert errors["value"] == 0, errors["detail"]["first"]
        assert figures[f"{op}.moved.keys"]["value"] > 0 and figures[f"{op}.copy.rate"]["baseline"] == "page.bare.rate"
        assert figures[f"{op}.fg.during"]["detail"]["buckets"]
        assert figures[f"{op}.fg.during"]["detail"]["phases"][-1][2] == "done"
    check = figures["check.mismatched"]
    assert check["value"] == 0 and check["detail"]["uncertain"] == 0, check["detail"]
    assert result["config"]["shards"] == "1->2->1" and check["detail"]["shards"] == 1  # back where it started
    assert result["config"]["keys"] == 5000
    assert proc.stdout.startswith("# raykv scale bench")
    assert "| split.copy.rate |" in proc.stdout


# -- the window arithmetic, no Ray ----------------------------------------------------------
def test_a_window_counts_rate_buckets_and_the_longest_stall_with_its_edges() -> None:
    window = Window.of([0.5, 1.01, 1.02, 1.05, 1.25, 1.6, 2.5], 1.0, 1.5)
    assert window.times == (1.01, 1.02, 1.05, 1.25)
    assert window.rate() == 8.0
    assert window.buckets() == [3, 0, 1, 0, 0]
    assert math.isclose(window.longest_stall(), 0.25)  # 1.25 .. 1.5, the window's end
    assert Window.of([], 0.0, 0.3).longest_stall() == 0.3


def test_fenced_spans_are_the_polled_copy_and_switch_phases() -> None:
    phases = [(0.0, 1, "running"), (0.2, 1, "fence"), (0.5, 1, "copy"), (1.5, 1, "switch"), (1.7, 1, "drop"),
              (2.0, 2, "fence"), (2.2, 2, "copy"), (3.0, 3, "done")]
    assert fenced_spans(phases, 3.5) == [(0.5, 1.5), (1.5, 1.7), (2.2, 3.0)]
    assert fenced_spans([(0.0, 1, "copy")], 2.0) == [(0.0, 2.0)]
