"""The host test bed tier: real Ray hosts in network namespaces, faults only real hosts can have.

The tests marked ``hostbed`` build a :class:`~raykv.testing.hosts.HostBed` (root, Linux) and run
:mod:`raykv.testing.jepsen` on it; where no bed can be built they are skipped with the reason
(:func:`raykv.testing.hosts.unavailable_reason`). The others check the pieces that need no root:
argument handling, the nftables text and the report. Long runs (60 s on 5 hosts per nemesis) are a
separate command, documented in docs/testing.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from raykv.testing import nemesis
from raykv.testing.hosts import HostBed, unavailable_reason
from raykv.testing.jepsen import Cycle, Report, parse

BED_MISSING = unavailable_reason()


def hostbed(test):
    """Marks ``test`` for the test bed tier (``pytest -m hostbed``); skipped, with the reason, where
    no bed can be built."""
    return pytest.mark.hostbed(pytest.mark.skipif(BED_MISSING is not None, reason=BED_MISSING or "")(test))


def jepsen(tmp_path: Path, *args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "raykv.testing.jepsen", *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=timeout)
    report = json.loads(out.read_text()) if out.exists() else {}
    return proc, report


def show(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"


# -- without root ----------------------------------------------------------------------------------
def test_unknown_nemesis_is_named_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown nemesis 'flood'.*partition.*disk-full"):
        nemesis.make("partition,flood")
    with pytest.raises(ValueError, match="no nemesis named"):
        nemesis.make(" , ")
    assert [n.name for n in nemesis.make("kill, loss")] == ["kill", "loss"]


def test_the_runner_refuses_bad_arguments_with_exit_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "raykv.testing.jepsen", "--nemesis", "flood", "--time", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown nemesis 'flood'" in proc.stderr, show(proc)
    with pytest.raises(SystemExit):
        parse(["--nemesis", "kill", "--hosts", "2"])


def test_a_firewall_table_counts_what_it_drops() -> None:
    text = nemesis._table("raykv_loss", "ip daddr { 10.77.0.1 } numgen random mod 100 < 25", None)
    assert "hook output" in text and "counter drop" in text and "hook input" not in text


def test_the_report_fails_on_any_problem_and_shows_each_recovery() -> None:
    report = Report("kill", 5, 2, 1, 60.0, [Cycle(["kill on h2"], {"kill": {"processes_killed": 7}}, 1.25, None)],
                    verdict="linearizable")
    assert report.passed
    report.problems.append("no write on every shard within 60s of healing ['kill on h2']")
    assert not report.passed and "FAIL" in report.line() and "recovery_s=[-]" in report.line()


# -- on the bed --------------------------------------------------------------------------------------
@hostbed
def test_the_bed_builds_hosts_and_leaves_nothing_behind() -> None:
    with HostBed(hosts=2, disk_mb=16) as bed:
        names = {h.netns for h in bed.all_hosts} | {bed.net_ns}
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert names <= {line.split()[0] for line in listed.splitlines()}
        assert all(bed.pids(h) for h in bed.all_hosts), "a Ray node runs in every host"
        host = bed.hosts[0]
        assert 10 << 20 < nemesis.fill(host.data / "big") <= 16 << 20, "the data disk is the bed's small filesystem"
        (host.data / "big").unlink()
        folder = bed.folder
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not names & {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert not folder.exists()
    assert str(folder) not in Path("/proc/mounts").read_text()


@hostbed
def test_jepsen_run_is_linearizable_loses_nothing_and_recovers(tmp_path) -> None:
    """One short run, two faults at once: a host cut off (nftables) and another killed and started
    again (every process of its namespace); the 60 s runs of every nemesis are docs/testing.md's."""
    proc, report = jepsen(tmp_path, "--hosts", "3", "--nemesis", "partition,kill", "--time", "10", "--fault-s", "8",
                          "--seed", "3")
    assert proc.returncode == 0 and report["passed"], show(proc)
    assert report["verdict"] == "linearizable" and report["ledger_lost"] == [] and report["ok"] > 100, show(proc)
    assert all(c["recovery_s"] is not None for c in report["cycles"]), show(proc)
    assert all(all(c["evidence"].values()) for c in report["cycles"]), "every nemesis took effect"


@hostbed
def test_a_healed_replica_rejoins_fast_and_a_shard_that_lost_its_majority_comes_back(tmp_path) -> None:
    """Issue 24 on real hosts: a leader's host cut off from the other replica hosts for 20 s is
    caught up soon after the heal, its peers' connections retransmitting within a second (with
    the kernel's own backoff the next retransmission was up to 12 s away after such a cut, 50 s
    after a minute); then two hosts of one shard die with their disks, its lost quorum is
    reported, ``recover()`` re-founds it, it takes writes again and no acknowledged put is lost,
    while the other groups keep their majority (figures: docs/operations.md)."""
    out = tmp_path / "recovery.json"
    proc = subprocess.run([sys.executable, "-m", "raykv.testing.recovery", "--hosts", "4", "--cuts", "20",
                           "--configs", "1000/900000", "--quorum-loss", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, show(proc)
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["retransmit_wait_s"] <= 1.5, show(proc)
    assert row["caught_up_s"] is not None and row["caught_up_s"] < 10, show(proc)
    lost = result["quorum_loss"]
    assert lost["reported_s"] is not None and lost["writable_s"] is not None, show(proc)
    assert lost["lost"] == 0 and lost["acked"] > 100, show(proc)
    assert lost["report"]["kept_index"] >= lost["report"]["commit_before"], show(proc)
