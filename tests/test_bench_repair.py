"""``python -m raykv.bench repair --quick`` runs end to end on its own 4-raylet Ray cluster.

No assertion is about speed: only that the figures exist under their names, with positive
finite values (the catch-up of an empty store may take no measurable time: >= 0), the
baselines named, and the machine facts reported. The run gets its own short ``RAY_TMPDIR``.
"""

from __future__ import annotations

import math

import pytest
from quick_bench import run_quick_bench

SIZES = (1000,)
EXPECTED = ["rtt.bare"] + [name for n in SIZES for name in (f"copy.keys{n}", f"repair.keys{n}.total",
                                                             f"repair.keys{n}.catch_up")]


@pytest.mark.timeout(600)
def test_quick_repair_bench_reports_repair_times_by_size() -> None:
    proc, result = run_quick_bench("repair", timeout_s=580)

    figures = result["figures"]
    assert list(figures) == EXPECTED
    for name, fig in figures.items():
        assert math.isfinite(fig["value"]) and fig["value"] >= 0 and fig["unit"] == "ms", f"{name} = {fig!r}"
    for n in SIZES:
        total = figures[f"repair.keys{n}.total"]
        assert total["baseline"] == f"copy.keys{n}" and total["value"] > 0
        assert {"detect_s", "create_s", "catch_up_s", "total_s"} <= set(total["detail"])
        assert figures[f"repair.keys{n}.catch_up"]["baseline"] == f"copy.keys{n}"
    assert result["config"]["sizes"] == list(SIZES)
    assert len(result["machine"]["loadavg_end"]) == 3
    assert proc.stdout.startswith("# raykv repair bench")
