"""The linearizability checker (:mod:`raykv.testing.linearizability`) and history recorder.

Hand-made histories pin down the semantics; two property tests compare the checker with
(1) histories built around a known sequential execution, which must pass, and (2) a naive
brute-force checker on small histories; a 5,000-op smoke test checks that it scales.
"""

from __future__ import annotations

import math
import random
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raykv.testing.history import HistoryRecorder, Op, dump_jsonl, load_jsonl
from raykv.testing.linearizability import check


# -- op builders: client, key, ..., call, ret (ret None = indeterminate) -----------------------------
def put(c, k, v, call, ret):
    return Op(c, "put", k, (v,), None, call, ret)


def get(c, k, out, call, ret):
    return Op(c, "get", k, (), out, call, ret)


def delete(c, k, out, call, ret):
    return Op(c, "delete", k, (), out, call, ret)


def cas(c, k, expected, new, out, call, ret):
    return Op(c, "cas", k, (expected, new), out, call, ret)


def assert_ok(ops):
    result = check(ops)
    assert result.ok is True, result.explanation


def assert_violation(ops, key="x"):
    result = check(ops)
    assert result.ok is False, result.explanation
    assert result.key == key
    assert f"key {key!r} is not linearizable" in result.explanation
    return result


# -- hand-made histories ---------------------------------------------------------------------------------
def test_sequential_history_is_linearizable():
    assert_ok([
        put(1, "x", 1, 0, 1), get(1, "x", 1, 2, 3), delete(1, "x", True, 4, 5), get(2, "x", None, 6, 7),
        delete(2, "x", False, 8, 9), cas(1, "x", None, 2, True, 10, 11), cas(2, "x", 1, 3, False, 12, 13),
        cas(2, "x", 2, 3, True, 14, 15), get(1, "x", 3, 16, 17),
    ])


def test_empty_history_and_reads_of_an_absent_key():
    assert check([]).ok is True
    assert_ok([get(1, "x", None, 0, 1), delete(2, "x", False, 0, 1)])


@pytest.mark.parametrize("seen", [None, 1])
def test_read_concurrent_with_a_write_may_see_either_value(seen):
    assert_ok([put(1, "x", 1, 0, 10), get(2, "x", seen, 1, 2)])


def test_reads_concurrent_with_a_write_cannot_go_back_in_time():
    # Once one read returned the new value, a later read cannot see the old one.
    assert_violation([put(1, "x", 1, 0, 10), get(2, "x", 1, 1, 2), get(3, "x", None, 3, 4)])


def test_stale_read_after_completed_write_is_a_violation():
    result = assert_violation([put(1, "x", 1, 0, 1), put(2, "x", 2, 2, 3), get(3, "x", 1, 4, 5)])
    assert [op.kind for op in result.prefix] == ["put", "put"]
    assert "contradicts" in result.explanation


def test_lost_write_is_a_violation():
    assert_violation([put(1, "x", 1, 0, 1), get(2, "x", None, 2, 3)])


def test_equal_stamps_count_as_concurrent():
    assert_ok([put(1, "x", 1, 0, 2), get(2, "x", None, 2, 3)])


def test_two_concurrent_cas_from_absent_cannot_both_succeed():
    assert_violation([cas(1, "x", None, "a", True, 0, 5), cas(2, "x", None, "b", True, 1, 6)])
    assert_ok([cas(1, "x", None, "a", True, 0, 5), cas(2, "x", None, "b", False, 1, 6), get(3, "x", "a", 7, 8)])


def test_lost_update_through_cas_is_a_violation():
    assert_violation([
        put(1, "x", 0, 0, 1), cas(1, "x", 0, 1, True, 2, 5), cas(2, "x", 0, 1, True, 2, 5),
    ])


def test_cas_with_a_wrong_expectation_changes_nothing():
    assert_ok([put(1, "x", 1, 0, 1), cas(2, "x", 2, 3, False, 2, 3), get(1, "x", 1, 4, 5)])
    assert_violation([put(1, "x", 1, 0, 1), cas(2, "x", 2, 3, True, 2, 3)])


