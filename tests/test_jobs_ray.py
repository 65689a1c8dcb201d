"""The ``jobs/`` entry points, submitted with ``ray job submit`` to a local Ray head with the dashboard.

One cluster for the module (:func:`~raykv.runtime.local_cluster.labelled_cluster` with ``dashboard=True``:
a head with 2 CPUs and the dashboard's Jobs API on a free port, three raylets labelled h1..h3) and one
store ``jobs`` (3 shards x 3 replicas, data under the scratch root), started from this test driver.
Each job then goes through the real Jobs API, offline: ``ray job submit --no-wait --submission-id ID
--address http://<dashboard> -- python jobs/X.py --store jobs ...`` (the CLI, as a subprocess; the cluster
runs without token auth, so the CLI gets ``RAY_AUTH_MODE=disabled`` too), then the job's status, driver
exit code and output through the Jobs API (``JobSubmissionClient``) until it ends or a deadline passes.
Ray starts the entrypoint on the head in the head's Python environment (raykv installed editable; no
``--working-dir``), with ``RAY_ADDRESS`` set. Each test asserts the status, the exit code and the JSON line:

* bulk load: a Parquet file written here goes through Ray Data into the store; the rows read back here;
* mixed workload in 2 Ray tasks: every op type is reported, percentiles are ordered;
* consistency check while a shard leader is killed (restarted by Ray) every few seconds: linearizable;
* consistency check of a store that does not exist: FAILED, exit code 3, one clear error line.

The entry points also run in this driver or as a plain driver process (faster than a submit): the
threads mode of the mixed workload, a missing store (exit 3), bad flags (exit 2), no Ray cluster at all
at its address (exit 3, no traceback). Every subprocess and every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import raykv
from raykv.jobs import OPS, consistency_check_main, mixed_workload_main
from raykv.runtime.local_cluster import HOSTS

from ray_cluster import started_cluster

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parent.parent
JOBS = ROOT / "jobs"
STORE = "jobs"


@dataclass
class JobsCluster:
    dashboard_url: str
    root: Path
    client: object


@pytest.fixture(scope="module")
def jobs_cluster():
    with started_cluster(HOSTS, dashboard=True) as (cluster, root):
        data_dirs = {h: str(root / STORE / h) for h in HOSTS}
        client = raykv.start(STORE, shards=3, replicas=3, data_dir=data_dirs, timeout_s=30.0)
        try:
            yield JobsCluster("http://" + cluster.head_node.address_info["webui_url"], root, client)
        finally:
            client.close()
            raykv.stop(STORE)


AGENT_NOT_READY = "No available agent to submit job"
"""The Jobs API's answer until the head's dashboard agent has registered (seconds after start-up)."""


@dataclass
class JobRun:
    status: str
    exit_code: int | None
    logs: str

    def describe(self) -> str:
        return f"job {self.status}, exit code {self.exit_code}; its output:\n{self.logs[-6000:]}"


def submit(env: JobsCluster, script: str, *args: str, timeout_s: float = 300) -> JobRun:
    """``ray job submit --no-wait`` (the CLI, as a user would), then the Jobs API until the job ends.

    Polling the job's status (not the CLI's blocking log tail, a websocket that was seen to hang on a
    heavily loaded machine) bounds the wait; a job still running at the deadline is stopped and its
    output so far reported. A refusal because the head's agent is not ready yet happens before any
    job exists, so it is retried."""
    from ray.job_submission import JobSubmissionClient

    submission_id = f"raykv-test-{Path(script).stem}-{uuid.uuid4().hex[:8]}"
    sub_env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    sub_env["RAY_AUTH_MODE"] = "disabled"  # as the cluster: cluster_utils starts Ray without token auth
    command = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--no-wait", "--submission-id",
               submission_id, "--address", env.dashboard_url, "--", sys.executable, str(JOBS / script), *args]
    deadline = time.monotonic() + timeout_s
    while True:
        cli = subprocess.run(command, env=sub_env, capture_output=True, text=True, timeout=120)
        if AGENT_NOT_READY not in cli.stdout + cli.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert cli.returncode == 0, f"ray job submit failed:\n{cli.stdout[-3000:]}\n{cli.stderr[-3000:]}"
    jobs = JobSubmissionClient(env.dashboard_url)
    while not (info := jobs.get_job_info(submission_id)).status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.1)
    run = JobRun(str(info.status), info.driver_exit_code, jobs.get_job_logs(submission_id))
    if not info.status.is_terminal():
        jobs.stop_job(submission_id)
        raise AssertionError(f"still running after {timeout_s}s: {run.describe()}")
    return run


def json_lines(out: str) -> list[dict]:
    found = []
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                pass
    return found


def job_summary(run: JobRun, key: str) -> dict:
    """The job's last JSON line holding ``key``, after checking that the job succeeded with exit code 0."""
    summaries = [d for d in json_lines(run.logs) if key in d]
    assert run.status == "SUCCEEDED" and run.exit_code == 0 and summaries, run.describe()
    return summaries[-1]


