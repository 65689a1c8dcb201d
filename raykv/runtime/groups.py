"""The group port: how control processes (start/stop, resharding, repair, the router) reach a group.

* :func:`leader_call` calls the leader of one group: it finds the leader by asking (a
  ``NotLeaderError`` names the leader its sender believes in), skips replicas that are dead or
  restarting, and keeps trying until its deadline, so a leader killed in the middle of a
  resharding step costs one election, not the step;
* :func:`running`, :func:`statuses`, :func:`leader` and :func:`wait_leader` observe a group's
  replica actors (benches and tests find leaders with them too);
* :func:`kill_for_good` removes a replica's actor so that no restart brings it back;
* :func:`remove_replica_data` / :func:`remove_shard_data` delete what a replica or a retired
  shard kept on a host, by a task pinned to that host (:mod:`raykv.storage.layout` knows the files).
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
    ReplicaDataLostError,
    ShutdownError,
    UnavailableError,
)
from ..storage import layout
from ..protocol import HOST_LABEL
from ..storage.replica_store import ReplicaId
from .shard import replica_handle

log = logging.getLogger("raykv.groups")
CALL_TIMEOUT_S = 30.0
_leaders: dict[tuple[str, int], int] = {}
"""The last leader seen per (store, shard): asked first next time."""


def leader_call(store: str, shard: int, replicas: Sequence[int], method: str, args: tuple = (),
                timeout_s: float = 120.0) -> Any:
    """``method(*args)`` answered by the leader of ``shard`` (an error value other than
    NotLeader/Shutdown/timeout is returned as is). A replica that lost its data answers
    :class:`ReplicaDataLostError` to everything and can never lead: the others are asked (a new
    group with one such founder still has a majority). Raises :class:`UnavailableError` past ``timeout_s``."""
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
            if isinstance(answer, (_Unreachable, ReplicaDataLostError)) or _retryable(answer):
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


# -- observing a group ----------------------------------------------------------------------------
STATUS_TIMEOUT_S = 2.0


def running(store: str, shard: int, rids) -> dict[int, Any]:
    """Replica id -> actor handle of the replicas ``rids`` whose named actor exists (one lookup each)."""
    handles = {}
    for rid in rids:
        try:
            handles[rid] = replica_handle(store, shard, rid)
        except ValueError:
            pass  # never started, or killed for good
    return handles


def actor_exists(store: str, shard: int, rid: int) -> bool:
    """Whether replica ``rid``'s named actor exists (alive, restarting or waiting for its host).
    A detached actor that is dead for good has released its name."""
    return bool(running(store, shard, [rid]))


def statuses(store: str, shard: int, rids, timeout_s: float = STATUS_TIMEOUT_S) -> dict[int, tuple[dict, Any]]:
    """``{rid: (status, handle)}`` of the replicas among ``rids`` that answer within ``timeout_s``."""
    refs = {rid: (handle, handle.status.remote()) for rid, handle in running(store, shard, rids).items()}
    if not refs:
        return {}
    ray.wait([ref for _, ref in refs.values()], num_returns=len(refs), timeout=timeout_s)
    found = {}
    for rid, (handle, ref) in refs.items():
        try:
            found[rid] = (ray.get(ref, timeout=0), handle)
        except Exception:  # noqa: BLE001 -- dead, restarting or slow: no status to use
            continue
    return found


def leader(store: str, shard: int, rids, timeout_s: float = STATUS_TIMEOUT_S) -> tuple[int, dict, Any] | None:
    """``(replica id, status, handle)`` of the leader with the highest term among ``rids``, or None."""
    best = None
    for rid, (status, handle) in statuses(store, shard, rids, timeout_s).items():
        if status["role"] == "leader" and (best is None or status["term"] > best[1]["term"]):
            best = (rid, status, handle)
    return best


def wait_leader(store: str, shard: int, rids, timeout_s: float = 30.0) -> tuple[int, dict, Any]:
    """:func:`leader`, asked again until one answers; :class:`UnavailableError` past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = leader(store, shard, rids)
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            raise UnavailableError(f"shard {shard} of store {store!r}: no leader among {list(rids)} "
                                   f"within {timeout_s:g}s")
        time.sleep(0.05)


# -- removing ---------------------------------------------------------------------------------------
def kill_for_good(store: str, shard: int, rid: int, wait_s: float = 10.0) -> None:
    """Kill replica ``rid``'s actor with no restart anywhere, and wait until its name is free."""
    handles = running(store, shard, [rid])
    if not handles:
        return
    ray.kill(handles[rid], no_restart=True)
    deadline = time.monotonic() + wait_s
    while actor_exists(store, shard, rid) and time.monotonic() < deadline:
        time.sleep(0.05)


@ray.remote(num_cpus=0)
def _remove_replica_data(root: str, store: str, shard: int, rid: int) -> bool:
    return layout.remove_replica(root, ReplicaId(store, shard, rid))


@ray.remote(num_cpus=0)
def _remove_shard_data(root: str, store: str, shard: int) -> bool:
    return layout.remove_shard(root, store, shard)


def remove_replica_data(host: str, root: str, store: str, shard: int, rid: int, timeout_s: float = 60.0) -> bool:
    """Delete replica ``rid``'s files on ``host`` (a task pinned there); True if any existed."""
    task = _remove_replica_data.options(label_selector={HOST_LABEL: host})
    return ray.get(task.remote(str(root), store, shard, rid), timeout=timeout_s)


def remove_shard_data(roots: dict[str, str], store: str, shard: int, timeout_s: float = 60.0) -> None:
    """Delete every file of ``shard`` on each host of ``roots`` (host -> data root), in parallel."""
    refs = [_remove_shard_data.options(label_selector={HOST_LABEL: host}).remote(str(root), store, shard)
            for host, root in roots.items()]
    ray.get(refs, timeout=timeout_s)
