"""raykv benchmarks: ``python -m raykv.bench <subcommand> [--quick] [--json PATH]``.

Subcommands are modules registered in :data:`raykv.bench.__main__.SUBCOMMANDS`. Each module
provides ``add_arguments(parser)`` (its own options; ``--quick`` and ``--json`` are common),
``run(args) -> raykv.bench.report.Report`` and optionally ``LOCAL_RAY = False`` when it
manages Ray itself (by default the CLI wraps ``run`` in :func:`local_ray`). Shared output
helpers live in :mod:`raykv.bench.report`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

LOCAL_NUM_CPUS = 2


@contextmanager
def local_ray(num_cpus: int = LOCAL_NUM_CPUS) -> Iterator[bool]:
    """Use the Ray already initialized in this process, or start a private local one
    (``address="local"``, no dashboard; put it under a private ``RAY_TMPDIR``) and shut it
    down on exit. Yields True if it started Ray itself. Never runs ``ray stop``."""
    import ray  # late: importing raykv.bench alone must not load Ray

    if ray.is_initialized():
        yield False
        return
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING")
    try:
        yield True
    finally:
        ray.shutdown()
