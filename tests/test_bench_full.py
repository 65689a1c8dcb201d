"""``python -m raykv.bench full`` (what ``raykv bench`` runs): every figure, the targets, ``--out``.

The quick run goes end to end on its own 3-raylet Ray cluster (its own short ``RAY_TMPDIR``,
:mod:`quick_bench`). No assertion is about speed: only that every figure the module promises
exists with a finite value (positive, except idle CPU, which may be 0), with the expected
baselines, that the five targets are judged, and that ``--out`` wrote JSON, Markdown and a
PNG. The rendering tests below need no Ray: they judge and draw a hand-built report.
"""

from __future__ import annotations

import builtins
import json
import math

import pytest
from quick_bench import run_quick_bench

from raykv.bench import full_report
from raykv.bench.full_report import FullReport, judge, write_out
from raykv.bench.report import Figure

THREADS = ("1", "8", "64")
BARE = (["rtt.bare.p50", "rtt.bare.p99", "rate.bare.pipelined", "rate.bare.batch"]
        + [f"rate.bare.threads{n}{p}" for n in THREADS for p in ("", ".p99")]
        + ["bulk.bare", "scan.bare", "lmdb.commit", "rss.bare", "cpu.idle.bare"])
PER_STORE = (["put.seq.p50", "put.seq.p99", "get.seq.linearizable.p50"]
             + [f"put.threads{n}{p}" for n in THREADS for p in ("", ".p99")]
             + [f"get.threads64.{level}{p}" for level in ("linearizable", "lease", "stale") for p in ("", ".p99")]
             + [f"put.tasks{n}{p}" for n in ("8", "64") for p in ("", ".p99")]
             + ["bulk", "rss.replica.max", "rss.shard.max", "scan", "cpu.idle.replica.max", "cpu.idle.total"])
EXPECTED = BARE + [f"s1.{f}" for f in PER_STORE] + [f"s3.{f}" for f in PER_STORE]
MAY_BE_ZERO = ("cpu.idle.",)  # an idle process may use no clock tick in the window
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(300)
def test_quick_full_bench_reports_every_figure_the_targets_and_writes_out(tmp_path) -> None:
    out = tmp_path / "out"
    proc, result = run_quick_bench("full", timeout_s=290, extra_args=("--out", str(out)))

    figures = result["figures"]
    assert list(figures) == EXPECTED
    for name, fig in figures.items():
        value = fig["value"]
        ok = value >= 0 if any(name.startswith(p) or f".{p}" in name for p in MAY_BE_ZERO) else value > 0
        assert math.isfinite(value) and ok, f"{name} = {value!r}"
    for suffix in PER_STORE:
        assert figures[f"s1.{suffix}"]["baseline"] in BARE, suffix
        assert figures[f"s3.{suffix}"]["baseline"] == f"s1.{suffix}", suffix
    assert figures["s1.put.tasks64"]["baseline"] == "rate.bare.threads64"
    assert figures["s1.put.threads64.p99"]["baseline"] == "rate.bare.threads64.p99"
    assert figures["s1.put.seq.p50"]["baseline"] == "rtt.bare.p50"
    assert figures["s3.put.tasks64"]["detail"]["per_task_ops"] and figures["s3.rss.shard.max"]["unit"] == "MiB"
    replicas = figures["s3.rss.replica.max"]["detail"]["replicas_mib"]
    assert len(replicas) == 3 * 3 + 3  # three data shards and the meta group, 3 replicas each
    assert set(figures["s3.cpu.idle.replica.max"]["detail"]["replicas_percent"]) == set(replicas)

    assert [t["unit"] for t in result["targets"]] == ["ops/s", "keys/s", "ops/s", "x", "x"]
    assert all(isinstance(t["met"], bool) and t["measured"] > 0 for t in result["targets"])
    assert result["command"].startswith("python -m raykv.bench full --quick")
    machine = result["machine"]
    assert len(machine["loadavg_start"]) == len(machine["loadavg_end"]) == 3

    assert proc.stdout.startswith("# raykv full bench")
    assert "## Targets (issue 8)" in proc.stdout and "| s3.cpu.idle.total |" in proc.stdout
    assert json.loads((out / "bench.json").read_text())["figures"].keys() == figures.keys()
    markdown = (out / "bench.md").read_text()
    assert "## Targets (issue 8)" in markdown and "Command: `python -m raykv.bench full --quick" in markdown
    assert "load average at start" in markdown
    assert (out / "bench.png").read_bytes().startswith(PNG_MAGIC)