def test_delete_semantics():
    assert_ok([put(1, "x", 1, 0, 1), delete(1, "x", True, 2, 3), get(1, "x", None, 4, 5)])
    assert_violation([delete(1, "x", True, 0, 1)])
    assert_violation([put(1, "x", 1, 0, 1), delete(1, "x", True, 2, 3), get(1, "x", 1, 4, 5)])
    # Two concurrent deletes of a present key: exactly one finds it.
    assert_ok([put(1, "x", 1, 0, 1), delete(1, "x", True, 2, 5), delete(2, "x", False, 2, 5)])
    assert_violation([put(1, "x", 1, 0, 1), delete(1, "x", True, 2, 5), delete(2, "x", True, 2, 5)])


@pytest.mark.parametrize("seen", [1, None])
def test_indeterminate_write_may_be_observed_or_not(seen):
    assert_ok([put(1, "x", 1, 0, None), get(2, "x", seen, 5, 6), get(2, "x", seen, 7, 8)])


def test_indeterminate_write_observed_then_unobserved_is_a_violation():
    assert_violation([put(1, "x", 1, 0, None), get(2, "x", 1, 5, 6), get(2, "x", None, 7, 8)])


def test_indeterminate_write_cannot_take_effect_before_its_call():
    assert_violation([get(2, "x", 1, 0, 1), put(1, "x", 1, 2, None)])


def test_indeterminate_flag_overrides_ret_and_output_is_ignored():
    ops = [
        Op(1, "cas", "x", (None, 1), False, 0, 1, indeterminate=True),  # output says "not swapped"
        Op(2, "delete", "y", (), "junk", 0, 1, indeterminate=True),
        Op(3, "get", "x", (), "junk", 0, 1, indeterminate=True),
        get(4, "x", 1, 2, 3),  # ... but it did swap
        get(4, "x", 1, 100, 101),  # the indeterminate ret=1 is not a deadline either
    ]
    assert_ok(ops)


def test_read_of_a_value_nobody_wrote_is_a_violation():
    assert_violation([put(1, "x", 1, 0, 1), get(2, "x", 99, 0, 3)])


def test_values_compare_with_their_type():
    assert_violation([put(1, "x", 1, 0, 1), get(2, "x", b"1", 2, 3)])
    assert_violation([put(1, "x", 1, 0, 1), get(2, "x", True, 2, 3)])


def test_keys_are_checked_independently_and_the_failing_key_is_named():
    ops = [put(1, "a", 1, 0, 1), get(1, "a", 1, 2, 3), put(2, b"b", 1, 0, 1), get(2, b"b", 2, 2, 3)]
    result = check(ops)
    assert result.ok is False and result.key == b"b"
    assert (result.op_count, result.key_count, result.keys_checked) == (4, 2, 2)
    assert "c2 get b'b' () -> 2 [2, 3]" in result.explanation


def test_timeout_gives_unknown():
    # 14 concurrent writes and an impossible read: the search must try every subset.
    ops = [put(i, "x", i, 0, 10) for i in range(14)] + [get(99, "x", -1, 11, 12)]
    result = check(ops, timeout_s=0.0)
    assert result.ok is None and result.key == "x"
    assert "gave up" in result.explanation
    assert check(ops).ok is False


@pytest.mark.parametrize("bad", [
    dict(kind="scan", args=()), dict(kind="put", args=()), dict(kind="put", args=(None,)),
    dict(kind="cas", args=(1,)), dict(kind="get", args=(), call=2.0, ret=1.0),
])
def test_malformed_ops_are_rejected(bad):
    fields = dict(client=1, kind="get", key="x", args=(), output=None, call=0.0, ret=1.0) | bad
    with pytest.raises(ValueError):
        Op(**fields)


# -- recorder and JSONL -----------------------------------------------------------------------------------
def test_recorder_records_ok_indeterminate_failed_and_pending():
    ticks = iter(range(0, 10**6, 1000))
    rec = HistoryRecorder(clock=lambda: next(ticks))
    a = rec.invoke(1, "put", "x", (1,))
    b = rec.invoke(2, "put", "x", (2,))
    c = rec.invoke(3, "get", "x")
    d = rec.invoke(4, "delete", "x")
    rec.ok(a, None)
    rec.indeterminate(b)
    rec.failed(c)
    with pytest.raises(KeyError):
        rec.ok(c, None)
    ops = rec.history()
    assert [(o.client, o.completed) for o in ops] == [(1, True), (2, False), (4, False)]
    assert ops[0].call == pytest.approx(1e-6) and ops[0].ret == pytest.approx(5e-6)
    assert ops[2].end == math.inf
    rec.ok(d, True)
    assert rec.history()[2].completed


