"""The bulk-load job (``jobs/bulk_load.py``): Parquet into a running store through Ray Data.

Reads ``--input`` (a Parquet file, a directory of them or a URL such as ``s3://...``) with
``ray.data.read_parquet``, writes every row through :class:`raykv.data.RayKVDatasink` (the key
from ``--key-column``, the value from ``--value-column``, or the whole row as a dict with
``--whole-row``), reads a sample of rows back and compares them, then prints one human line and,
last, one JSON line ``{"rows", "seconds", "keys_per_s", "store"}``
(:func:`raykv.data.bulk_load_parquet` does the work). Bad input (store name, missing input) is
refused before Ray is touched; a store that does not run is an error (exit 3), never created here.
"""

from __future__ import annotations

import argparse

from .common import add_store_argument, connect_store, run_main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Bulk-load Parquet into a raykv store.")
    add_store_argument(parser)
    parser.add_argument("--input", required=True, help="a Parquet file, a directory of them, or a URL (s3://...)")
    parser.add_argument("--key-column", default="key", help="column holding the keys (str or bytes)")
    parser.add_argument("--value-column", default="value", help="column holding the values")
    parser.add_argument("--whole-row", action="store_true", help="store each whole row (a dict) as the value")
    parser.add_argument("--verify-rows", type=int, default=100, help="input rows read back and compared")
    parser.add_argument("--address", default=None, help="Ray address (default: the job's, $RAY_ADDRESS or this machine's)")
    return parser.parse_args(argv)


def bulk_load_main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from ..data import bulk_load_parquet, check_input_path, summary_line
    from ..protocol import check_store_name

    check_store_name(args.store)  # bad input is refused before Ray is touched
    check_input_path(args.input)
    connect_store(args.store, args.address).close()  # the store must already run
    summary = bulk_load_parquet(args.input, args.store, args.key_column,
                                None if args.whole_row else args.value_column, verify_rows=args.verify_rows)
    print(f"loaded {summary['rows']} rows into store {args.store!r} in {summary['seconds']:.1f} s "
          f"({summary['keys_per_s']:,.0f} keys/s); {summary['verified']} rows read back and verified")
    print(summary_line(summary), flush=True)  # the last line of stdout, as every job's
    return 0
