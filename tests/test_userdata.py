"""The user-data codec (:mod:`raykv.userdata`) and the client's Ray-free parts (:mod:`raykv.client`).

The client's engine is exercised over an in-process fake replica group (one real
:class:`~raykv.kv.machine.KVStateMachine` on a memory backend behind a fake
transport), so routing, coalescing, sessions, retries and deadlines are checked
without Ray. Tests against real replica actors live elsewhere.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raykv.client import (  # the one-group client, named Client in these tests
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    ShardClient as Client,
    check_consistency,
)
from raykv.client.route import _Backoff, _SeqTracker, _ShardRoute
from raykv.client.transport import _ActorGone, _CallNotSent
from raykv.errors import (
    ConfigError,
    IndeterminateError,
    InvalidRequestError,
    KeyTooLargeError,
    LeadershipLostError,
    NotLeaderError,
    OperationTimeoutError,
    ProposalDroppedError,
    SessionExpiredError,
    ShardMapChangedError,
    ShutdownError,
    UnavailableError,
    ValueTooLargeError,
)
from raykv.kv.backend import MemoryBackend
from raykv.kv.codec import encode_request, encode_result
from raykv.kv.commands import ErrorCode, Failed, RegisterSession
from raykv.kv.limits import KVLimits
from raykv.kv.machine import KVStateMachine
from raykv.protocol import SessionGrant
from raykv.userdata import decode_key, decode_value, encode_key, encode_value

# -- keys ---------------------------------------------------------------------------

LIMITS = KVLimits()


@given(st.text())
def test_str_key_round_trip(key: str) -> None:
    raw = encode_key(key)
    assert raw == b"s" + key.encode("utf-8")
    assert decode_key(raw) == key and type(decode_key(raw)) is str


@given(st.binary(max_size=510))
def test_bytes_key_round_trip(key: bytes) -> None:
    raw = encode_key(key)
    assert raw == b"b" + key
    assert decode_key(raw) == key and type(decode_key(raw)) is bytes
    assert encode_key(bytearray(key)) == raw
    assert encode_key(memoryview(key)) == raw


def test_str_and_bytes_keys_are_distinct_and_empty_keys_allowed() -> None:
    assert encode_key("a") != encode_key(b"a")
    assert encode_key("") == b"s" and decode_key(b"s") == ""
    assert encode_key(b"") == b"b" and decode_key(b"b") == b""


_keys = st.one_of(st.text(max_size=20), st.binary(max_size=20))


def _natural_lt(a: str | bytes, b: str | bytes) -> bool:
    """bytes before str; within a type, Python's own order."""
    if type(a) is not type(b):
        return isinstance(a, bytes)
    return a < b


@given(_keys, _keys)
def test_encoded_order_is_natural_order(a: str | bytes, b: str | bytes) -> None:
    assert (encode_key(a) < encode_key(b)) == _natural_lt(a, b)
    assert (encode_key(a) == encode_key(b)) == (type(a) is type(b) and a == b)


@pytest.mark.parametrize("key", [None, 1, 1.5, True, ["a"], ("a",), object()])
def test_key_of_wrong_type_is_invalid(key: object) -> None:
    with pytest.raises(InvalidRequestError, match=type(key).__name__) as info:
        encode_key(key)
    assert not isinstance(info.value, KeyTooLargeError)


def test_key_with_lone_surrogate_is_invalid() -> None:
    with pytest.raises(InvalidRequestError, match="UTF-8"):
        encode_key("a\ud800")


def test_key_size_limit_counts_user_bytes() -> None:
    longest = LIMITS.max_key_bytes - 1
    assert len(encode_key(b"x" * longest)) == LIMITS.max_key_bytes
    assert len(encode_key("x" * longest)) == LIMITS.max_key_bytes
    with pytest.raises(KeyTooLargeError, match=rf"key of {longest + 1} bytes exceeds the limit of {longest}"):
        encode_key(b"x" * (longest + 1))
    euro = "\u20ac" * 200  # 3 UTF-8 bytes each
    with pytest.raises(KeyTooLargeError, match="600 UTF-8 bytes"):
        encode_key(euro)
    small = KVLimits(max_key_bytes=4)
    assert encode_key("abc", small) == b"sabc"
    with pytest.raises(KeyTooLargeError, match="limit of 3"):
        encode_key("abcd", small)


