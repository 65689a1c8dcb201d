"""The ``raykv`` CLI: version output, help listing and ``sim`` wiring to ``raykv.testing.sim.main``."""

from __future__ import annotations

from typer.testing import CliRunner

from raykv.cli import app

runner = CliRunner()


def test_version_prints_package_name() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0, result.output
    assert "raykv" in result.output


def test_help_lists_sim() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "sim" in result.output


def _record_argv(monkeypatch, return_code: int) -> list[list[str]]:
    """Replace ``raykv.testing.sim.main`` with a fake returning ``return_code``; return its call log."""
    import raykv.testing.sim as sim

    calls: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        calls.append(list(argv))
        return return_code

    monkeypatch.setattr(sim, "main", fake_main)
    return calls


def test_sim_passes_defaults_through(monkeypatch) -> None:
    calls = _record_argv(monkeypatch, 0)
    result = runner.invoke(app, ["sim", "--seeds", "0:1"])
    assert result.exit_code == 0, result.output
    assert calls == [["--seeds", "0:1", "--groups", "1", "--replicas", "3", "--jobs", "1"]]


def test_sim_passes_all_options_and_exit_code(monkeypatch) -> None:
    calls = _record_argv(monkeypatch, 3)
    args = ["sim", "--seeds", "5:9", "--groups", "2", "--replicas", "5", "--jobs", "4", "--ticks", "700"]
    result = runner.invoke(app, [*args, "--storage", "lmdb"])
    assert result.exit_code == 3, result.output
    assert calls == [
        ["--seeds", "5:9", "--groups", "2", "--replicas", "5", "--jobs", "4", "--storage", "lmdb", "--ticks", "700"]
    ]


def test_sim_requires_seeds(monkeypatch) -> None:
    calls = _record_argv(monkeypatch, 0)
    result = runner.invoke(app, ["sim"])
    assert result.exit_code != 0
    assert calls == []
