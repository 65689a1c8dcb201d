"""The kv state machine's commands and results: closed unions of frozen dataclasses.

Commands are what clients (and the host's maintenance timers) propose to a
shard's Raft log; results are what :meth:`KVStateMachine.apply
<raykv.kv.machine.KVStateMachine.apply>` returns for each applied entry. Both
travel as bytes (see :mod:`raykv.kv.codec`); these classes are the decoded form.

Keys and values are raw ``bytes``; the client layer owns turning ``str`` keys
and picklable values into bytes. Integers (session ids, sequence numbers,
millisecond timestamps) are unsigned 64-bit. The dataclasses do not check
their fields: :func:`raykv.kv.limits.validate_command` does, once, where a
command enters (encoding on the client, decoding on every replica).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import (
    DefiniteError,
    DriverSupersededError,
    IndeterminateError,
    InvalidRequestError,
    RayKVError,
    SessionExpiredError,
    ShardMapChangedError,
)
from .ranges import RangeAction


def show_bytes(value: bytes, limit: int = 24) -> str:
    """A short, stable rendering of a key for ``describe()`` lines."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}...[{len(value)}B]"


# -- data operations -----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Put:
    """Set ``key`` to ``value`` -> :class:`Ok`."""

    key: bytes
    value: bytes

    def describe(self) -> str:
        return f"put {show_bytes(self.key)} [{len(self.value)}B]"


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove ``key`` -> ``Flag(existed)``."""

    key: bytes

    def describe(self) -> str:
        return f"del {show_bytes(self.key)}"


@dataclass(frozen=True, slots=True)
class Cas:
    """Compare-and-set -> ``Flag(swapped)``.

    Sets ``key`` to ``new`` iff its current value equals ``expected`` byte for
    byte; ``expected=None`` means "the key must be absent" (``b""`` means
    "present with an empty value").
    """

    key: bytes
    expected: bytes | None
    new: bytes

    def describe(self) -> str:
        old = "absent" if self.expected is None else f"[{len(self.expected)}B]"
        return f"cas {show_bytes(self.key)} {old}->[{len(self.new)}B]"


@dataclass(frozen=True, slots=True)
class Batch:
    """Puts and deletes applied atomically, in order (a later op on a key wins) -> :class:`Ok`.

    The whole batch is validated before any op is applied, so it is all-or-nothing.
    """

    ops: tuple[Put | Delete, ...]

    def describe(self) -> str:
        size = sum(len(op.key) + len(op.value) if isinstance(op, Put) else len(op.key) for op in self.ops)
        return f"batch[{len(self.ops)} ops, {size}B]"


Op = Put | Delete | Cas | Batch
"""A data operation: what a :class:`Request` carries, or a bare command."""


# -- sessions ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RegisterSession:
    """Open an exactly-once client session -> ``SessionId(log index of this entry)``."""

    ts_ms: int

    def describe(self) -> str:
        return f"register-session ts={self.ts_ms}"


@dataclass(frozen=True, slots=True)
class Request:
    """A client write under session ``session`` (Raft thesis §6.3).

    ``seq`` numbers the client's requests (``>= 1``, each used for one logical
    operation, retries reuse it). ``acked_seq`` (``< seq``) tells the machine
    the client has received the answers of *every* request with a seq
    ``<= acked_seq``, so their cached results can be dropped. ``ts_ms`` is the
    proposer's wall clock, used only for session expiry (it is in the entry,
    so every replica sees the same value).
    """

    session: int
    seq: int
    acked_seq: int
    ts_ms: int
    op: Op

    def describe(self) -> str:
        head = f"req s{self.session}#{self.seq} ack={self.acked_seq} ts={self.ts_ms}"
        return f"{head}: {self.op.describe()}"


@dataclass(frozen=True, slots=True)
class ExpireSessions:
    """Delete every session last active strictly before ``cutoff_ms`` -> :class:`Ok`."""

    cutoff_ms: int

    def describe(self) -> str:
        return f"expire-sessions <{self.cutoff_ms}"


@dataclass(frozen=True, slots=True)
class RangeChange:
    """Resharding: change which keys this group serves (see :mod:`raykv.kv.ranges`) -> :class:`Ok`
    or ``Failed(RANGE_CONFLICT)``. ``rows`` (``INGEST_ROWS`` only) are ``(key, value)`` pairs in ``[lo, hi)``.

    ``epoch``: the placement driver's epoch (its lease in the meta group); a group refuses a
    change from an epoch older than one it has seen. ``gen``: the attempt of an ingest; rows,
    deletes and the end of an ingest are taken only from the attempt that began it last."""

    action: RangeAction
    lo: bytes
    hi: bytes | None
    rows: tuple[tuple[bytes, bytes], ...] = ()
    epoch: int = 0
    gen: int = 0

    def describe(self) -> str:
        hi = "+inf" if self.hi is None else show_bytes(self.hi)
        rows = f" {len(self.rows)} rows" if self.rows else ""
        return f"range {self.action.name.lower()} [{show_bytes(self.lo)}, {hi}){rows} epoch={self.epoch} gen={self.gen}"


Command = Put | Delete | Cas | Batch | RegisterSession | Request | ExpireSessions | RangeChange
"""Everything a kv log entry can carry."""


# -- results -------------------------------------------------------------------
class ErrorCode(enum.IntEnum):
    """Why the machine refused a command. Values are part of the wire format."""

    SESSION_EXPIRED = 1
    """The session is unknown: expired, evicted from a full table, or never registered."""
    STALE_REQUEST = 2
    """``seq <= acked_seq`` of the session: the client already received this answer."""
    TOO_MANY_PENDING = 3
    """The session already caches ``max_pending_per_session`` results; nothing applied."""
    BAD_COMMAND = 4
    """The entry is not a valid command (malformed bytes or a broken limit); nothing applied."""
    WRONG_SHARD = 5
    """A key of the request is not served by this group (moved or moving away); nothing applied.
    Cached under the request's seq like any answer, so every retry of that seq gets it too."""
    RANGE_CONFLICT = 6
    """A :class:`RangeChange` does not fit the group's range state; nothing changed."""
    STALE_DRIVER = 7
    """A placement change from a driver epoch older than one this group has seen; nothing changed."""


@dataclass(frozen=True, slots=True)
class Ok:
    def describe(self) -> str:
        return "ok"


@dataclass(frozen=True, slots=True)
class Flag:
    """``Delete`` -> the key existed; ``Cas`` -> the swap happened."""

    value: bool

    def describe(self) -> str:
        return f"flag({str(self.value).lower()})"


@dataclass(frozen=True, slots=True)
class SessionId:
    id: int

    def describe(self) -> str:
        return f"session({self.id})"


@dataclass(frozen=True, slots=True)
class Failed:
    """The command had no effect on user data (see :class:`ErrorCode`)."""

    code: ErrorCode
    detail: str

    def describe(self) -> str:
        return f"failed({self.code.name}: {self.detail})"

    def to_error(self) -> RayKVError:
        """The client-facing exception for this failure.

        ``STALE_REQUEST`` is indeterminate: the request was applied earlier but
        its answer is no longer known. ``SESSION_EXPIRED`` is definite only for
        a first attempt (see :class:`~raykv.errors.SessionExpiredError`).
        """
        message = f"{self.code.name}: {self.detail}"
        if self.code is ErrorCode.SESSION_EXPIRED:
            return SessionExpiredError(message)
        if self.code is ErrorCode.STALE_REQUEST:
            return IndeterminateError(message)
        if self.code is ErrorCode.BAD_COMMAND:
            return InvalidRequestError(message)
        if self.code is ErrorCode.WRONG_SHARD:
            return ShardMapChangedError(message)
        if self.code is ErrorCode.STALE_DRIVER:
            return DriverSupersededError(message)
        return DefiniteError(message)


Result = Ok | Flag | SessionId | Failed
"""Everything :meth:`KVStateMachine.apply` can answer."""
