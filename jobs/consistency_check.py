"""Record a concurrent history against a running raykv store, optionally killing or moving shard leaders,
and check it for linearizability; exit 0 only if it is linearizable.

    ray job submit --address http://127.0.0.1:8265 -- python jobs/consistency_check.py --store default --chaos kill

Flags and output: jobs/README.md. The logic: raykv.jobs.consistency_check_main.
"""

import sys

from raykv.jobs import consistency_check_main

if __name__ == "__main__":
    sys.exit(consistency_check_main())
