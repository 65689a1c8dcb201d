"""A timed mixed workload against a running raykv store: ops/s and latency p50/p90/p99/max per operation.

    ray job submit --address http://127.0.0.1:8265 -- python jobs/mixed_workload.py --store default --seconds 30

Flags and output: jobs/README.md. The logic: raykv.jobs.mixed_workload_main.
"""

import sys

from raykv.jobs import mixed_workload_main

if __name__ == "__main__":
    sys.exit(mixed_workload_main())
