"""ReadIndex bookkeeping (Raft thesis §6.4): reads waiting for a heartbeat quorum.

A leader answers a linearizable read at index ``commit`` (taken when the read
arrived) once a quorum has acknowledged a heartbeat carrying the read's
context, proving no newer leader had been elected by then. An acknowledgement
of a later context also confirms every earlier read still queued, so one
heartbeat round serves every read that was waiting (batching).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .types import ReadState


@dataclass
class _PendingRead:
    index: int
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    def __init__(self) -> None:
        self._pending: dict[bytes, _PendingRead] = {}
        self._queue: list[bytes] = []

    def __contains__(self, ctx: bytes) -> bool:
        return ctx in self._pending

    def add(self, ctx: bytes, index: int, self_id: int) -> None:
        self._pending[ctx] = _PendingRead(index, {self_id})
        self._queue.append(ctx)

    def ack(self, ctx: bytes, node_id: int) -> set[int] | None:
        """Record ``node_id``'s acknowledgement; returns the acks so far, or None if unknown."""
        read = self._pending.get(ctx)
        if read is None:
            return None
        read.acks.add(node_id)
        return read.acks

    def release_through(self, ctx: bytes) -> list[ReadState]:
        """Confirm ``ctx`` and every read queued before it, in queue order."""
        if ctx not in self._pending:
            return []
        cut = self._queue.index(ctx) + 1
        released, self._queue = self._queue[:cut], self._queue[cut:]
        return [ReadState(self._pending.pop(c).index, c) for c in released]

    def last_ctx(self) -> bytes:
        return self._queue[-1] if self._queue else b""

    def drop_all(self) -> list[bytes]:
        """Forget every pending read (leadership lost); returns their contexts."""
        dropped, self._queue = self._queue, []
        self._pending.clear()
        return dropped
