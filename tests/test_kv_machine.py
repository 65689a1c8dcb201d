"""The kv state machine: command semantics, exactly-once sessions, bounds, determinism.

The property tests compare :class:`KVStateMachine` with deliberately naive
reference models written with plain dicts.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raykv.kv import (
    Batch,
    Cas,
    Delete,
    ErrorCode,
    ExpireSessions,
    Failed,
    Flag,
    KVBackend,
    KVLimits,
    KVStateMachine,
    MemoryBackend,
    Ok,
    Put,
    RegisterSession,
    Request,
    Session,
    SessionId,
    decode_result,
    encode_command,
    encode_result,
)

UNBOUNDED = KVLimits(max_key_bytes=1 << 20, max_value_bytes=1 << 20)


class Replica:
    """One machine and backend, fed entries at consecutive log indices."""

    def __init__(self, limits: KVLimits | None = None) -> None:
        self.machine = KVStateMachine(limits)
        self.backend = MemoryBackend()
        self.index = 0

    def raw(self, data: bytes) -> bytes:
        self.index += 1
        return self.machine.apply(self.index, data, self.backend)

    def run(self, cmd) -> object:
        return decode_result(self.raw(encode_command(cmd, UNBOUNDED)))

    def register(self, ts_ms: int = 0) -> int:
        result = self.run(RegisterSession(ts_ms))
        assert result == SessionId(self.index)
        return result.id

    def session(self, sid: int) -> Session | None:
        blob = self.backend.get_session(sid)
        return None if blob is None else Session.decode(blob)


def code_of(result: object) -> ErrorCode | None:
    return result.code if isinstance(result, Failed) else None


# -- bare commands ---------------------------------------------------------------------
def test_memory_backend_satisfies_the_protocol() -> None:
    assert isinstance(MemoryBackend(), KVBackend)


def test_put_delete_and_flags() -> None:
    r = Replica()
    assert r.run(Put(b"k", b"v")) == Ok()
    assert r.backend.get(b"k") == b"v"
    assert r.run(Put(b"k", b"")) == Ok()
    assert r.backend.get(b"k") == b""
    assert r.run(Delete(b"k")) == Flag(True)
    assert r.run(Delete(b"k")) == Flag(False)
    assert r.backend.items() == []


def test_cas_compares_raw_bytes_and_absence() -> None:
    r = Replica()
    assert r.run(Cas(b"k", b"", b"x")) == Flag(False)  # absent is not the empty value
    assert r.run(Cas(b"k", None, b"")) == Flag(True)
    assert r.run(Cas(b"k", None, b"y")) == Flag(False)  # present (empty) is not absent
    assert r.run(Cas(b"k", b"", b"1")) == Flag(True)
    assert r.run(Cas(b"k", b"2", b"3")) == Flag(False)
    assert r.run(Cas(b"k", b"1", b"3")) == Flag(True)
    assert r.backend.items() == [(b"k", b"3")]


def test_batch_applies_in_order() -> None:
    r = Replica()
    r.run(Put(b"gone", b"0"))
    ops = (Put(b"a", b"1"), Put(b"b", b"2"), Delete(b"a"), Put(b"b", b"3"), Delete(b"gone"), Delete(b"never"))
    assert r.run(Batch(ops)) == Ok()
    assert r.backend.items() == [(b"b", b"3")]


def test_malformed_entries_fail_deterministically_and_change_nothing() -> None:
    r = Replica()
    r.run(Put(b"k", b"v"))
    sid = r.register()
    before = (r.backend.items(), r.backend.sessions())
    for data in (b"", b"\x01", b"\x02\x01", b"\x01\x99", b"\x01\x01\x01k", b"\x01\x02\x00", "text"):
        result = decode_result(r.raw(data))
        assert code_of(result) is ErrorCode.BAD_COMMAND, data
        assert result.detail
    assert (r.backend.items(), r.backend.sessions()) == before
    assert r.session(sid) == Session(0)


def test_apply_time_limits_make_a_batch_all_or_nothing() -> None:
    """A batch whose last op breaks the replica's limits applies none of its ops."""
    r = Replica(KVLimits(max_key_bytes=4))
    batch = Batch((Put(b"a", b"1"), Delete(b"b"), Put(b"toolong", b"2")))
    result = decode_result(r.raw(encode_command(batch, UNBOUNDED)))
    assert code_of(result) is ErrorCode.BAD_COMMAND
    assert "7 bytes" in result.detail and "max_key_bytes=4" in result.detail
    assert r.backend.items() == []
    sized = Replica(KVLimits(max_batch_bytes=3))
    result = decode_result(sized.raw(encode_command(Batch((Put(b"a", b"1"), Put(b"b", b"2"))), UNBOUNDED)))
    assert code_of(result) is ErrorCode.BAD_COMMAND and sized.backend.items() == []


