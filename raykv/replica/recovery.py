"""Unsafe recovery of a group that lost its majority for good: its best survivor re-founds it alone.

A shard whose majority is gone (two of three hosts died with their disks) can never elect a leader
again, and Raft offers no way out that keeps its guarantees. Every store has an explicit, unsafe
one for the operator (etcd's ``--force-new-cluster``, TiKV's unsafe recovery, CockroachDB's
``debug recover``). This module is raykv's, and the one place that breaks Raft's rules, on
purpose, when ``raykv recover`` asks a survivor to (:func:`force_solo`):

* everything in the survivor's log counts as committed and is applied now. Entries past the
  commit index it knew may never have been acknowledged: a client that got no answer sees such
  a write take effect, which linearizability allows for an operation without outcome. Entries the
  lost majority committed that never reached the survivor are gone; :class:`ForcedRecovery`
  says which indexes the survivor held, so the operator knows what may be missing;
* configuration changes among those entries take no effect: the configuration becomes the
  survivor alone (its repair then adds fresh replicas, one at a time, as for any lost replica);
* a snapshot with that configuration replaces the whole log, so no replica ever applies one of
  the older configuration changes again (a replica added later starts from the snapshot). It is
  taken at one empty entry the survivor appends after its log (in its current term; no replica
  of the old group will ever hold another entry there), so it is newer than any snapshot before.

The engine is finished after this: the shell must restart it from its store (the Ray replica
exits its process and Ray restarts it), so its Raft node is rebuilt alone in its configuration and
elects itself at its next election timeout, in a term above every term it has seen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import InvalidRequestError
from ..raft.types import ConfState, Entry, EntryKind, HardState

ALL_BYTES = 1 << 62


@dataclass(frozen=True, slots=True)
class ForcedRecovery:
    """What :func:`force_solo` kept: the survivor's log up to ``kept_index`` (last term
    ``kept_term``), all applied now; it had known entries committed up to ``commit_before``."""

    replica: int
    kept_index: int
    kept_term: int
    commit_before: int
    applied_before: int
    voters_before: tuple[int, ...]

    def to_dict(self) -> dict:
        return {**asdict(self), "voters_before": list(self.voters_before),
                "unconfirmed_entries": self.kept_index - self.commit_before}


def force_solo(engine) -> ForcedRecovery:
    """Make ``engine``'s replica the only voter of its group, its whole log applied, the log
    replaced by a snapshot (see the module docstring); :class:`InvalidRequestError` if it leads
    (a leader has its majority: nothing to recover). The engine must not be used afterwards."""
    node, storage = engine.node, engine.storage
    if node.role.value == "leader":
        raise InvalidRequestError(f"replica {engine.id} leads its group: it has a majority, nothing to recover")
    hard = storage.hard_state()
    applied, last = storage.applied_index(), storage.last_index()
    report = ForcedRecovery(engine.id, last, storage.term(last), hard.commit, applied,
                            tuple(node.tracker.conf.voters))
    # One empty entry of its own after the log (no other replica of the old group will ever hold
    # another at that index: they are all gone), so the snapshot below is newer than any before.
    mark = Entry(last + 1, max(hard.term, report.kept_term))
    storage.persist(None, (mark,))
    _apply_all(engine, storage.entries(applied + 1, mark.index + 1, ALL_BYTES))
    solo = ConfState(voters=(engine.id,))

    def take_solo(tx) -> None:  # the whole log is applied now: the applied index is ``mark.index``
        tx.set_conf(solo)
        tx.set_hard_state(HardState(hard.term, hard.vote, mark.index))

    storage.apply(take_solo)
    storage.create_snapshot(mark.index, solo, None)
    storage.compact(mark.index)
    engine.stopped = True
    engine.log.warning("forced recovery: alone in the group at index %d (term %d); it had known %d committed, "
                       "voters were %s", last, report.kept_term, hard.commit, list(report.voters_before))
    return report


def _apply_all(engine, entries) -> None:
    """Apply ``entries`` in order with the kv machine; configuration changes only advance the
    applied index (the forced configuration replaces them all)."""
    run = []
    for entry in entries:
        if entry.kind is EntryKind.CONF_CHANGE:
            engine._apply_run(run, None)
            run = []
            index = entry.index
            engine.storage.apply(lambda tx, index=index: tx.set_applied(index))
        else:
            run.append(entry)
    engine._apply_run(run, None)
