"""The replica that lost its data: the engine's inputs, answered by doing nothing.

A replica that existed but finds no data (:class:`~raykv.replica.startup.StartMode`
``AMNESIAC``) runs this instead of a :class:`~raykv.replica.engine.ReplicaEngine`: it
drops every Raft message unread (no vote, no acknowledgement: it cannot know which
terms it already took part in), refuses every request with
:class:`~raykv.errors.ReplicaDataLostError`, and reports ``mode: "amnesiac"`` in its
status so repair replaces it. It writes nothing, so it stays amnesiac across
restarts until it is removed from its group.
"""

from __future__ import annotations

from ..errors import ReplicaDataLostError
from .clock import Stamp


class AmnesiacReplica:
    """Same inputs as the engine (the shell needs no second code path); every request fails."""

    def __init__(self, node_id: int, shard: int, why: str, shell) -> None:
        self.id, self.shard, self.why, self.shell = node_id, shard, why, shell
        self.stopped = False
        self.counters: dict[str, int] = {}
        self._answers: list[tuple[int, object]] = []

    def _refuse(self, rid: int, *_args) -> None:
        self._answers.append((rid, ReplicaDataLostError(
            f"replica {self.id} of shard {self.shard} lost its data ({self.why}); it takes no part in the group "
            "until it is replaced")))

    submit = register_session = change_range = change_membership = transfer_leader = read = _refuse
    read_keys = scan = range_rows = range_stats = range_state = _refuse

    def deliver(self, messages, at: Stamp) -> None:
        """Raft traffic is dropped unread: an amnesiac voter must neither vote nor acknowledge."""

    def deliver_snapshot(self, message, at: Stamp) -> None:
        """Refused like any message; its payload goes."""
        self.shell.drop_snapshot(message.snapshot.data)

    def disk_space(self, free_bytes: int, at: Stamp) -> None:
        pass

    def on_time(self, at: Stamp) -> None:
        pass

    unreachable = snapshot_sent = probe_failed = lambda self, *args: None

    def sleep_s(self, at: Stamp) -> float:
        return 1.0

    def process(self, at: Stamp) -> list[tuple[int, object]]:
        answers, self._answers = self._answers, []
        return answers

    def stop(self, at: Stamp) -> list[tuple[int, object]]:
        self.stopped = True
        return self.process(at)

    def gauges(self) -> dict[str, float]:
        return {"is_leader": 0.0, "term": 0, "commit_index": 0, "applied_index": 0, "apply_lag": 0}

    def status(self) -> dict:
        return {"id": self.id, "role": "amnesiac", "mode": "amnesiac", "why": self.why, "term": 0, "vote": 0,
                "leader": 0, "commit": 0, "applied": 0, "first_index": 0, "last_index": 0,
                "conf": {"voters": [], "learners": [], "joint": False}, "quiesced": False,
                "pending_writes": 0, "pending_reads": 0, "data_bytes": 0, "range": None, "snapshot_index": 0}
