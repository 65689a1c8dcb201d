"""``raykv recover``: re-found a group that lost its majority from its best survivor (unsafe, on purpose).

A group whose majority is gone for good can never elect a leader. :func:`recover_group` brings
it back through the group port (:mod:`raykv.runtime.groups`):

1. every replica of the group is asked for its status;
2. the survivor is chosen, or the recovery refused (:mod:`raykv.placement.recoveryplan`: refused
   while a majority answers or a leader exists, unless ``force``);
3. every other replica of the group is killed for good, answering or not: a replica that was only
   cut off must never come back into the old configuration, where two of them would again be a
   majority and could elect a leader of their own;
4. the survivor re-founds the group alone (:mod:`raykv.replica.recovery`: its whole log applied,
   the configuration itself only) and restarts; it elects itself within an election timeout;
5. once it leads, the placement driver's repair replaces the killed replicas one at a time, as for
   any lost replica (a group with a leader is repaired whatever the map still lists).

The report says what the survivor kept: every entry up to ``kept_index``, all applied; it knew
entries committed up to ``commit_before``. What the lost majority committed after
``kept_index``, if anything, is gone: no surviving replica held it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import ray

from ..placement.recoveryplan import choose_survivor
from . import groups

FORCE_TIMEOUT_S = 60.0


def recover_group(store: str, shard: int, replicas: Sequence[int], chosen: int | None = None,
                  force: bool = False, timeout_s: float = 30.0) -> dict:
    """Re-found group ``shard`` (replica ids ``replicas``) of ``store`` from its best survivor
    (or ``chosen``); see the module docstring. Returns the report; raises the refusal
    (:class:`~raykv.errors.InvalidRequestError`, :class:`~raykv.errors.UnavailableError`)."""
    started = time.monotonic()
    answered = groups.statuses(store, shard, replicas)
    statuses = {rid: answered[rid][0] if rid in answered else None for rid in replicas}
    survivor = choose_survivor(shard, replicas, statuses, chosen, force)
    others = [rid for rid in replicas if rid != survivor.replica]
    for rid in others:
        groups.kill_for_good(store, shard, rid)
    report = ray.get(answered[survivor.replica][1].force_solo.remote(), timeout=FORCE_TIMEOUT_S)
    leader, status, _ = groups.wait_leader(store, shard, [survivor.replica], timeout_s)
    return {**report, "shard": shard, "survivor": survivor.replica, "killed": others, "leader": leader,
            "term": status.get("term"), "commit_seen": max(st["commit"] for st in statuses.values() if st),
            "forced": force, "seconds": round(time.monotonic() - started, 2)}
