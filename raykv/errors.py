"""The one exception hierarchy of raykv (stdlib only, importable from pure layers).

Every error raykv raises or answers is a :class:`RayKVError`, and every one is either

* :class:`DefiniteError` -- the operation certainly did not take effect; it is
  safe to retry or to report failure; or
* :class:`IndeterminateError` -- the operation may or may not have taken effect
  (for example a write whose leader crashed after proposing it). Writes carry
  ``(session, seq)`` so a retry applies at most once: read back to find out.

The tree::

    RayKVError
    +-- DefiniteError
    |   +-- RaftError                 the pure Raft core refused (its state is unchanged)
    |   |   +-- NotLeaderError, ProposalDroppedError, ConfChangeError,
    |   |       LogUnavailableError (+ CompactedError), SnapshotTemporarilyUnavailableError
    |   +-- InvalidRequestError       malformed input (also a ValueError)
    |   |   +-- KeyTooLargeError, ValueTooLargeError, ConfigError, StoreExistsError
    |   +-- SessionExpiredError       (indeterminate for a client that was retrying)
    |   +-- UnavailableError, StoreNotFoundError, ShutdownError, ReplicaDataLostError,
    |   |   ShardMapChangedError, BackupError, BulkLoadVerificationError
    |   +-- ShardMapError             a placement record (shard map, repair book) is malformed
    |   +-- PlacementError            a control-plane step was refused or could not proceed now
    |   |   +-- DriverSupersededError     this placement driver lost its lease to another
    |   +-- DiskFullError             a replica's disk is below its reserve: the write was refused
    |   +-- StorageError              a replica's files: nothing was opened or written
    |   |   +-- StoreIdentityError, ReplicaLockedError, FormatVersionError,
    |   |       CorruptStoreError, SnapshotError
    |   +-- OptionalDependencyError   a feature needs an optional extra (also an ImportError)
    +-- IndeterminateError
        +-- OperationTimeoutError, LeadershipLostError, BatchPartiallyAppliedError,
            RestoreIncompleteError
"""

from __future__ import annotations


class RayKVError(Exception):
    """Base class of every raykv error."""


class DefiniteError(RayKVError):
    """The operation did not take effect."""


class IndeterminateError(RayKVError):
    """The operation may or may not have taken effect."""


class RaftError(DefiniteError):
    """Raised by the pure Raft core; the core's state is unchanged."""


class NotLeaderError(RaftError):
    """The request needs the leader and this node is not it.

    ``leader_id`` is the leader this node currently believes in, or ``None``.
    """

    def __init__(self, node_id: int, leader_id: int | None, term: int) -> None:
        super().__init__(f"node {node_id} is not the leader (term {term}, leader {leader_id})")
        self.node_id = node_id
        self.leader_id = leader_id
        self.term = term

    def __reduce__(self):
        return (type(self), (self.node_id, self.leader_id, self.term))


class ProposalDroppedError(RaftError):
    """The leader refused a proposal (transfer in flight, too large, or over a bound)."""


class ConfChangeError(RaftError):
    """A membership change is invalid or another one is still pending."""


class LogUnavailableError(RaftError):
    """A log index is outside what the log holds (compacted or beyond the last index)."""


class CompactedError(LogUnavailableError):
    """The requested log index was compacted into a snapshot."""


class SnapshotTemporarilyUnavailableError(RaftError):
    """The host cannot produce a snapshot right now; the core retries later."""


# -- data and requests ----------------------------------------------------------
class InvalidRequestError(DefiniteError, ValueError):
    """A request is malformed: wrong type, empty where not allowed, or over a limit."""


class ConfigError(InvalidRequestError):
    """A configuration value is invalid (names the field and the reason); nothing was configured."""


class KeyTooLargeError(InvalidRequestError):
    """A key is longer than the configured limit (names the size and the limit)."""


class ValueTooLargeError(InvalidRequestError):
    """A value or batch is larger than the configured limit (names the size and the limit)."""


class SessionExpiredError(DefiniteError):
    """The client session was expired by the replicated state machine.

    Definite for a first attempt (the request was not applied); a client that
    is *retrying* must treat it as indeterminate, since an earlier attempt may
    have applied before the session expired.
    """


# -- the running store ------------------------------------------------------------
class UnavailableError(DefiniteError):
    """No replica could take the request before its deadline (no leader, all unreachable).

    Raised only for requests that were never handed to a leader, so nothing happened.
    """


class OperationTimeoutError(IndeterminateError):
    """A write was handed to a leader but no outcome arrived before the deadline: it may apply."""


