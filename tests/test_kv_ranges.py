"""Range state and range changes: the pure half of resharding (raykv.kv.ranges + the machine)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raykv.kv import (
    Batch,
    ErrorCode,
    Failed,
    KVStateMachine,
    MemoryBackend,
    Ok,
    Put,
    RangeAction,
    RangeChange,
    RangeState,
    RegisterSession,
    Request,
    SessionId,
    encode_command,
)
from raykv.kv.codec import decode_result
from raykv.kv.limits import KVLimits
from raykv.kv.machine import read_range_state
from raykv.kv.ranges import RANGE_KEY, RangeConflict, next_state

LIMITS = KVLimits()
A = RangeAction


class Group:
    """One group's state machine over a memory backend, fed entries at increasing indexes."""

    def __init__(self) -> None:
        self.machine, self.backend, self.index = KVStateMachine(LIMITS), MemoryBackend(), 0

    def run(self, cmd) -> object:
        self.index += 1
        return decode_result(self.machine.apply(self.index, encode_command(cmd, LIMITS), self.backend))

    def range(self, action: RangeAction, lo: bytes, hi: bytes | None, rows=(), epoch: int = 0, gen: int = 0) -> object:
        return self.run(RangeChange(action, lo, hi, tuple(rows), epoch, gen))

    def session(self) -> int:
        result = self.run(RegisterSession(1))
        assert isinstance(result, SessionId)
        return result.id

    def user_rows(self) -> dict[bytes, bytes]:
        return {k: v for k, v in self.backend.items() if not k.startswith(b"\x00")}


def _filled(keys: list[bytes]) -> Group:
    g = Group()
    assert g.range(A.SET, b"", None) == Ok()
    for key in keys:
        assert g.run(Put(key, b"v" + key)) == Ok()
    return g


def test_a_split_moves_the_upper_part_and_nothing_is_served_twice() -> None:
    src = _filled([b"sa", b"sk", b"sz"])
    dst = Group()
    assert dst.range(A.SET, b"sk", b"sk") == Ok()
    assert src.range(A.FENCE, b"sk", None) == Ok()
    assert isinstance(src.run(Put(b"sm", b"late")), Failed)  # fenced: refused
    assert src.run(Put(b"sb", b"ok")) == Ok()  # below the fence: still served
    rows = [(k, v) for k, v in src.user_rows().items() if k >= b"sk"]
    assert dst.range(A.INGEST_BEGIN, b"sk", None) == Ok()
    assert dst.run(Put(b"sm", b"x")).code is ErrorCode.WRONG_SHARD  # not served before INGEST_DONE
    assert dst.range(A.INGEST_ROWS, b"sk", None, rows) == Ok()
    assert dst.range(A.INGEST_DONE, b"sk", None) == Ok()
    assert src.range(A.DROP, b"sk", None) == Ok()
    assert src.user_rows() == {b"sa": b"vsa", b"sb": b"ok"}
    assert dst.user_rows() == {b"sk": b"vsk", b"sz": b"vsz"}
    assert read_range_state(src.backend) == RangeState(b"", b"sk")
    assert read_range_state(dst.backend) == RangeState(b"sk", None)


def test_every_step_is_idempotent_and_a_late_duplicate_chunk_writes_nothing() -> None:
    src, dst = _filled([b"sk"]), Group()
    rows = [(b"sk", b"old")]
    for _ in range(2):
        assert dst.range(A.SET, b"sk", b"sk") == Ok()
        assert src.range(A.FENCE, b"sk", None) == Ok()
        assert dst.range(A.INGEST_BEGIN, b"sk", None) == Ok()
        assert dst.range(A.INGEST_ROWS, b"sk", None, rows) == Ok()
    for _ in range(2):
        assert dst.range(A.INGEST_DONE, b"sk", None) == Ok()
        assert src.range(A.DROP, b"sk", None) == Ok()
    assert dst.run(Put(b"sk", b"new")) == Ok()
    assert dst.range(A.INGEST_BEGIN, b"sk", None) == Ok()  # already done: no-op
    assert dst.range(A.INGEST_ROWS, b"sk", None, rows) == Ok()  # late duplicate: ignored
    assert dst.user_rows() == {b"sk": b"new"}


