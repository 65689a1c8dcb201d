"""The storage benchmark runs end to end and reports every figure with its baseline.

No assertion here is about speed: only that each figure exists, is a positive
number, and that the Markdown report and the JSON file agree on what was measured.
"""

from __future__ import annotations

import json
import math

from raykv.storage import bench

RATE_FIELDS = ("ops", "seconds", "ops_per_s", "entries_per_s", "mb_per_s", "us_per_op")


def _check_rates(figures: dict, where: str, ratio: bool) -> None:
    for name in RATE_FIELDS + (("ratio",) if ratio else ()):
        value = figures.get(name)
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, f"{where}.{name} = {value!r}"


def test_quick_run_writes_every_figure(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--json", str(out), "--dir", str(tmp_path)]) == 0
    result = json.loads(out.read_text())

    _check_rates(result["baseline"], "baseline", ratio=True)
    _check_rates(result["baseline_end"], "baseline_end", ratio=True)
    assert result["baseline"]["entries_per_s"] == result["baseline"]["ops_per_s"]
    assert sorted(map(int, result["append"])) == list(bench.APPEND_BATCHES)
    assert sorted(map(int, result["apply"])) == list(bench.APPLY_BATCHES)
    for kind in ("append", "apply"):
        for n, figures in result[kind].items():
            _check_rates(figures, f"{kind}[{n}]", ratio=True)
            assert math.isclose(figures["entries_per_s"], figures["ops_per_s"] * int(n))
            assert math.isclose(figures["ratio"], figures["entries_per_s"] / result["baseline"]["ops_per_s"])
    snap = result["snapshot"]
    assert snap["keys"] == result["config"]["snapshot_keys"] > 0
    assert snap["data_bytes"] > 0 and snap["file_bytes"] > 0
    _check_rates(snap["export"], "snapshot.export", ratio=False)
    _check_rates(snap["install"], "snapshot.install", ratio=False)

    machine = result["machine"]
    assert machine["cpu_count"] > 0 and len(machine["loadavg_start"]) == len(machine["loadavg_end"]) == 3
    assert machine["python"] and machine["lmdb"] and machine["pyarrow"] and machine["filesystem"]

    report = capsys.readouterr().out
    assert "| bare LMDB synced commit (baseline) |" in report
    for n in bench.APPEND_BATCHES:
        assert f"| persist, {n} entr" in report
    for n in bench.APPLY_BATCHES:
        assert f"| apply, {n} entr" in report
    assert "snapshot export" in report and "snapshot install" in report
    assert list(tmp_path.iterdir()) == [out], "the temporary LMDB directory was not removed"


def test_module_runs_as_a_script(tmp_path) -> None:
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    args = [sys.executable, "-m", "raykv.storage.bench", "--quick", "--seconds", "0.01", "--snapshot-keys", "300"]
    proc = subprocess.run(args + ["--json", str(out), "--dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "# raykv storage benchmark" in proc.stdout
    assert json.loads(out.read_text())["snapshot"]["keys"] == 300