def test_recorder_stamps_strictly_increase_even_with_a_stuck_clock():
    rec = HistoryRecorder(clock=lambda: 42)
    a = rec.invoke(1, "put", "x", (1,))
    rec.ok(a)
    b = rec.invoke(2, "get", "x")
    rec.ok(b, 1)
    first, second = rec.history()
    assert first.call < first.ret < second.call < second.ret


def test_recorder_from_threads_yields_a_linearizable_history():
    rec, lock, store = HistoryRecorder(), threading.Lock(), {}

    def client(n: int) -> None:
        rng = random.Random(n)
        for _ in range(200):
            key, value = rng.choice("ab"), rng.randrange(5)
            kind = rng.choice(["put", "get", "delete"])
            t = rec.invoke(n, kind, key, (value,) if kind == "put" else ())
            with lock:  # a linearizable "store": one lock around a dict
                if kind == "put":
                    store[key], out = value, None
                else:
                    out = store.get(key) if kind == "get" else store.pop(key, None) is not None
            rec.ok(t, out)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    ops = rec.history()
    assert len(ops) == 800
    assert_ok(ops)


def test_jsonl_round_trip(tmp_path):
    ops = [
        put(1, "x", b"\x00\xffbytes", 0.1, 0.25), put(2, b"k", "str", 0.0, None),
        get(3, "x", 12345678901234567890, 0.3, 0.4),
        delete(1, b"k", True, 1e-9, 2.0), cas(2, 7, None, -1, False, 1 / 3, 2 / 3),
        Op(5, "cas", "x", (1, 2), None, 3.0, 4.0, indeterminate=True),
    ]
    path = tmp_path / "h.jsonl"
    dump_jsonl(ops, path)
    assert load_jsonl(path) == ops
    path.write_text(path.read_text() + '{"client": 1}\n')
    with pytest.raises(ValueError, match="h.jsonl:7"):
        load_jsonl(path)
    with pytest.raises(TypeError):
        dump_jsonl([put(1, "x", 1.5, 0, 1)], tmp_path / "bad.jsonl")


# -- a naive reference model and checker -------------------------------------------------------------------
def model_apply(op: Op, store: dict) -> tuple[bool, dict]:
    """Apply ``op`` to a whole-store dict; (False, _) if its recorded output is impossible."""
    store, cur = dict(store), store.get(op.key)
    if op.kind == "put":
        store[op.key], out = op.args[0], None
    elif op.kind == "get":
        out = cur
    elif op.kind == "delete":
        out = store.pop(op.key, None) is not None
    else:
        expected, new = op.args
        out = cur == expected and type(cur) is type(expected)
        if out:
            store[op.key] = new
    if not op.completed or op.kind == "put":
        return True, store
    return (type(out) is type(op.output) and out == op.output), store


def brute_force(ops: list[Op]) -> bool:
    """Try every order consistent with real time, each indeterminate op placed or left out."""
    n = len(ops)

    def extend(placed: frozenset, store: dict) -> bool:
        if all(i in placed for i in range(n) if ops[i].completed):
            return True
        for i in range(n):
            if i in placed or any(j not in placed and ops[j].end < ops[i].call for j in range(n)):
                continue
            legal, after = model_apply(ops[i], store)
            if legal and extend(placed | {i}, after):
                return True
        return False

    return extend(frozenset(), {})


KEYS = ["a", "b", b"c"]
VALUES = [1, 2, 3, "1", b"1"]


