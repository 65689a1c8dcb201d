"""Versioned, compact binary codec of kv commands and results (no pickling).

Layout (see :mod:`raykv.kv.wire` for varints and byte strings)::

    command := FORMAT_VERSION tag body        result := FORMAT_VERSION tag body
    PUT      0x01  key value                   OK          0x81  (empty)
    DELETE   0x02  key                         FLAG        0x82  flag
    CAS      0x03  key flag(has_expected) [expected] new
    BATCH    0x04  count (op_tag op_body)*      SESSION_ID  0x83  id
    REGISTER 0x05  ts_ms                       FAILED      0x84  code detail(utf-8)
    REQUEST  0x06  session seq acked_seq ts_ms op_tag op_body
    EXPIRE   0x07  cutoff_ms

``op_tag`` is PUT or DELETE inside a batch and PUT, DELETE, CAS or BATCH
inside a request. Command and result tags are disjoint, so one is never
mistaken for the other. The format is part of the on-disk log and of cached
session results: change it only by bumping ``FORMAT_VERSION`` and keeping a
decoder for the old one.

Contracts: ``decode_command(encode_command(c, limits)) == c`` and
``decode_result(encode_result(r)) == r``; decoding is canonical, so a value
that decodes re-encodes to the same bytes. Decoding raises only ``ValueError``
and checks structure, not limits: callers that trust nothing (the state
machine) also run :func:`~raykv.kv.limits.validate_command`.
"""

from __future__ import annotations

from .commands import (
    Batch,
    Cas,
    Command,
    Delete,
    ErrorCode,
    ExpireSessions,
    Failed,
    Flag,
    Ok,
    Op,
    Put,
    RangeChange,
    RegisterSession,
    Request,
    Result,
    SessionId,
)
from .ranges import RangeAction
from ..errors import InvalidRequestError
from .limits import KVLimits, validate_command, validate_key, validate_request_header, validate_value
from .wire import Reader, Writer, assert_never

FORMAT_VERSION = 1

TAG_PUT, TAG_DELETE, TAG_CAS, TAG_BATCH = 0x01, 0x02, 0x03, 0x04
TAG_REGISTER, TAG_REQUEST, TAG_EXPIRE, TAG_RANGE, TAG_RANGE_FENCED = 0x05, 0x06, 0x07, 0x08, 0x09
"""``TAG_RANGE``: a range change of a log written before placement drivers had epochs (read only)."""
TAG_OK, TAG_FLAG, TAG_SESSION_ID, TAG_FAILED = 0x81, 0x82, 0x83, 0x84

_BATCH_OP_TAGS = frozenset({TAG_PUT, TAG_DELETE})
_REQUEST_OP_TAGS = frozenset({TAG_PUT, TAG_DELETE, TAG_CAS, TAG_BATCH})
_COMMAND_TAGS = _REQUEST_OP_TAGS | {TAG_REGISTER, TAG_REQUEST, TAG_EXPIRE, TAG_RANGE, TAG_RANGE_FENCED}

__all__ = [
    "FORMAT_VERSION", "Batch", "Cas", "Command", "Delete", "ErrorCode", "ExpireSessions", "Failed",
    "Flag", "KVLimits", "Ok", "Op", "Put", "RegisterSession", "Request", "Result", "SessionId",
    "decode_command", "decode_result", "encode_command", "encode_op", "encode_request", "encode_result",
    "validate_command",
    "validate_key", "validate_value",
]


# -- commands ------------------------------------------------------------------
def encode_command(cmd: Command, limits: KVLimits) -> bytes:
    """Validate ``cmd`` against ``limits`` and encode it.

    Raises :class:`~raykv.errors.KeyTooLargeError` /
    :class:`~raykv.errors.ValueTooLargeError` (naming the size and the limit)
    or :class:`~raykv.errors.InvalidRequestError` for anything else invalid.
    """
    validate_command(cmd, limits)
    writer = Writer(FORMAT_VERSION, _command_tag(cmd))
    _write_command(writer, cmd)
    return writer.getvalue()


