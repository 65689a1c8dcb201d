"""The log in layers: the LogReader conformance suite, RaftLog on top of it, and Progress.

:class:`TestLogReaderConformance` checks the contract written at the top of
:mod:`raykv.raft.storage` (plus the writer methods a host uses to persist a
Ready) against every store in :data:`STORE_FACTORIES`. It only uses the
writer interface ``append``, ``set_hard_state``, ``set_conf_state``,
``apply_snapshot``, ``create_snapshot``, ``compact`` and the LogReader methods,
never a store's internals, so a durable store joins the suite by adding one
factory (``path -> empty store``; ``path`` is a fresh empty directory).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raykv.errors import CompactedError, LogUnavailableError
from raykv.raft.log import RaftLog
from raykv.raft.progress import Inflights, Progress, ProgressState
from raykv.raft.storage import MemoryStorage, bootstrap_snapshot
from raykv.raft.types import ConfState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from raykv.storage.replica_store import ReplicaId, ReplicaStore

# -- helpers -----------------------------------------------------------------------------------
UNLIMITED = 2**62


def ents(first: int, terms: list[int], size: int = 0) -> list[Entry]:
    """Entries ``first, first+1, ...`` with the given terms and ``size``-byte payloads naming them."""
    out = []
    for i, t in enumerate(terms):
        index = first + i
        data = f"{index}@{t}".encode().ljust(size, b".") if size else b""
        out.append(Entry(index, t, data=data))
    return out


def naive_limit(entries: list[Entry], max_bytes: int) -> list[Entry]:
    """Reference size limit: the longest prefix within ``max_bytes``, but never empty."""
    out: list[Entry] = []
    total = 0
    for e in entries:
        total += len(e.data) + 16
        if out and total > max_bytes:
            break
        out.append(e)
    return out


def raises_unavailable_not_compacted(fn: Callable[[], object]) -> None:
    with pytest.raises(LogUnavailableError) as info:
        fn()
    assert not isinstance(info.value, CompactedError), f"expected a plain LogUnavailableError, got {info.value!r}"


# -- the store fixture -------------------------------------------------------------------------
def _memory_store(path: Path) -> MemoryStorage:
    return MemoryStorage()


def _lmdb_store(path: Path) -> ReplicaStore:
    return ReplicaStore(path, ReplicaId("conformance", 0, 1))


STORE_FACTORIES: dict[str, Callable[[Path], object]] = {
    "memory": _memory_store,
    "lmdb": _lmdb_store,
}


@pytest.fixture(params=sorted(STORE_FACTORIES))
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], object]]:
    """A factory of fresh, empty stores of one kind (closed at teardown if they can be)."""
    factory = STORE_FACTORIES[request.param]
    counter = itertools.count()
    made: list[object] = []

    def make() -> object:
        path = tmp_path / f"store-{next(counter)}"
        path.mkdir()
        store = factory(path)
        made.append(store)
        return store

    yield make
    for store in made:
        close = getattr(store, "close", None)
        if close is not None:
            close()


HYPOTHESIS_WITH_STORE = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# -- conformance suite -------------------------------------------------------------------------
class TestLogReaderConformance:
    def test_empty_log(self, make_store) -> None:
        s = make_store()
        assert s.first_index() == 1
        assert s.last_index() == 0
        assert s.term(0) == 0
        assert s.entries(1, 1, UNLIMITED) == []
        assert s.initial_state() == (HardState(), ConfState())
        assert s.snapshot().meta.index == 0 and s.snapshot().meta.term == 0
        raises_unavailable_not_compacted(lambda: s.term(1))
        raises_unavailable_not_compacted(lambda: s.entries(1, 2, UNLIMITED))

    def test_append_contiguous(self, make_store) -> None:
        s = make_store()
        first = ents(1, [1, 1, 2], size=5)
        s.append(first)
        assert (s.first_index(), s.last_index()) == (1, 3)
        assert [s.term(i) for i in range(0, 4)] == [0, 1, 1, 2]
        assert s.entries(1, 4, UNLIMITED) == first
        more = ents(4, [2, 3])
        s.append(more)
        assert s.last_index() == 5
        assert s.entries(1, 6, UNLIMITED) == first + more
        assert s.entries(2, 4, UNLIMITED) == first[1:3]

    def test_append_accepts_a_tuple_and_keeps_kind_and_data(self, make_store) -> None:
        s = make_store()
        batch = (Entry(1, 1), Entry(2, 1, EntryKind.CONF_CHANGE, b"\x01\x00\x00\x00"), Entry(3, 1, data=b"x" * 100))
        s.append(batch)
        assert s.entries(1, 4, UNLIMITED) == list(batch)

    def test_append_nothing_is_a_no_op(self, make_store) -> None:
        s = make_store()
        s.append(ents(1, [1, 1]))
        s.append([])
        assert s.last_index() == 2

    def test_append_overlapping_suffix_truncates_conflicts(self, make_store) -> None:
        s = make_store()
        s.append(ents(1, [1, 1, 1, 1, 1], size=4))
        new = ents(3, [2, 2], size=4)
        s.append(new)
        assert s.last_index() == 4
        assert [s.term(i) for i in range(1, 5)] == [1, 1, 2, 2]
        assert s.entries(3, 5, UNLIMITED) == new
        raises_unavailable_not_compacted(lambda: s.term(5))

    def test_append_replaces_everything_from_its_first_index(self, make_store) -> None:
        """A Ready's entries are the new tail of the log: a stored suffix beyond them must not survive
        (after a restart it would resurrect entries the core truncated)."""
        s = make_store()
        s.append(ents(1, [1, 1, 1, 1, 1]))
        s.append(ents(2, [3]))
        assert s.last_index() == 2
        assert s.entries(1, 3, UNLIMITED) == ents(1, [1, 3])

    def test_append_at_next_index_after_full_replacement(self, make_store) -> None:
        s = make_store()
        s.append(ents(1, [1, 1, 1]))
        s.append(ents(1, [2, 2]))
        assert s.entries(1, 3, UNLIMITED) == ents(1, [2, 2])
        s.append(ents(3, [2]))
        assert s.entries(1, 4, UNLIMITED) == ents(1, [2, 2, 2])

    def test_append_with_gap_raises_and_changes_nothing(self, make_store) -> None:
        s = make_store()
        with pytest.raises(LogUnavailableError):
            s.append(ents(2, [1]))
        assert s.last_index() == 0
        s.append(ents(1, [1, 1]))
        with pytest.raises(LogUnavailableError):
            s.append(ents(4, [1, 1]))
        assert s.last_index() == 2
        assert s.entries(1, 3, UNLIMITED) == ents(1, [1, 1])

    def test_term_bounds(self, make_store) -> None:
        s = make_store()
        s.append(ents(1, [1, 2, 3, 4, 5, 6]))
        s.create_snapshot(3, ConfState(voters=(1,)), b"snap")
        s.compact(3)
        assert s.first_index() == 4
        assert s.term(3) == 3  # the entry just before the first
        assert s.term(6) == 6
        for below in (0, 1, 2):
            with pytest.raises(CompactedError):
                s.term(below)
        raises_unavailable_not_compacted(lambda: s.term(7))
        raises_unavailable_not_compacted(lambda: s.term(100))

    def test_entries_bounds(self, make_store) -> None:
        s = make_store()
        s.append(ents(1, [1, 1, 1, 1, 1, 1]))
        s.create_snapshot(3, ConfState(voters=(1,)), None)
        s.compact(3)
        assert s.entries(4, 7, UNLIMITED) == ents(4, [1, 1, 1])
        assert s.entries(5, 5, UNLIMITED) == []
        with pytest.raises(CompactedError):
            s.entries(3, 5, UNLIMITED)  # index 3 is only a term now, not an entry
        with pytest.raises(CompactedError):
            s.entries(1, 5, UNLIMITED)
        raises_unavailable_not_compacted(lambda: s.entries(5, 8, UNLIMITED))
        raises_unavailable_not_compacted(lambda: s.entries(7, 8, UNLIMITED))

    def test_entries_size_limit(self, make_store) -> None:
        s = make_store()
        log = ents(1, [1, 1, 1, 1, 1], size=10)  # 26 bytes each
        s.append(log)
        assert s.entries(1, 6, UNLIMITED) == log
        assert s.entries(1, 6, 0) == log[:1]  # never empty
        assert s.entries(1, 6, 25) == log[:1]
        assert s.entries(1, 6, 26) == log[:1]
        assert s.entries(1, 6, 51) == log[:1]
        assert s.entries(1, 6, 52) == log[:2]
        assert s.entries(2, 6, 78) == log[1:4]
        assert s.entries(1, 6, 130) == log
        assert s.entries(3, 4, 0) == log[2:3]

    @HYPOTHESIS_WITH_STORE
    @given(
        sizes=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=12),
        bounds=st.tuples(st.integers(min_value=1, max_value=13), st.integers(min_value=1, max_value=13)),
        max_bytes=st.integers(min_value=0, max_value=400),
    )
    def test_entries_size_limit_matches_naive(self, make_store, sizes, bounds, max_bytes) -> None:
        s = make_store()
        log = [Entry(i + 1, 1, data=b"x" * n) for i, n in enumerate(sizes)]
        s.append(log)
        lo, hi = min(bounds), max(bounds)
        hi = min(hi, len(log) + 1)
        lo = min(lo, hi)
        got = s.entries(lo, hi, max_bytes)
        assert got == naive_limit(log[lo - 1 : hi - 1], max_bytes)
        assert (len(got) >= 1) == (lo < hi)

    def test_create_snapshot_then_compact(self, make_store) -> None:
        s = make_store()
        s.append(ents(1, [1, 1, 2, 2, 3, 3, 3, 4], size=3))
        conf = ConfState(voters=(1, 2, 3), learners=(4,))
        snap = s.create_snapshot(6, conf, b"state@6")
        assert snap.meta == SnapshotMeta(6, 3, conf)
        assert snap.data == b"state@6"
        assert s.snapshot().meta == snap.meta and s.snapshot().data == b"state@6"
        # Creating a snapshot alone does not lose entries: the log may trail it.
        assert s.first_index() - 1 <= s.snapshot().meta.index
        assert s.last_index() == 8
        s.compact(6)
        assert s.first_index() == 7 == s.snapshot().meta.index + 1
        assert s.term(6) == 3 == snap.meta.term
        with pytest.raises(CompactedError):
            s.term(5)
        assert s.last_index() == 8
        assert s.entries(7, 9, UNLIMITED) == ents(7, [3, 4], size=3)
        s.append(ents(9, [4]))
        assert s.last_index() == 9

    def test_compact_may_keep_a_trailing_log(self, make_store) -> None:
        s = make_store()
        s.append(ents(1, [1, 1, 2, 2, 3, 3]))
        s.create_snapshot(5, ConfState(voters=(1,)), None)
        s.compact(3)
        assert s.first_index() == 4
        assert s.term(3) == 2
        assert s.entries(4, 7, UNLIMITED) == ents(4, [2, 3, 3])
        assert s.first_index() - 1 <= s.snapshot().meta.index
        s.compact(2)  # older than what is already compacted: no-op
        assert s.first_index() == 4
        s.compact(5)
        assert s.first_index() == 6 and s.term(5) == 3

    def test_snapshot_errors(self, make_store) -> None:
        s = make_store()
        s.append(ents(1, [1, 1, 1, 1]))
        conf = ConfState(voters=(1,))
        raises_unavailable_not_compacted(lambda: s.create_snapshot(5, conf, None))
        raises_unavailable_not_compacted(lambda: s.compact(1))  # no snapshot covers index 1 yet
        s.create_snapshot(3, conf, None)
        with pytest.raises(CompactedError):
            s.create_snapshot(3, conf, None)  # not newer
        with pytest.raises(CompactedError):
            s.create_snapshot(2, conf, None)
        raises_unavailable_not_compacted(lambda: s.compact(4))  # beyond the snapshot
        assert (s.first_index(), s.last_index()) == (1, 4)

    def test_append_below_the_snapshot_is_ignored(self, make_store) -> None:
        s = make_store()
        s.append(ents(1, [1, 1, 1, 1]))
        s.create_snapshot(3, ConfState(voters=(1,)), None)
        s.compact(3)
        s.append(ents(2, [1, 1]))  # entirely covered by the snapshot
        assert (s.first_index(), s.last_index()) == (4, 4)
        s.append(ents(2, [1, 1, 2, 2]))  # 2, 3 covered; 4 conflicts, 5 is new
        assert (s.first_index(), s.last_index()) == (4, 5)
        assert s.entries(4, 6, UNLIMITED) == ents(4, [2, 2])
        assert s.term(3) == 1

    def test_apply_snapshot_replaces_the_log(self, make_store) -> None:
        s = make_store()
        s.append(ents(1, [1, 1, 2, 2, 2]))
        hs = HardState(term=2, vote=1, commit=3)
        s.set_hard_state(hs)
        conf = ConfState(voters=(1, 2, 3), learners=(5,))
        snap = Snapshot(SnapshotMeta(10, 4, conf), b"payload")
        s.apply_snapshot(snap)
        assert (s.first_index(), s.last_index()) == (11, 10)
        assert s.term(10) == 4
        with pytest.raises(CompactedError):
            s.term(9)
        with pytest.raises(CompactedError):
            s.entries(5, 6, UNLIMITED)
        raises_unavailable_not_compacted(lambda: s.term(11))
        assert s.snapshot().meta == snap.meta and s.snapshot().data == b"payload"
        assert s.initial_state() == (hs, conf)  # the snapshot brings its conf; hard state is separate
        s.append(ents(11, [4, 5]))
        assert s.entries(11, 13, UNLIMITED) == ents(11, [4, 5])

    def test_apply_snapshot_inside_the_log_drops_the_rest(self, make_store) -> None:
        """A follower whose uncommitted tail diverges installs a snapshot at an index it holds."""
        s = make_store()
        s.append(ents(1, [1, 1, 1, 1, 1, 1, 1, 1]))
        s.apply_snapshot(Snapshot(SnapshotMeta(5, 3, ConfState(voters=(1, 2))), None))
        assert (s.first_index(), s.last_index()) == (6, 5)
        assert s.term(5) == 3
        raises_unavailable_not_compacted(lambda: s.term(6))

    def test_hard_state_round_trip(self, make_store) -> None:
        s = make_store()
        for hs in (HardState(1, 0, 0), HardState(5, 3, 0), HardState(7, 2, 12)):
            s.set_hard_state(hs)
            assert s.initial_state()[0] == hs

    def test_set_conf_state_is_reflected_by_initial_state(self, make_store) -> None:
        s = make_store()
        joint = ConfState(
            voters=(1, 2, 4), learners=(6,), voters_outgoing=(1, 2, 3), learners_next=(3,), auto_leave=True
        )
        s.set_conf_state(joint)
        assert s.initial_state()[1] == joint
        s.set_hard_state(HardState(3, 1, 0))
        assert s.initial_state() == (HardState(3, 1, 0), joint)
        plain = ConfState(voters=(1, 2, 4), learners=(3, 6))
        s.set_conf_state(plain)
        assert s.initial_state()[1] == plain

    def test_bootstrap_through_the_writers(self, make_store) -> None:
        s = make_store()
        snap = bootstrap_snapshot((3, 1, 2))
        s.apply_snapshot(snap)
        s.set_hard_state(HardState(term=1, commit=1))
        assert snap.meta == SnapshotMeta(1, 1, ConfState(voters=(1, 2, 3)))
        assert (s.first_index(), s.last_index(), s.term(1)) == (2, 1, 1)
        assert s.initial_state() == (HardState(term=1, commit=1), ConfState(voters=(1, 2, 3)))

    @HYPOTHESIS_WITH_STORE
    @given(st.data())
    def test_random_histories_match_a_model(self, make_store, data) -> None:
        """Random appends (with truncation), snapshots, compactions and installs against a dict model."""
        s = make_store()
        model: dict[int, Entry] = {}
        comp_index, comp_term = 0, 0  # the entry just before the first
        snap_index = 0
        hard, conf = HardState(), ConfState()

        def term_at(i: int) -> int:
            return comp_term if i == comp_index else model[i].term

        for _ in range(data.draw(st.integers(min_value=1, max_value=12), label="steps")):
            last = max(model, default=comp_index)
            op = data.draw(st.sampled_from(["append", "append", "append", "snapshot", "install", "state"]))
            if op == "append":
                # A host appends only above its commit index, which a snapshot never passes; below the
                # compaction point (covered by the snapshot) entries are ignored.
                lowest = max(1, comp_index - 2) if snap_index == comp_index else snap_index + 1
                start = data.draw(st.integers(min_value=lowest, max_value=last + 1), label="start")
                base = term_at(start - 1) if start - 1 >= comp_index else 1
                terms = data.draw(st.lists(st.integers(min_value=0, max_value=2), min_size=1, max_size=4))
                terms = list(itertools.accumulate(terms, initial=base))[1:]
                batch = [Entry(start + i, t, data=bytes([i]) * i) for i, t in enumerate(terms)]
                s.append(batch)
                kept = [e for e in batch if e.index > comp_index]
                if kept:
                    for i in [i for i in model if i >= kept[0].index]:
                        del model[i]
                    model.update((e.index, e) for e in kept)
            elif op == "snapshot" and last > snap_index:
                at = data.draw(st.integers(min_value=snap_index + 1, max_value=last), label="snap")
                upto = data.draw(st.integers(min_value=0, max_value=at), label="compact")
                snap = s.create_snapshot(at, conf, f"state@{at}".encode())
                assert snap.meta == SnapshotMeta(at, term_at(at), conf)
                snap_index = at
                s.compact(upto)
                if upto > comp_index:
                    comp_index, comp_term = upto, term_at(upto)
                    for i in [i for i in model if i <= upto]:
                        del model[i]
            elif op == "install":
                at = data.draw(st.integers(min_value=snap_index + 1, max_value=last + 5), label="install")
                low = max(1, comp_term)
                term = data.draw(st.integers(min_value=low, max_value=low + 3), label="term")
                conf = ConfState(voters=(1, at % 5 + 2))
                s.apply_snapshot(Snapshot(SnapshotMeta(at, term, conf), None))
                model.clear()
                comp_index, comp_term, snap_index = at, term, at
            elif op == "state":
                hard = HardState(
                    data.draw(st.integers(0, 9)), data.draw(st.integers(0, 3)), data.draw(st.integers(0, 9))
                )
                conf = ConfState(voters=tuple(sorted(data.draw(st.frozensets(st.integers(1, 5), min_size=1)))))
                s.set_hard_state(hard)
                s.set_conf_state(conf)

            # The contract, checked after every step.
            last = max(model, default=comp_index)
            assert sorted(model) == list(range(comp_index + 1, last + 1))
            assert s.first_index() == comp_index + 1
            assert s.last_index() == last
            assert s.snapshot().meta.index == snap_index >= s.first_index() - 1
            assert s.initial_state() == (hard, conf)
            for i in range(comp_index, last + 1):
                assert s.term(i) == term_at(i)
            assert s.entries(comp_index + 1, last + 1, UNLIMITED) == [model[i] for i in range(comp_index + 1, last + 1)]
            raises_unavailable_not_compacted(lambda: s.term(last + 1))
            if comp_index > 0:
                with pytest.raises(CompactedError):
                    s.term(comp_index - 1)
                with pytest.raises(CompactedError):
                    s.entries(comp_index, last + 1, UNLIMITED)


def test_memory_storage_bootstrap() -> None:
    s = MemoryStorage.bootstrap((1, 2, 3), data=b"initial")
    assert s.first_index() == 2
    assert s.last_index() == 1
    assert s.term(1) == 1
    hs, conf = s.initial_state()
    assert hs == HardState(term=1, vote=0, commit=1)
    assert conf == ConfState(voters=(1, 2, 3))
    assert s.snapshot().meta == SnapshotMeta(1, 1, ConfState(voters=(1, 2, 3)))
    assert s.snapshot().data == b"initial"
    with pytest.raises(CompactedError):
        s.term(0)
    assert MemoryStorage.bootstrap((3, 1, 2)).initial_state()[1].voters == (1, 2, 3)


# -- RaftLog -----------------------------------------------------------------------------------
def make_log(terms: list[int], commit: int = 0, applied: int = 0, size: int = 0) -> tuple[RaftLog, MemoryStorage]:
    storage = MemoryStorage()
    storage.append(ents(1, terms, size))
    storage.set_hard_state(HardState(term=max(terms, default=0), commit=commit))
    return RaftLog(storage, applied), storage


def log_terms(log: RaftLog) -> list[int]:
    return [log.term(i) for i in range(log.first_index(), log.last_index() + 1)]


class TestRaftLog:
    def test_initial_state_from_storage(self) -> None:
        log, _ = make_log([1, 1, 2], commit=2, applied=1)
        assert (log.first_index(), log.last_index(), log.committed, log.applied) == (1, 3, 2, 1)
        assert log.unstable == [] and log.offset == 4
        assert log.last_term() == 2

    def test_initial_state_from_bootstrap(self) -> None:
        log = RaftLog(MemoryStorage.bootstrap((1, 2, 3)))
        assert (log.first_index(), log.last_index(), log.committed, log.applied) == (2, 1, 1, 1)
        assert log.term(1) == 1 and not log.has_next_committed()

    def test_applied_beyond_commit_is_refused(self) -> None:
        storage = MemoryStorage()
        storage.append(ents(1, [1, 1]))
        storage.set_hard_state(HardState(1, 0, 1))
        with pytest.raises(LogUnavailableError):
            RaftLog(storage, applied=2)

    def test_maybe_append_accepts_matching_prev(self) -> None:
        log, storage = make_log([1, 2, 3])
        assert log.maybe_append(3, 3, 3, (Entry(4, 3),)) == 4
        assert log.last_index() == 4 and log.term(4) == 3
        assert log.committed == 3
        assert storage.last_index() == 3  # the new entry is unstable until persisted

    def test_maybe_append_on_empty_log(self) -> None:
        log, _ = make_log([])
        assert log.maybe_append(0, 0, 1, tuple(ents(1, [1, 1]))) == 2
        assert log.committed == 1 and log_terms(log) == [1, 1]

    @pytest.mark.parametrize("prev", [(3, 2), (2, 3), (4, 3), (10, 3)])
    def test_maybe_append_rejects_mismatched_prev(self, prev: tuple[int, int]) -> None:
        log, _ = make_log([1, 2, 3], commit=1)
        assert log.maybe_append(prev[0], prev[1], 3, (Entry(prev[0] + 1, 3),)) is None
        assert log_terms(log) == [1, 2, 3] and log.committed == 1 and log.unstable == []

    def test_maybe_append_rejects_prev_below_the_snapshot(self) -> None:
        log, storage = make_log([1, 1, 1, 1])
        storage.create_snapshot(3, ConfState(voters=(1,)), None)
        storage.compact(3)
        assert log.maybe_append(2, 1, 0, (Entry(3, 1),)) is None

    def test_maybe_append_commits_only_up_to_the_last_new_entry(self) -> None:
        log, _ = make_log([1, 1, 1, 1, 1])
        assert log.maybe_append(2, 1, 5, (Entry(3, 1),)) == 3
        assert log.committed == 3  # min(leader commit, index of last new entry)
        assert log.maybe_append(3, 1, 2, ()) == 3
        assert log.committed == 3  # never decreases

    def test_maybe_append_keeps_entries_after_a_matching_batch(self) -> None:
        """Raft §5.3: only a *conflicting* entry truncates; a stale, shorter append must not."""
        log, _ = make_log([1, 1, 1, 1, 1])
        assert log.maybe_append(1, 1, 0, tuple(ents(2, [1, 1]))) == 3
        assert log.last_index() == 5 and log.unstable == []

    def test_maybe_append_truncates_a_conflicting_suffix(self) -> None:
        log, storage = make_log([1, 1, 1, 1], commit=1)
        assert log.maybe_append(1, 1, 1, tuple(ents(2, [1, 2]))) == 3
        assert log_terms(log) == [1, 1, 2]
        raises_unavailable_not_compacted(lambda: log.term(4))
        assert log.unstable == ents(3, [2]) and log.offset == 3
        assert storage.last_index() == 4  # storage still holds the stale tail until the host persists

    def test_maybe_append_refuses_to_truncate_committed(self) -> None:
        log, _ = make_log([1, 1, 1], commit=2)
        with pytest.raises(AssertionError):
            log.maybe_append(1, 1, 2, (Entry(2, 2),))
        assert log_terms(log) == [1, 1, 1] and log.committed == 2

    def test_append_refuses_to_truncate_committed(self) -> None:
        log, _ = make_log([1, 1, 1], commit=2)
        with pytest.raises(AssertionError):
            log.append([Entry(2, 2)])
        log.append([Entry(3, 2)])  # just above commit is fine
        assert log_terms(log) == [1, 1, 2]

    def test_append_with_gap_is_refused(self) -> None:
        log, _ = make_log([1, 1])
        with pytest.raises(AssertionError):
            log.append([Entry(4, 1)])

    def test_find_conflict(self) -> None:
        log, _ = make_log([1, 2, 3])
        assert log.find_conflict(()) == 0
        assert log.find_conflict(tuple(ents(1, [1, 2, 3]))) == 0
        assert log.find_conflict(tuple(ents(2, [2, 3, 4]))) == 4
        assert log.find_conflict(tuple(ents(2, [2, 4, 4]))) == 3
        assert log.find_conflict(tuple(ents(1, [4]))) == 1

    def test_find_conflict_by_term(self) -> None:
        # The log of the etcd test: 1 1 1 4 4 5 5 5 6 at indices 1..9.
        log, _ = make_log([1, 1, 1, 4, 4, 5, 5, 5, 6])
        assert log.find_conflict_by_term(9, 6) == (9, 6)
        assert log.find_conflict_by_term(9, 5) == (8, 5)
        assert log.find_conflict_by_term(9, 4) == (5, 4)
        assert log.find_conflict_by_term(9, 3) == (3, 1)
        assert log.find_conflict_by_term(9, 1) == (3, 1)
        assert log.find_conflict_by_term(9, 0) == (0, 0)
        assert log.find_conflict_by_term(4, 3) == (3, 1)
        assert log.find_conflict_by_term(0, 5) == (0, 0)

    def test_find_conflict_by_term_stops_at_compaction(self) -> None:
        log, storage = make_log([1, 1, 1, 4, 4, 5, 5, 5, 6], commit=5)
        storage.create_snapshot(5, ConfState(voters=(1,)), None)
        storage.compact(5)
        assert log.find_conflict_by_term(9, 4) == (5, 4)  # index 5 is readable (the snapshot's term)
        assert log.find_conflict_by_term(9, 3) == (4, 0)  # 4 is compacted: stop there with term 0

    def test_find_conflict_by_term_sees_unstable_entries(self) -> None:
        log, _ = make_log([1, 1])
        log.append(ents(3, [3, 3]))
        assert log.find_conflict_by_term(4, 2) == (2, 1)
        assert log.find_conflict_by_term(4, 3) == (4, 3)

    def test_commit_to(self) -> None:
        log, _ = make_log([1, 1, 1], commit=1)
        log.commit_to(3)
        assert log.committed == 3
        log.commit_to(2)
        assert log.committed == 3  # never decreases
        with pytest.raises(AssertionError):
            log.commit_to(4)

    def test_maybe_commit_only_for_entries_of_the_given_term(self) -> None:
        log, _ = make_log([1, 1, 2, 2])
        assert not log.maybe_commit(2, 2)  # entry 2 is of term 1 (Raft §5.4.2)
        assert log.committed == 0
        assert log.maybe_commit(3, 2)
        assert log.committed == 3
        assert not log.maybe_commit(3, 2)  # not newer
        assert not log.maybe_commit(2, 1)  # older
        assert not log.maybe_commit(9, 2)  # beyond the log
        assert log.maybe_commit(4, 2) and log.committed == 4

    def test_unstable_entries_are_visible_before_persisting(self) -> None:
        log, storage = make_log([])
        assert log.append(ents(1, [1, 1, 2], size=4)) == 3
        assert storage.last_index() == 0
        assert log_terms(log) == [1, 1, 2]
        assert log.slice(1, 4, UNLIMITED) == ents(1, [1, 1, 2], size=4)
        assert log.unstable == ents(1, [1, 1, 2], size=4) and log.offset == 1

    def test_stable_to_hands_entries_over_to_storage(self) -> None:
        log, storage = make_log([])
        log.append(ents(1, [1, 1, 2]))
        storage.append(log.unstable[:2])
        log.stable_to(2)
        assert log.unstable == ents(3, [2]) and log.offset == 3
        assert log_terms(log) == [1, 1, 2]
        storage.append(log.unstable)
        log.stable_to(3)
        assert log.unstable == [] and log.offset == 4
        assert log_terms(log) == [1, 1, 2] and log.last_index() == 3
        log.stable_to(3)  # idempotent
        log.stable_to(1)  # already stable: no-op
        assert log.unstable == [] and log.offset == 4

    def test_unstable_shadows_a_conflicting_storage_suffix(self) -> None:
        log, storage = make_log([1, 1, 1, 1, 1], commit=2)
        log.append(ents(3, [2]))
        assert log.last_index() == 3 and log_terms(log) == [1, 1, 2]
        assert log.slice(1, 4, UNLIMITED) == ents(1, [1, 1, 2])
        storage.append(log.unstable)
        log.stable_to(3)
        assert log.last_index() == 3 and log_terms(log) == [1, 1, 2]

    def test_next_committed_and_applied(self) -> None:
        log, _ = make_log([1, 1, 1, 1], commit=3, applied=1)
        assert log.has_next_committed()
        assert log.next_committed(UNLIMITED) == ents(2, [1, 1])
        log.applied_to(3)
        assert not log.has_next_committed() and log.next_committed(UNLIMITED) == []
        with pytest.raises(AssertionError):
            log.applied_to(4)

    def test_restore_replaces_the_log_with_a_pending_snapshot(self) -> None:
        log, storage = make_log([1, 1, 1, 1, 1], commit=3, applied=2)
        log.append(ents(6, [1]))
        conf = ConfState(voters=(1, 2, 3))
        snap = Snapshot(SnapshotMeta(10, 4, conf), b"state")
        log.restore(snap)
        assert log.pending_snapshot is snap and log.snapshot() is snap
        assert log.committed == 10
        assert log.applied == 2
        assert (log.first_index(), log.last_index()) == (11, 10)
        assert log.term(10) == 4 and log.last_term() == 4
        assert log.unstable == [] and log.offset == 11
        with pytest.raises(CompactedError):
            log.term(9)
        with pytest.raises(CompactedError):
            log.slice(5, 6, UNLIMITED)
        assert not log.has_next_committed()  # the snapshot itself, not entries, brings 1..10
        assert log.match_term(10, 4) and not log.match_term(5, 1)
        # Entries from the leader may follow before the host persists the snapshot.
        assert log.maybe_append(10, 4, 11, tuple(ents(11, [4, 4]))) == 12
        assert log.committed == 11
        assert log.slice(11, 13, UNLIMITED) == ents(11, [4, 4])
        # The host persists the Ready: snapshot first, then the entries.
        storage.apply_snapshot(snap)
        storage.append(log.unstable)
        log.stable_to(12)
        log.stable_snapshot()
        log.applied_to(10)
        assert log.pending_snapshot is None and log.snapshot().meta == snap.meta
        assert (log.first_index(), log.last_index()) == (11, 12)
        assert log.term(10) == 4 and log_terms(log) == [4, 4]
        assert log.next_committed(UNLIMITED) == ents(11, [4])

    def test_slice_spanning_storage_and_unstable_honours_max_bytes(self) -> None:
        log, _ = make_log([1, 1, 1, 1], size=10)  # 26 bytes each
        log.append(ents(5, [2, 2, 2], size=10))
        everything = ents(1, [1, 1, 1, 1], size=10) + ents(5, [2, 2, 2], size=10)
        assert log.slice(1, 8, UNLIMITED) == everything
        assert log.slice(3, 7, UNLIMITED) == everything[2:6]
        assert log.slice(3, 7, 0) == everything[2:3]
        assert log.slice(3, 7, 52) == everything[2:4]  # stops exactly at the storage boundary
        assert log.slice(3, 7, 78) == everything[2:5]  # one unstable entry
        assert log.slice(3, 7, 103) == everything[2:5]
        assert log.slice(5, 8, 0) == everything[4:5]
        assert log.slice(4, 4, 0) == []
        raises_unavailable_not_compacted(lambda: log.slice(5, 9, UNLIMITED))
        assert log.entries_from(6, UNLIMITED) == everything[5:]

    @settings(max_examples=200, deadline=None)
    @given(st.data())
    def test_slice_matches_naive(self, data) -> None:
        sizes = data.draw(st.lists(st.integers(min_value=0, max_value=30), max_size=10), label="stored")
        storage = MemoryStorage()
        stored = [Entry(i + 1, 1, data=b"s" * n) for i, n in enumerate(sizes)]
        storage.append(stored)
        compact = data.draw(st.integers(min_value=0, max_value=len(stored)), label="compact")
        if compact:
            storage.create_snapshot(compact, ConfState(voters=(1,)), None)
            storage.compact(compact)
        log = RaftLog(storage)
        assert log.committed == compact
        start = data.draw(st.integers(min_value=compact + 1, max_value=len(stored) + 1), label="unstable from")
        new_sizes = data.draw(st.lists(st.integers(min_value=0, max_value=30), max_size=6), label="unstable")
        new = [Entry(start + i, 2, data=b"u" * n) for i, n in enumerate(new_sizes)]
        log.append(new)
        combined = (stored[: start - 1] + new) if new else stored
        assert log.last_index() == len(combined)
        lo = data.draw(st.integers(min_value=compact + 1, max_value=len(combined) + 1), label="lo")
        hi = data.draw(st.integers(min_value=lo, max_value=len(combined) + 1), label="hi")
        max_bytes = data.draw(st.integers(min_value=0, max_value=300), label="max_bytes")
        assert log.slice(lo, hi, max_bytes) == naive_limit(combined[lo - 1 : hi - 1], max_bytes)
        if compact:
            with pytest.raises(CompactedError):
                log.slice(compact, hi, max_bytes)

    def test_is_up_to_date(self) -> None:
        log, _ = make_log([1, 2, 2])
        assert log.is_up_to_date(3, 2)
        assert log.is_up_to_date(5, 2)
        assert log.is_up_to_date(1, 3)  # a higher last term wins regardless of length
        assert not log.is_up_to_date(2, 2)
        assert not log.is_up_to_date(10, 1)


# -- Progress and Inflights -------------------------------------------------------------------------
class TestInflights:
    def test_add_free_and_full(self) -> None:
        inf = Inflights(3)
        for last in (5, 8, 10):
            assert not inf.full()
            inf.add(last)
        assert inf.full() and len(inf) == 3
        with pytest.raises(AssertionError):
            inf.add(12)
        inf.free_le(7)
        assert len(inf) == 2 and not inf.full()
        inf.free_le(4)  # nothing acknowledged beyond what was freed
        assert len(inf) == 2
        inf.free_first()
        assert len(inf) == 1
        inf.free_le(100)
        assert len(inf) == 0
        inf.free_first()  # empty: no-op
        inf.add(11)
        inf.reset()
        assert len(inf) == 0


class TestProgress:
    def test_new_progress_probes(self) -> None:
        pr = Progress(5, max_inflight_msgs=4)
        assert (pr.state, pr.match, pr.next) == (ProgressState.PROBE, 0, 5)
        assert not pr.is_paused()
        assert pr.describe() == "probe match=0 next=5 inflight=0"

    @pytest.mark.parametrize("count", [0, 3])
    def test_probe_pauses_after_one_send(self, count: int) -> None:
        pr = Progress(5, max_inflight_msgs=4)
        pr.sent_entries(4 + count, count)
        assert pr.is_paused()
        assert pr.next == 5  # probing does not move next optimistically
        assert len(pr.inflights) == 0
        assert pr.maybe_update(4 + count)  # the answer unpauses the probe
        assert not pr.is_paused()
        assert (pr.match, pr.next) == (4 + count, 5 + count)
        pr.sent_entries(pr.next + 1, 2)
        assert pr.is_paused()
        assert not pr.maybe_update(4 + count)  # a duplicate answer does not unpause
        assert pr.is_paused()

    def test_probe_unpauses_on_a_fresh_rejection(self) -> None:
        pr = Progress(10, max_inflight_msgs=4)
        pr.sent_entries(12, 3)
        assert pr.is_paused()
        assert pr.maybe_decrease_to(9, hint_index=4)
        assert not pr.is_paused() and pr.next == 5

    def test_replicate_pipelines_up_to_the_bound(self) -> None:
        pr = Progress(1, max_inflight_msgs=3)
        pr.maybe_update(4)
        pr.become_replicate()
        assert (pr.state, pr.next) == (ProgressState.REPLICATE, 5)
        for last in (6, 8, 9):
            assert not pr.is_paused()
            pr.sent_entries(last, last - pr.next + 1)
            assert pr.next == last + 1
        assert pr.is_paused() and len(pr.inflights) == 3
        pr.sent_entries(9, 0)  # an empty append (commit update) takes no inflight slot
        assert len(pr.inflights) == 3 and pr.next == 10
        assert pr.maybe_update(7)
        pr.inflights.free_le(7)
        assert not pr.is_paused() and len(pr.inflights) == 2
        assert pr.next == 10  # acknowledgements never pull next back

    def test_maybe_decrease_to_in_replicate(self) -> None:
        pr = Progress(1, max_inflight_msgs=4)
        pr.maybe_update(5)
        pr.become_replicate()
        pr.sent_entries(9, 4)
        assert pr.next == 10
        assert not pr.maybe_decrease_to(5, hint_index=0)  # stale: at or below match
        assert not pr.maybe_decrease_to(3, hint_index=0)
        assert pr.next == 10
        assert pr.maybe_decrease_to(8, hint_index=2)
        assert pr.next == 6  # back to match + 1 (the hint is for probing)

    def test_maybe_decrease_to_in_probe(self) -> None:
        pr = Progress(10, max_inflight_msgs=4)
        pr.sent_entries(12, 3)
        assert not pr.maybe_decrease_to(7, hint_index=2)  # stale: not an answer to next-1
        assert pr.next == 10 and pr.is_paused()
        assert pr.maybe_decrease_to(9, hint_index=20)  # hint above the rejected index: use rejected
        assert pr.next == 9
        assert pr.maybe_decrease_to(8, hint_index=3)
        assert pr.next == 4

    def test_maybe_decrease_to_in_probe_never_goes_below_match(self) -> None:
        pr = Progress(10, max_inflight_msgs=4)
        pr.maybe_update(6)
        assert pr.next == 10
        assert pr.maybe_decrease_to(9, hint_index=1)
        assert pr.next == 7 and pr.match == 6

    def test_snapshot_state_pauses(self) -> None:
        pr = Progress(3, max_inflight_msgs=4)
        pr.become_snapshot(20)
        assert (pr.state, pr.pending_snapshot) == (ProgressState.SNAPSHOT, 20)
        assert pr.is_paused()
        pr.sent_entries(30, 5)
        assert pr.is_paused() and len(pr.inflights) == 0

    def test_become_probe_from_snapshot_uses_pending_snapshot(self) -> None:
        pr = Progress(3, max_inflight_msgs=4)
        pr.maybe_update(2)
        pr.become_snapshot(20)
        pr.become_probe()
        assert (pr.state, pr.next, pr.pending_snapshot) == (ProgressState.PROBE, 21, 0)
        assert not pr.is_paused()

    def test_become_probe_from_snapshot_after_a_newer_ack(self) -> None:
        pr = Progress(3, max_inflight_msgs=4)
        pr.become_snapshot(20)
        pr.maybe_update(25)
        pr.become_probe()
        assert pr.next == 26

    def test_become_probe_from_failed_snapshot(self) -> None:
        pr = Progress(3, max_inflight_msgs=4)
        pr.maybe_update(2)
        pr.become_snapshot(20)
        pr.pending_snapshot = 0  # what Node.report_snapshot(ok=False) does
        pr.become_probe()
        assert pr.next == 3

    def test_become_probe_from_replicate(self) -> None:
        pr = Progress(1, max_inflight_msgs=2)
        pr.maybe_update(4)
        pr.become_replicate()
        pr.sent_entries(8, 4)
        pr.sent_entries(9, 1)
        assert pr.is_paused()
        pr.become_probe()
        assert (pr.state, pr.next, len(pr.inflights)) == (ProgressState.PROBE, 5, 0)
        assert not pr.is_paused()

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def test_random_flow_keeps_invariants(self, data) -> None:
        capacity = data.draw(st.integers(min_value=1, max_value=4), label="capacity")
        pr = Progress(data.draw(st.integers(min_value=1, max_value=10)), capacity)
        for _ in range(data.draw(st.integers(min_value=1, max_value=25))):
            op = data.draw(st.sampled_from(["send", "ack", "reject", "probe", "replicate", "snapshot"]))
            before = (pr.state, pr.match, pr.next, pr.probe_sent)
            if op == "send":
                if pr.is_paused():
                    continue
                count = data.draw(st.integers(min_value=0, max_value=3))
                inflight = len(pr.inflights)
                pr.sent_entries(pr.next + count - 1, count)
                if pr.state is ProgressState.REPLICATE:
                    assert len(pr.inflights) == inflight + (count > 0)
                    assert pr.next == before[2] + count
                else:
                    assert pr.is_paused() and pr.next == before[2]
            elif op == "ack":
                index = data.draw(st.integers(min_value=0, max_value=pr.next + 3))
                assert pr.maybe_update(index) == (index > before[1])
                pr.inflights.free_le(index)
                assert pr.match == max(before[1], index)
            elif op == "reject":
                rejected = data.draw(st.integers(min_value=0, max_value=pr.next + 2))
                hint = data.draw(st.integers(min_value=0, max_value=rejected))
                moved = pr.maybe_decrease_to(rejected, hint)
                if not moved:
                    assert (pr.state, pr.match, pr.next, pr.probe_sent) == before
                elif pr.state is ProgressState.REPLICATE:
                    assert pr.next == pr.match + 1
                else:
                    assert pr.match + 1 <= pr.next <= max(rejected, pr.match + 1) and not pr.probe_sent
            elif op == "probe":
                pr.become_probe()
            elif op == "replicate":
                pr.become_replicate()
            else:
                pr.become_snapshot(data.draw(st.integers(min_value=pr.match, max_value=pr.match + 10)))
            assert pr.match < pr.next
            assert len(pr.inflights) <= capacity
            if pr.state is not ProgressState.REPLICATE:
                assert len(pr.inflights) == 0


def test_lmdb_terms_come_from_memory_or_disk_alike(tmp_path, monkeypatch) -> None:
    """The store remembers the terms of recent appends (TERM_CACHE_ENTRIES, here 4) and reads the
    others from LMDB: evicted, replaced, reopened or snapshot-installed, every answer is the stored term."""
    from raykv.storage import replica_store

    monkeypatch.setattr(replica_store, "TERM_CACHE_ENTRIES", 4)
    ident = ReplicaId("terms", 0, 1)
    s = ReplicaStore(tmp_path, ident)
    s.append(ents(1, [1, 1, 2, 2, 3, 3, 3, 4]))
    s.append(ents(7, [5, 5, 5]))  # replaces 7..8
    expected = [1, 1, 2, 2, 3, 3, 5, 5, 5]
    assert [s.term(i) for i in range(1, 10)] == expected
    s.close()
    s = ReplicaStore(tmp_path, ident, create=False)
    assert [s.term(i) for i in range(1, 10)] == expected
    s.apply_snapshot(Snapshot(SnapshotMeta(20, 7, ConfState(voters=(1,))), None))
    s.append(ents(21, [8]))
    assert (s.term(20), s.term(21)) == (7, 8)
    raises_unavailable_not_compacted(lambda: s.term(22))
    s.close()
