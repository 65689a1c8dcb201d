"""Unit tests of the replica engine's pieces (``raykv.replica``): time, pending requests, the start
rule, the memory store against the LMDB one, the amnesiac stand-in, and the engine's order of
persist, send and apply, watched through recording ports."""

from __future__ import annotations

import random

import pytest

from raykv.errors import LeadershipLostError, NotLeaderError, ReplicaDataLostError
from raykv.kv import encode_command
from raykv.kv.codec import encode_op
from raykv.kv.commands import Put
from raykv.kv.limits import KVLimits
from raykv.protocol import SessionGrant, Write
from raykv.raft.types import ConfChange, ConfChangeKind, ConfChangeSingle, Entry, HardState
from raykv.replica.amnesiac import AmnesiacReplica
from raykv.replica.clock import Stamp, TickClock
from raykv.replica.engine import ReplicaEngine
from raykv.replica.memstore import MemoryReplicaStore
from raykv.replica.options import ReplicaOptions
from raykv.replica.pending import PendingReads, PendingWrites, WriteBatch
from raykv.replica.startup import StartFacts, StartMode, start_mode


# -- time -------------------------------------------------------------------------------------------
def test_tick_clock_counts_whole_ticks_and_catches_up_after_a_pause() -> None:
    clock = TickClock(0.05, max_catch_up=100, start_s=100.0)
    assert clock.due(100.0) == 0
    assert clock.due(100.051) == 1
    assert clock.due(100.051) == 0
    assert clock.due(100.551) == 10  # a pause of ten ticks: all delivered on resume
    assert clock.due(160.551) == 100  # a long freeze: bounded catch-up (enough to expire leases)
    assert clock.due(150.0) == 0, "a reading from the past counts as no time"
    assert 0 <= clock.seconds_to_next(160.56) <= 0.05


# -- pending requests ---------------------------------------------------------------------------------
def _answers():
    got: dict[int, object] = {}
    return got, lambda rid, value: got.__setitem__(rid, value)


def test_pending_writes_answer_by_index_and_term() -> None:
    got, complete = _answers()
    pending = PendingWrites()
    batch = WriteBatch.of(7, 3, complete)
    for slot, index in enumerate((5, 6, 7)):
        pending.add(index, 2, batch, slot)
    pending.applied(5, 2, b"ok5")
    pending.applied(6, 3, b"other term")  # replaced by a new leader's entry
    assert 7 not in got
    pending.fail_all(LeadershipLostError("gone"))
    outcomes = got[7]
    assert outcomes[0] == b"ok5"
    assert isinstance(outcomes[1], LeadershipLostError) and isinstance(outcomes[2], LeadershipLostError)
    assert len(pending) == 0


def test_a_retried_write_attaches_to_its_pending_proposal() -> None:
    got, complete = _answers()
    pending = PendingWrites()
    pending.add(9, 2, WriteBatch.of(1, 1, complete), 0, request=(3, 17))
    assert pending.attach((3, 17), WriteBatch.of(2, 1, complete), 0)
    assert not pending.attach((3, 18), WriteBatch.of(3, 1, complete), 0)
    pending.applied(9, 2, b"result")
    assert got == {1: [b"result"], 2: [b"result"]}
    assert not pending.attach((3, 17), WriteBatch.of(4, 1, complete), 0), "forgotten once applied"


def test_pending_reads_share_one_round_and_wait_for_apply() -> None:
    reads = PendingReads()
    reads.add(lambda s: b"a", False, 1, 0.0)
    reads.add(lambda s: b"b", False, 2, 0.0)
    reads.add(lambda s: b"c", True, 3, 0.0)
    rounds: list[tuple[bytes, bool]] = []
    reads.start_rounds(lambda ctx, lease: rounds.append((ctx, lease)), lambda g, e: None)
    assert sorted(lease for _, lease in rounds) == [False, True], "one round per kind, not per read"
    plain = next(ctx for ctx, lease in rounds if not lease)
    reads.confirmed(plain, 10)
    assert reads.ready(9) == []
    (group,) = reads.ready(10)
    assert [rid for _, rid in group.waiters] == [1, 2]
    assert [rid for g in reads.fail_unconfirmed() for _, rid in g.waiters] == [3]


# -- the start rule -----------------------------------------------------------------------------------
@pytest.mark.parametrize("facts, mode", [
    (StartFacts(True, True, True, True, True), StartMode.OPEN),
    (StartFacts(True, False, False, False, False), StartMode.OPEN),
    (StartFacts(False, True, True, False, False), StartMode.FOUND),
    (StartFacts(False, False, True, False, False), StartMode.FRESH),
    (StartFacts(False, True, True, True, False), StartMode.AMNESIAC),   # its directory was wiped
    (StartFacts(False, True, True, False, True), StartMode.AMNESIAC),   # a Ray restart on a new disk
    (StartFacts(False, False, True, False, True), StartMode.AMNESIAC),  # a repair replacement, same
    (StartFacts(False, True, False, False, False), StartMode.AMNESIAC), # reopened, must exist
])
def test_a_replica_that_existed_never_comes_back_as_an_empty_voter(facts, mode) -> None:
    assert start_mode(facts) is mode