def test_index_must_be_a_log_index() -> None:
    for index in (0, -1, True):
        with pytest.raises(ValueError, match="log index"):
            KVStateMachine().apply(index, encode_command(Delete(b"k"), UNBOUNDED), MemoryBackend())
        with pytest.raises(ValueError, match="log index"):
            KVStateMachine().apply(index, b"garbage", MemoryBackend())


# -- sessions --------------------------------------------------------------------------
def test_register_uses_the_log_index() -> None:
    r = Replica()
    r.run(Put(b"k", b"v"))
    assert r.register(ts_ms=70) == 2
    assert r.register(ts_ms=80) == 3
    assert [sid for sid, _ in r.backend.sessions()] == [2, 3]
    assert r.session(2) == Session(last_active_ms=70)


def test_retry_at_a_later_index_returns_the_cached_result_without_reapplying() -> None:
    r = Replica()
    sid = r.register()
    request = encode_command(Request(sid, 1, 0, 10, Cas(b"k", None, b"first")), UNBOUNDED)
    first = r.raw(request)
    assert decode_result(first) == Flag(True)
    r.run(Put(b"k", b"other"))  # another client writes in between
    assert r.raw(request) == first  # identical bytes, not Flag(False)
    assert r.backend.items() == [(b"k", b"other")]
    delete = encode_command(Request(sid, 2, 0, 11, Delete(b"k")), UNBOUNDED)
    assert decode_result(r.raw(delete)) == Flag(True)
    assert decode_result(r.raw(delete)) == Flag(True)  # not Flag(False): not applied again
    assert r.session(sid).results == ((1, encode_result(Flag(True))), (2, encode_result(Flag(True))))


def test_out_of_order_seqs_within_a_session() -> None:
    r = Replica()
    sid = r.register()
    assert r.run(Request(sid, 3, 0, 1, Put(b"c", b"3"))) == Ok()
    assert r.run(Request(sid, 1, 0, 2, Put(b"a", b"1"))) == Ok()
    assert r.run(Request(sid, 2, 0, 3, Delete(b"a"))) == Flag(True)
    assert [seq for seq, _ in r.session(sid).results] == [1, 2, 3]
    assert r.run(Request(sid, 1, 0, 4, Put(b"a", b"1"))) == Ok()  # cached: a stays deleted
    assert r.backend.items() == [(b"c", b"3")]


def test_acknowledgements_prune_the_cache_and_make_requests_stale() -> None:
    r = Replica()
    sid = r.register()
    for seq in (1, 2, 3):
        r.run(Request(sid, seq, 0, seq, Put(b"k", bytes([seq]))))
    assert r.run(Request(sid, 4, 2, 9, Put(b"k", b"4"))) == Ok()
    session = r.session(sid)
    assert (session.acked_seq, [s for s, _ in session.results], session.last_active_ms) == (2, [3, 4], 9)
    stale = r.run(Request(sid, 2, 1, 5, Put(b"k", b"again")))
    assert code_of(stale) is ErrorCode.STALE_REQUEST and "acked_seq 2" in stale.detail
    assert r.backend.get(b"k") == b"4"
    assert r.run(Request(sid, 3, 0, 5, Put(b"k", b"x"))) == Ok()  # still cached: not applied
    assert r.backend.get(b"k") == b"4"
    r.run(Request(sid, 5, 1, 5, Delete(b"zz")))  # a lower acked_seq never lowers the session's
    assert r.session(sid).acked_seq == 2 and r.session(sid).last_active_ms == 9


