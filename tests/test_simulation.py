"""The seeded simulator of the replica engine: sweeps of many seeds, determinism, proof that it bites.

The sweeps are the main evidence that a replica -- the Raft core, the kv machine and the engine
that runs them, exactly as the Ray shell runs them -- is safe: every seed runs a different fault
schedule (see :mod:`raykv.testing.sim`) with every safety invariant checked after each turn,
every client history checked for linearizability, state machines compared at the end, and
liveness checked after healing. The mutation tests break the core on purpose and require the
simulator to notice within the seeds CI runs; a simulator that cannot catch these is not
evidence of anything.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from raykv.raft.election import ElectionMixin
from raykv.raft.replication import ReplicationMixin
from raykv.testing import sim
from raykv.testing.sim import main, run_seed

CI_SEEDS = 300


def _summary(out: str) -> dict[str, str]:
    line = out.strip().splitlines()[-1]
    return dict(field.split("=", 1) for field in line.split())


@pytest.mark.slow
def test_sweep_three_replicas_many_seeds(capsys) -> None:
    """At least 300 seeds of single 3-replica groups: zero safety or liveness violations.

    The mutation tests below use the same seeds (0..299), so this range is known to bite."""
    assert main(["--seeds", f"0:{CI_SEEDS}", "--jobs", "2"]) == 0
    summary = _summary(capsys.readouterr().out)
    assert summary["engine"] == "ReplicaEngine", "the simulator runs the real engine"
    assert summary["seeds"] == str(CI_SEEDS) and summary["violations"] == "0"
    assert int(summary["ops"]) > 50 * CI_SEEDS and int(summary["commits"]) > 50 * CI_SEEDS
    for fault in ("crashes", "crashes_mid_turn", "snapshots_installed", "conf_changes", "amnesiac_starts",
                  "lock_refusals", "repairs"):
        assert int(summary[fault]) > 0, f"no seed exercised {fault}"


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--replicas", "5", "--groups", "2"], ["--groups", "3"]], ids=["5x2", "3x3"])
def test_sweep_five_replicas_and_several_groups(args, capsys) -> None:
    assert main(["--seeds", "20000:20016", "--jobs", "2", *args]) == 0
    assert _summary(capsys.readouterr().out)["violations"] == "0"


@pytest.mark.slow
def test_sweep_on_the_real_lmdb_store(capsys) -> None:
    """The same simulation with every replica's state in a real, synced LMDB ReplicaStore that is
    reopened from disk on every restart, snapshots streamed as Arrow files: zero violations."""
    assert main(["--seeds", "30000:30040", "--jobs", "2", "--storage", "lmdb"]) == 0
    assert _summary(capsys.readouterr().out)["violations"] == "0"


@pytest.mark.parametrize("seed", [3, 11, 29])
def test_lmdb_store_behaves_exactly_like_memory_storage(seed) -> None:
    """Conformance at the level of whole runs: same seed, same trace, whichever store holds the log."""
    memory, lmdb_run = run_seed(seed), run_seed(seed, storage="lmdb")
    assert memory.violation is None and lmdb_run.violation is None
    assert memory.trace_hash == lmdb_run.trace_hash and memory.stats == lmdb_run.stats


def test_same_seed_same_trace_and_different_seeds_differ() -> None:
    a, b, c = run_seed(4242), run_seed(4242), run_seed(4243)
    assert a.trace_hash == b.trace_hash and a.stats == b.stats
    assert a.trace_hash != c.trace_hash


def test_trace_does_not_depend_on_the_interpreters_hash_seed() -> None:
    """Iteration order of sets/dicts keyed by strings varies with PYTHONHASHSEED; the trace must not."""
    code = "from raykv.testing.sim import run_seed; print(run_seed(77).trace_hash)"
    hashes = set()
    for hash_seed in ("1", "2", "random"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        hashes.add(out.stdout.strip())
    hashes.add(run_seed(77).trace_hash)
    assert len(hashes) == 1


def _first_caught(limit: int) -> tuple[int, str] | None:
    for seed in range(limit):
        result = run_seed(seed)
        if result.violation:
            return seed, result.violation
    return None


def test_mutant_committing_a_previous_term_entry_by_counting_is_caught(monkeypatch) -> None:
    """Raft §5.4.2 / Figure 8: a leader that commits an entry of an earlier term by counting
    replicas can lose it. The broken commit rule must be caught as a *safety* violation."""

    def commit_by_counting(self) -> bool:
        index = self.tracker.committed()
        if self.log.committed < index <= self.log.last_index():
            self.log.commit_to(index)
            self._release_reads_waiting_for_commit()
            return True
        return False

    monkeypatch.setattr(ReplicationMixin, "_maybe_commit", commit_by_counting)
    caught = _first_caught(CI_SEEDS)
    assert caught is not None, f"the simulator missed the Figure 8 mutant in {CI_SEEDS} seeds"
    assert any(kind in caught[1] for kind in ("leader completeness", "committed uniqueness", "state machine"))


def test_mutant_granting_two_votes_in_one_term_is_caught(monkeypatch) -> None:
    monkeypatch.setattr(ElectionMixin, "_can_vote_for", lambda self, m: True)
    caught = _first_caught(CI_SEEDS)
    assert caught is not None
    assert "vote" in caught[1] or "election safety" in caught[1]


def test_cli_reports_each_failing_seed_with_a_replay_command(monkeypatch, capsys) -> None:
    monkeypatch.setattr(ElectionMixin, "_can_vote_for", lambda self, m: True)
    assert main(["--seeds", "0:2", "--replicas", "5"]) == 1
    out = capsys.readouterr().out
    assert "seed 0: VIOLATION" in out
    assert "replay: python -m raykv.testing.sim --seeds 0:1 --groups 1 --replicas 5 --seconds 20" in out
    assert _summary(out)["violations"] in ("1", "2")


@pytest.mark.parametrize("bad", [["--seeds", "5:5"], ["--seeds", "x"], ["--seeds", "0:1", "--replicas", "4"]])
def test_cli_rejects_bad_arguments(bad) -> None:
    with pytest.raises(SystemExit) as exc:
        main(bad)
    assert exc.value.code == 2


def test_liveness_bounds_are_documented_constants() -> None:
    assert sim.LEADER_BOUND_US < sim.LIVENESS_BOUND_US