# -- rendering, no Ray ---------------------------------------------------------------------
def fabricated(**values: float) -> FullReport:
    """A report with the figures the targets read (plus ``values`` overriding them)."""
    figures = {"rtt.bare.p50": 1000.0, "rate.bare.threads64": 3000.0, "bulk.bare": 300_000.0,
               "s1.put.threads64": 4000.0, "s3.put.threads64": 8000.0, "s1.put.tasks64": 3000.0,
               "s3.put.tasks64": 5000.0, "s1.bulk": 50_000.0, "s3.bulk": 80_000.0,
               "s1.get.threads64.linearizable": 3000.0, "s3.get.threads64.linearizable": 4000.0,
               "s1.put.seq.p50": 2000.0, "s3.put.seq.p50": 2600.0}
    figures.update({k.replace("__", "."): v for k, v in values.items()})
    report = FullReport("raykv full bench", {"quick": True}, command="python -m raykv.bench full")
    for name, value in figures.items():
        report.add(Figure(name, value, "ops/s"))
    report.finish()
    report.judge()
    return report


def test_targets_are_judged_on_the_one_shard_store_and_scaling_on_three_vs_one() -> None:
    verdicts = {t.what: t.met for t in fabricated().targets}
    assert list(verdicts.values()) == [False, False, False, True, True]
    assert judge(fabricated())[0].measured == 4000.0 and "3 shards: 8,000 ops/s" in judge(fabricated())[0].also
    scale = judge(fabricated())[4]
    assert scale.measured == 2.0 and "1.67 x" in scale.also  # tasks: 5000 / 3000
    seq = judge(fabricated(s1__put__seq__p50=2500.0))[3]
    assert seq.measured == 2.5 and seq.met  # at most 2.5x: equal passes


def test_a_missing_figure_is_not_measured_rather_than_an_error() -> None:
    report = FullReport("raykv full bench", {})
    report.judge()
    assert [t.met for t in report.targets] == [None] * 5
    assert "| not measured |" in report.markdown()


def test_markdown_and_json_carry_the_targets_and_the_command() -> None:
    report = fabricated()
    markdown = report.markdown()
    assert markdown.index("| figure |") < markdown.index("## Targets (issue 8)") < markdown.index("Command:")
    assert "| puts, 64 client threads | ≥ 7,500 ops/s | 4,000 ops/s | NOT met |" in markdown
    assert "| put throughput at 64 client threads, 3 shards / 1 shard | ≥ 1.80 x | 2.00 x | met |" in markdown
    data = report.to_json()
    assert data["command"] == "python -m raykv.bench full"
    assert [t["met"] for t in data["targets"]] == [False, False, False, True, True]


def test_write_out_writes_json_markdown_and_a_png(tmp_path) -> None:
    written = write_out(fabricated(), tmp_path / "docs")
    assert [p.name for p in written] == ["bench.json", "bench.md", "bench.png"]
    assert (tmp_path / "docs" / "bench.png").read_bytes().startswith(PNG_MAGIC)
    assert json.loads((tmp_path / "docs" / "bench.json").read_text())["targets"][3]["met"] is True


def test_without_matplotlib_the_plot_is_skipped_with_a_note(tmp_path, monkeypatch, capsys) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    written = write_out(fabricated(), tmp_path)
    assert [p.name for p in written] == ["bench.json", "bench.md"]
    assert not (tmp_path / "bench.png").exists()
    assert "bench.png not written: plotting needs matplotlib" in capsys.readouterr().err
    assert full_report.plot(fabricated(), tmp_path / "x.png") is False