def test_a_pre_copy_then_a_delta_under_the_fence_gives_exactly_the_frozen_rows() -> None:
    """Rows copied while the source still serves, then writes and deletes on the source, then
    the fence and only the difference: the target ends equal to the source's frozen rows."""
    src, dst = _filled([b"sk", b"sl", b"sm"]), Group()
    assert dst.range(A.SET, b"sk", b"sk") == Ok()
    assert dst.range(A.INGEST_BEGIN, b"sk", None) == Ok()
    assert dst.range(A.INGEST_ROWS, b"sk", None, sorted(src.user_rows().items())) == Ok()
    assert src.run(Put(b"sk", b"changed")) == Ok() and src.run(Put(b"sn", b"new")) == Ok()
    assert src.run(Batch((Put(b"sz", b"x"),))) == Ok()
    from raykv.kv import Delete
    assert src.run(Delete(b"sl")).value is True
    assert src.range(A.FENCE, b"sk", None) == Ok()
    frozen, copied = src.user_rows(), dst.user_rows()
    puts = [(k, v) for k, v in sorted(frozen.items()) if copied.get(k) != v]
    gone = [(k, b"") for k in sorted(copied) if k not in frozen]
    assert dst.range(A.INGEST_ROWS, b"sk", None, puts) == Ok()
    assert dst.range(A.INGEST_DELETE, b"sk", None, gone) == Ok()
    assert dst.range(A.INGEST_DONE, b"sk", None) == Ok()
    assert dst.user_rows() == frozen
    assert dst.range(A.INGEST_DELETE, b"sk", None, [(b"sk", b"")]) == Ok()  # late duplicate: ignored
    assert dst.user_rows() == frozen


def test_a_merge_moves_a_whole_range_into_its_left_neighbour() -> None:
    left, right = Group(), Group()
    assert left.range(A.SET, b"", b"sm") == Ok()
    assert right.range(A.SET, b"sm", None) == Ok()
    assert right.run(Put(b"sq", b"1")) == Ok()
    assert left.run(Put(b"sq", b"1")).code is ErrorCode.WRONG_SHARD
    assert right.range(A.FENCE, b"sm", None) == Ok()
    assert left.range(A.INGEST_BEGIN, b"sm", None) == Ok()
    assert left.range(A.INGEST_ROWS, b"sm", None, [(b"sq", b"1")]) == Ok()
    assert left.range(A.INGEST_DONE, b"sm", None) == Ok()
    assert right.range(A.DROP, b"sm", None) == Ok()
    assert read_range_state(left.backend) == RangeState(b"", None)
    assert read_range_state(right.backend) == RangeState(b"sm", b"sm")  # serves nothing
    assert left.user_rows() == {b"sq": b"1"} and right.user_rows() == {}
    assert right.run(Put(b"sn", b"2")).code is ErrorCode.WRONG_SHARD


def test_a_refused_request_stays_refused_for_every_retry_of_its_seq() -> None:
    g = _filled([])
    sid = g.session()
    assert g.range(A.FENCE, b"sm", None) == Ok()
    first = g.run(Request(sid, 1, 0, 1, Put(b"sq", b"v")))
    assert isinstance(first, Failed) and first.code is ErrorCode.WRONG_SHARD
    assert g.run(Request(sid, 1, 0, 1, Put(b"sq", b"v"))) == first  # cached: never applied later
    assert g.run(Request(sid, 2, 0, 1, Batch((Put(b"sa", b"1"), Put(b"sz", b"2"))))).code is ErrorCode.WRONG_SHARD
    assert g.user_rows() == {}  # a batch touching the fence applies nothing at all
    assert g.run(Request(sid, 3, 0, 1, Put(b"sa", b"1"))) == Ok()


@pytest.mark.parametrize("steps", [
    [(A.FENCE, b"sm", None)],  # no range state: serves everything, cannot fence
    [(A.SET, b"", None), (A.SET, b"sa", b"sm")],
    [(A.SET, b"", None), (A.FENCE, b"sm", b"sz")],  # a fence must reach the end
    [(A.SET, b"", None), (A.FENCE, b"sm", None), (A.FENCE, b"sn", None)],
    [(A.SET, b"", b"sm"), (A.INGEST_ROWS, b"sm", None)],  # rows without a begun ingest
    [(A.SET, b"", b"sm"), (A.INGEST_BEGIN, b"sn", None)],  # not adjacent
    [(A.SET, b"", None), (A.DROP, b"sm", None)],  # drop without its fence
])
def test_changes_that_do_not_fit_conflict_and_change_nothing(steps) -> None:
    g = Group()
    *setup, last = steps
    for step in setup:
        assert g.range(*step) == Ok()
    before = dict(g.backend.items())
    result = g.range(*last)
    assert isinstance(result, Failed) and result.code in (ErrorCode.RANGE_CONFLICT, ErrorCode.BAD_COMMAND)
    assert dict(g.backend.items()) == before


def test_bad_range_changes_are_refused_before_they_are_proposed() -> None:
    from raykv.errors import InvalidRequestError

    for bad in (RangeChange(A.FENCE, b"sz", b"sa"), RangeChange(A.INGEST_ROWS, b"sa", b"sc", ((b"sz", b"v"),)),
                RangeChange(A.FENCE, b"sa", None, ((b"sb", b"v"),)), RangeChange(A.INGEST_ROWS, b"", None,
                                                                                   ((RANGE_KEY, b"v"),)),
                RangeChange(A.INGEST_DELETE, b"sa", None, ((b"sb", b"not empty"),))):
        with pytest.raises(InvalidRequestError):
            encode_command(bad, LIMITS)


