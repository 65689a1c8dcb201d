"""The ``raykv`` command line (typer).

Today it offers ``raykv version`` and ``raykv sim``; the store commands (start, status, put, get,
...) arrive with the runtime. Heavy modules are imported inside commands so ``raykv --help`` stays
fast.
"""

from __future__ import annotations

from typing import Optional

import typer

app = typer.Typer(
    name="raykv",
    help="raykv: a linearizable sharded key-value store on Ray",
    no_args_is_help=True,
    add_completion=False,
)


def package_version() -> str:
    """Return the installed distribution's version, else ``raykv.__version__`` (source checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("raykv")
    except PackageNotFoundError:
        import raykv

        return raykv.__version__


@app.command("version")
def version_command() -> None:
    """Print the installed version as "raykv <version>"."""
    typer.echo(f"raykv {package_version()}")


def sim_argv(
    seeds: str, groups: int, replicas: int, jobs: int, ticks: Optional[int], storage: str = "memory"
) -> list[str]:
    """Build the ``raykv.testing.sim`` argv equivalent to the ``raykv sim`` options.

    ``--ticks`` is passed only when given, so the simulator's own default applies otherwise.
    """
    argv = ["--seeds", seeds, "--groups", str(groups), "--replicas", str(replicas), "--jobs", str(jobs)]
    if storage != "memory":
        argv += ["--storage", storage]
    if ticks is not None:
        argv += ["--ticks", str(ticks)]
    return argv


@app.command("sim")
def sim_command(
    seeds: str = typer.Option(..., "--seeds", help='Seed range "A:B" (half-open, A inclusive).'),
    groups: int = typer.Option(1, "--groups", help="Raft groups per simulation."),
    replicas: int = typer.Option(3, "--replicas", help="Replicas per group."),
    jobs: int = typer.Option(1, "--jobs", help="Worker processes running seeds in parallel."),
    ticks: Optional[int] = typer.Option(None, "--ticks", help="Ticks per seed (simulator default if omitted)."),
    storage: str = typer.Option("memory", "--storage", help="Where replicas keep their log: memory or lmdb."),
) -> None:
    """Run the deterministic Raft simulator over a seed range; exit non-zero on any violation."""
    from raykv.testing import sim

    raise typer.Exit(int(sim.main(sim_argv(seeds, groups, replicas, jobs, ticks, storage))))


if __name__ == "__main__":
    app()
