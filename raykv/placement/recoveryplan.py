"""Recovery of a group that lost its majority, as pure decisions (stdlib only): may it be forced,
and from which replica (``raykv recover``; the unsafe act itself is :mod:`raykv.replica.recovery`).

The rules, each a refusal that changes nothing unless its condition holds:

* a group with a majority of its replicas answering, or a leader, needs no recovery: refused
  unless ``force`` (then the replicas not chosen lose what only they hold);
* the survivor is the answering replica (running, not amnesiac) with the highest
  ``(last log term, last log index)``: it holds every entry any answering replica holds, as
  far as a log can tell (Raft's election rule); the operator may name another (``--from``);
* with no answering replica there is nothing to recover from (restore a backup instead).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import InvalidRequestError, UnavailableError


@dataclass(frozen=True, slots=True)
class Survivor:
    """A replica that answered, and what its log holds."""

    replica: int
    last_term: int
    last_index: int
    commit: int
    role: str


def survivors(statuses: Mapping[int, dict | None]) -> list[Survivor]:
    """The replicas among ``statuses`` (replica id -> its status, None: no answer) that run with
    their data (an amnesiac one holds nothing), best first."""
    out = [Survivor(rid, int(st.get("last_term", 0)), int(st.get("last_index", 0)), int(st.get("commit", 0)),
                    str(st.get("role")))
           for rid, st in statuses.items() if st is not None and st.get("mode") == "running"]
    return sorted(out, key=lambda s: (-s.last_term, -s.last_index, -s.commit, s.replica))


def quorum_lost(replicas: Sequence[int], statuses: Mapping[int, dict | None]) -> bool:
    """Whether fewer than a majority of ``replicas`` answer with their data."""
    return 2 * len(survivors({r: statuses.get(r) for r in replicas})) <= len(replicas)


def choose_survivor(shard: int, replicas: Sequence[int], statuses: Mapping[int, dict | None],
                    chosen: int | None = None, force: bool = False) -> Survivor:
    """The replica to re-found ``shard``'s group from (see the module docstring), or the refusal:
    :class:`InvalidRequestError` (a majority answers, a leader exists, ``chosen`` is no member or
    does not answer), :class:`UnavailableError` (no replica answers)."""
    alive = survivors({r: statuses.get(r) for r in replicas})
    names = ", ".join(str(s.replica) for s in alive)
    if not force:
        if 2 * len(alive) > len(replicas):
            raise InvalidRequestError(
                f"shard {shard} has a quorum (replicas {names} of {len(replicas)} answer): nothing to recover; "
                f"--force re-founds it from one replica anyway and loses what only the others hold")
        leaders = [s.replica for s in alive if s.role == "leader"]
        if leaders:
            raise InvalidRequestError(f"shard {shard} has a leader (replica {leaders[0]}): nothing to recover")
    if chosen is not None:
        if chosen not in replicas:
            raise InvalidRequestError(f"replica {chosen} is not a replica of shard {shard} "
                                      f"(its replicas: {', '.join(map(str, replicas))})")
        match = [s for s in alive if s.replica == chosen]
        if not match:
            raise InvalidRequestError(f"replica {chosen} of shard {shard} does not answer with its data: "
                                      f"it cannot be recovered from{f' (answering: {names})' if names else ''}")
        return match[0]
    if not alive:
        raise UnavailableError(f"no replica of shard {shard} answers with its data: nothing to recover from "
                               f"(restore the shard from a backup)")
    return alive[0]
