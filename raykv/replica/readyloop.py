"""The Ready contract, written once: persist -> send -> apply -> serve reads -> advance.

Mixed into :class:`~raykv.replica.engine.ReplicaEngine`. For every Ready ``rd`` of
the node (contract: :mod:`raykv.raft.ready`):

1. **persist** through the storage port, one atomic synced write; nothing is sent
   before it returns. In the common case the committed entries are applied in that
   same write (*fused*: committed entries are durable on a quorum already, so
   applying before sending is allowed, and entries this very Ready persists become
   durable together with their effects): one fsync per Ready instead of two. Not
   fused: a snapshot install, a configuration change, nothing to apply;
2. **send** the Ready's messages (and start snapshot transfers) through the shell;
3. **apply** what the persist did not: runs of normal entries in one write each,
   configuration changes alone. A Ready whose hard state moved only its commit index
   writes it with the apply (Raft's commit index is volatile: a restarted replica
   relearns it), saving one fsync per commit on every replica;
4. answer the writes just applied, note ReadIndex confirmations, serve reads whose
   index is applied, fail dropped ones;
5. ``node.advance(rd)``.

A crash anywhere in between is safe: what was persisted is durable before anything
depending on it left, and an apply commits its data with its applied index, so a
restart replays exactly the entries not yet applied.
"""

from __future__ import annotations

from ..errors import DriverSupersededError, LeadershipLostError, NotLeaderError
from ..kv.machine import note_driver, stale_driver
from ..kv.ranges import decode_driver
from ..raft import Ready
from ..raft.messages import InstallSnapshot, Message
from ..raft.types import ConfChange, Entry, EntryKind, HardState, Role, Snapshot