@pytest.mark.parametrize("raw", [b"", b"x", b"\x00abc", b"S", "sabc", None, 5])
def test_decode_key_rejects_non_keys(raw: object) -> None:
    with pytest.raises(InvalidRequestError):
        decode_key(raw)


def test_decode_key_rejects_bad_utf8() -> None:
    with pytest.raises(InvalidRequestError, match="UTF-8"):
        decode_key(b"s\xff")


# -- values -------------------------------------------------------------------------
_scalars = st.one_of(
    st.text(max_size=30), st.binary(max_size=30), st.integers(), st.booleans(),
    st.floats(allow_nan=False),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(st.text(max_size=8), inner, max_size=5),
    ),
    max_leaves=20,
)


@given(_values)
@settings(max_examples=200)
def test_value_round_trip_and_stable_reencoding(value: object) -> None:
    raw = encode_value(value)
    decoded = decode_value(raw)
    assert decoded == value
    assert encode_value(decoded) == raw, "cas relies on re-encoding a read value giving the same bytes"


@given(_values)
def test_equal_values_built_independently_encode_identically(value: object) -> None:
    rebuilt = decode_value(encode_value(value))  # a fresh object graph, equal to value
    assert encode_value(rebuilt) == encode_value(value)


@given(st.binary() | st.text() | st.integers() | st.floats(allow_nan=False) | st.booleans())
def test_plain_values_encode_to_the_bytes_cloudpickle_gives(value: object) -> None:
    """The fast path for bytes, str, int, float and bool (plain ``pickle``) stores exactly what
    cloudpickle would: data written before and after it compare equal (cas compares bytes)."""
    import cloudpickle

    assert encode_value(value) == cloudpickle.dumps(value, protocol=5)


def test_value_encoding_notes_from_the_docstring() -> None:
    assert encode_value(1) != encode_value(1.0) != encode_value(True)
    assert encode_value(0.0) != encode_value(-0.0)
    assert encode_value({"a": 1, "b": 2}) != encode_value({"b": 2, "a": 1})
    assert decode_value(encode_value(lambda x: x + 1))(1) == 2  # cloudpickle handles lambdas


def test_none_value_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="storing None is not allowed"):
        encode_value(None)


@pytest.mark.parametrize("value", [threading.Lock(), (x for x in range(3))])
def test_unpicklable_value_is_invalid_with_cause(value: object) -> None:
    with pytest.raises(InvalidRequestError, match="cannot be serialized") as info:
        encode_value(value)
    assert info.value.__cause__ is not None


def test_value_size_limit() -> None:
    limits = KVLimits(max_value_bytes=100)
    encode_value(b"x" * 50, limits)
    with pytest.raises(ValueTooLargeError, match="exceeding max_value_bytes=100"):
        encode_value(b"x" * 100, limits)


# -- client: pure helpers -------------------------------------------------------------
def test_seq_tracker_acks_the_finished_prefix() -> None:
    t = _SeqTracker()
    assert [t.allocate() for _ in range(4)] == [1, 2, 3, 4]
    assert t.can_allocate(5) and not t.can_allocate(4)
    assert t.acked == 0 and t.outstanding == 4
    t.finish(2)
    assert t.acked == 0
    t.finish(1)
    assert t.acked == 2
    t.finish(1)  # idempotent
    t.finish(4)
    assert t.acked == 2 and t.outstanding == 1
    t.finish(3)
    assert t.acked == 4 and t.outstanding == 0
    assert t.can_allocate(1)
    with pytest.raises(ValueError):
        t.finish(5)


