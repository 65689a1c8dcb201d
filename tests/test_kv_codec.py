"""The kv codec: exact round trips, strict decoding, limits with precise errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raykv.errors import ConfigError, InvalidRequestError, KeyTooLargeError, ValueTooLargeError
from raykv.kv import (
    FORMAT_VERSION,
    Batch,
    Cas,
    Delete,
    ErrorCode,
    ExpireSessions,
    Failed,
    Flag,
    KVLimits,
    Ok,
    Put,
    RegisterSession,
    Request,
    Session,
    SessionId,
    RangeChange,
    decode_command,
    decode_result,
    encode_command,
    encode_result,
    validate_key,
    validate_value,
)

from raykv.kv.ranges import RangeAction

LIMITS = KVLimits()
U64 = st.integers(min_value=0, max_value=2**64 - 1)
KEYS = st.binary(min_size=1, max_size=40).filter(lambda k: k[0] != 0)  # 0x00...: raykv's own rows
VALUES = st.binary(max_size=80)

puts = st.builds(Put, KEYS, VALUES)
deletes = st.builds(Delete, KEYS)
cases = st.builds(Cas, KEYS, st.none() | VALUES, VALUES)
batches = st.builds(Batch, st.lists(puts | deletes, min_size=1, max_size=8).map(tuple))
ops = puts | deletes | cases | batches


@st.composite
def requests(draw: st.DrawFn) -> Request:
    seq = draw(st.integers(min_value=1, max_value=2**64 - 1))
    acked = draw(st.integers(min_value=0, max_value=seq - 1))
    return Request(draw(U64), seq, acked, draw(U64), draw(ops))


@st.composite
def range_changes(draw: st.DrawFn) -> RangeChange:
    """Valid range changes: ``lo < hi`` (or ``hi=None``), rows only for INGEST_ROWS and inside the range."""
    action = draw(st.sampled_from(RangeAction))
    lo = b"s" + draw(st.binary(max_size=6))
    hi = draw(st.none() | st.just(lo + b"\xff"))
    rows = ()
    if action in (RangeAction.INGEST_ROWS, RangeAction.INGEST_DELETE):
        suffixes = draw(st.lists(st.binary(min_size=1, max_size=4), max_size=5, unique=True))
        value = VALUES if action is RangeAction.INGEST_ROWS else st.just(b"")
        rows = tuple((lo + s[:1].replace(b"\xff", b"\x00") + s[1:], draw(value)) for s in suffixes)
    return RangeChange(action, lo, hi, rows, draw(U64), draw(U64))


commands = (ops | st.builds(RegisterSession, U64) | requests() | st.builds(ExpireSessions, U64)
            | range_changes())
results = (
    st.just(Ok())
    | st.builds(Flag, st.booleans())
    | st.builds(SessionId, U64)
    | st.builds(Failed, st.sampled_from(ErrorCode), st.text(max_size=40))
)


def _session(active: int, acked: int, offsets: set[int], blob: bytes) -> Session:
    return Session(active, acked, tuple((acked + 1 + offset, blob) for offset in sorted(offsets)))


sessions = st.builds(
    _session, U64, st.integers(0, 2**40), st.sets(st.integers(0, 2**20), max_size=6), st.binary(max_size=6)
)


# -- round trips -----------------------------------------------------------------
@given(commands)
def test_command_round_trip(cmd) -> None:
    data = encode_command(cmd, LIMITS)
    assert data[0] == FORMAT_VERSION
    assert decode_command(data) == cmd
    assert isinstance(cmd.describe(), str) and "\n" not in cmd.describe()


@given(requests())
def test_a_request_built_from_an_encoded_op_equals_the_encoded_request(req: Request) -> None:
    """The leader wraps the client's pre-encoded op (``encode_op``) into the Request entry without
    decoding it; the bytes are exactly those of encoding the whole Request."""
    from raykv.kv.codec import encode_op, encode_request

    wrapped = encode_request(req.session, req.seq, req.acked_seq, req.ts_ms, encode_op(req.op), LIMITS)
    assert wrapped == encode_command(req, LIMITS)


@pytest.mark.parametrize("numbers, op", [
    ((-1, 1, 0, 0), b"\x01\x02\x01k"),
    ((1, 2**64, 0, 0), b"\x01\x02\x01k"),
    ((1, True, 0, 0), b"\x01\x02\x01k"),
    ((1, 0, 0, 0), b"\x01\x02\x01k"),  # seq 0
    ((1, 3, 3, 0), b"\x01\x02\x01k"),  # acked_seq not below seq
    ((1, 1, 0, 0), "not bytes"),
    ((1, 1, 0, 0), b"\x01"),
    ((1, 1, 0, 0), b"\x09\x02\x01k"),  # another format version
    ((1, 1, 0, 0), b"\x01\x05\x00"),  # a RegisterSession is not a request's op
    ((1, 1, 0, 0), b"\x01\x01" + b"x" * (64 * 1024 * 1024 + 32 * 100_000 + 1)),
])
def test_a_request_with_bad_numbers_or_a_foreign_op_is_refused(numbers, op) -> None:
    from raykv.kv.codec import encode_request

    with pytest.raises(InvalidRequestError):
        encode_request(*numbers, op, LIMITS)


def test_encode_op_takes_only_operations() -> None:
    from raykv.kv.codec import encode_op

    with pytest.raises(InvalidRequestError):
        encode_op(RegisterSession(1))


@given(results)
def test_result_round_trip(result) -> None:
    data = encode_result(result)
    assert data[0] == FORMAT_VERSION
    assert decode_result(data) == result
    assert isinstance(result.describe(), str)


@given(sessions)
def test_session_round_trip(session: Session) -> None:
    assert Session.decode(session.encode()) == session


def test_golden_encodings_pin_the_format() -> None:
    """The format is on disk (log entries, cached results): these bytes must never change."""
    assert encode_command(Put(b"k", b"v"), LIMITS) == bytes([1, 0x01, 1, ord("k"), 1, ord("v")])
    assert encode_command(Delete(b"k"), LIMITS) == bytes([1, 0x02, 1, ord("k")])
    assert encode_command(Cas(b"k", None, b""), LIMITS) == bytes([1, 0x03, 1, ord("k"), 0, 0])
    assert encode_command(Cas(b"k", b"", b"v"), LIMITS) == bytes([1, 0x03, 1, ord("k"), 1, 0, 1, ord("v")])
    assert encode_command(Batch((Delete(b"k"),)), LIMITS) == bytes([1, 0x04, 1, 0x02, 1, ord("k")])
    assert encode_command(RegisterSession(300), LIMITS) == bytes([1, 0x05, 0xAC, 0x02])
    assert encode_command(Request(7, 2, 1, 0, Delete(b"k")), LIMITS) == bytes(
        [1, 0x06, 7, 2, 1, 0, 0x02, 1, ord("k")]
    )
    assert encode_command(ExpireSessions(2**64 - 1), LIMITS) == bytes([1, 0x07] + [0xFF] * 9 + [0x01])
    assert encode_result(Ok()) == bytes([1, 0x81])
    assert encode_result(Flag(True)) == bytes([1, 0x82, 1])
    assert encode_result(SessionId(5)) == bytes([1, 0x83, 5])
    assert encode_result(Failed(ErrorCode.STALE_REQUEST, "x")) == bytes([1, 0x84, 2, 1, ord("x")])


# -- strict decoding -------------------------------------------------------------
def _assert_all_prefixes_rejected(data: bytes, decode) -> None:
    for cut in range(len(data)):
        with pytest.raises(ValueError):
            decode(data[:cut])


@given(commands)
def test_every_truncated_command_is_rejected(cmd) -> None:
    _assert_all_prefixes_rejected(encode_command(cmd, LIMITS), decode_command)


@given(results)
def test_every_truncated_result_is_rejected(result) -> None:
    _assert_all_prefixes_rejected(encode_result(result), decode_result)


@given(sessions)
def test_every_truncated_session_is_rejected(session: Session) -> None:
    _assert_all_prefixes_rejected(session.encode(), Session.decode)


@given(commands, st.binary(min_size=1, max_size=4))
def test_trailing_bytes_are_rejected(cmd, extra: bytes) -> None:
    with pytest.raises(ValueError, match="trailing"):
        decode_command(encode_command(cmd, LIMITS) + extra)


@given(results, st.binary(min_size=1, max_size=4))
def test_trailing_bytes_after_a_result_are_rejected(result, extra: bytes) -> None:
    with pytest.raises(ValueError, match="trailing"):
        decode_result(encode_result(result) + extra)


def test_a_range_change_logged_before_epochs_still_decodes() -> None:
    """Logs written before placement drivers had epochs hold TAG_RANGE entries: they decode with
    epoch and attempt 0 (and a range state stored then, to the same fields at 0)."""
    from raykv.kv.codec import TAG_RANGE
    from raykv.kv.ranges import RangeState

    old = bytes([FORMAT_VERSION, TAG_RANGE, int(RangeAction.FENCE), 1]) + b"s" + bytes([1, 2]) + b"sz" + bytes([0])
    assert decode_command(old) == RangeChange(RangeAction.FENCE, b"s", b"sz")
    old_state = bytes([1, 0x52, 1]) + b"a" + bytes([0, 0, 0])
    assert RangeState.decode(old_state) == RangeState(b"a", None)


@given(commands, st.integers(0, 255).filter(lambda v: v != FORMAT_VERSION))
def test_unknown_version_is_rejected(cmd, version: int) -> None:
    data = encode_command(cmd, LIMITS)
    with pytest.raises(ValueError, match="version"):
        decode_command(bytes([version]) + data[1:])


@pytest.mark.parametrize("tag", [0x00, 0x0A, 0x42, 0x81, 0xFF])
def test_unknown_command_tag_is_rejected(tag: int) -> None:
    with pytest.raises(ValueError, match="unknown command tag"):
        decode_command(bytes([FORMAT_VERSION, tag, 1, 1]))


@pytest.mark.parametrize("tag", [0x00, 0x01, 0x80, 0x85])
def test_unknown_result_tag_is_rejected(tag: int) -> None:
    with pytest.raises(ValueError, match="unknown result tag"):
        decode_result(bytes([FORMAT_VERSION, tag]))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (bytes([1, 0x02, 0x81, 0x00]), "over-long varint"),
        (bytes([1, 0x05] + [0xFF] * 10 + [0x01]), "longer than 10 bytes"),
        (bytes([1, 0x05] + [0xFF] * 9 + [0x02]), "exceeds 64 bits"),
        (bytes([1, 0x03, 1, 0x6B, 2, 0]), "expected 0 or 1"),
        (bytes([1, 0x02, 5, 0x6B]), "needs 5 bytes"),
        (bytes([1, 0x04, 1, 0x03, 1, 0x6B, 0, 0]), "not allowed as a batch op"),
        (bytes([1, 0x04, 1, 0x04, 1, 0x02, 1, 0x6B]), "not allowed as a batch op"),
        (bytes([1, 0x06, 1, 1, 0, 0, 0x06]), "not allowed as a request op"),
        (bytes([1, 0x06, 1, 1, 0, 0, 0x05, 0]), "not allowed as a request op"),
        (bytes([1, 0x04, 0xFF, 0xFF, 0xFF, 0x7F]), "truncated"),
    ],
)
def test_malformed_commands_name_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_command(data)


@pytest.mark.parametrize(
    "data, message",
    [
        (bytes([1, 0x82, 2]), "expected 0 or 1"),
        (bytes([1, 0x84, 99, 0]), "unknown error code 99"),
        (bytes([1, 0x84, 1, 1, 0xFF]), "not valid UTF-8"),
    ],
)
def test_malformed_results_name_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_result(data)


def test_commands_and_results_are_not_confused() -> None:
    with pytest.raises(ValueError):
        decode_result(encode_command(Delete(b"k"), LIMITS))
    with pytest.raises(ValueError):
        decode_command(encode_result(Ok()))


def test_non_bytes_input_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="must be bytes"):
        decode_command("hello")  # type: ignore[arg-type]
    assert decode_command(memoryview(encode_command(Delete(b"k"), LIMITS))) == Delete(b"k")


def test_session_blob_rejects_non_ascending_results() -> None:
    blob = bytearray(Session(5, 1, ((2, b"a"), (3, b"b"))).encode())
    bad = bytes(blob).replace(bytes([1, 1, ord("b")]), bytes([0, 1, ord("b")]))
    with pytest.raises(ValueError, match="strictly ascending"):
        Session.decode(bad)


HUGE = KVLimits(max_key_bytes=2**20, max_batch_ops=2**20)


def _decodes_canonically_or_raises(data: bytes) -> None:
    """Only ValueError escapes the decoders, and whatever decodes re-encodes to ``data``."""
    codecs = ((decode_command, lambda c: encode_command(c, HUGE)), (decode_result, encode_result))
    for decode, encode in codecs:
        try:
            value = decode(data)
        except ValueError:
            continue
        try:
            assert encode(value) == data
        except InvalidRequestError:
            pass  # structurally fine but semantically invalid (e.g. an empty key)


@settings(max_examples=500)
@given(st.binary(max_size=40))
def test_arbitrary_bytes_decode_or_raise_value_error(body: bytes) -> None:
    _decodes_canonically_or_raises(bytes([FORMAT_VERSION]) + body)


@settings(max_examples=500)
@given(commands | results, st.data())
def test_mutated_encodings_decode_or_raise_value_error(value, data: st.DataObject) -> None:
    is_result = isinstance(value, (Ok, Flag, SessionId, Failed))
    raw = bytearray(encode_result(value) if is_result else encode_command(value, LIMITS))
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] = data.draw(st.integers(0, 255))
    _decodes_canonically_or_raises(bytes(raw))


# -- limits and validation ----------------------------------------------------------
def test_default_limits_are_documented_values() -> None:
    assert LIMITS == KVLimits(511, 8 * 1024 * 1024, 100_000, 64 * 1024 * 1024, 10_000, 4_096)


@pytest.mark.parametrize("value", [0, -1, True, 1.5])
def test_limits_reject_bad_values(value) -> None:
    with pytest.raises(ConfigError, match="max_sessions"):
        KVLimits(max_sessions=value)


def test_key_too_large_names_size_and_limit() -> None:
    with pytest.raises(KeyTooLargeError, match="512 bytes.*max_key_bytes=511"):
        encode_command(Put(b"k" * 512, b""), LIMITS)
    encode_command(Put(b"k" * 511, b""), LIMITS)
    with pytest.raises(KeyTooLargeError, match="4 bytes.*max_key_bytes=3"):
        validate_key(b"abcd", KVLimits(max_key_bytes=3))


def test_value_too_large_names_size_and_limit() -> None:
    small = KVLimits(max_value_bytes=10)
    with pytest.raises(ValueTooLargeError, match="11 bytes.*max_value_bytes=10"):
        encode_command(Put(b"k", b"v" * 11), small)
    with pytest.raises(ValueTooLargeError, match="11 bytes"):
        encode_command(Cas(b"k", b"v" * 11, b""), small)
    with pytest.raises(ValueTooLargeError, match="11 bytes"):
        encode_command(Request(1, 1, 0, 0, Cas(b"k", None, b"v" * 11)), small)
    with pytest.raises(ValueTooLargeError, match="11 bytes"):
        validate_value(b"v" * 11, small)
    encode_command(Put(b"k", b"v" * 10), small)


def test_batch_limits() -> None:
    limits = KVLimits(max_batch_ops=3, max_batch_bytes=10)
    with pytest.raises(InvalidRequestError, match="4 ops.*max_batch_ops=3"):
        encode_command(Batch((Delete(b"a"),) * 4), limits)
    with pytest.raises(ValueTooLargeError, match="12 bytes.*max_batch_bytes=10"):
        encode_command(Batch((Put(b"a", b"12345"), Put(b"b", b"12345"))), limits)
    encode_command(Batch((Put(b"a", b"1234"), Put(b"b", b"123"), Delete(b"c"))), limits)


@pytest.mark.parametrize(
    "cmd, message",
    [
        (Put(b"", b"v"), "key must not be empty"),
        (Put("k", b"v"), "key must be bytes, got str"),
        (Put(b"k", "v"), "value must be bytes, got str"),
        (Put(bytearray(b"k"), b"v"), "key must be bytes, got bytearray"),
        (Delete(b""), "key must not be empty"),
        (Cas(b"k", None, None), "cas needs a new value"),
        (Cas(b"k", 5, b"v"), "value must be bytes, got int"),
        (Batch(()), "batch must not be empty"),
        (Batch([Delete(b"k")]), "must be a tuple"),
        (Batch((Cas(b"k", None, b"v"),)), "batch op 0 must be Put or Delete"),
        (Batch((Delete(b"k"), Put(b"", b""))), "key must not be empty"),
        (RegisterSession(-1), r"ts_ms must be in \[0, 2\*\*64\)"),
        (RegisterSession(2**64), r"ts_ms must be in \[0, 2\*\*64\)"),
        (RegisterSession(True), "ts_ms must be an int, got bool"),
        (ExpireSessions(1.0), "cutoff_ms must be an int, got float"),
        (Request(1, 0, 0, 0, Delete(b"k")), "seq must be >= 1"),
        (Request(1, 3, 3, 0, Delete(b"k")), "acked_seq 3 must be below seq 3"),
        (Request(-1, 3, 0, 0, Delete(b"k")), "session must be in"),
        (Request(1, 3, 0, 0, RegisterSession(1)), "not a kv operation: RegisterSession"),
        (Request(1, 3, 0, 0, Delete(b"")), "key must not be empty"),
        (Ok(), "not a kv command: Ok"),
    ],
)
def test_invalid_commands_are_refused_before_encoding(cmd, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        encode_command(cmd, LIMITS)


def test_size_errors_are_invalid_request_errors() -> None:
    assert issubclass(KeyTooLargeError, InvalidRequestError)
    assert issubclass(ValueTooLargeError, InvalidRequestError)


def test_failed_maps_to_client_errors() -> None:
    from raykv.errors import DefiniteError, IndeterminateError, SessionExpiredError

    assert isinstance(Failed(ErrorCode.SESSION_EXPIRED, "x").to_error(), SessionExpiredError)
    assert isinstance(Failed(ErrorCode.STALE_REQUEST, "x").to_error(), IndeterminateError)
    assert isinstance(Failed(ErrorCode.BAD_COMMAND, "x").to_error(), InvalidRequestError)
    error = Failed(ErrorCode.TOO_MANY_PENDING, "x").to_error()
    assert isinstance(error, DefiniteError) and "TOO_MANY_PENDING: x" in str(error)


@given(sessions)
def test_session_last_active_is_read_from_the_header(session: Session) -> None:
    assert Session.decode_last_active(session.encode()) == session.last_active_ms


def test_session_blob_rejects_other_versions_and_tags() -> None:
    blob = Session(5).encode()
    with pytest.raises(ValueError, match="version"):
        Session.decode(bytes([2]) + blob[1:])
    with pytest.raises(ValueError, match="unknown session tag"):
        Session.decode(blob[:1] + bytes([0x01]) + blob[2:])
    with pytest.raises(ValueError, match="unknown session tag"):
        Session.decode_last_active(blob[:1] + bytes([0x01]) + blob[2:])
