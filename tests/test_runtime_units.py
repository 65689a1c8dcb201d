"""Unit tests of the runtime's Ray-free pieces: link faults, replica options, a refused resharding step."""

from __future__ import annotations

import random

import pytest

from raykv.errors import ConfigError
from raykv.runtime.faults import FaultPlan, LinkFault, LinkFaults
from raykv.replica.options import ReplicaOptions


def test_link_faults_drop_and_delay_only_configured_links() -> None:
    plan = FaultPlan.partition([1], [2, 3])
    assert LinkFaults(1, plan, random.Random(0)).verdict(2) is None
    assert LinkFaults(2, plan, random.Random(0)).verdict(1) is None
    assert LinkFaults(2, plan, random.Random(0)).verdict(3) == 0.0
    one_way = FaultPlan.partition([1], [2], one_way=True)
    assert LinkFaults(1, one_way, random.Random(0)).verdict(2) is None
    assert LinkFaults(2, one_way, random.Random(0)).verdict(1) == 0.0
    delayed = FaultPlan({(1, 2): LinkFault(drop=0.0, delay_s=0.2)})
    assert LinkFaults(1, delayed, random.Random(0)).verdict(2) == 0.2
    lossy = LinkFaults(1, FaultPlan({(1, 2): LinkFault(drop=0.5)}), random.Random(1))
    verdicts = [lossy.verdict(2) for _ in range(400)]
    assert 100 < verdicts.count(None) < 300
    assert FaultPlan.isolate(2, [1, 2, 3]).links.keys() == {(2, 1), (2, 3), (1, 2), (3, 2)}


@pytest.mark.parametrize("bad", [dict(tick_ms=0), dict(election_ticks=True), dict(call_deadline_s=0),
                                 dict(max_catch_up_ticks=5), dict(compact_keep_entries=-1)])
def test_replica_options_reject_bad_values(bad) -> None:
    with pytest.raises(ConfigError):
        ReplicaOptions(**bad)