class ReadyMixin:
    def _handle_ready(self, rd: Ready) -> None:
        self.counters["readies"] += 1
        if rd.hard_state is not None or rd.soft_state is not None:
            self._note_elections()
        after_send = self._persist_ready(rd)
        self._send(rd.messages)
        after_send()
        for rs in rd.read_states:
            self.reads.confirmed(rs.ctx, rs.index)
        for ctx in rd.dropped_reads:
            group = self.reads.dropped(ctx)
            if group is not None:
                self._fail_read_group(group, self._not_leader())
        self.node.advance(rd)
        self._serve_reads()
        if rd.soft_state is not None:
            self._role_changed(rd.soft_state.role)

    # -- 1. persist ----------------------------------------------------------------------------
    def _persist_ready(self, rd: Ready):
        """Make ``rd`` durable; returns what is left to do once its messages are sent."""
        run = self._fusable_run(rd)
        if run:
            outcomes = self.storage.persist(rd.hard_state, rd.entries, apply=self._apply_body(run, None))
            self._observe_applied(run)
            self._observe_persisted(rd.hard_state, rd.entries)
            return lambda: self._applied(run, outcomes)
        commit_only = self._commit_only(rd)
        self._persist(rd, skip_hard_state=commit_only is not None)
        self._observe_persisted(None if commit_only is not None else rd.hard_state, rd.entries)
        return lambda: self._apply(rd.committed_entries, commit_only)

    def _fusable_run(self, rd: Ready) -> list[Entry] | None:
        """The committed entries to apply inside the persisting write, if that may be done: no
        snapshot and no configuration change among them. None (or empty): the general path."""
        if rd.snapshot is not None or not rd.committed_entries:
            return None
        applied = self.storage.applied_index()
        run = [e for e in rd.committed_entries if e.index > applied]
        return None if any(e.kind is EntryKind.CONF_CHANGE for e in run) else run

    def _commit_only(self, rd: Ready) -> HardState | None:
        """The Ready's hard state if only its commit index moved and entries are to be applied
        (it is then written with the apply, see the module docstring)."""
        hs, stored = rd.hard_state, self.storage.hard_state()
        if hs is None or rd.entries or rd.snapshot is not None or not rd.committed_entries:
            return None
        return hs if (hs.term, hs.vote) == (stored.term, stored.vote) else None

    def _persist(self, rd: Ready, skip_hard_state: bool) -> None:
        hard_state = None if skip_hard_state else rd.hard_state
        snapshot = rd.snapshot
        if snapshot is not None and snapshot.data:
            self.storage.persist(hard_state, rd.entries, Snapshot(snapshot.meta, None),
                                 snapshot_rows=self.shell.snapshot_rows(snapshot.data))
            self.shell.drop_snapshot(snapshot.data)
            self.counters["snapshots_installed"] += 1
            self.log.info("installed a snapshot at index %d (term %d)", snapshot.meta.index, snapshot.meta.term)
            if self.observer is not None:
                self.observer.installed(snapshot.meta.index)
        elif hard_state is not None or rd.entries or snapshot is not None:
            self.storage.persist(hard_state, rd.entries, snapshot)

    # -- 2. send ------------------------------------------------------------------------------
    def _send(self, messages: tuple[Message, ...]) -> None:
        plain = [m for m in messages if not isinstance(m, InstallSnapshot)]
        if len(plain) != len(messages):
            for m in messages:
                if isinstance(m, InstallSnapshot):
                    self.shell.send_snapshot(m)
        self.quiet.on_send(plain, self.node)
        if plain:
            self.shell.send(plain)

    # -- 3. apply -----------------------------------------------------------------------------
    def _apply(self, entries: tuple[Entry, ...], hard_state: HardState | None) -> None:
        """Apply in order: runs of normal entries in one write each, configuration changes alone;
        ``hard_state`` (commit only) rides on the first write, or is persisted alone."""
        run: list[Entry] = []
        for entry in entries:
            if entry.index <= self.storage.applied_index():
                continue
            if entry.kind is EntryKind.CONF_CHANGE:
                hard_state = self._apply_run(run, hard_state)
                run = []
                self._apply_conf_change(entry, hard_state)
                hard_state = None
            else:
                run.append(entry)
        if self._apply_run(run, hard_state) is not None:
            self.storage.persist(hard_state)
            self._observe_persisted(hard_state, ())

    def _apply_run(self, run: list[Entry], hard_state: HardState | None) -> HardState | None:
        """Normal entries in one write with the applied index; returns ``hard_state`` if it was
        not written (empty run)."""
        if not run:
            return hard_state
        outcomes = self.storage.apply(self._apply_body(run, hard_state))
        self._observe_applied(run)
        self._observe_persisted(hard_state, ())
        self._applied(run, outcomes)
        return None

    def _apply_body(self, run: list[Entry], hard_state: HardState | None):
        """The write's body: apply ``run`` with the kv machine, record the applied index (and
        ``hard_state``); returns each entry's outcome (None for an entry without data)."""

        def body(tx) -> list:
            results = iter(self.machine.apply_run([(e.index, e.data) for e in run if e.data], tx))
            outcomes = [next(results) if e.data else None for e in run]
            tx.set_applied(run[-1].index)
            if hard_state is not None:
                tx.set_hard_state(hard_state)
            return outcomes

        return body

    def _observe_applied(self, entries: list[Entry]) -> None:
        if self.observer is not None:
            self.observer.applied(entries)

    def _observe_persisted(self, hard_state: HardState | None, entries) -> None:
        """Tell the observer what one write made durable (the simulator's checkers; it may also
        end the process there: a crash right after a persist)."""
        if self.observer is not None and (hard_state is not None or entries):
            self.observer.persisted(hard_state, entries)

    def _applied(self, run: list[Entry], outcomes: list) -> None:
        """``run`` is applied and durable: answer its writes, count it."""
        self.counters["entries_applied"] += len(run)
        now = self._at.mono_s
        for entry, outcome in zip(run, outcomes):
            proposed_at = self.writes.applied(entry.index, entry.term, outcome)
            if proposed_at is not None:
                self.metrics.committed(now - proposed_at)

    def _apply_conf_change(self, entry: Entry, hard_state: HardState | None) -> None:
        """A configuration change takes effect alone, in a write with the applied index -- unless
        it carries (as its context) the epoch of a placement driver older than one that changed
        this group already: then it is refused, the same way on every replica (the epoch is
        replicated state), and its proposer is told so."""
        cc = ConfChange.decode(entry.data)
        refusal = self._stale_driver(cc.context)
        conf = None if refusal is not None else self.node.apply_conf_change(cc)

        def body(tx) -> None:
            if conf is not None:
                tx.set_conf(conf)
                if cc.context:
                    note_driver(decode_driver(cc.context), tx)
            tx.set_applied(entry.index)
            if hard_state is not None:
                tx.set_hard_state(hard_state)

        self.storage.apply(body)
        self._observe_applied([entry])
        self._observe_persisted(hard_state, ())
        self.writes.applied(entry.index, entry.term, refusal)

    def _stale_driver(self, context: bytes) -> DriverSupersededError | None:
        """Why a configuration change with this context (a placement driver's epoch) is refused
        here, or None (no context: not a placement driver's change, e.g. leaving a joint one)."""
        if not context:
            return None
        with self.storage.view() as view:
            why = stale_driver(decode_driver(context), view)
        return None if why is None else DriverSupersededError(f"membership change {why}")

    # -- 4. reads and roles ------------------------------------------------------------------
    def _serve_reads(self) -> None:
        for group in self.reads.ready(self.storage.applied_index()):
            # the round's latency: arrival of its first read until it may be served (not the
            # queries' own time: a long scan page or a backup export is not ReadIndex latency)
            self.metrics.reads_served("lease" if group.lease else "linearizable", len(group.waiters),
                                      self._at.mono_s - group.started_s)
            for query, rid in group.waiters:
                self._answer(rid, self._run_query(query))

    def _role_changed(self, role: Role) -> None:
        if role is Role.LEADER:
            self.counters["elections_won"] += 1
            self.log.info("became leader at term %d", self.node.term)
            return
        self.writes.fail_all(LeadershipLostError(f"replica {self.id} stopped leading (term {self.node.term})"))
        for group in self.reads.fail_unconfirmed():
            self._fail_read_group(group, self._not_leader())

    def _not_leader(self) -> NotLeaderError:
        return NotLeaderError(self.id, self.node.lead or None, self.node.term)

    def _note_elections(self) -> None:
        """Count the terms this replica campaigned in (a leader campaigned in its term) and the
        leaders it learned of (a new leader or term), for metrics and status."""
        node = self.node
        if node.role in (Role.CANDIDATE, Role.LEADER) and node.term > self._campaign_term:
            self._campaign_term = node.term
            self.counters["elections_started"] += 1
            self.log.debug("campaigning at term %d", node.term)
        if node.lead and (node.lead, node.term) != self._leader_seen:
            self._leader_seen = (node.lead, node.term)
            self.counters["leader_changes"] += 1
            self.log.info("leader is replica %d at term %d", node.lead, node.term)