BOUNDS = st.sampled_from([b"sa", b"sd", b"sg", b"sk", b"sp"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(RangeAction), BOUNDS, st.none() | BOUNDS), max_size=12))
def test_the_state_keeps_its_invariants_under_any_change_sequence(changes) -> None:
    state = RangeState(b"sd", b"sk")
    for action, lo, hi in changes:
        try:
            state = next_state(state, action, lo, hi)
        except RangeConflict:
            continue
        assert state.start <= state.end if state.end is not None else True
        if state.fence is not None:
            assert state.start <= state.fence[0] and state.fence[1] == state.end
        if state.incoming is not None:
            assert state.incoming[0] == state.end or state.incoming[1] == state.start
        assert RangeState.decode(state.encode()) == state


# -- fencing: placement-driver epochs and ingest attempts ---------------------------------------
def _refused(result) -> bool:
    return isinstance(result, Failed) and result.code is ErrorCode.RANGE_CONFLICT


def _stale(result) -> bool:
    return isinstance(result, Failed) and result.code is ErrorCode.STALE_DRIVER


def test_a_superseded_placement_driver_cannot_change_a_range() -> None:
    """Two routers may drive at once (the old one cut off from Ray's control plane while its
    successor runs). Once a group has seen a change from epoch 2, nothing from epoch 1 applies --
    not a fence, not a drop, not an ingest chunk -- while epoch 2 and later keep working."""
    g = _filled([b"sa", b"sm", b"sx"])
    assert g.range(A.FENCE, b"sm", None, epoch=2) == Ok()
    for action, rows in ((A.DROP, ()), (A.FENCE, ()), (A.INGEST_BEGIN, ()), (A.INGEST_ROWS, [(b"sn", b"old")])):
        assert _stale(g.range(action, b"sm", None, rows, epoch=1)), action
    from raykv.kv.ranges import DRIVER_KEY, decode_driver

    assert decode_driver(g.backend.get(DRIVER_KEY)) == 2
    assert g.range(A.DROP, b"sm", None, epoch=3) == Ok() and decode_driver(g.backend.get(DRIVER_KEY)) == 3
    assert g.user_rows() == {b"sa": b"vsa"}


def test_a_late_chunk_of_an_abandoned_ingest_attempt_is_refused() -> None:
    """A copy phase retried (its call given up on after the deadline) begins the ingest again with
    a new attempt; a chunk of the first attempt still queued somewhere must not overwrite rows the
    second attempt copied later, nor end the ingest."""
    target = Group()
    assert target.range(A.SET, b"", b"sm") == Ok()
    assert target.range(A.INGEST_BEGIN, b"sm", None, gen=1) == Ok()
    assert target.range(A.INGEST_ROWS, b"sm", None, [(b"sn", b"v1")], gen=1) == Ok()
    assert target.range(A.INGEST_BEGIN, b"sm", None, gen=2) == Ok()  # the retried attempt takes over
    assert target.range(A.INGEST_ROWS, b"sm", None, [(b"sn", b"v2")], gen=2) == Ok()
    assert _refused(target.range(A.INGEST_ROWS, b"sm", None, [(b"sn", b"stale")], gen=1))
    assert _refused(target.range(A.INGEST_DONE, b"sm", None, gen=1))
    assert _refused(target.range(A.INGEST_BEGIN, b"sm", None, gen=1)), "an older attempt cannot take it back"
    assert target.range(A.INGEST_DONE, b"sm", None, gen=2) == Ok()
    assert target.user_rows() == {b"sn": b"v2"} and read_range_state(target.backend).incoming is None


def test_a_merge_that_fails_before_its_fence_leaves_its_target_as_it_was() -> None:
    """INGEST_ABORT drops the incoming range and what the pre-copy wrote, so the target can be
    fenced or merged again later; it never touches a range the group owns."""
    target = _filled([b"sa"])
    assert target.range(A.FENCE, b"sm", None) == Ok() and target.range(A.DROP, b"sm", None) == Ok()
    assert target.range(A.INGEST_BEGIN, b"sm", None, gen=4) == Ok()
    assert target.range(A.INGEST_ROWS, b"sm", None, [(b"sn", b"pre"), (b"sz", b"pre")], gen=4) == Ok()
    assert _refused(target.range(A.INGEST_ABORT, b"sm", None, gen=3)), "only the attempt in charge (or newer)"
    assert target.range(A.INGEST_ABORT, b"sm", None, gen=4) == Ok()
    assert target.range(A.INGEST_ABORT, b"sm", None, gen=4) == Ok(), "idempotent"
    assert target.user_rows() == {b"sa": b"vsa"}
    state = read_range_state(target.backend)
    assert state.incoming is None and state.end == b"sm"
    assert target.range(A.FENCE, b"sg", b"sm") == Ok(), "fences work again on the target"
    owned = _filled([b"sa"])
    assert _refused(owned.range(A.INGEST_ABORT, b"sa", None)), "a finished ingest is never aborted"
    assert owned.user_rows() == {b"sa": b"vsa"}