def test_the_amnesiac_refuses_everything_and_says_why() -> None:
    class Port:
        dropped: list = []

        def drop_snapshot(self, data):
            self.dropped.append(data)

    replica = AmnesiacReplica(2, 5, "its directory is gone", Port())
    at = Stamp(1.0, 1000)
    replica.deliver(("anything",), at)
    replica.submit(1, [], at)
    replica.read_keys(2, [b"k"], "stale", at)
    answers = replica.process(at)
    assert [rid for rid, _ in answers] == [1, 2]
    assert all(isinstance(v, ReplicaDataLostError) and "shard 5" in str(v) for _, v in answers)
    assert replica.status()["mode"] == "amnesiac" and replica.process(at) == []


# -- the memory store behaves like the LMDB store ---------------------------------------------------------
def _stores(tmp_path):
    from raykv.storage.replica_store import ReplicaId, ReplicaStore

    return [MemoryReplicaStore(), ReplicaStore(str(tmp_path), ReplicaId("conf", 1, 1))]


def _observable(store) -> tuple:
    with store.view() as view:
        data = list(view.items_from(b""))
    return (store.hard_state(), store.applied_index(), store.first_index(), store.last_index(),
            store.snapshot().meta, store.initial_state()[1], data)


def test_memory_store_conforms_to_the_lmdb_store(tmp_path) -> None:
    from raykv.raft import bootstrap_snapshot
    from raykv.raft.types import Snapshot

    stores = _stores(tmp_path)
    steps = [
        lambda s: s.persist(HardState(1, 0, 1), snapshot=bootstrap_snapshot((1, 2, 3))),
        lambda s: s.persist(HardState(2, 1, 1), [Entry(2, 2, data=b"a"), Entry(3, 2, data=b"b")]),
        lambda s: s.persist(entries=[Entry(3, 3, data=b"c")], apply=lambda tx: (tx.put(b"k1", b"v1"), tx.set_applied(2))),
        lambda s: s.apply(lambda tx: (tx.put(b"k2", b"v2"), tx.delete(b"k1"), tx.put_session(5, b"s"),
                                      tx.set_applied(3), tx.set_hard_state(HardState(3, 1, 3)))),
        lambda s: s.create_snapshot(3, s.initial_state()[1], None),
        lambda s: s.compact(2),
        lambda s: s.persist(HardState(4, 0, 9), snapshot=Snapshot(s.snapshot().meta.__class__(9, 4, s.initial_state()[1])),
                            snapshot_rows=lambda: iter([(0, b"z", b"1"), (1, (7).to_bytes(8, "big"), b"s7")])),
    ]
    for step in steps:
        for store in stores:
            step(store)
        assert _observable(stores[0]) == _observable(stores[1])
    with pytest.raises(ValueError):
        stores[0].apply(lambda tx: (tx.put(b"lost", b"x"), tx.set_applied(1)))
    assert _observable(stores[0]) == _observable(stores[1]), "a failed apply leaves nothing behind"
    stores[1].close()


# -- the engine's order of persist, send and apply --------------------------------------------------------
class Recorder:
    """Storage and shell ports that log every call the engine makes, in order."""

    def __init__(self, store) -> None:
        self.store, self.calls = store, []

    def __getattr__(self, name):  # storage: delegate and log the writes
        target = getattr(self.store, name)
        if name in ("persist", "apply"):
            def logged(*args, **kwargs):
                self.calls.append(name)
                return target(*args, **kwargs)
            return logged
        return target

    # shell
    def send(self, messages):
        self.calls.append("send")
        self.sent = list(messages)

    def send_snapshot(self, message):
        self.calls.append("send_snapshot")

    def probe(self, peer):
        self.calls.append("probe")

    def snapshot_rows(self, data):
        return lambda: []

    def drop_snapshot(self, data):
        pass


def _leader_of_one(options: ReplicaOptions | None = None) -> tuple[ReplicaEngine, Recorder]:
    """A one-voter group: its replica elects itself on its first election timeout."""
    port = Recorder(MemoryReplicaStore.founding((1,)))
    engine = ReplicaEngine(1, 0, port, options or ReplicaOptions(metrics=False), random.Random(1), port,
                           Stamp(10.0, 1000))
    t = 10.0
    while engine.node.role.value != "leader":
        t += 0.05
        engine.process(Stamp(t, 1000))
    return engine, port


def test_a_write_is_persisted_and_applied_in_one_write_before_anything_is_answered() -> None:
    engine, port = _leader_of_one()
    engine.register_session(1, Stamp(20.0, 2000))
    port.calls.clear()
    (answer,) = engine.process(Stamp(20.01, 2000))
    assert answer[0] == 1 and isinstance(answer[1], SessionGrant)
    assert port.calls == ["persist"], "one synced write: the entry and its effect (one voter: nothing to send)"
    op = encode_op(Put(b"k", b"v"))
    engine.submit(2, [Write(answer[1].session, 1, 0, op)], Stamp(20.02, 2000))
    assert engine.process(Stamp(20.03, 2000))[0][0] == 2
    engine.read_keys(3, [b"k"], "linearizable", Stamp(20.04, 2000))
    assert engine.process(Stamp(20.05, 2000)) == [(3, [b"v"])]