def test_bulk_load_job_writes_parquet_rows_into_the_store(jobs_cluster: JobsCluster) -> None:
    script = JOBS / "bulk_load.py"
    assert script.is_file(), "jobs/bulk_load.py (the data helper's) is missing"
    rows = 500
    path = jobs_cluster.root / "input.parquet"
    pq.write_table(pa.table({"key": [f"bulk:{i:05d}" for i in range(rows)], "value": list(range(rows))}), path)
    summary = job_summary(submit(jobs_cluster, "bulk_load.py", "--store", STORE, "--input", str(path)), "rows")
    assert summary["rows"] == rows and summary["store"] == STORE and summary["keys_per_s"] > 0
    kv = jobs_cluster.client
    assert kv.get_batch(["bulk:00000", "bulk:00250", "bulk:00499"]) == [0, 250, 499]
    assert len(list(kv.scan(prefix="bulk:"))) == rows


def test_mixed_workload_job_in_ray_tasks_reports_percentiles(jobs_cluster: JobsCluster) -> None:
    run = submit(jobs_cluster, "mixed_workload.py", "--store", STORE, "--seconds", "4", "--tasks", "2",
                 "--threads", "2", "--keys", "200")
    summary = job_summary(run, "by_op")
    assert summary["job"] == "mixed_workload" and summary["tasks"] == 2
    assert summary["ops"] > 0 and summary["ops_per_s"] > 0
    assert "| op | count | ops/s | p50 ms | p90 ms | p99 ms | max ms | errors |" in run.logs
    assert set(summary["by_op"]) == set(OPS)
    measured = [r for r in summary["by_op"].values() if r["count"]]
    assert measured, summary
    for row in measured:
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]


def test_consistency_check_job_through_leader_kills_is_linearizable(jobs_cluster: JobsCluster) -> None:
    history = jobs_cluster.root / "history.jsonl"
    run = submit(jobs_cluster, "consistency_check.py", "--store", STORE, "--seconds", "8", "--clients", "4",
                 "--keys", "6", "--chaos", "kill", "--chaos-interval", "3", "--history", str(history))
    summary = job_summary(run, "linearizable")
    assert summary["linearizable"] is True and summary["ok_ops"] > 0
    assert summary["ops"] == sum(1 for _ in history.open()) > 0
    assert any(e["action"] == "kill" for e in summary["events"]), summary["events"]
    assert ": linearizable" in run.logs


def test_a_job_exit_code_reaches_the_jobs_api(jobs_cluster: JobsCluster) -> None:
    run = submit(jobs_cluster, "consistency_check.py", "--store", "no-such-store", "--seconds", "1")
    assert run.status == "FAILED" and run.exit_code == 3, run.describe()
    assert "error: no store named 'no-such-store'" in run.logs and "Traceback" not in run.logs


# -- the same entry points in this driver / as plain drivers: failure paths and the threads mode ----------------
def test_mixed_workload_in_threads_from_a_driver(jobs_cluster: JobsCluster, capsys) -> None:
    code = mixed_workload_main(["--store", STORE, "--seconds", "2", "--threads", "3", "--keys", "50",
                                "--mix", "put=1,get_stale=1,scan=1"])
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and summary["tasks"] == 0 and summary["ops"] > 0
    assert summary["mix"]["cas"] == 0 and summary["by_op"]["cas"]["count"] == 0


@pytest.mark.parametrize("main", [mixed_workload_main, consistency_check_main])
def test_a_missing_store_is_a_clear_error(jobs_cluster: JobsCluster, main, capsys) -> None:
    assert main(["--store", "no-such-store", "--seconds", "1"]) == 3
    assert "error: no store named 'no-such-store'" in capsys.readouterr().err


def test_bad_flags_exit_2(jobs_cluster: JobsCluster, capsys) -> None:
    assert mixed_workload_main(["--store", STORE, "--mix", "put=1,frobnicate=2"]) == 2
    assert "frobnicate" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        consistency_check_main(["--store", STORE, "--seconds", "-1"])
    assert exit_info.value.code == 2


def test_without_a_reachable_ray_cluster_the_job_fails_cleanly() -> None:
    """A plain driver process pointed at an address where nothing listens: exit 3, one error line.
    (Not "no address": Ray's address discovery also finds other clusters running on the machine.)"""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends: nothing listens there
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, str(JOBS / "consistency_check.py"), "--store", STORE,
                             "--address", f"127.0.0.1:{port}"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stderr.startswith("error: cannot reach Ray") and "Traceback" not in result.stderr
