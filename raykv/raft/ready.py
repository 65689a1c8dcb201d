"""The Ready batch: everything the core asks of its host, and the contract for it.

The host loop, for every Ready ``rd`` (``node.has_ready()`` -> ``rd = node.ready()``):

1. **Persist**, in one atomic, synced write: ``rd.hard_state`` (if not None),
   ``rd.snapshot`` (if not None: install its payload and replace the log), then
   ``rd.entries`` (append, truncating any conflicting suffix of the stored log).
2. **Send** ``rd.messages`` -- only after step 1 is durable. Every message may
   depend on it: a vote grant on the persisted vote, an append acknowledgement
   on the persisted entries, a leader's append on its own persisted term.
   Sending is fire-and-forget; losing a message is always safe.
3. **Apply** ``rd.committed_entries`` in order (after step 1: they may include
   entries persisted in this very Ready). For a ``CONF_CHANGE`` entry call
   :meth:`Node.apply_conf_change` with its decoded change and persist the
   returned configuration with the applied index. Apply data and applied index
   in one transaction so a replay after a crash is idempotent. Applying may
   also happen inside step 1's transaction, before sending: committed entries
   are durable on a quorum already (one synced write per Ready instead of two).
4. **Serve reads** in ``rd.read_states`` once the applied index reaches each
   one's ``index``; fail the reads in ``rd.dropped_reads`` (definitely: they
   may be retried against the new leader).
5. Call ``node.advance(rd)``.

Between ``ready()`` and ``advance()`` the host must not call any method that
changes the node (step, tick, propose, ...); it queues such work and feeds it
afterwards, which also batches it into the next Ready (group commit).
"""

from __future__ import annotations

from dataclasses import dataclass

from .messages import Message, describe
from .types import Entry, HardState, ReadState, Snapshot, SoftState


@dataclass(frozen=True, slots=True)
class Ready:
    soft_state: SoftState | None
    hard_state: HardState | None
    snapshot: Snapshot | None
    entries: tuple[Entry, ...]
    committed_entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    read_states: tuple[ReadState, ...]
    dropped_reads: tuple[bytes, ...]

    @property
    def must_sync(self) -> bool:
        """Whether step 1 writes anything that must be synced before step 2."""
        return self.hard_state is not None or self.snapshot is not None or bool(self.entries)

    def describe(self) -> str:
        parts = []
        if self.soft_state:
            parts.append(f"soft={self.soft_state.role.value}/{self.soft_state.leader}")
        if self.hard_state:
            parts.append(f"hard=({self.hard_state.describe()})")
        if self.snapshot:
            parts.append(self.snapshot.meta.describe())
        if self.entries:
            parts.append("persist=[" + " ".join(e.describe() for e in self.entries) + "]")
        if self.committed_entries:
            parts.append("apply=[" + " ".join(e.describe() for e in self.committed_entries) + "]")
        parts.extend("send " + describe(m) for m in self.messages)
        parts.extend(f"read {rs.index} ctx={rs.ctx.hex()}" for rs in self.read_states)
        return "; ".join(parts) or "empty"
