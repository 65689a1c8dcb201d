"""Unit tests of the runtime's Ray-free pieces: ticker, link faults, pending requests, options."""

from __future__ import annotations

import random
from concurrent.futures import Future

import pytest

from raykv.errors import ConfigError, LeadershipLostError
from raykv.runtime.faults import FaultPlan, LinkFault, LinkFaults
from raykv.replica.options import ReplicaOptions
from raykv.runtime.requests import PendingReads, PendingWrites, WriteBatch
from raykv.runtime.ticker import Ticker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ticker_counts_whole_ticks_and_catches_up_after_a_pause() -> None:
    clock = FakeClock()
    ticker = Ticker(0.05, max_catch_up=100, clock=clock)
    assert ticker.due() == 0
    clock.now += 0.051
    assert ticker.due() == 1
    assert ticker.due() == 0
    clock.now += 0.5  # a pause of ten ticks: all delivered on resume
    assert ticker.due() == 10
    clock.now += 60.0  # a long freeze: bounded catch-up (enough to expire leases and check quorum)
    assert ticker.due() == 100
    assert 0 <= ticker.seconds_to_next() <= 0.05


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


def test_pending_writes_answer_by_index_and_term() -> None:
    pending = PendingWrites()
    future: Future = Future()
    batch = WriteBatch(future, [None, None, None], 3)
    for slot, index in enumerate((5, 6, 7)):
        pending.add(index, 2, batch, slot)
    pending.applied(5, 2, b"ok5")
    pending.applied(6, 3, b"other term")  # replaced by a new leader's entry
    assert not future.done()
    pending.fail_all(LeadershipLostError("gone"))
    outcomes = future.result(timeout=0)
    assert outcomes[0] == b"ok5"
    assert isinstance(outcomes[1], LeadershipLostError) and isinstance(outcomes[2], LeadershipLostError)
    assert len(pending) == 0


def test_pending_reads_share_one_round_and_wait_for_apply() -> None:
    reads = PendingReads()
    futures = [Future() for _ in range(3)]
    reads.add(lambda: b"a", False, futures[0])
    reads.add(lambda: b"b", False, futures[1])
    reads.add(lambda: b"c", True, futures[2])
    rounds: list[tuple[bytes, bool]] = []
    reads.start_rounds(lambda ctx, lease: rounds.append((ctx, lease)), lambda g, e: None)
    assert sorted(lease for _, lease in rounds) == [False, True], "one round per kind, not per read"
    plain = next(ctx for ctx, lease in rounds if not lease)
    reads.confirmed(plain, 10)
    assert reads.ready(9) == []
    (group,) = reads.ready(10)
    assert [query() for query, _ in group.waiters] == [b"a", b"b"]
    leftover = reads.fail_unconfirmed()
    assert [query() for g in leftover for query, _ in g.waiters] == [b"c"]


@pytest.mark.parametrize("bad", [dict(tick_ms=0), dict(election_ticks=True), dict(call_deadline_s=0),
                                 dict(max_catch_up_ticks=5), dict(compact_keep_entries=-1)])
def test_replica_options_reject_bad_values(bad) -> None:
    with pytest.raises(ConfigError):
        ReplicaOptions(**bad)


def test_a_retried_write_attaches_to_its_pending_proposal() -> None:
    pending = PendingWrites()
    first, retry = Future(), Future()
    pending.add(9, 2, WriteBatch(first, [None], 1), 0, request=(3, 17))
    assert pending.attach((3, 17), WriteBatch(retry, [None], 1), 0)
    assert not pending.attach((3, 18), WriteBatch(Future(), [None], 1), 0)
    pending.applied(9, 2, b"result")
    assert first.result(timeout=0) == [b"result"] and retry.result(timeout=0) == [b"result"]
    assert not pending.attach((3, 17), WriteBatch(Future(), [None], 1), 0), "forgotten once applied"


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


def _record_in_phase(phase: str):
    from raykv.runtime.catalog import SCALE_OP_KEY
    from raykv.runtime.scale import Resharder, ScaleOp

    meta = _DictMeta()
    step = {"kind": "merge", "src": 2, "dst": 1, "lo": b"sm".hex(), "hi": None, "replicas": None,
            "retire_after_ms": 0, "src_rids": [1, 2, 3], "dst_rids": [1, 2, 3], "phase": phase}
    meta.data[SCALE_OP_KEY] = ScaleOp(id=1, target=1, steps_total=1, step=step).encode()
    return Resharder("s", meta, "/nonexistent", None, lambda raw: None), meta


def test_a_step_refused_before_the_fence_fails_the_operation() -> None:
    from raykv.errors import ShardMapError

    resharder, _ = _record_in_phase("fence")
    resharder._refused(ShardMapError("shard 2: FENCE refused"))
    op, _ = resharder.load()
    assert op.state == "failed" and "FENCE refused" in op.error


def test_a_step_refused_after_the_fence_is_retried_with_its_error_shown() -> None:
    from raykv.errors import ShardMapError

    resharder, _ = _record_in_phase("copy")
    with pytest.raises(ShardMapError):
        resharder._refused(ShardMapError("shard 1: INGEST_ROWS refused"))
    op, _ = resharder.load()
    assert op.state == "running" and "INGEST_ROWS refused" in op.error and "retrying" in op.error
    assert "error: shard 1" in op.describe()
