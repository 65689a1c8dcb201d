"""Tunables of a running replica (the Ray shell around one Raft node). Units last in names."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from ..kv.limits import KVLimits


@dataclass(frozen=True, slots=True)
class ReplicaOptions:
    """Everything a replica actor needs besides its identity. Immutable, picklable.

    Timing: one Raft tick every ``tick_ms``; a follower campaigns after
    ``election_ticks`` to ``2 * election_ticks`` ticks without a leader (500 ms
    to 1 s by default), so a dead leader is replaced in about a second -- Raft's
    own deadline, far below Ray's 15-65 s node failure detection.

    Transport: at most ``max_calls_in_flight`` one-way ``deliver`` calls per peer
    (messages produced meanwhile coalesce into the next call); a call without an
    answer after ``call_deadline_s`` counts as lost and the peer as unreachable.

    Snapshots and compaction: once ``compact_every_entries`` entries are applied
    past the last snapshot, the replica records a snapshot at its applied index
    and drops its log up to ``compact_keep_entries`` entries behind it; a
    follower that falls behind the log gets the state streamed as Arrow chunks of
    ``snapshot_chunk_bytes`` at most ``snapshot_rate_bytes_per_s``.

    Quiescing: a leader whose group is fully caught up and idle for
    ``quiesce_after_ticks`` ticks tells its followers to stop ticking; all wake
    on traffic, and a quiet follower probes its leader every
    ``quiet_probe_ticks`` ticks (a suspicion wakes it).

    ``limits`` must be identical on every replica of a group (apply-time validation).

    ``commit_broadcast`` (Raft :class:`~raykv.raft.Config`): off by default here, so a lone
    write costs two Ray calls per follower instead of four; followers learn the commit index
    from the next append or heartbeat (one tick) and apply then.

    Disk: while the data directory's filesystem has fewer than ``disk_reserve_bytes`` free, the
    replica refuses writes and takes in no entries (:mod:`raykv.replica.diskguard`); the reserve
    must hold the largest write in progress (a client batch is at most 64 MiB by default).

    ``metrics``: export Ray metrics (:mod:`raykv.runtime.metrics`, ``docs/metrics.md``).
    """

    tick_ms: int = 50
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    max_calls_in_flight: int = 8
    call_deadline_s: float = 2.0
    max_backlog_msgs: int = 10_000
    request_timeout_s: float = 10.0
    compact_every_entries: int = 10_000
    compact_keep_entries: int = 1_000
    snapshot_chunk_bytes: int = 1 << 20
    snapshot_rate_bytes_per_s: int = 64 << 20
    quiesce_after_ticks: int = 20
    quiet_probe_ticks: int = 20
    session_ttl_s: float = 24 * 3600.0
    session_expiry_every_s: float = 60.0
    max_catch_up_ticks: int = 100
    limits: KVLimits = field(default_factory=KVLimits)
    metrics: bool = True
    commit_broadcast: bool = False
    disk_reserve_bytes: int = 128 << 20

    def __post_init__(self) -> None:
        for name in ("tick_ms", "election_ticks", "heartbeat_ticks", "max_calls_in_flight", "max_backlog_msgs",
                     "compact_every_entries", "snapshot_chunk_bytes", "snapshot_rate_bytes_per_s",
                     "quiesce_after_ticks", "quiet_probe_ticks", "max_catch_up_ticks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"replica option {name} must be an int >= 1, got {value!r}")
        for name in ("call_deadline_s", "request_timeout_s", "session_ttl_s", "session_expiry_every_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"replica option {name} must be > 0, got {getattr(self, name)!r}")
        for name in ("metrics", "commit_broadcast"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"replica option {name} must be a bool, got {getattr(self, name)!r}")
        if isinstance(self.disk_reserve_bytes, bool) or not isinstance(self.disk_reserve_bytes, int) \
                or self.disk_reserve_bytes < 0:
            raise ConfigError(f"replica option disk_reserve_bytes must be an int >= 0, got {self.disk_reserve_bytes!r}")
        if self.compact_keep_entries < 0:
            raise ConfigError("replica option compact_keep_entries must be >= 0")
        if self.max_catch_up_ticks < 2 * self.election_ticks:
            raise ConfigError("max_catch_up_ticks must be >= 2 * election_ticks (a resumed leader must notice)")

    @property
    def tick_s(self) -> float:
        return self.tick_ms / 1000.0