def test_a_configuration_change_is_applied_alone_after_the_write_that_persisted_it() -> None:
    """Never fused: the configuration takes effect in a write of its own, with the applied index."""
    engine, port = _leader_of_one()
    engine.change_membership(1, ConfChange((ConfChangeSingle(ConfChangeKind.ADD_LEARNER, 2),)), Stamp(20.0, 2000))
    port.calls.clear()
    answers = engine.process(Stamp(20.01, 2000))
    assert port.calls == ["persist", "apply"], port.calls
    assert answers == [(1, {"voters": [1], "learners": [2], "joint": False})]


def test_a_follower_refuses_writes_and_confirmed_reads_but_serves_stale_ones() -> None:
    port = Recorder(MemoryReplicaStore.founding((1, 2, 3)))
    engine = ReplicaEngine(2, 0, port, ReplicaOptions(metrics=False), random.Random(1), port, Stamp(5.0, 1))
    at = Stamp(5.01, 1)
    engine.submit(1, [Write(1, 1, 0, encode_op(Put(b"k", b"v")))], at)
    engine.read_keys(2, [b"k"], "linearizable", at)
    engine.read_keys(3, [b"k"], "stale", at)
    answers = dict(engine.process(at))
    assert isinstance(answers[1][0], NotLeaderError) and isinstance(answers[2], NotLeaderError)
    assert answers[3] == [None]


def test_time_is_taken_from_each_input_not_from_the_turn() -> None:
    """Hole 1's mechanism: a follower dates a heartbeat by the stamp of the input that brings it.
    Stamped with the time its turn began, the same heartbeat, handled 0.6 s into a long turn,
    would be followed by 0.6 s of catch-up ticks: the follower would count time that passed
    before the heartbeat as time since it, and stop refusing votes too early."""
    from raykv.raft.messages import Heartbeat

    def elapsed_after(heartbeat_stamp: float) -> int:
        port = Recorder(MemoryReplicaStore.founding((1, 2, 3)))
        engine = ReplicaEngine(2, 0, port, ReplicaOptions(metrics=False), random.Random(1), port, Stamp(5.0, 1))
        engine.deliver([Heartbeat(1, 2, 2, 0)], Stamp(heartbeat_stamp, 1))
        engine.process(Stamp(5.625, 1))
        assert engine.node.lead == 1
        return engine.node.election_elapsed

    assert elapsed_after(5.6) <= 1, "per input: the heartbeat is dated when it is handled"
    assert elapsed_after(5.0) >= 11, "per turn: it would be dated when the turn began"


def test_limits_are_checked_where_commands_enter() -> None:
    with pytest.raises(ValueError):
        encode_command(Put(b"", b"v"), KVLimits())


def test_no_command_a_client_can_send_crashes_a_replica() -> None:
    """Malformed or forbidden operations written straight to a leader (as a raw
    ``ShardClient.write_batch`` could) each get an error of their own -- refused where they enter
    or ``BAD_COMMAND`` when applied -- and the replica goes on serving. A write to raykv's own
    range-state row would otherwise make every later apply fail, on every replica."""
    from raykv.kv.codec import decode_result
    from raykv.kv.commands import Batch, Cas, Delete, ErrorCode, Failed
    from raykv.kv.ranges import RANGE_KEY

    engine, _ = _leader_of_one()
    engine.register_session(1, Stamp(20.0, 2000))
    session = engine.process(Stamp(20.01, 2000))[0][1].session
    bad_ops = [encode_op(Put(RANGE_KEY, b"garbage")), encode_op(Delete(RANGE_KEY)),
               encode_op(Cas(b"\x00x", None, b"v")), encode_op(Batch((Put(b"ok", b"v"), Put(RANGE_KEY, b"")))),
               b"\x01", b"\x01\x02", b"\x01\x02" + b"\xff" * 9, b"garbage", b"\x01\x01\x00\x00\x00\x05short"]
    writes = [Write(session, seq, seq - 1, op) for seq, op in enumerate(bad_ops, 1)]
    engine.submit(2, writes, Stamp(20.02, 2000))
    (rid, outcomes), = engine.process(Stamp(20.03, 2000))
    for op, outcome in zip(bad_ops, outcomes):
        refused = isinstance(outcome, Exception) or (isinstance(decode_result(outcome), Failed)
                                                     and decode_result(outcome).code is ErrorCode.BAD_COMMAND)
        assert refused, (op, outcome)
    good = Write(session, len(bad_ops) + 1, len(bad_ops), encode_op(Put(b"k", b"v")))
    engine.submit(3, [good], Stamp(20.04, 2000))
    engine.read_keys(4, [b"k"], "linearizable", Stamp(20.05, 2000))
    answers = dict(engine.process(Stamp(20.06, 2000)))
    assert answers[4] == [b"v"] and engine.status()["range"] is None
