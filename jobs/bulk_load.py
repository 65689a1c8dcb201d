"""Bulk-load Parquet into a running raykv store through Ray Data: a ``ray job submit`` entry point.

    ray job submit -- python jobs/bulk_load.py --store NAME --input PATH [--key-column key] [--value-column value]

Flags and output: jobs/README.md. The logic: raykv.jobs.bulk_load_main.
"""

import sys

from raykv.jobs import bulk_load_main

if __name__ == "__main__":
    sys.exit(bulk_load_main())