def encode_op(op: Op) -> bytes:
    """``op`` (Put, Delete, Cas or Batch) encoded as a command *without* validating it, for a
    client that validated it already (:func:`~raykv.kv.limits.validate_op`). Replicas validate
    every command again when they apply it."""
    if not isinstance(op, (Put, Delete, Cas, Batch)):
        raise InvalidRequestError(f"not a kv operation: {type(op).__name__}")
    writer = Writer(FORMAT_VERSION, _command_tag(op))
    _write_command(writer, op)
    return writer.getvalue()


def encode_request(session: int, seq: int, acked_seq: int, ts_ms: int, op: bytes, limits: KVLimits) -> bytes:
    """The ``Request`` command of an op a client sent encoded (:func:`encode_op`), without decoding it.

    The numbers must be ints in ``0..2**64-1`` with ``acked_seq < seq``; ``op`` must be bytes that start with this format's
    version and the tag of an op a request may carry, no longer than a batch may be
    (``max_batch_bytes`` plus 32 bytes of framing per ``max_batch_ops``). Anything else raises
    :class:`~raykv.errors.InvalidRequestError`. The op's body is checked when the entry is applied:
    malformed or over-limit bytes then give ``Failed(BAD_COMMAND)`` and change nothing.
    """
    validate_request_header(session, seq, acked_seq, ts_ms)
    if not isinstance(op, bytes) or len(op) < 2 or op[0] != FORMAT_VERSION or op[1] not in _REQUEST_OP_TAGS:
        raise InvalidRequestError("a request's op must be an operation encoded by raykv.kv.codec.encode_op")
    if len(op) > limits.max_batch_bytes + 32 * limits.max_batch_ops:
        raise InvalidRequestError(f"an encoded op of {len(op)} bytes exceeds the batch limits")
    writer = Writer(FORMAT_VERSION, TAG_REQUEST)
    for number in (session, seq, acked_seq, ts_ms):
        writer.uint(number)
    return writer.getvalue() + op[1:]


def decode_command(data: bytes) -> Command:
    """Inverse of :func:`encode_command`; ``ValueError`` on any malformed input."""
    reader = Reader(data, "kv command")
    tag = reader.header(FORMAT_VERSION)
    if tag not in _COMMAND_TAGS:
        reader.fail(f"unknown command tag 0x{tag:02x}")
    cmd = _read_command(reader, tag)
    reader.finish()
    return cmd


def _command_tag(cmd: Command) -> int:
    match cmd:
        case Put():
            return TAG_PUT
        case Delete():
            return TAG_DELETE
        case Cas():
            return TAG_CAS
        case Batch():
            return TAG_BATCH
        case RegisterSession():
            return TAG_REGISTER
        case Request():
            return TAG_REQUEST
        case ExpireSessions():
            return TAG_EXPIRE
        case RangeChange():
            return TAG_RANGE_FENCED
        case _:
            assert_never(cmd)


def _write_command(w: Writer, cmd: Command) -> None:
    """The body of ``cmd`` (its tag is already written)."""
    match cmd:
        case Put(key, value):
            w.blob(key)
            w.blob(value)
        case Delete(key):
            w.blob(key)
        case Cas(key, expected, new):
            w.blob(key)
            w.flag(expected is not None)
            if expected is not None:
                w.blob(expected)
            w.blob(new)
        case Batch(ops):
            w.uint(len(ops))
            for op in ops:
                _write_nested(w, op)
        case RegisterSession(ts_ms):
            w.uint(ts_ms)
        case Request(session, seq, acked_seq, ts_ms, op):
            for number in (session, seq, acked_seq, ts_ms):
                w.uint(number)
            _write_nested(w, op)
        case ExpireSessions(cutoff_ms):
            w.uint(cutoff_ms)
        case RangeChange(action, lo, hi, rows, epoch, gen):
            w.byte(int(action))
            w.blob(lo)
            w.flag(hi is not None)
            if hi is not None:
                w.blob(hi)
            w.uint(len(rows))
            for key, value in rows:
                w.blob(key)
                w.blob(value)
            w.uint(epoch)
            w.uint(gen)
        case _:
            assert_never(cmd)


def _write_nested(w: Writer, op: Op) -> None:
    w.byte(_command_tag(op))
    _write_command(w, op)


