"""Command line of the raykv benchmarks: ``python -m raykv.bench <subcommand> [options]``.

Each subcommand is a module (imported only when chosen) with ``add_arguments(parser)``,
``run(args) -> Report`` and an optional ``LOCAL_RAY`` flag (default True: the CLI starts a
private local Ray around ``run`` unless one is initialized, and shuts it down afterwards).
The CLI prints the report as Markdown and, with ``--json PATH``, writes it as JSON.
To add a subcommand, add a line to :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from . import local_ray

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "baseline": ("raykv.bench.baseline", "bare Ray actor calls (sync, async, concurrency groups) and LMDB commits"),
    "shard": ("raykv.bench.shard", "one shard of three replicas on three raylets: latency, throughput, failover"),
    "store": ("raykv.bench.store", "1 shard, then 3 shards, on three raylets: latency, throughput, bulk load, scan"),
    "repair": ("raykv.bench.repair", "time to repair a lost replica (node removed -> 3 voters again) by data size, "
                                     "and its catch-up part, against copying the same bytes to a bare actor"),
    "failover": ("raykv.bench.failover", "write unavailability after a leader kill (1 shard, --trials kills, "
                                         "p50/p99/max) next to election timeout, Ray restart time and put p50"),
    "full": ("raykv.bench.full", "the complete report (`raykv bench`): baselines, 1 and 3 shards, clients as "
                                 "threads and tasks, memory, idle CPU, targets; --out DIR for json/md/png"),
    "scale": ("raykv.bench.scale", "online resharding 2->4->2 shards under a foreground load: bytes moved/s, the dip"),
}


def _module(name: str) -> ModuleType:
    """The module implementing subcommand ``name``."""
    return importlib.import_module(SUBCOMMANDS[name][0])


def parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only ``chosen``'s module is imported to add its own options."""
    p = argparse.ArgumentParser(prog="python -m raykv.bench", description=__doc__.split("\n")[0])
    subs = p.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sp = subs.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("--quick", action="store_true", help="small counts, for tests (figures not worth reading)")
        sp.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH")
        if name == chosen:
            _module(name).add_arguments(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the subcommand (inside a local Ray if it wants one), print, write JSON; 0."""
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if a in SUBCOMMANDS), None)
    args = parser(chosen).parse_args(argv)
    module = _module(args.subcommand)
    if getattr(module, "LOCAL_RAY", True):
        with local_ray():
            report = module.run(args)
    else:
        report = module.run(args)
    report.print()
    if args.json:
        report.write_json(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
