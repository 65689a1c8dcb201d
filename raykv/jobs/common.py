"""What every job shares: joining Ray and a running store (never starting either), exit codes, and
running a job body so that known errors become one ``error: ...`` line and an exit code."""

from __future__ import annotations

import argparse
import os
import string
import sys
from collections.abc import Callable

from ..protocol import STORE_ENV

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_UNKNOWN = 0, 1, 2, 6
KEY_ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
"""First characters of generated keys: they spread keys over the whole str key space (every shard)."""


def connect_store(name: str, address: str | None = None, timeout_s: float = 10.0):
    """A client of the running store ``name``: joins Ray (never starts one), then ``raykv.connect``.
    Raises StoreNotFoundError (no cluster, or no such store) or ConnectionError (unreachable address)."""
    from ..cli import connect_ray
    from ..protocol import check_store_name

    check_store_name(name)
    connect_ray(address)
    import raykv

    return raykv.connect(name, timeout_s=timeout_s)


def run_main(body: Callable[[], int]) -> int:
    """Run a job body; known errors (see :func:`raykv.cli.classify`) become ``error: ...`` + exit code."""
    from ..cli import classify, quiet_ray

    quiet_ray()
    try:
        return body()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 -- classify() decides; unknown errors keep their traceback
        known = classify(exc)
        if known is None:
            raise
        print(f"error: {known[1]}", file=sys.stderr)
        return known[0]


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    """``--store`` (also ``--name``/``-n``, as in the CLI): the running store's name; required
    unless ``$RAYKV_STORE`` names it."""
    default = os.environ.get(STORE_ENV) or None
    parser.add_argument("--store", "--name", "-n", dest="store", default=default, required=default is None,
                        help=f"the running store's name (default: ${STORE_ENV})")


def positive(kind: type) -> Callable[[str], object]:
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse
