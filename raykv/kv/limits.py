"""Size and count bounds of the kv layer, and the one validator of commands.

:func:`validate_command` is called where a command enters: by
:func:`~raykv.kv.codec.encode_command` on the proposing side (so a client gets
a precise error before anything is proposed) and by the state machine after
decoding each entry (so no replica ever hands a backend an empty or oversized
key, whatever a buggy or hostile proposer put in the log).

Because apply-time validation decides an entry's outcome, **every replica of a
group must run with identical** :class:`KVLimits`; change them only with all
replicas stopped, or through a replicated command (not provided yet).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import ConfigError, InvalidRequestError, KeyTooLargeError, ValueTooLargeError
from .commands import Batch, Cas, Command, Delete, ExpireSessions, Put, RangeChange, RegisterSession, Request
from .ranges import RESERVED_PREFIX, RangeAction, below
from .wire import U64_LIMIT

LMDB_MAX_KEY_BYTES = 511
"""LMDB's compile-time key size limit (``mdb_env_get_maxkeysize`` of a default build)."""


@dataclass(frozen=True, slots=True)
class KVLimits:
    """Bounds on requests and on the session table. Units are last in the names.

    ``max_key_bytes`` (511) -- LMDB, the replica store, cannot hold longer keys
    (its default build's hard limit, :data:`LMDB_MAX_KEY_BYTES`); keys must
    also be non-empty, which LMDB requires too.
    ``max_value_bytes`` (8 MiB) -- one value, and each of a Cas's two values.
    ``max_batch_ops`` (100 000) / ``max_batch_bytes`` (64 MiB) -- one
    :class:`~raykv.kv.commands.Batch`; its bytes are the sum of
    ``len(key) + len(value)`` over its puts plus ``len(key)`` over its deletes.
    ``max_sessions`` (10 000) -- registering one more evicts the least recently
    active session.
    ``max_pending_per_session`` (4 096) -- cached results a session keeps for
    requests the client has not acknowledged yet; a request beyond this bound
    fails with ``TOO_MANY_PENDING``.
    """

    max_key_bytes: int = LMDB_MAX_KEY_BYTES
    max_value_bytes: int = 8 * 1024 * 1024
    max_batch_ops: int = 100_000
    max_batch_bytes: int = 64 * 1024 * 1024
    max_sessions: int = 10_000
    max_pending_per_session: int = 4_096

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"kv limit {item.name} must be an int >= 1, got {value!r}")


def validate_key(key: object, limits: KVLimits) -> None:
    """``key`` must be non-empty ``bytes`` of at most ``limits.max_key_bytes``."""
    if not isinstance(key, bytes):
        raise InvalidRequestError(f"key must be bytes, got {type(key).__name__}")
    if not key:
        raise InvalidRequestError("key must not be empty")
    if len(key) > limits.max_key_bytes:
        raise KeyTooLargeError(
            f"key of {len(key)} bytes exceeds max_key_bytes={limits.max_key_bytes}"
        )


def validate_value(value: object, limits: KVLimits) -> None:
    """``value`` must be ``bytes`` (empty allowed) of at most ``limits.max_value_bytes``."""
    if not isinstance(value, bytes):
        raise InvalidRequestError(f"value must be bytes, got {type(value).__name__}")
    if len(value) > limits.max_value_bytes:
        raise ValueTooLargeError(
            f"value of {len(value)} bytes exceeds max_value_bytes={limits.max_value_bytes}"
        )


def validate_uint(value: object, name: str) -> None:
    """``value`` must be an ``int`` (not a bool) in ``[0, 2**64)``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value < U64_LIMIT:
        raise InvalidRequestError(f"{name} must be in [0, 2**64), got {value}")


def validate_command(cmd: object, limits: KVLimits) -> None:
    """Raise :class:`InvalidRequestError` (or a size subclass) unless ``cmd`` is a valid command."""
    if isinstance(cmd, (Put, Delete, Cas, Batch)):
        validate_op(cmd, limits)
    elif isinstance(cmd, RegisterSession):
        validate_uint(cmd.ts_ms, "ts_ms")
    elif isinstance(cmd, ExpireSessions):
        validate_uint(cmd.cutoff_ms, "cutoff_ms")
    elif isinstance(cmd, Request):
        _validate_request(cmd, limits)
    elif isinstance(cmd, RangeChange):
        _validate_range_change(cmd, limits)
    else:
        raise InvalidRequestError(f"not a kv command: {type(cmd).__name__}")


_ROW_ACTIONS = (RangeAction.INGEST_ROWS, RangeAction.INGEST_DELETE)


def _validate_range_change(cmd: RangeChange, limits: KVLimits) -> None:
    """Bounds are bytes (``hi`` may be None) with ``lo <= hi`` (``lo < hi`` unless ``SET``); rows only
    for ``INGEST_ROWS`` / ``INGEST_DELETE``, each a valid user key inside ``[lo, hi)`` and value (empty
    for a delete), within the batch limits."""
    if not isinstance(cmd.action, RangeAction):
        raise InvalidRequestError(f"range action must be a RangeAction, got {cmd.action!r}")
    validate_uint(cmd.epoch, "epoch")
    validate_uint(cmd.gen, "gen")
    if not isinstance(cmd.lo, bytes) or not (cmd.hi is None or isinstance(cmd.hi, bytes)):
        raise InvalidRequestError("range bounds must be bytes (hi may be None)")
    if not (below(cmd.lo, cmd.hi) or (cmd.action is RangeAction.SET and cmd.lo == cmd.hi)):
        raise InvalidRequestError(f"range [{cmd.lo!r}, {cmd.hi!r}) is empty or reversed")
    if not isinstance(cmd.rows, tuple) or (cmd.rows and cmd.action not in _ROW_ACTIONS):
        raise InvalidRequestError("only INGEST_ROWS and INGEST_DELETE carry rows, as a tuple")
    if len(cmd.rows) > limits.max_batch_ops:
        raise InvalidRequestError(f"{len(cmd.rows)} rows exceed max_batch_ops={limits.max_batch_ops}")
    total = 0
    for row in cmd.rows:
        if not (isinstance(row, tuple) and len(row) == 2):
            raise InvalidRequestError("an ingest row must be a (key, value) pair")
        key, value = row
        validate_key(key, limits)
        validate_value(value, limits)
        if cmd.action is RangeAction.INGEST_DELETE and value != b"":
            raise InvalidRequestError("an INGEST_DELETE row carries only a key (its value must be empty)")
        if key.startswith(RESERVED_PREFIX) or not (cmd.lo <= key and below(key, cmd.hi)):
            raise InvalidRequestError(f"ingest row {key!r} is outside [{cmd.lo!r}, {cmd.hi!r})")
        total += len(key) + len(value)
    if total > limits.max_batch_bytes:
        raise ValueTooLargeError(f"ingest chunk of {total} bytes exceeds max_batch_bytes={limits.max_batch_bytes}")


def validate_op(op: object, limits: KVLimits) -> None:
    """Validate a data operation (Put, Delete, Cas or Batch). Keys starting with ``0x00`` are
    raykv's own rows (a group's range state): no data operation may touch them."""
    if isinstance(op, Put):
        _validate_data_key(op.key, limits)
        validate_value(op.value, limits)
    elif isinstance(op, Delete):
        _validate_data_key(op.key, limits)
    elif isinstance(op, Cas):
        _validate_data_key(op.key, limits)
        if op.expected is not None:
            validate_value(op.expected, limits)
        if op.new is None:
            raise InvalidRequestError("cas needs a new value (use Delete to remove a key)")
        validate_value(op.new, limits)
    elif isinstance(op, Batch):
        _validate_batch(op, limits)
    else:
        raise InvalidRequestError(f"not a kv operation: {type(op).__name__}")


def _validate_data_key(key: object, limits: KVLimits) -> None:
    validate_key(key, limits)
    if key.startswith(RESERVED_PREFIX):
        raise InvalidRequestError(f"key {key[:40]!r} is reserved (keys starting with 0x00 are raykv's own rows)")


def _validate_batch(batch: Batch, limits: KVLimits) -> None:
    """Check the op count, then every op, then the total bytes."""
    if not isinstance(batch.ops, tuple):
        raise InvalidRequestError(f"batch ops must be a tuple, got {type(batch.ops).__name__}")
    if not batch.ops:
        raise InvalidRequestError("batch must not be empty")
    if len(batch.ops) > limits.max_batch_ops:
        raise InvalidRequestError(
            f"batch of {len(batch.ops)} ops exceeds max_batch_ops={limits.max_batch_ops}"
        )
    total = 0
    for i, op in enumerate(batch.ops):
        if not isinstance(op, (Put, Delete)):
            raise InvalidRequestError(f"batch op {i} must be Put or Delete, got {type(op).__name__}")
        validate_op(op, limits)
        total += len(op.key) + (len(op.value) if isinstance(op, Put) else 0)
    if total > limits.max_batch_bytes:
        raise ValueTooLargeError(
            f"batch of {total} bytes exceeds max_batch_bytes={limits.max_batch_bytes}"
        )


def _validate_request(req: Request, limits: KVLimits) -> None:
    validate_request_header(req.session, req.seq, req.acked_seq, req.ts_ms)
    validate_op(req.op, limits)


def validate_request_header(session: object, seq: object, acked_seq: object, ts_ms: object) -> None:
    """The numbers of a :class:`Request`: ints in ``[0, 2**64)`` with ``acked_seq < seq``, ``seq >= 1``."""
    for name, value in (("session", session), ("seq", seq), ("acked_seq", acked_seq), ("ts_ms", ts_ms)):
        validate_uint(value, name)
    if seq < 1:
        raise InvalidRequestError("request seq must be >= 1")
    if acked_seq >= seq:
        raise InvalidRequestError(f"acked_seq {acked_seq} must be below seq {seq}")
