"""Configuration of one Raft node. Every bound is explicit and validated."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True, slots=True)
class Config:
    """Tunables of a :class:`~raykv.raft.node.Node`. Units are last in the names.

    ``election_ticks`` -- a follower that hears nothing from a leader for a
    randomized timeout in ``[election_ticks, 2 * election_ticks)`` ticks campaigns.
    With check-quorum the leader checks every ``election_ticks`` ticks whether a
    quorum answered since the previous check and steps down if not, so a leader
    cut off from its quorum steps down within ``2 * election_ticks`` ticks (as
    in etcd). Lease reads do not rely on this bound: they date each peer's
    acknowledgement separately.

    ``lease_margin_ticks`` -- lease reads: a leader may answer a read from its
    own state without a quorum round while a quorum acknowledged a message it
    sent less than ``election_ticks - lease_margin_ticks`` ticks ago. This is
    safe under the assumption that, over one election timeout, no replica's tick
    rate runs faster than another's by more than ``lease_margin_ticks`` ticks
    (bounded clock drift) -- see :meth:`Node.read_index`.

    ``commit_broadcast`` -- when the leader's commit index advances, send every
    follower an append at once (empty if it has nothing new) so it learns the
    commit and applies without delay, as etcd does. False: followers learn the
    commit index from the next append or heartbeat (within ``heartbeat_ticks``
    ticks); a lone write then costs two messages per follower instead of four.
    Safety does not depend on it (the commit index a follower holds is only ever
    one the leader reached); only how soon followers apply.
    """

    id: int
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    lease_margin_ticks: int = 2
    max_msg_bytes: int = 1 << 20
    max_inflight_msgs: int = 256
    max_uncommitted_bytes: int = 64 << 20
    max_committed_bytes_per_ready: int = 64 << 20
    commit_broadcast: bool = True

    def validate(self) -> "Config":
        _require(self.id > 0, "id", "must be a positive node id")
        _require(self.heartbeat_ticks >= 1, "heartbeat_ticks", "must be >= 1")
        _require(
            self.election_ticks > self.heartbeat_ticks, "election_ticks", "must be greater than heartbeat_ticks"
        )
        _require(
            0 < self.lease_margin_ticks < self.election_ticks,
            "lease_margin_ticks",
            "must be in (0, election_ticks)",
        )
        for name in ("max_msg_bytes", "max_inflight_msgs", "max_uncommitted_bytes", "max_committed_bytes_per_ready"):
            _require(getattr(self, name) >= 1, name, "must be >= 1")
        return self

    @property
    def lease_ticks(self) -> int:
        return self.election_ticks - self.lease_margin_ticks


def _require(ok: bool, field: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"raft config {field} {why}")
