"""Session-wide test settings.

Every test (and every process it starts: CLI subprocesses, Ray workers of clusters it
starts) keeps store pointers under a temporary raykv home instead of ``~/.raykv``, so
tests never see each other's or the user's stores (``raykv.runtime.identity.raykv_home``).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest


@pytest.fixture(scope="session", autouse=True)
def _raykv_home():
    home = tempfile.mkdtemp(prefix="raykv-home-")
    before = os.environ.get("RAYKV_HOME")
    os.environ["RAYKV_HOME"] = home
    yield home
    if before is None:
        os.environ.pop("RAYKV_HOME", None)
    else:
        os.environ["RAYKV_HOME"] = before
    shutil.rmtree(home, ignore_errors=True)


# -- two workers (pytest-xdist, ``-n 2 --dist loadgroup`` in pyproject.toml) --------------------------
CPU_ONLY_MODULES = frozenset({
    "test_simulation", "test_engine_sim", "test_engine_holes", "test_raft_rules", "test_quorum_properties",
    "test_confchange", "test_kv_codec", "test_kv_machine", "test_kv_ranges", "test_kv_on_lmdb",
    "test_linearizability", "test_log_storage", "test_placement", "test_repairplan", "test_replica_units",
    "test_replica_loop", "test_runtime_units", "test_snapshot_arrow", "test_storage_crash", "test_storage_errors",
    "test_storage_bench", "test_store_identity", "test_userdata", "test_errors", "test_layering", "test_readme_ci",
    "test_backup_manifest", "test_cluster_yaml", "test_explore", "test_client_reroute", "test_cli",
})
"""Modules that start no Ray (no cluster, no CLI or bench subprocess that starts one): they run on
either worker, beside the others. Every other module's tests form one group that one worker runs
in order, so at most one Ray cluster (or host test bed) runs at a time, as without xdist."""


def pytest_collection_modifyitems(config, items) -> None:
    here = os.path.dirname(__file__)
    stale = sorted(m for m in CPU_ONLY_MODULES if not os.path.exists(os.path.join(here, m + ".py")))
    if stale:
        raise pytest.UsageError(f"tests/conftest.py CPU_ONLY_MODULES names missing modules: {stale}")
    for item in items:
        if item.module.__name__.rpartition(".")[2] not in CPU_ONLY_MODULES:
            item.add_marker(pytest.mark.xdist_group("ray"))
