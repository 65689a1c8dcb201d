"""The ``raykv`` CLI as a user runs it: separate processes against a real Ray cluster.

* ``raykv demo`` end to end: its own embedded Ray under a private ``RAY_TMPDIR``, in a
  subprocess (so it never meets the module's cluster in this process), exit 0, every
  check reported, Ray shut down afterwards.
* ``raykv.start()`` after a plain ``ray.init()`` (no host label) refuses, naming the ``ray.init``
  and ``ray start`` lines that fix it.
* The store commands on the shared 4-raylet test cluster (``ray_cluster``), each a
  subprocess given ``--address``: start (one ``--data-dir`` for the three simulated hosts),
  status (table and JSON), put/get (string and JSON), get of a missing key (exit 1),
  delete, scan (prefix, range, limit, JSON lines) of data written through the Python
  client, bad consistency (exit 2), unknown store (exit 3), scale up and down (Ctrl-C while waiting:
  the scale goes on, and says so), stop, and a reopen (of the resharded store) that finds the data again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

import raykv
import raykv.api
from ray_cluster import ray_cluster, wait_for  # noqa: F401 -- fixture

pytestmark = pytest.mark.timeout(600)
STORE = "clistore"


def run_cli(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m raykv.cli ARGS`` in a fresh process; its output captured as text."""
    return subprocess.run([sys.executable, "-m", "raykv.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def show(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


# -- the demo: first in this module, before the cluster fixture exists -------------------------
def ray_pids_under(path: str) -> list[int]:
    """Pids of processes whose command line mentions ``path`` (the demo's private Ray)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if path.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@contextmanager
def private_ray_env(prefix: str):
    """An environment for a subprocess that starts its own Ray under a fresh short ``RAY_TMPDIR``
    (no ``RAY_ADDRESS``); afterwards the processes of that Ray, and only those, are killed."""
    tmp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: Ray socket paths must fit in 107 bytes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = tmp
    try:
        yield env
    finally:
        for pid in ray_pids_under(tmp):  # only processes of this test's private Ray
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)


def test_demo_end_to_end_in_its_own_embedded_ray() -> None:
    with private_ray_env("rkd-") as env:
        tmp = env["RAY_TMPDIR"]
        proc = run_cli("demo", env=env, timeout=540)
        assert proc.returncode == 0, show(proc)
        out = proc.stdout
        assert "embedded single-machine Ray" in out
        for check in ("[ok] get (linearizable) returns all 2000 values written",
                      "[ok] get_batch (lease) returns all 2000 values written",
                      "[ok] get_batch (stale) returns only values written",
                      "[ok] scan (after writes) returns exactly the 2000 keys in key order",
                      "crosses shard boundaries (3 of 3 shards hold keys)",
                      "[ok] cas with the current value swaps it",
                      "[ok] delete removes a key",
                      "[ok] the store stopped cleanly"):
            assert check in out, show(proc)
        assert "FAILED" not in out and "Traceback" not in proc.stderr, show(proc)
        assert "Report" in out and "ops/s" in out and "put_batch" in out
        assert out.rstrip().splitlines()[-1].startswith("all ") and out.rstrip().endswith(" checks passed")
        assert "store 'demo' (map epoch" in out and "leader" in out  # the status table
        deadline = time.monotonic() + 30
        while ray_pids_under(tmp) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not ray_pids_under(tmp), "the demo left Ray processes running"


PLAIN_RAY_INIT = """
import ray, raykv
from raykv.errors import UnavailableError
ray.init(num_cpus=1, include_dashboard=False)
try:
    raykv.start("plain")
except UnavailableError as exc:
    print(exc)
finally:
    ray.shutdown()
"""


def test_start_after_a_plain_ray_init_names_the_line_that_fixes_it() -> None:
    """What a notebook user tries first: ``ray.init()`` then ``raykv.start()``. Its node has no
    host label, so the store refuses, naming the ``ray.init`` and the ``ray start`` forms that work."""
    with private_ray_env("rkp-") as env:
        proc = subprocess.run([sys.executable, "-c", PLAIN_RAY_INIT], capture_output=True, text=True, timeout=180,
                              env=env)
    assert proc.returncode == 0, show(proc)
    assert "ray.init(labels={'raykv-host': socket.gethostname()})" in proc.stdout, show(proc)
    assert "ray start --head --labels raykv-host=$(hostname)" in proc.stdout, show(proc)


# -- the store commands on the shared cluster --------------------------------------------------------
@pytest.fixture(scope="module")
def cli_store(ray_cluster):  # noqa: F811
    """``raykv start`` of the store :data:`STORE`; yields ``(address, data_dir)``; stopped at the end."""
    address = ray_cluster.cluster.address
    data_dir = str(ray_cluster.root / STORE)
    proc = run_cli("start", "-n", STORE, "--address", address, "--data-dir", data_dir,
                   "--shards", "3", "--replicas", "3")
    assert proc.returncode == 0, show(proc)
    assert f"store {STORE!r} is running: 3 shards x 3 replicas; data under {data_dir}" in proc.stdout, show(proc)
    yield address, data_dir
    if raykv.api.store_running(STORE):
        raykv.stop(STORE)


def kv(address: str, *args: str, name: str = STORE) -> subprocess.CompletedProcess:
    return run_cli(*args, "-n", name, "--address", address)


def test_status_table_and_json(cli_store) -> None:
    address, _ = cli_store
    deadline = time.monotonic() + 60  # leaders may still move (start balances them): wait for a steady view
    while True:
        proc = kv(address, "status")
        assert proc.returncode == 0, show(proc)
        lines = proc.stdout.splitlines()
        if ", healthy;" in lines[0] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert lines[0].startswith(f"store {STORE!r} (map epoch 1): 3 shards, healthy"), show(proc)
    assert lines[1].split() == ["shard", "range", "replica", "host", "role", "term", "commit", "applied", "data",
                                "alive"]
    assert len(lines) == 2 + 9 and proc.stdout.count("leader") >= 3 + 1
    while True:
        proc = kv(address, "status", "--json")
        assert proc.returncode == 0, show(proc)
        status = json.loads(proc.stdout)
        if status["healthy"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert status["store"] == STORE and status["healthy"] is True and len(status["shards"]) == 3, status
    assert [s["start_key"] for s in status["shards"]] == ["", "'I'", "'b'"]
    for shard in status["shards"]:
        assert shard["leader"] in (1, 2, 3)
        assert {r["host"] for r in shard["replicas"]} == {"h1", "h2", "h3"}
        for r in shard["replicas"]:
            assert r["alive"] and r["role"] in ("leader", "follower") and r["term"] >= 1
            assert r["commit"] >= 1 and r["applied"] >= 1 and r["data_bytes"] > 0


def test_put_get_string_and_json(cli_store) -> None:
    address, _ = cli_store
    proc = kv(address, "put", "user:ada", "Ada Lovelace")
    assert (proc.returncode, proc.stdout) == (0, "OK\n"), show(proc)
    proc = kv(address, "put", "profile:7", '{"tags": ["x", "y"], "n": 7, "ok": true}', "--json")
    assert proc.returncode == 0, show(proc)
    proc = kv(address, "get", "user:ada")
    assert (proc.returncode, proc.stdout) == (0, "Ada Lovelace\n"), show(proc)
    proc = kv(address, "get", "user:ada", "--json", "--consistency", "lease")
    assert (proc.returncode, proc.stdout) == (0, '"Ada Lovelace"\n'), show(proc)
    proc = kv(address, "get", "profile:7", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"tags": ["x", "y"], "n": 7, "ok": True}, show(proc)
    with raykv.connect(STORE) as client:  # the Python API sees what the CLI wrote
        assert client.get("profile:7") == {"tags": ["x", "y"], "n": 7, "ok": True}
    deadline = time.monotonic() + 20  # a stale read may lag the write; it catches up
    while True:
        proc = kv(address, "get", "user:ada", "-c", "stale")
        if proc.returncode == 0 or time.monotonic() > deadline:
            break
    assert (proc.returncode, proc.stdout) == (0, "Ada Lovelace\n"), show(proc)


def test_get_missing_key_exits_1_and_delete(cli_store) -> None:
    address, _ = cli_store
    proc = kv(address, "get", "no-such-key")
    assert proc.returncode == 1 and proc.stdout == "", show(proc)
    assert "error: key not found: 'no-such-key'" in proc.stderr and "Traceback" not in proc.stderr
    assert kv(address, "put", "gone-soon", "v").returncode == 0
    proc = kv(address, "delete", "gone-soon")
    assert (proc.returncode, proc.stdout) == (0, "OK\n"), show(proc)
    proc = kv(address, "get", "gone-soon")
    assert proc.returncode == 1, show(proc)
    proc = kv(address, "delete", "gone-soon")
    assert proc.returncode == 1 and "key not found" in proc.stderr, show(proc)


def test_scan_prefix_range_limit_and_json(cli_store) -> None:
    address, _ = cli_store
    written = {f"{c}scan:{i:03d}": {"c": c, "i": i} for c in "AHQZamz" for i in range(20)}
    with raykv.connect(STORE) as client:  # written by the Python API across all three shards
        client.put_batch(written)
    proc = kv(address, "scan", "--prefix", "mscan:")
    assert proc.returncode == 0, show(proc)
    want = sorted(k for k in written if k.startswith("mscan:"))
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    assert [k for k, _ in rows] == want and all(json.loads(v) == written[k] for k, v in rows)
    proc = kv(address, "scan", "--start", "Hscan:010", "--end", "mscan:005", "--json")
    assert proc.returncode == 0, show(proc)
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    keys = [row["key"] for row in got]  # the range crosses both shard boundaries ("I" and "b")
    assert keys == sorted(keys) and all("Hscan:010" <= k < "mscan:005" for k in keys)
    mine = [row for row in got if row["key"] in written]  # other tests' keys may sit in the range too
    assert [row["key"] for row in mine] == sorted(k for k in written if "Hscan:010" <= k < "mscan:005")
    assert mine[0]["key"] == "Hscan:010" and mine[-1]["key"] == "mscan:004"
    assert all(row["value"] == written[row["key"]] for row in mine)
    proc = kv(address, "scan", "--prefix", "zscan:", "--limit", "3", "--consistency", "lease")
    assert proc.returncode == 0 and [line.split("\t")[0] for line in proc.stdout.splitlines()] == [
        "zscan:000", "zscan:001", "zscan:002"], show(proc)


def test_bad_consistency_exits_2(cli_store) -> None:
    address, _ = cli_store
    proc = kv(address, "get", "user:ada", "--consistency", "strong")
    assert proc.returncode == 2 and "--consistency" in proc.stderr and "Traceback" not in proc.stderr, show(proc)
    proc = kv(address, "start", "--shards", "0")
    assert proc.returncode == 2 and "shards must be an int in 1..1024" in proc.stderr, show(proc)


def test_unknown_store_exits_3(cli_store) -> None:
    address, _ = cli_store
    for args in (("get", "k"), ("status",), ("scan",), ("stop",)):
        proc = kv(address, *args, name="no-such-store")
        assert proc.returncode == 3, show(proc)
        assert "no-such-store" in proc.stderr and "Traceback" not in proc.stderr, show(proc)


def test_scale_up_and_down_online(cli_store) -> None:
    """``raykv scale`` splits and merges while the data stays readable; status shows the new map."""
    address, _ = cli_store
    assert kv(address, "put", "scaled", "kept").returncode == 0
    proc = kv(address, "scale", "--shards", "0")
    assert proc.returncode == 2 and "shards must be an int in 1..1024" in proc.stderr, show(proc)
    proc = kv(address, "scale", "--shards", "4")
    assert proc.returncode == 0 and f"store {STORE!r} now has 4 shards" in proc.stdout, show(proc)
    status = json.loads(kv(address, "status", "--json").stdout)
    assert len(status["shards"]) == 4 and status["epoch"] >= 2 and status["operation"] is None, status
    # Ctrl-C while waiting stops the waiting only, and says so (it said a write may not have been applied)
    waiting = subprocess.Popen([sys.executable, "-m", "raykv.cli", "scale", "--shards", "3", "--retire-grace", "5",
                                "-n", STORE, "--address", address], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    with raykv.connect(STORE) as client:
        wait_for(lambda: (r := client.scale_status()) and r["target"] == 3 and r["state"] == "running", 60,
                 "the merge to start")
    waiting.send_signal(signal.SIGINT)
    _, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 130 and "the scale goes on in the store" in err, err
    proc = kv(address, "scale", "--shards", "3", "--retire-grace", "5")  # the same target: waits for it
    assert proc.returncode == 0 and "now has 3 shards" in proc.stdout, show(proc)
    proc = kv(address, "get", "scaled")
    assert (proc.returncode, proc.stdout) == (0, "kept\n"), show(proc)


def test_stop_then_reopen_keeps_the_data(cli_store) -> None:
    """Last in the module: stops the store, checks it is gone, reopens it from its data directories."""
    address, data_dir = cli_store
    assert kv(address, "put", "survivor", "still here").returncode == 0
    proc = kv(address, "stop")
    assert proc.returncode == 0 and f"store {STORE!r} stopped" in proc.stdout, show(proc)
    assert not raykv.api.store_running(STORE)
    proc = kv(address, "get", "survivor")
    assert proc.returncode == 3 and "no store named" in proc.stderr, show(proc)
    proc = kv(address, "stop")
    assert proc.returncode == 3, show(proc)
    proc = run_cli("start", "-n", STORE, "--address", address, "--data-dir", data_dir)
    assert proc.returncode == 0 and "3 shards x 3 replicas" in proc.stdout, show(proc)
    proc = kv(address, "get", "survivor")
    assert (proc.returncode, proc.stdout) == (0, "still here\n"), show(proc)
    proc = kv(address, "stop")
    assert proc.returncode == 0, show(proc)