@given(st.permutations(range(1, 21)), st.integers(0, 20))
def test_seq_tracker_acked_is_longest_finished_prefix(order: list[int], count: int) -> None:
    t = _SeqTracker()
    for _ in range(20):
        t.allocate()
    done = set(order[:count])
    for seq in order[:count]:
        t.finish(seq)
    prefix = 0
    while prefix + 1 in done:
        prefix += 1
    assert t.acked == prefix
    assert t.outstanding == 20 - count


def test_backoff_doubles_to_the_cap_with_jitter() -> None:
    b = _Backoff(random.Random(7))
    bases = []
    base = BACKOFF_INITIAL_S
    for _ in range(10):
        delay = b.next_delay()
        assert base / 2 <= delay <= base
        bases.append(base)
        base = min(base * 2, BACKOFF_MAX_S)
    assert bases[-1] == BACKOFF_MAX_S
    b.reset()
    assert b.next_delay() <= BACKOFF_INITIAL_S


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_route_follows_hints_and_probes_in_order() -> None:
    route = _ShardRoute("s", 0, (1, 2, 3), rng=random.Random(0))
    assert route.actor_name(2) == "raykv:s:0:2"
    assert route.leader_target(avoid=1) == 2
    assert route.leader_target(avoid=3) == 1
    assert route.note_not_leader(1, 3) is True and route.leader == 3
    assert route.leader_target() == 3
    assert route.note_not_leader(3, None) is False and route.leader is None
    assert route.note_not_leader(2, 2) is False and route.leader == 2  # "I lead, not yet ready": retry it later
    assert route.leader_target() == 2
    route.note_leader(2)
    assert route.leader_target() == 2 and route.leader_target(avoid=2) == 3
    # a hint naming a replica the route does not know: a member added since (replica repair)
    assert route.note_not_leader(2, 9) is True and route.leader == 9 and route.replica_ids == (1, 2, 3, 9)
    assert route.leader_target() == 9 and route.actor_name(9) == "raykv:s:0:9"


def test_route_avoids_suspects_until_they_recover() -> None:
    clock = FakeClock()
    route = _ShardRoute("s", 0, (1, 2, 3), suspect_s=1.0, clock=clock, rng=random.Random(0))
    route.note_leader(1)
    route.note_failure(1)
    assert route.leader is None and route.is_suspect(1)
    assert route.leader_target(avoid=1) == 2
    assert route.has_alternative(1)
    route.note_failure(2)
    route.note_failure(3)
    assert not route.has_alternative(1)
    assert route.leader_target(avoid=1) == 2  # all suspect: still a choice, not the avoided one
    clock.now += 1.5
    assert not route.is_suspect(1) and route.has_alternative(1)


def test_route_spreads_stale_reads_round_robin() -> None:
    clock = FakeClock()
    route = _ShardRoute("s", 0, (1, 2, 3), clock=clock, rng=random.Random(0))
    picks = [route.stale_target() for _ in range(6)]
    assert sorted(picks) == [1, 1, 2, 2, 3, 3]
    route.note_failure(2)
    assert 2 not in {route.stale_target() for _ in range(6)}
    assert route.stale_target(avoid=1) != 1


@pytest.mark.parametrize("args", [("", 0, (1,)), ("s", -1, (1,)), ("s", 0, ()), ("s", 0, (1, 1)),
                                  ("s", 0, (1, "2")), ("s", True, (1,))])
def test_route_rejects_bad_arguments(args: tuple) -> None:
    with pytest.raises(ConfigError):
        _ShardRoute(*args)


def test_check_consistency() -> None:
    for level in ("linearizable", "lease", "stale"):
        assert check_consistency(level) == level
    for bad in ("LINEARIZABLE", "strong", None, 1):
        with pytest.raises(InvalidRequestError):
            check_consistency(bad)