def _read_command(r: Reader, tag: int) -> Command:
    """The body of a command whose (known) tag was just read."""
    if tag == TAG_PUT:
        return Put(r.blob("key"), r.blob("value"))
    if tag == TAG_DELETE:
        return Delete(r.blob("key"))
    if tag == TAG_CAS:
        key = r.blob("key")
        expected = r.blob("expected") if r.flag("has_expected") else None
        return Cas(key, expected, r.blob("new"))
    if tag == TAG_BATCH:
        count = r.uint("op count")
        return Batch(tuple(_read_nested(r, _BATCH_OP_TAGS, "batch op") for _ in range(count)))
    if tag == TAG_REGISTER:
        return RegisterSession(r.uint("ts_ms"))
    if tag == TAG_REQUEST:
        session, seq, acked, ts_ms = (r.uint(name) for name in ("session", "seq", "acked_seq", "ts_ms"))
        return Request(session, seq, acked, ts_ms, _read_nested(r, _REQUEST_OP_TAGS, "request op"))
    if tag == TAG_EXPIRE:
        return ExpireSessions(r.uint("cutoff_ms"))
    if tag in (TAG_RANGE, TAG_RANGE_FENCED):
        return _read_range_change(r, fenced=tag == TAG_RANGE_FENCED)
    raise AssertionError(f"unchecked command tag {tag}")


def _read_range_change(r: Reader, fenced: bool) -> RangeChange:
    code = r.byte("range action")
    if code not in RangeAction._value2member_map_:
        r.fail(f"unknown range action {code}")
    lo = r.blob("lo")
    hi = r.blob("hi") if r.flag("has_hi") else None
    count = r.uint("row count")
    rows = []
    for _ in range(count):  # each row is >= 2 bytes: a huge count fails on truncation
        rows.append((r.blob("key"), r.blob("value")))
    epoch, gen = (r.uint("epoch"), r.uint("gen")) if fenced else (0, 0)
    return RangeChange(RangeAction(code), lo, hi, tuple(rows), epoch, gen)


def _read_nested(r: Reader, allowed: frozenset[int], what: str) -> Op:
    """A tagged op inside a batch or request. Each op is >= 2 bytes, so a huge
    count fails on truncation after at most ``len(data)`` iterations."""
    tag = r.byte(f"{what} tag")
    if tag not in allowed:
        r.fail(f"tag 0x{tag:02x} is not allowed as a {what}")
    op = _read_command(r, tag)
    assert isinstance(op, (Put, Delete, Cas, Batch))
    return op


# -- results -------------------------------------------------------------------
def encode_result(result: Result) -> bytes:
    """Encode a result. Results are built by the machine, so they are not validated."""
    match result:
        case Ok():
            return Writer(FORMAT_VERSION, TAG_OK).getvalue()
        case Flag(value):
            w = Writer(FORMAT_VERSION, TAG_FLAG)
            w.flag(value)
        case SessionId(sid):
            w = Writer(FORMAT_VERSION, TAG_SESSION_ID)
            w.uint(sid)
        case Failed(code, detail):
            w = Writer(FORMAT_VERSION, TAG_FAILED)
            w.uint(int(code))
            w.text(detail)
        case _:
            assert_never(result)
    return w.getvalue()


def decode_result(data: bytes) -> Result:
    """Inverse of :func:`encode_result`; ``ValueError`` on any malformed input."""
    r = Reader(data, "kv result")
    tag = r.header(FORMAT_VERSION)
    result: Result
    if tag == TAG_OK:
        result = Ok()
    elif tag == TAG_FLAG:
        result = Flag(r.flag("value"))
    elif tag == TAG_SESSION_ID:
        result = SessionId(r.uint("id"))
    elif tag == TAG_FAILED:
        result = Failed(_error_code(r), r.text("detail"))
    else:
        r.fail(f"unknown result tag 0x{tag:02x}")
    r.finish()
    return result


def _error_code(r: Reader) -> ErrorCode:
    code = r.uint("code")
    try:
        return ErrorCode(code)
    except ValueError:
        r.fail(f"unknown error code {code}")
