"""What an engine does at the end of every turn besides the Ready loop, and what it reports.

Mixed into :class:`~raykv.replica.engine.ReplicaEngine`:

* **compaction**: once ``compact_every_entries`` entries are applied past the last
  snapshot, record a snapshot at the applied index and drop the log up to
  ``compact_keep_entries`` entries behind it;
* **session expiry** (leader): every ``session_expiry_every_s`` propose
  :class:`~raykv.kv.ExpireSessions` for sessions silent for ``session_ttl_s`` (wall
  clock: session activity is dated by ``Stamp.wall_ms``);
* **quiescing** (leader): an idle, caught-up group goes quiet (:mod:`.quiesce`);
* **a low disk** (leader): hand leadership away (:mod:`.diskguard`);
* :meth:`UpkeepMixin.status`: one plain dict for operators, tests and repair.
"""

from __future__ import annotations

from ..kv import ExpireSessions
from ..raft.types import Role
from . import queries
from .clock import Stamp
from .pending import WriteBatch


class UpkeepMixin:
    def _upkeep(self, at: Stamp) -> None:
        self._maybe_compact()
        self._disk_upkeep(at)
        if self.node.role is Role.LEADER and at.mono_s >= self._next_expiry_s and not self.stopped:
            self._next_expiry_s = at.mono_s + self.options.session_expiry_every_s
            cutoff = max(0, at.wall_ms - int(self.options.session_ttl_s * 1000))
            self._propose_commands([ExpireSessions(cutoff)], WriteBatch.of(0, 1, lambda rid, outcomes: None), [0])
        if self.quiet.maybe_quiesce(self.node, len(self.writes) + len(self.reads)):
            self.shell.send(self.quiet.quiesce_messages(self.node))

    def _maybe_compact(self) -> None:
        storage, options = self.storage, self.options
        applied = storage.applied_index()
        if applied - storage.snapshot().meta.index < options.compact_every_entries:
            return
        storage.create_snapshot(applied, storage.initial_state()[1], None)
        self.counters["snapshots_created"] += 1
        keep_from = applied - options.compact_keep_entries
        if keep_from >= storage.first_index():
            storage.compact(keep_from)

    def gauges(self) -> dict[str, float]:
        """Current values for metrics: leadership, term, commit and applied index, apply lag."""
        log = self.node.log
        return {"is_leader": float(self.node.role is Role.LEADER), "term": self.node.term,
                "commit_index": log.committed, "applied_index": log.applied, "apply_lag": log.committed - log.applied}

    def status(self) -> dict:
        """The replica's view: role, term, leader, indices, configuration, what it serves, sizes,
        pending requests and counters (a leader adds each peer's replication state)."""
        status = self.node.status()
        status["conf"] = self.conf_status()
        if self.node.role is Role.LEADER:  # what membership changes need: how far each peer is
            status["peers"] = {i: {"state": pr.state.value, "match": pr.match}
                               for i, pr in self.node.tracker.progress.items()}
        status.update(
            mode="running", snapshot_index=self.storage.snapshot().meta.index, quiesced=self.quiet.quiesced,
            lease_reads=self.node.role is Role.LEADER and self.quiet.lease_allowed(self.node),
            pending_writes=len(self.writes), pending_reads=len(self.reads),
            disk_low=self.disk_low, disk_free_bytes=self.free_bytes,
            data_bytes=self.storage.stat()["used_bytes"], range=queries.describe_range(self.storage),
            **self.counters,
        )
        return status