@st.composite
def random_request(draw, keys=KEYS, values=VALUES):
    kind = draw(st.sampled_from(["put", "get", "delete", "cas"]))
    key = draw(st.sampled_from(keys))
    args = {"put": lambda: (draw(st.sampled_from(values)),), "get": tuple, "delete": tuple,
            "cas": lambda: (draw(st.sampled_from([None, *values])), draw(st.sampled_from(values)))}[kind]()
    return kind, key, args


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_histories_around_a_sequential_execution_are_linearizable(data):
    requests = data.draw(st.lists(random_request(), max_size=40))
    ops, store = [], {}
    for n, (kind, key, args) in enumerate(requests):
        point = 10.0 * n  # linearization points in sequence order
        call = point - data.draw(st.integers(0, 35))
        ret = point + data.draw(st.integers(0, 35))
        fate = data.draw(st.sampled_from(["ok"] * 6 + ["indeterminate", "never"]))
        if fate != "never":
            output = _observed(kind, key, args, store)
            _, store = model_apply(Op(n, kind, key, args, None, call, None), store)
        if fate == "ok":
            ops.append(Op(n, kind, key, args, output, call, ret))
        else:  # an indeterminate op that did (or never did) take effect; its output is garbage
            ops.append(Op(n, kind, key, args, "garbage", call, None))
    result = check(data.draw(st.permutations(ops)))
    assert result.ok is True, result.explanation


def _observed(kind, key, args, store):
    """What a client sees from the op applied to ``store`` (before its effect)."""
    cur = store.get(key)
    if kind == "get":
        return cur
    if kind == "delete":
        return cur is not None
    if kind == "cas":
        return type(cur) is type(args[0]) and cur == args[0]
    return None


@st.composite
def small_history(draw):
    keys = ["a", "b"][: draw(st.integers(1, 2))]
    ops = []
    for n in range(draw(st.integers(0, 7))):
        kind, key, args = draw(random_request(keys=keys, values=[1, 2]))
        output = {"put": None, "get": draw(st.sampled_from([None, 1, 2])),
                  "delete": draw(st.booleans()), "cas": draw(st.booleans())}[kind]
        call = draw(st.integers(0, 10))
        ret = None if draw(st.integers(0, 4)) == 0 else call + draw(st.integers(0, 6))
        ops.append(Op(draw(st.integers(0, 3)), kind, key, args, output, call, ret))
    return ops


@settings(max_examples=200, deadline=None)
@given(ops=small_history())
def test_checker_agrees_with_brute_force_on_small_histories(ops):
    result = check(ops)
    assert result.ok is brute_force(ops), result.explanation


# -- scale ---------------------------------------------------------------------------------------------------
def concurrent_history(rng: random.Random, n_ops: int, n_keys: int, n_clients: int) -> list[Op]:
    """A valid history: each client runs ops back to back; each op takes effect at a random
    instant of its interval; outputs come from applying the ops in order of those instants.
    About 2% of ops end indeterminate, half of which never take effect."""
    planned, free = [], [0.0] * n_clients
    for n in range(n_ops):
        c = n % n_clients
        call = free[c] + rng.uniform(0.0, 1.0)
        free[c] = ret = call + rng.uniform(0.5, 5.0)
        kind = rng.choices(["get", "put", "cas", "delete"], [40, 25, 25, 10])[0]
        key = f"k{rng.randrange(n_keys)}"
        args = {"get": (), "delete": (), "put": (rng.randrange(10),),
                "cas": (rng.choice([None, *range(10)]), rng.randrange(10))}[kind]
        planned.append((rng.uniform(call, ret), c, kind, key, args, call, ret, rng.random()))
    ops, store = [], {}
    for point, c, kind, key, args, call, ret, fate in sorted(planned):
        if fate < 0.01:  # indeterminate, never took effect
            ops.append(Op(c, kind, key, args, None, call, None))
            continue
        output = _observed(kind, key, args, store)
        _, store = model_apply(Op(c, kind, key, args, None, call, None), store)
        ops.append(Op(c, kind, key, args, output, call, None if fate < 0.02 else ret))
    return sorted(ops, key=lambda o: o.call)


def test_five_thousand_ops_on_fifty_keys_check_ok():
    ops = concurrent_history(random.Random(2024), n_ops=5000, n_keys=50, n_clients=16)
    started = time.monotonic()
    result = check(ops)
    print(f"\nlinearizability: {result.op_count} ops, {result.key_count} keys, "
          f"{result.states_explored} states in {time.monotonic() - started:.3f} s")
    assert result.ok is True, result.explanation
    assert (result.op_count, result.key_count) == (5000, 50)
    # One corrupted read is found and blamed on its key.
    i = next(i for i, o in enumerate(ops) if o.kind == "get" and o.completed)
    ops[i] = Op(ops[i].client, "get", ops[i].key, (), -1, ops[i].call, ops[i].ret)
    broken = check(ops)
    assert broken.ok is False and broken.key == ops[i].key
