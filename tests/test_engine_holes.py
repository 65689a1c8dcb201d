"""Five ways a replica's shell used to break Raft, each staged in the simulator -- with raykv's
shell (no violation) and with the old behaviour (a violation the simulator reports).

The old behaviours are kept as mutation checks: a simulator that cannot tell them apart from
the real shell would be no evidence that the real shell is safe. See
:mod:`raykv.testing.scenarios` for each staging and ``docs/replica.md`` for the rules.
"""

from __future__ import annotations

import pytest

from raykv.testing.scenarios import HOLES
from raykv.testing.world import ShellModel

SEEDS = range(3)


@pytest.mark.parametrize("hole", sorted(HOLES))
def test_raykvs_shell_survives_the_staging(hole) -> None:
    stage, _ = HOLES[hole]
    for seed in SEEDS:
        assert stage(seed, ShellModel()) is None, f"seed {seed}"


@pytest.mark.parametrize("hole", sorted(HOLES))
def test_the_old_behaviour_is_caught(hole) -> None:
    stage, old = HOLES[hole]
    verdicts = [stage(seed, old) for seed in SEEDS]
    assert any(verdicts), f"the simulator missed {hole!r} in seeds {list(SEEDS)}"
    print(hole, "->", next(v for v in verdicts if v)[:160])
