"""The logic of the ``ray job submit`` entry points in ``jobs/`` (the scripts there only call ``main``).

The jobs join a running Ray cluster (inside a job: the ``RAY_ADDRESS`` Ray injects; else
``--address``, ``$RAY_ADDRESS`` or the cluster on this machine) and a running store
(:func:`connect_store`): they never start an embedded Ray or a store, so a missing store is an
error (exit 3), not a fresh empty store.

* :func:`bulk_load_main` -- ``jobs/bulk_load.py``: Parquet through Ray Data into the store
  (:func:`raykv.data.bulk_load_parquet`), a sample read back and compared.
* :func:`mixed_workload_main` -- ``jobs/mixed_workload.py``: ``--threads`` threads (in this driver,
  or in each of ``--tasks`` Ray tasks) run a weighted mix of ``put``, ``get`` at each consistency
  level, ``cas`` and short ``scan`` s over a preloaded key set for ``--seconds``; prints a table of
  ops/s and latency p50/p90/p99/max per operation, then one JSON line (:func:`summarize`).
* :func:`consistency_check_main` -- ``jobs/consistency_check.py``: a concurrent
  :class:`~raykv.testing.workload.Workload` records a history on fresh keys (unique to the run, so
  the checker's "every key starts absent" holds), optionally while shard leaders are killed or
  moved (``--chaos kill|transfer``), then :func:`raykv.testing.linearizability.check` judges it;
  prints the verdict and one JSON line, optionally writes the history (``--history PATH``, JSONL).

Layout: :mod:`.common` (joining Ray and the store, exit codes, running a job body), :mod:`.bulk`,
:mod:`.mixed` (the mixed workload), :mod:`.consistency` (the consistency check).

Exit codes, the CLI's where they overlap (:mod:`raykv.cli`): 0 ok; 1 the check failed (a
history that is not linearizable, or no operation succeeded); 2 bad input; 3 store not found or
Ray unreachable; 5 another raykv or Ray error; 6 the checker gave up (verdict unknown).
Known errors print one ``error: ...`` line on stderr. The JSON line is always the last line of
stdout.
"""

from .bulk import bulk_load_main
from .common import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_OK, EXIT_UNKNOWN, connect_store, run_main
from .consistency import consistency_check_main
from .mixed import DEFAULT_MIX, OPS, mixed_workload_main

__all__ = ["DEFAULT_MIX", "bulk_load_main", "EXIT_BAD_INPUT", "EXIT_CHECK_FAILED", "EXIT_OK", "EXIT_UNKNOWN", "OPS",
           "connect_store", "consistency_check_main", "mixed_workload_main", "run_main"]