def test_unknown_session_is_expired() -> None:
    r = Replica()
    result = r.run(Request(42, 1, 0, 0, Put(b"k", b"v")))
    assert code_of(result) is ErrorCode.SESSION_EXPIRED and "42" in result.detail
    assert r.backend.items() == []


def test_expire_sessions_uses_last_activity() -> None:
    r = Replica()
    old, fresh, edge = r.register(ts_ms=10), r.register(ts_ms=10), r.register(ts_ms=50)
    r.run(Request(fresh, 1, 0, 60, Put(b"k", b"v")))
    assert r.run(ExpireSessions(50)) == Ok()
    assert [sid for sid, _ in r.backend.sessions()] == [fresh, edge]
    assert code_of(r.run(Request(old, 1, 0, 70, Put(b"k", b"w")))) is ErrorCode.SESSION_EXPIRED
    assert r.backend.get(b"k") == b"v"


def test_a_full_table_evicts_the_least_recently_active_session() -> None:
    r = Replica(KVLimits(max_sessions=2))
    first, second = r.register(ts_ms=5), r.register(ts_ms=5)
    r.run(Request(first, 1, 0, 8, Put(b"k", b"1")))  # first is now more recent than second
    third = r.register(ts_ms=7)
    assert [sid for sid, _ in r.backend.sessions()] == [first, third]
    assert code_of(r.run(Request(second, 1, 0, 9, Put(b"k", b"2")))) is ErrorCode.SESSION_EXPIRED
    fourth = r.register(ts_ms=9)  # tie-free: third (7) < first (8)
    assert [sid for sid, _ in r.backend.sessions()] == [first, fourth]
    tied = Replica(KVLimits(max_sessions=2))
    a, b = tied.register(ts_ms=1), tied.register(ts_ms=1)
    tied.register(ts_ms=0)
    assert [sid for sid, _ in tied.backend.sessions()] == [b, tied.index]  # tie: lower sid goes
    assert a < b


def test_too_many_pending_applies_nothing_until_acknowledged() -> None:
    r = Replica(KVLimits(max_pending_per_session=2))
    sid = r.register()
    r.run(Request(sid, 1, 0, 1, Put(b"a", b"1")))
    r.run(Request(sid, 2, 0, 2, Put(b"b", b"2")))
    full = r.run(Request(sid, 3, 0, 3, Put(b"c", b"3")))
    assert code_of(full) is ErrorCode.TOO_MANY_PENDING and "max_pending_per_session=2" in full.detail
    assert r.backend.items() == [(b"a", b"1"), (b"b", b"2")]
    assert r.run(Request(sid, 2, 0, 4, Put(b"b", b"2"))) == Ok()  # cached retries still answer
    assert r.run(Request(sid, 3, 1, 5, Put(b"c", b"3"))) == Ok()  # the ack made room
    assert [seq for seq, _ in r.session(sid).results] == [2, 3]
    assert r.backend.get(b"c") == b"3"


def test_a_request_batch_is_atomic_and_cached() -> None:
    r = Replica()
    sid = r.register()
    request = encode_command(Request(sid, 1, 0, 0, Batch((Put(b"a", b"1"), Delete(b"b")))), UNBOUNDED)
    assert decode_result(r.raw(request)) == Ok()
    r.run(Delete(b"a"))
    assert decode_result(r.raw(request)) == Ok()
    assert r.backend.items() == []


