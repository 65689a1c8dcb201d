"""Calling the leader of one replica group from a control process (the router's placement driver).

:func:`leader_call` finds the leader by asking (a ``NotLeaderError`` names the
leader its sender believes in), skips replicas that are dead or restarting,
and keeps trying until its deadline, so a leader killed in the middle of a
resharding step costs one election, not the step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import ray
import ray.exceptions

from ..errors import (
    LeadershipLostError,
    NotLeaderError,
    OperationTimeoutError,
    ProposalDroppedError,
    ShutdownError,
    UnavailableError,
)
from .shard import replica_handle

log = logging.getLogger("raykv.groupcall")
CALL_TIMEOUT_S = 30.0
_leaders: dict[tuple[str, int], int] = {}
"""The last leader seen per (store, shard): asked first next time."""


def leader_call(store: str, shard: int, replicas: Sequence[int], method: str, args: tuple = (),
                timeout_s: float = 120.0) -> Any:
    """``method(*args)`` answered by the leader of ``shard`` (an error value other than
    NotLeader/Shutdown/timeout is returned as is). Raises :class:`UnavailableError` past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        for rid in _order(store, shard, replicas):
            answer = _ask(store, shard, rid, method, args, deadline)
            if isinstance(answer, NotLeaderError):
                if answer.leader_id in replicas:
                    _leaders[(store, shard)] = answer.leader_id
                last = answer
                continue
            if isinstance(answer, _Unreachable) or _retryable(answer):
                last = answer
                continue
            _leaders[(store, shard)] = rid
            return answer
        time.sleep(0.05)
    raise UnavailableError(f"shard {shard} of store {store!r}: no leader answered {method} within "
                           f"{timeout_s:g}s (last: {last!r})")


class _Unreachable:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"unreachable({self.error!r})"


def _order(store: str, shard: int, replicas: Sequence[int]) -> list[int]:
    first = _leaders.get((store, shard))
    return sorted(replicas, key=lambda rid: (rid != first, rid))


def _ask(store: str, shard: int, rid: int, method: str, args: tuple, deadline: float) -> Any:
    try:
        handle = replica_handle(store, shard, rid)
        timeout = max(1.0, min(CALL_TIMEOUT_S, deadline - time.monotonic()))
        return ray.get(getattr(handle, method).remote(*args), timeout=timeout)
    except (ValueError, ray.exceptions.RayError) as exc:  # no such actor, dead, restarting, slow
        return _Unreachable(exc)


def _retryable(answer: Any) -> bool:
    """Errors another attempt (after an election, a restart) may not see. Callers only send
    idempotent calls (reads, range changes), so an outcome left unknown is safe to retry."""
    return isinstance(answer, (ShutdownError, LeadershipLostError, OperationTimeoutError, ProposalDroppedError))