# -- resharding: what a refused step does (raykv.runtime.scale.Resharder._refused) ----------------
class _DictMeta:
    """The two calls a Resharder makes of its meta ShardClient, over a dict (compare-and-set exact)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes):
        return self.data.get(key)

    def cas(self, key: bytes, expected, new) -> bool:
        if self.data.get(key) != expected:
            return False
        self.data[key] = new
        return True


def _record_in_phase(phase: str, fenced: bool, epoch: int = 1):
    """A resharder (driver epoch ``epoch``) of a merge in ``phase``, whose source group answers
    that the range is ``fenced`` or not (the group's word, not the record's, decides)."""
    from raykv.runtime.catalog import SCALE_OP_KEY
    from raykv.runtime.scale import Resharder
    from raykv.runtime.scaleop import ScaleOp

    meta = _DictMeta()
    step = {"kind": "merge", "src": 2, "dst": 1, "lo": b"sm".hex(), "hi": None, "replicas": None,
            "retire_after_ms": 0, "src_rids": [1, 2, 3], "dst_rids": [1, 2, 3], "phase": phase}
    meta.data[SCALE_OP_KEY] = ScaleOp(id=1, target=1, steps_total=1, step=step, driver=1).encode()
    resharder = Resharder("s", meta, "/nonexistent", None, lambda raw: None, epoch=epoch)
    resharder._fenced = lambda op: fenced
    return resharder, meta


def test_a_step_refused_before_the_fence_fails_the_operation_and_cleans_up_next() -> None:
    from raykv.errors import PlacementError

    resharder, _ = _record_in_phase("fence", fenced=False)
    resharder._refused(PlacementError("shard 2: FENCE refused"))
    op, _ = resharder.load()
    assert op.state == "failed" and "FENCE refused" in op.error and op.step["cleanup"] is True
    aborted = []
    resharder._change = lambda shard, rids, action, lo, hi, rows=(), gen=0: aborted.append((shard, action.name, gen))
    assert resharder.run_once() is True, "the failed step's cleanup is the next thing to do"
    assert aborted == [(1, "INGEST_ABORT", (1 << 32) | 1)], "the merge target's ingest is aborted"
    op, _ = resharder.load()
    assert op.step["cleanup"] is False and resharder.run_once() is False


def test_a_step_refused_while_its_range_is_fenced_is_retried_with_its_error_shown() -> None:
    """Even in a phase before the fence by the record: the source says the fence holds (it was
    applied, the record not yet saved), so giving up would leave the range unavailable."""
    from raykv.errors import PlacementError

    for phase in ("fence", "copy"):
        resharder, _ = _record_in_phase(phase, fenced=True)
        with pytest.raises(PlacementError):
            resharder._refused(PlacementError("shard 1: INGEST_ROWS refused"))
        op, _ = resharder.load()
        assert op.state == "running" and "INGEST_ROWS refused" in op.error and "retrying" in op.error
        assert "error: shard 1" in op.describe()


def test_a_record_write_that_loses_a_race_is_retried_not_a_refusal() -> None:
    """Another driver writes the record between this one's read and its compare-and-set: the
    operation goes on (the next turn reads the record again), it is not failed."""
    resharder, meta = _record_in_phase("fence", fenced=False, epoch=2)
    from raykv.runtime.catalog import SCALE_OP_KEY
    from raykv.runtime.scaleop import ScaleOp

    def raced_phase(op, raw):
        late = ScaleOp.decode(raw)
        late.error = "written by the older driver meanwhile"
        meta.data[SCALE_OP_KEY] = late.encode()
        op.step["phase"] = "copy"
        resharder._save(op, raw)

    resharder._run_phase = raced_phase
    assert resharder.run_once() is True
    op, _ = resharder.load()
    assert op.state == "running" and op.step["phase"] == "fence" and op.error == "written by the older driver meanwhile"


def test_a_step_takes_in_the_replicas_repair_gave_its_groups() -> None:
    """Repair ran while the step backed off and replaced the source's replica 2 by 4: the next
    phase reaches (and a merge's retire removes) replica 4 too; 2 stays listed (skipped if gone)."""
    from raykv.placement import ShardMap, ShardSpec
    from raykv.runtime.catalog import SHARD_MAP_KEY

    resharder, meta = _record_in_phase("fence", fenced=False)
    three = ((1, "h1"), (2, "h2"), (3, "h3"))
    repaired = ((1, "h1"), (4, "h4"), (3, "h3"))
    meta.data[SHARD_MAP_KEY] = ShardMap("s", 3, (ShardSpec(1, b"", b"sm", three), ShardSpec(2, b"sm", None, repaired))).encode()
    reached = []
    resharder._phase_fence = lambda op, move: reached.append((op.step["src_rids"], op.step["dst_rids"])) or "copy"
    assert resharder.run_once() is True
    op, _ = resharder.load()
    assert reached == [([1, 2, 3, 4], [1, 2, 3])] and op.step["src_rids"] == [1, 2, 3, 4]
    assert op.step["phase"] == "copy"


def test_a_superseded_driver_cannot_write_the_scale_record() -> None:
    from raykv.errors import DriverSupersededError

    resharder, meta = _record_in_phase("fence", fenced=False, epoch=1)
    newer, _ = _record_in_phase("fence", fenced=False, epoch=2)
    newer.meta = meta
    op, raw = newer.load()
    newer._save(op, raw)  # epoch 2 writes the record
    with pytest.raises(DriverSupersededError):
        resharder._refused(RuntimeError("late"))
    assert resharder.load()[0].state == "running", "the old driver did not fail the operation"


def test_the_auto_repair_switch_is_kept_in_the_meta_group() -> None:
    """On unless turned off; a second reader (a restarted router) sees what the first set."""
    from raykv.runtime.catalog import auto_repair_enabled, set_auto_repair

    meta = _DictMeta()
    assert auto_repair_enabled(meta)
    set_auto_repair(meta, False)
    assert not auto_repair_enabled(meta) and meta.data[b"autorepair"] == b"off"
    set_auto_repair(meta, True)
    assert auto_repair_enabled(meta)


def test_messages_for_the_sender_of_a_call_go_back_in_its_reply_slot() -> None:
    """The transport hands what a turn has for a caller to that call's slot (its return value);
    once the call returned, or with a fault plan installed, messages go in calls of their own."""
    from types import SimpleNamespace

    from raykv.replica.options import ReplicaOptions
    from raykv.runtime.faults import FaultPlan
    from raykv.runtime.transport import ReplySlot, Transport

    transport = Transport(1, lambda pid: f"peer-{pid}", ReplicaOptions(metrics=False), lambda fn: fn())
    transport._handle = lambda peer: None  # no Ray here: a message that needs a call of its own is lost
    ack, other = SimpleNamespace(frm=1, to=2), SimpleNamespace(frm=1, to=3)
    slot = ReplySlot(2)
    transport.open_reply(slot)
    transport.send([ack, other])
    transport.release_replies()
    assert slot.wait(5.0) == (ack,) and transport.replied == 1 and transport.lost == 1
    transport.open_reply(slot)  # a closed slot (its call returned) takes nothing more
    transport.send([ack])
    assert transport.replied == 1 and transport.lost == 2
    transport.release_replies()

    waiting = ReplySlot(2)
    transport.set_faults(FaultPlan.isolate(1, [2]))
    transport.open_reply(waiting)
    transport.send([ack])  # a fault plan decides about every message: none rides a reply
    transport.release_replies()
    assert waiting.wait(0.1) == () and transport.replied == 1


def test_a_reply_slot_not_released_in_time_returns_what_it_has_and_closes() -> None:
    from types import SimpleNamespace

    from raykv.runtime.transport import ReplySlot

    slot, ack = ReplySlot(2), SimpleNamespace(frm=1, to=2)
    assert slot.take([ack]) is True
    assert slot.wait(0.01) == (ack,)
    assert slot.take([ack]) is False, "after the call returned the loop must send it another way"


def test_the_loop_looks_for_replies_often_only_while_a_recent_call_is_in_flight() -> None:
    from raykv.replica.options import ReplicaOptions
    from raykv.runtime import transport as tr

    transport = tr.Transport(1, lambda pid: f"peer-{pid}", ReplicaOptions(metrics=False), lambda fn: fn())
    assert transport.seconds_to_next_event(100.0) is None
    peer = transport._peer(2)
    deadline_s = transport.options.call_deadline_s
    peer.in_flight[1] = (100.0 + deadline_s - 0.001, object(), 1)  # sent 1 ms ago
    assert transport.seconds_to_next_event(100.0) == tr.REPLY_POLL_S
    peer.in_flight[1] = (100.0 + deadline_s - 1.0, object(), 1)  # sent 1 s ago: a slow or lost peer
    assert transport.seconds_to_next_event(100.0) == tr.SLOW_REPLY_POLL_S


def test_a_peer_whose_calls_missed_their_deadline_gets_no_new_call_until_one_of_them_ends(monkeypatch) -> None:
    """A call given up on still sits in Ray's queue for that peer: more calls would only queue
    behind it and run, stale, after the heal. So the peer gets none until a stalled call ends
    (the connection moves again), or one alone after ``STALL_RETRY_S``."""
    from types import SimpleNamespace

    from raykv.replica.options import ReplicaOptions
    from raykv.runtime import transport as tr

    sent, done = [], set()

    class Handle:
        class deliver:  # noqa: N801 -- stands for the actor method
            @staticmethod
            def remote(batch):
                sent.append(batch)
                return f"ref{len(sent)}"

    clock = [100.0]
    monkeypatch.setattr(tr.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(tr, "_finished", lambda refs: [r for r in refs if r in done])
    monkeypatch.setattr(tr, "_call_results", lambda refs: ({r: () for r in refs}, {}))
    transport = tr.Transport(1, lambda pid: f"peer-{pid}", ReplicaOptions(metrics=False), lambda fn: fn())
    transport._handle = lambda peer: Handle
    msg = SimpleNamespace(frm=1, to=2)
    transport.send([msg])
    assert len(sent) == 1
    clock[0] += transport.options.call_deadline_s + 0.1
    assert transport.poll(clock[0]) == {2}, "the overdue call makes the peer unreachable"
    for _ in range(5):
        transport.send([msg])
    assert len(sent) == 1 and transport.lost == 5, "nothing more queues behind the stalled call"
    clock[0] += tr.STALL_RETRY_S
    transport.send([msg, msg])
    transport.send([msg])
    assert len(sent) == 2, "after STALL_RETRY_S one call goes, alone"
    done.add("ref1")  # the connection moves again: the first stalled call ends
    transport.poll(clock[0])
    transport.send([msg])
    assert len(sent) == 3 and not transport.peers[2].stalled, "pipelining resumes"


def test_every_member_gets_a_call_now_and_then_so_a_connection_exists_before_any_cut(monkeypatch) -> None:
    """A first call made during a cut needs a new connection, which gRPC retries with a backoff
    growing to minutes: the transport calls each member at least every ``WARM_EVERY_S`` (an empty
    ``deliver``), but never one with calls in flight, stalled or waiting, and never itself."""
    from types import SimpleNamespace

    from raykv.replica.options import ReplicaOptions
    from raykv.runtime import transport as tr

    sent: list[tuple[str, tuple]] = []

    def handle(name):
        return SimpleNamespace(deliver=SimpleNamespace(remote=lambda batch: sent.append((name, batch)) or object()))

    clock = [100.0]
    monkeypatch.setattr(tr.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(tr, "_finished", lambda refs: list(refs))
    monkeypatch.setattr(tr, "_call_results", lambda refs: ({r: () for r in refs}, {}))
    transport = tr.Transport(1, lambda pid: f"peer-{pid}", ReplicaOptions(metrics=False), lambda fn: fn())
    transport._handle = lambda peer: handle(peer.name)
    transport.warm([1, 2, 3], clock[0])
    assert sent == [("peer-2", ()), ("peer-3", ())] and transport.warmed == 2
    transport.poll(clock[0])  # both answered
    clock[0] += tr.WARM_EVERY_S / 2
    transport.send([SimpleNamespace(frm=1, to=2)])  # peer 2 gets a real call
    clock[0] += tr.WARM_EVERY_S / 2
    transport.poll(clock[0])  # answered too
    transport.warm([1, 2, 3], clock[0])
    assert [name for name, _ in sent] == ["peer-2", "peer-3", "peer-2", "peer-3"], "peer 2 was called lately"
    assert sent[-1] == ("peer-3", ())


def test_a_leader_call_passes_over_a_replica_that_lost_its_data(monkeypatch) -> None:
    """A split's new group whose founder on a killed host came back amnesiac still has a majority:
    the group port asks the others instead of returning the amnesiac's refusal (the host test
    bed's kill+scale run wedged a split on it)."""
    from raykv.errors import NotLeaderError, ReplicaDataLostError
    from raykv.runtime import groups

    answers = {1: ReplicaDataLostError("replica 1 of shard 3 lost its data"), 2: NotLeaderError(2, 3, 4), 3: "set"}
    asked = []

    def ask(store, shard, rid, method, args, deadline):
        asked.append(rid)
        return answers[rid]

    monkeypatch.setattr(groups, "_ask", ask)
    groups._leaders.pop(("s", 3), None)
    assert groups.leader_call("s", 3, (1, 2, 3), "change_range", (), timeout_s=5) == "set"
    assert asked == [1, 2, 3]