def test_bad_request_leaves_the_session_untouched() -> None:
    r = Replica(KVLimits(max_key_bytes=2))
    sid = r.register(ts_ms=3)
    data = encode_command(Request(sid, 1, 0, 99, Put(b"long", b"v")), UNBOUNDED)
    assert code_of(decode_result(r.raw(data))) is ErrorCode.BAD_COMMAND
    assert r.session(sid) == Session(3)


def test_the_machine_keeps_no_state_between_calls() -> None:
    backend = MemoryBackend()
    entries = [RegisterSession(0), Request(1, 1, 0, 1, Put(b"k", b"v")), Request(1, 1, 0, 2, Delete(b"k"))]
    results = [
        KVStateMachine().apply(i, encode_command(cmd, UNBOUNDED), backend) for i, cmd in enumerate(entries, 1)
    ]
    assert [decode_result(x) for x in results] == [SessionId(1), Ok(), Ok()]
    assert backend.items() == [(b"k", b"v")]


# -- properties: determinism and naive reference models ----------------------------------------
KEYS = st.sampled_from([b"a", b"b", b"c", b"d"])
VALUES = st.sampled_from([b"", b"1", b"2", b"xyz"])
puts = st.builds(Put, KEYS, VALUES)
deletes = st.builds(Delete, KEYS)
bare_ops = (
    puts | deletes | st.builds(Cas, KEYS, st.none() | VALUES, VALUES)
    | st.builds(Batch, st.lists(puts | deletes, min_size=1, max_size=5).map(tuple))
)
TS = st.integers(0, 30)


@st.composite
def requests(draw: st.DrawFn, sessions: list[int]) -> Request:
    """A request, mostly under one of ``sessions`` (the indices of earlier registrations)."""
    seq = draw(st.integers(1, 6))
    acked = draw(st.integers(0, seq - 1))
    sid = draw(st.sampled_from(sessions) if sessions and draw(st.integers(0, 9)) else st.integers(1, 40))
    return Request(sid, seq, acked, draw(TS), draw(bare_ops))