# -- client over a fake replica group -------------------------------------------------
class FakeGroup:
    """A replica group in one process: a real KV state machine, leader ``leader``.

    Implements the client transport: each call runs on a pool thread through
    ``hook(rid, method, args, run)`` (default: ``run()``), so tests can hold,
    lose or replace replies.
    """

    def __init__(self, ids: tuple[int, ...] = (1, 2, 3), leader: int | None = 2, hint: bool = True,
                 limits: KVLimits | None = None) -> None:
        self.ids = ids
        self.leader = leader
        self.hint = hint
        self.machine = KVStateMachine(limits)
        self.backend = MemoryBackend()
        self.index = 0
        self.lock = threading.Lock()
        self.calls: list[tuple[int, str, tuple]] = []
        self.hook = lambda rid, method, args, run: run()
        self.pool = concurrent.futures.ThreadPoolExecutor(16)

    # transport
    def call(self, rid: int, method: str, args: tuple) -> concurrent.futures.Future:
        with self.lock:
            self.calls.append((rid, method, args))
        return self.pool.submit(self.hook, rid, method, args, lambda: self.execute(rid, method, args))

    def close(self) -> None:
        pass

    # replica behaviour
    def execute(self, rid: int, method: str, args: tuple) -> object:
        with self.lock:
            if method == "register_session":
                return self._leader_only(rid) or self._register()
            if method == "submit":
                (writes,) = args
                refusal = self._leader_only(rid)
                return [refusal] * len(writes) if refusal else [self._apply(w) for w in writes]
            keys, level = args
            refusal = None if level == "stale" else self._leader_only(rid)
            return refusal or [self.backend.get(k) for k in keys]

    def _leader_only(self, rid: int) -> NotLeaderError | None:
        if rid == self.leader:
            return None
        return NotLeaderError(rid, self.leader if self.hint else None, 1)

    def _register(self) -> SessionGrant:
        self.index += 1
        return SessionGrant(self.machine.execute(self.index, RegisterSession(1000), self.backend).id)

    def _apply(self, write) -> object:
        """As the leader does: wrap the encoded op into a Request entry, then apply it."""
        try:
            data = encode_request(write.session, write.seq, write.acked_seq, 1000, write.op, self.machine.limits)
        except InvalidRequestError as exc:
            return exc
        self.index += 1
        return self.machine.apply(self.index, data, self.backend)

    # inspection
    def methods(self, method: str) -> list[tuple[int, str, tuple]]:
        with self.lock:
            return [c for c in self.calls if c[1] == method]

    def writes(self) -> list:
        return [w for _, _, (ws,) in self.methods("submit") for w in ws]

    def drop_session(self, sid: int) -> None:
        with self.lock:
            self.backend.delete_session(sid)

    def stored(self, key: object) -> object:
        with self.lock:
            raw = self.backend.get(encode_key(key))
        return None if raw is None else decode_value(raw)