class LeadershipLostError(IndeterminateError):
    """The leader that accepted a write lost leadership before applying it: it may still commit."""


class StoreNotFoundError(DefiniteError):
    """No store of that name exists on this Ray cluster (nor in the data directory given)."""


class StoreExistsError(InvalidRequestError):
    """A start asked to create a store that already exists (some host holds a trace of it):
    nothing was created; start it without ``create`` to reopen it."""


class ShardMapError(DefiniteError):
    """A placement record -- the shard map (not contiguous, overlapping, bad placement), the repair
    book, a resharding record -- is malformed or inconsistent: it was not used."""


class PlacementError(DefiniteError):
    """A control-plane step (a resharding phase, a repair step, a compare-and-set of a meta record)
    was refused or could not proceed now; it did not happen, and its driver retries or reports it."""


class ReplicaDataLostError(DefiniteError):
    """The replica asked lost its data (a wiped directory, a replaced disk) after it had taken
    part in its group: it refuses everything until repair replaces it. Try another replica."""


class ShutdownError(DefiniteError):
    """The replica or client is shutting down and refused the request."""


class DriverSupersededError(PlacementError):
    """This placement driver lost its lease (another router's driver claimed a newer epoch): it
    stops and changes nothing more; its successor resumes what it was doing."""


# -- storage ----------------------------------------------------------------------
class DiskFullError(DefiniteError):
    """The replica's disk has less free space than its reserve: it refused the write before
    appending anything (see :mod:`raykv.replica.diskguard`). Writes work again once space returns."""


class StorageError(DefiniteError):
    """Base class of replica-store problems; ``path`` names the file or directory. Nothing was
    opened or written by the call that raised it."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(f"{message} ({path})")
        self.message = message
        self.path = path

    def __reduce__(self):
        return (type(self), (self.message, self.path))


class StoreIdentityError(StorageError):
    """A data directory belongs to another store, shard or replica: nothing was touched."""


class ReplicaLockedError(StorageError):
    """Another process holds the replica's directory lock (an older incarnation still runs):
    nothing was opened or written."""


class FormatVersionError(StorageError):
    """The data was written by a newer on-disk format than this raykv understands."""


class CorruptStoreError(StorageError):
    """A file is truncated, corrupted or inconsistent; it was not modified."""


class SnapshotError(StorageError):
    """A snapshot stream is malformed, truncated or fails its checksum; nothing was installed."""


class BackupError(DefiniteError):
    """A backup could not be taken, or a backup directory is incomplete, corrupted or unreadable
    (missing manifest, a file failing its checksum or row count); a restore that raises it
    before loading created nothing."""


class BatchPartiallyAppliedError(IndeterminateError):
    """Some parts of a multi-shard batch applied and others failed (or may not have applied).

    ``applied``: shard ids whose every part applied; ``errors``: shard id -> the
    error of (the first failed part of) that shard.
    """

    def __init__(self, what: str, applied: list[int], errors: dict[int, BaseException]) -> None:
        shown = "; ".join(f"shard {s}: {type(e).__name__}: {e}" for s, e in sorted(errors.items()))
        super().__init__(f"{what}: applied on shards {sorted(applied)}, failed on shards "
                         f"{sorted(errors)} ({shown})")
        self.applied = sorted(applied)
        self.errors = dict(errors)

    def __reduce__(self):
        return (_rebuild_batch_error, (str(self), self.applied, self.errors))


def _rebuild_batch_error(message: str, applied: list[int], errors: dict) -> "BatchPartiallyAppliedError":
    error = BatchPartiallyAppliedError.__new__(BatchPartiallyAppliedError)
    RayKVError.__init__(error, message)
    error.applied, error.errors = applied, errors
    return error


class RestoreIncompleteError(IndeterminateError):
    """Loading a restored store failed part-way: the new store exists and holds part of the data."""


class BulkLoadVerificationError(DefiniteError):
    """A bulk load finished but rows read back differ from the input (names the first keys)."""


class ShardMapChangedError(DefiniteError):
    """The request reached a shard that does not serve (all of) its keys: they moved, or are
    moving, to another shard (resharding). Definite: nothing was applied. The store client
    re-reads the shard map and retries on its own; callers of a one-group client see it. Ray Data
    reads raise it too when the map changed between planning a read and running one of its tasks."""


class OptionalDependencyError(DefiniteError, ImportError):
    """A feature needs a package of an optional extra that is not installed (names the extra)."""