@st.composite
def programs(draw: st.DrawFn, max_size: int = 40) -> list:
    """Commands in log order (entry i has index i + 1), requests aimed at registered sessions."""
    commands: list = []
    registered: list[int] = []
    for _ in range(draw(st.integers(0, max_size))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            registered.append(len(commands) + 1)
            commands.append(RegisterSession(draw(TS)))
        elif kind == 1:
            commands.append(ExpireSessions(draw(TS)))
        elif kind <= 3:
            commands.append(draw(bare_ops))
        else:
            commands.append(draw(requests(registered)))
    return commands


@st.composite
def entries(draw: st.DrawFn) -> list[bytes]:
    """An encoded program in which a few entries are replaced by garbage bytes."""
    log = [encode_command(cmd, UNBOUNDED) for cmd in draw(programs(30))]
    for i in draw(st.lists(st.integers(0, max(len(log) - 1, 0)), max_size=3)) if log else ():
        log[i] = draw(st.binary(max_size=6))
    return log


SMALL = KVLimits(max_sessions=3, max_pending_per_session=2)


@settings(max_examples=200, deadline=None)
@given(entries(), st.integers(0, 30))
def test_replicas_applying_the_same_entries_agree(log: list[bytes], fork_at: int) -> None:
    """Two replicas (one of them restarting from a clone mid-way) give equal results and state."""
    one, two = MemoryBackend(), MemoryBackend()
    machine_one, machine_two = KVStateMachine(SMALL), KVStateMachine(SMALL)
    for index, data in enumerate(log, 1):
        if index == fork_at:
            two = one.clone()
            machine_two = KVStateMachine(SMALL)
        assert machine_one.apply(index, data, one) == machine_two.apply(index, data, two)
    assert one.items() == two.items() and one.sessions() == two.sessions()


@settings(max_examples=300, deadline=None)
@given(entries(), st.lists(st.integers(1, 30), max_size=6))
def test_applying_runs_matches_applying_entries_one_by_one(log: list[bytes], cuts: list[int]) -> None:
    """``apply_run`` over any cutting of the log into runs gives the results and the state that
    ``apply`` gives entry by entry (sessions decoded once per run must not change outcomes)."""
    single, runs = MemoryBackend(), MemoryBackend()
    machine = KVStateMachine(SMALL)
    expected = [machine.apply(index, data, single) for index, data in enumerate(log, 1)]
    numbered = list(enumerate(log, 1))
    bounds = [0, *sorted(c for c in set(cuts) if c < len(log)), len(log)]
    got = [r for a, b in zip(bounds, bounds[1:]) for r in machine.apply_run(numbered[a:b], runs)]
    assert got == expected
    assert runs.items() == single.items() and runs.sessions() == single.sessions()


def naive_op(data: dict[bytes, bytes], op) -> object:
    if isinstance(op, Put):
        data[op.key] = op.value
        return Ok()
    if isinstance(op, Delete):
        return Flag(data.pop(op.key, None) is not None)
    if isinstance(op, Cas):
        if data.get(op.key) != op.expected:
            return Flag(False)
        data[op.key] = op.new
        return Flag(True)
    for item in op.ops:
        naive_op(data, item)
    return Ok()


@settings(max_examples=200, deadline=None)
@given(st.lists(bare_ops, max_size=30))
def test_bare_operations_match_a_naive_dict(ops: list) -> None:
    r = Replica()
    model: dict[bytes, bytes] = {}
    for op in ops:
        assert r.run(op) == naive_op(model, op)
    assert r.backend.items() == sorted(model.items())


class NaiveSessions:
    """The session rules of the brief, written as directly as possible."""

    def __init__(self, limits: KVLimits) -> None:
        self.limits = limits
        self.data: dict[bytes, bytes] = {}
        self.table: dict[int, dict] = {}

    def apply(self, index: int, cmd) -> object:
        if isinstance(cmd, RegisterSession):
            while len(self.table) >= self.limits.max_sessions:
                del self.table[min(self.table, key=lambda s: (self.table[s]["last"], s))]
            self.table[index] = {"acked": 0, "last": cmd.ts_ms, "results": {}}
            return SessionId(index)
        if isinstance(cmd, ExpireSessions):
            self.table = {s: v for s, v in self.table.items() if v["last"] >= cmd.cutoff_ms}
            return Ok()
        if isinstance(cmd, Request):
            return self.request(cmd)
        return naive_op(self.data, cmd)

    def request(self, req: Request) -> object:
        s = self.table.get(req.session)
        if s is None:
            return Failed(ErrorCode.SESSION_EXPIRED, "")
        s["acked"] = max(s["acked"], req.acked_seq)
        s["results"] = {seq: r for seq, r in s["results"].items() if seq > s["acked"]}
        s["last"] = max(s["last"], req.ts_ms)
        if req.seq in s["results"]:
            return s["results"][req.seq]
        if req.seq <= s["acked"]:
            return Failed(ErrorCode.STALE_REQUEST, "")
        if len(s["results"]) >= self.limits.max_pending_per_session:
            return Failed(ErrorCode.TOO_MANY_PENDING, "")
        s["results"][req.seq] = result = naive_op(self.data, req.op)
        return result


def same_answer(a: object, b: object) -> bool:
    if isinstance(a, Failed) and isinstance(b, Failed):
        return a.code == b.code  # details are for humans
    return a == b


@settings(max_examples=300, deadline=None)
@given(programs())
def test_sessions_match_a_naive_model(commands: list) -> None:
    r, model = Replica(SMALL), NaiveSessions(SMALL)
    for cmd in commands:
        got = r.run(cmd)
        assert same_answer(got, model.apply(r.index, cmd)), cmd.describe()
    assert r.backend.items() == sorted(model.data.items())
    table = {sid: Session.decode(blob) for sid, blob in r.backend.sessions()}
    assert sorted(table) == sorted(model.table)
    for sid, s in model.table.items():
        expected = tuple((seq, encode_result(res)) for seq, res in sorted(s["results"].items()))
        assert table[sid] == Session(s["last"], s["acked"], expected)