@pytest.fixture
def group() -> FakeGroup:
    g = FakeGroup()
    yield g
    g.pool.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def make_client(group: FakeGroup):
    clients: list[Client] = []

    def make(**kwargs) -> Client:
        kwargs.setdefault("timeout_s", 5.0)
        kwargs.setdefault("call_timeout_s", 1.0)
        kwargs.setdefault("rng", random.Random(len(clients)))
        client = Client._over(group, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_basic_operations_find_the_leader(group: FakeGroup, make_client) -> None:
    kv = make_client()
    assert kv.get("k") is None and kv.get("k", default=7) == 7
    assert kv.put("k", {"v": [1, 2]}) is None
    assert kv.get("k") == {"v": [1, 2]}
    assert kv.get(b"k") is None  # a different key
    assert kv.cas("k", {"v": [1, 2]}, "new") is True
    assert kv.cas("k", {"v": [1, 2]}, "newer") is False
    assert kv.cas("fresh", None, 1) is True and kv.cas("fresh", None, 2) is False
    for level in ("linearizable", "lease", "stale"):
        assert kv.get("k", consistency=level) == "new"
    assert kv.delete("k") is True and kv.delete("k") is False
    assert kv.stats()["leader"] == 2
    assert len(group.methods("register_session")) - 1 <= 2  # at most one refusal per follower


def test_invalid_arguments_send_nothing(group: FakeGroup, make_client) -> None:
    kv = make_client()
    with pytest.raises(InvalidRequestError, match="consistency"):
        kv.get("k", consistency="strong")
    with pytest.raises(InvalidRequestError, match="None"):
        kv.put("k", None)
    with pytest.raises(InvalidRequestError, match="cas needs a new value"):
        kv.cas("k", 1, None)
    with pytest.raises(InvalidRequestError, match="int"):
        kv.delete(5)
    with pytest.raises(KeyTooLargeError):
        kv.put("x" * 600, 1)
    assert group.calls == []


def test_client_rejects_bad_configuration(group: FakeGroup) -> None:
    for kwargs in ({"timeout_s": 0}, {"timeout_s": float("inf")}, {"call_timeout_s": -1},
                   {"max_calls_in_flight": 0}, {"limits": {}}, {"replicas": ()}):
        with pytest.raises(ConfigError):
            Client._over(group, **kwargs)


def _hold(method: str, gate: threading.Event, entered: threading.Event | None = None):
    def hook(rid, m, args, run):
        if m == method:
            if entered is not None:
                entered.set()
            gate.wait(10)
        return run()
    return hook


def test_concurrent_writes_coalesce_into_one_call(group: FakeGroup, make_client) -> None:
    kv = make_client(max_calls_in_flight=1)
    kv.put("warm", 0)
    before = len(group.methods("submit"))
    gate = threading.Event()
    group.hook = _hold("submit", gate)

    async def main() -> None:
        tasks = [asyncio.ensure_future(kv.aput(f"k{i}", i)) for i in range(50)]
        await asyncio.sleep(0)  # every task has enqueued its write
        gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    submits = group.methods("submit")[before:]
    assert len(submits) <= 2, [len(c[2][0]) for c in submits]
    assert sum(len(c[2][0]) for c in submits) == 50
    assert all(group.stored(f"k{i}") == i for i in range(50))


def test_concurrent_reads_coalesce_per_level(group: FakeGroup, make_client) -> None:
    kv = make_client(max_calls_in_flight=1)
    kv.put("k", "v")
    before = len(group.methods("read"))
    gate = threading.Event()
    group.hook = _hold("read", gate)

    async def main() -> list:
        tasks = [asyncio.ensure_future(kv.aget("k")) for _ in range(30)]
        await asyncio.sleep(0)
        gate.set()
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == ["v"] * 30
    assert len(group.methods("read")[before:]) <= 2


def test_many_threads_share_one_client(group: FakeGroup, make_client) -> None:
    kv = make_client()

    def work(t: int) -> None:
        for i in range(20):
            kv.put((t, i).__repr__(), i)
            assert kv.get((t, i).__repr__()) == i
        assert kv.delete((t, 0).__repr__()) is True

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    stats = kv.stats()
    assert stats["pending"] == 0
    assert stats["acked_seq"] == 8 * 21  # every write answered
    seqs = [w.seq for w in group.writes()]
    assert len(set(seqs)) == 8 * 21


@pytest.mark.parametrize("lose", [False, True])
def test_seq_window_keeps_the_session_cache_from_filling(lose: bool) -> None:
    """Out-of-order retries must not wedge the session: no TOO_MANY_PENDING, every write lands."""
    limits = KVLimits(max_pending_per_session=3)
    group = FakeGroup(limits=limits)
    kv = Client._over(group, limits=limits, max_calls_in_flight=2, rng=random.Random(0))
    if lose:
        group.hook = _lose_first("submit")
    try:
        async def main() -> None:
            await asyncio.gather(*(kv.aput(f"k{i}", i) for i in range(40)))

        asyncio.run(main())
        assert all(group.stored(f"k{i}") == i for i in range(40))
        assert "errors.DefiniteError" not in kv.stats()  # never TOO_MANY_PENDING
        assert all(w.seq <= w.acked_seq + 3 for w in group.writes())
    finally:
        kv.close()
        group.pool.shutdown(wait=False)


def test_too_many_pending_answers_are_retried() -> None:
    group = FakeGroup(limits=KVLimits(max_pending_per_session=1))
    kv = Client._over(group, rng=random.Random(0))
    try:
        kv.put("a", 1)
        original = group.execute

        def crowded(rid, method, args):  # the first submit finds the cache full
            group.execute = original
            return [encode_result(Failed(ErrorCode.TOO_MANY_PENDING, "full"))] * len(args[0])

        group.execute = crowded
        kv.put("b", 2)
        assert group.stored("b") == 2 and kv.stats()["errors.DefiniteError"] == 1
    finally:
        kv.close()
        group.pool.shutdown(wait=False)


def test_registration_refused_as_invalid_fails_the_waiting_writes(group: FakeGroup, make_client) -> None:
    kv = make_client()
    group.hook = lambda rid, m, args, run: InvalidRequestError("no sessions here") if m == "register_session" \
        else run()
    with pytest.raises(InvalidRequestError, match="no sessions here"):
        kv.put("k", 1)
    assert group.methods("submit") == []


def test_acked_seq_rides_on_later_writes(group: FakeGroup, make_client) -> None:
    kv = make_client()
    for i in range(4):
        kv.put("k", i)
    assert [(w.seq, w.acked_seq) for w in group.writes()] == [(1, 0), (2, 1), (3, 2), (4, 3)]


def _lose_first(method: str, after_run=None):
    """The first ``method`` call executes, then its reply is lost in transport."""
    state = {"lost": False}

    def hook(rid, m, args, run):
        reply = run()
        if m == method and not state["lost"] and not isinstance(reply, NotLeaderError) \
                and not (isinstance(reply, list) and isinstance(reply[0], NotLeaderError)):
            state["lost"] = True
            if after_run is not None:
                after_run()
            raise ConnectionError("reply lost")
        return reply
    return hook


def test_lost_reply_is_retried_with_the_same_seq_and_applies_once(group: FakeGroup, make_client) -> None:
    kv = make_client()
    kv.put("warm", 0)
    group.hook = _lose_first("submit")
    assert kv.cas("k", None, 1) is True  # the retry is answered from the session cache
    attempts = [(w.session, w.seq) for w in group.writes()[1:]]
    assert len(attempts) >= 2 and len(set(attempts)) == 1
    assert group.stored("k") == 1
    assert kv.stats()["transport_errors"] == 1


def test_unanswered_call_times_out_and_is_retried(group: FakeGroup, make_client) -> None:
    kv = make_client(call_timeout_s=0.1, suspect_s=0.05)
    kv.put("warm", 0)
    gate = threading.Event()
    state = {"held": False}

    def hook(rid, m, args, run):
        if m == "submit" and not state["held"]:
            state["held"] = True
            gate.wait(10)  # this call's reply comes far too late
        return run()

    group.hook = hook
    try:
        assert kv.delete("warm") is True
        assert kv.stats()["call_timeouts"] >= 1
    finally:
        gate.set()


def test_expired_session_on_first_attempt_reregisters_transparently(group: FakeGroup, make_client) -> None:
    kv = make_client()
    kv.put("a", 1)
    first = kv.stats()["session"]
    group.drop_session(first)
    kv.put("b", 2)
    assert kv.stats()["session"] != first
    assert group.stored("b") == 2
    assert kv.stats()["registrations"] == 2


def test_expired_session_while_retrying_is_indeterminate(group: FakeGroup, make_client) -> None:
    kv = make_client()
    kv.put("a", 1)
    sid = kv.stats()["session"]
    group.hook = _lose_first("submit", after_run=lambda: group.backend.delete_session(sid))
    with pytest.raises(OperationTimeoutError, match="session expired") as info:
        kv.put("b", 2)
    assert isinstance(info.value, IndeterminateError)
    assert isinstance(info.value.__cause__, SessionExpiredError)
    assert group.stored("b") == 2  # it did apply: the error had to be indeterminate


def test_session_expired_without_a_new_session_is_definite(group: FakeGroup, make_client) -> None:
    kv = make_client(timeout_s=0.3)
    kv.put("a", 1)
    group.drop_session(kv.stats()["session"])
    group.hook = lambda rid, m, args, run: NotLeaderError(rid, None, 1) if m == "register_session" else run()
    with pytest.raises(SessionExpiredError):
        kv.put("b", 2)
    assert group.stored("b") is None


def test_no_leader_means_unavailable_and_nothing_applied(make_client) -> None:
    group = FakeGroup(leader=None)
    kv = Client._over(group, timeout_s=0.3, rng=random.Random(0))
    try:
        with pytest.raises(UnavailableError, match="NotLeaderError"):
            kv.put("k", 1)
        with pytest.raises(UnavailableError):
            kv.get("k")
        assert kv.get("k", consistency="stale") is None  # any replica serves stale reads
    finally:
        kv.close()
    assert group.backend.items() == []


def test_transport_failures_make_writes_indeterminate_and_reads_unavailable(group, make_client) -> None:
    kv = make_client(timeout_s=0.3)
    kv.put("warm", 0)

    def hook(rid, m, args, run):
        raise ConnectionError("actor died")

    group.hook = hook
    with pytest.raises(OperationTimeoutError, match="may or may not"):
        kv.put("k", 1)
    with pytest.raises(UnavailableError):
        kv.get("k")


def test_unreachable_replicas_make_writes_definitely_unavailable(make_client) -> None:
    class Nowhere:
        def call(self, rid, method, args):
            raise _CallNotSent(f"replica {rid} not found")

        def close(self) -> None:
            pass

    kv = Client._over(Nowhere(), timeout_s=0.3, rng=random.Random(0))
    try:
        with pytest.raises(UnavailableError, match="not found"):
            kv.put("k", 1)
    finally:
        kv.close()


def test_a_route_whose_actors_are_all_gone_is_a_changed_map(make_client) -> None:
    """Actors Ray does not know (a retired or re-placed shard) answer a definite
    ShardMapChangedError at once, so the store client re-reads its map instead of timing out."""
    class Retired:
        def __init__(self) -> None:
            self.asked: list[tuple[int, str]] = []

        def call(self, rid, method, args):
            self.asked.append((rid, method))
            raise _ActorGone(f"replica {rid} not found")

        def close(self) -> None:
            pass

    transport = Retired()
    kv = Client._over(transport, timeout_s=30.0, rng=random.Random(0))
    try:
        start = time.monotonic()
        with pytest.raises(ShardMapChangedError, match="out of date"):
            kv.get("k")
        with pytest.raises(ShardMapChangedError, match="out of date"):
            kv.get("k", consistency="stale")
        with pytest.raises(ShardMapChangedError, match="out of date"):
            kv.put("k", 1)  # its session registration finds no actor: the write was never sent
        assert time.monotonic() - start < 10
        assert {rid for rid, _ in transport.asked} == {1, 2, 3}
        assert "submit" not in {m for _, m in transport.asked}
    finally:
        kv.close()


def test_a_write_that_may_have_applied_is_not_called_a_changed_map(group: FakeGroup, make_client) -> None:
    """Once an attempt may have applied, actors vanishing afterwards cannot make the write definite."""
    kv = make_client(timeout_s=0.5)
    kv.put("warm", 0)

    def hook(rid, m, args, run):
        if m == "submit" and not hook.lost:
            hook.lost = True
            raise ConnectionError("the call was lost")
        raise _ActorGone(f"replica {rid} not found")

    hook.lost = False
    group.hook = hook
    with pytest.raises(OperationTimeoutError, match="may or may not"):
        kv.put("k", 1)


def _reply_once(method: str, error: Exception):
    state = {"done": False}

    def hook(rid, m, args, run):
        if m == method and rid == 2 and not state["done"]:
            state["done"] = True
            return [error] * len(args[0]) if m == "submit" else error
        return run()
    return hook


@pytest.mark.parametrize("error", [LeadershipLostError("lost"), OperationTimeoutError("slow"),
                                   ProposalDroppedError("busy")])
def test_retryable_replies_are_retried_with_the_same_seq(group, make_client, error) -> None:
    kv = make_client()
    kv.put("warm", 0)
    group.hook = _reply_once("submit", error)
    assert kv.delete("warm") is True
    attempts = [(w.session, w.seq) for w in group.writes()[1:]]
    assert len(attempts) >= 2 and len(set(attempts)) == 1


def test_invalid_request_reply_is_raised_at_once(group: FakeGroup, make_client) -> None:
    kv = make_client(timeout_s=30.0)
    kv.put("warm", 0)
    group.hook = _reply_once("submit", InvalidRequestError("refused"))
    start = time.monotonic()
    with pytest.raises(InvalidRequestError, match="refused"):
        kv.put("k", 1)
    assert time.monotonic() - start < 10


def test_stale_reads_spread_over_all_replicas(group: FakeGroup, make_client) -> None:
    kv = make_client()
    kv.put("k", 1)
    before = len(group.methods("read"))
    for _ in range(6):
        assert kv.get("k", consistency="stale") == 1
    assert {rid for rid, _, _ in group.methods("read")[before:]} == {1, 2, 3}


def test_stale_read_falls_back_when_a_replica_fails(group: FakeGroup, make_client) -> None:
    kv = make_client()
    kv.put("k", 1)

    def hook(rid, m, args, run):
        if rid == 3:
            raise ConnectionError("down")
        return run()

    group.hook = hook
    assert [kv.get("k", consistency="stale") for _ in range(6)] == [1] * 6


def test_async_api_does_not_block_the_loop(group: FakeGroup, make_client) -> None:
    kv = make_client()
    gate, entered = threading.Event(), threading.Event()

    async def main() -> int:
        assert await kv.aput("a", 1) is None
        assert await kv.aget("a") == 1
        assert await kv.acas("a", 1, 2) is True
        assert await kv.adelete("a") is True
        assert await kv.aget("a", default="gone") == "gone"
        group.hook = _hold("submit", gate, entered)
        put = asyncio.ensure_future(kv.aput("b", 1))
        ticks = 0
        while not entered.is_set():  # the loop keeps running while the write waits
            ticks += 1
            await asyncio.sleep(0.001)
        gate.set()
        await put
        return ticks

    assert asyncio.run(main()) >= 1
    assert group.stored("b") == 1


def test_cancelled_write_is_abandoned_and_acked(group: FakeGroup, make_client) -> None:
    kv = make_client()
    kv.put("warm", 0)
    gate, entered = threading.Event(), threading.Event()
    group.hook = _hold("submit", gate, entered)

    async def main() -> None:
        task = asyncio.ensure_future(kv.aput("x", 1))
        await asyncio.to_thread(entered.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert kv.stats()["acked_seq"] == 2  # seq 2 (x) abandoned, so acknowledged
    group.hook = lambda rid, m, args, run: run()
    gate.set()
    kv.put("y", 2)
    assert group.writes()[-1].acked_seq == 2


def test_close_fails_pending_requests_and_refuses_new_ones(group: FakeGroup) -> None:
    kv = Client._over(group, rng=random.Random(0))
    kv.put("warm", 0)
    gate, entered = threading.Event(), threading.Event()
    group.hook = _hold("submit", gate, entered)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(kv.put, "k", 1)
        assert entered.wait(5)
        kv.close()
        with pytest.raises(OperationTimeoutError, match="closed"):
            pending.result(5)
    gate.set()
    with pytest.raises(ShutdownError):
        kv.put("k", 2)
    with kv:  # closing twice is harmless
        pass
