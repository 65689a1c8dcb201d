"""The record of one resharding operation: what is being done, down to the phase (JSON in the meta group).

Written by the placement driver with compare-and-set before a phase's effects are relied on
and after they are complete (:mod:`raykv.runtime.scale`), and read by ``raykv status``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from ..errors import InvalidRequestError
from ..placement import Move

DEFAULT_RETIRE_GRACE_S = 10.0


@dataclass
class ScaleOp:
    """The record of one resharding operation (see the module docstring)."""

    id: int
    target: int
    state: str = "running"  # running | done | failed
    next_shard: int = 1
    steps_done: int = 0
    steps_total: int = 0
    step: dict | None = None
    moved_keys: int = 0
    moved_bytes: int = 0
    delta_keys: int = 0
    copy_s: float = 0.0
    fenced_s: float = 0.0
    retire_grace_s: float = DEFAULT_RETIRE_GRACE_S
    error: str | None = None
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    updated_ms: int = 0
    driver: int = 0
    """The lease epoch of the placement driver that wrote this record last (an older one may not)."""

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> "ScaleOp":
        return cls(**json.loads(raw))

    def move(self) -> Move:
        s = self.step
        return Move(s["kind"], s["src"], s["dst"], bytes.fromhex(s["lo"]), None if s["hi"] is None else bytes.fromhex(s["hi"]))

    def describe(self) -> str:
        head = f"scale #{self.id} to {self.target} shards: {self.state}, step {self.steps_done}/{self.steps_total}"
        if self.step:
            head += f" ({self.move().describe()}; phase {self.step['phase']})"
        return head + (f"; error: {self.error}" if self.error else "")


def check_target(target: object, max_shards: int) -> int:
    if isinstance(target, bool) or not isinstance(target, int) or not 1 <= target <= max_shards:
        raise InvalidRequestError(f"shards must be an int in 1..{max_shards}, got {target!r}")
    return target


def src_rids(op: ScaleOp) -> tuple[int, ...]:
    """The source group's replica ids, as recorded when the step was planned (a merged-away
    source is no longer in the map when it is dropped and retired)."""
    return tuple(op.step["src_rids"])


def dst_rids(op: ScaleOp) -> tuple[int, ...]:
    return tuple(op.step["dst_rids"])
