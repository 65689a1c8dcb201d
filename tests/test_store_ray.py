"""A whole store on a real Ray cluster: ``raykv.start`` (3 shards x 3 replicas + the meta group) and the
store client (:class:`raykv.client.Client`): routing, ordered scans across shards, Arrow, batches and
their per-shard atomicity, ``status()``, bad inputs, recovery after ``raykv.stop`` + ``raykv.start``, and
a multi-shard concurrent workload through a leader kill, checked linearizable.

The tests that need a healthy, empty 3-shard store share one (:func:`store`, a module fixture):
before each of them every shard has a leader and every replica answers as leader or follower,
and after each one every key it left is deleted, so each starts from an empty store. Tests that
stop, reopen or refuse a store use a store of their own and stop it at the end. Initial split points of 3 shards
(:func:`raykv.placement.initial_split_points`): shard 1 holds bytes keys and str keys below ``"I"``,
shard 2 ``"I"`` up to ``"b"``, shard 3 the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time

import pyarrow as pa
import pytest
import ray

import raykv
from raykv.runtime.faults import FaultPlan
from raykv.client import Client, ShardClient, StoreStatus
from raykv.errors import (
    InvalidRequestError,
    KeyTooLargeError,
    OperationTimeoutError,
    StoreNotFoundError,
    UnavailableError,
    ValueTooLargeError,
)
from raykv.kv.commands import Batch, Delete, Put
from raykv.kv.limits import KVLimits
from raykv.protocol import NAMESPACE
from raykv.testing.linearizability import check
from raykv.testing.workload import Workload
from raykv.userdata import decode_value, encode_key, encode_value

from ray_cluster import ray_cluster  # noqa: F401 -- fixture
from test_userdata import FakeGroup

pytestmark = pytest.mark.timeout(600)
SPREAD = ["0", "A", "H", "I", "Q", "Z", "a", "b", "m", "z", "~"]
"""First characters that land on every shard, and right at the boundaries ("I", "b")."""


@contextlib.contextmanager
def running_store(env, name: str, shards: int = 3, **kwargs):
    """``raykv.start`` a store on the test cluster; close its client and ``raykv.stop`` it at the end."""
    kv = raykv.start(name, shards=shards, replicas=3, data_dir=env.data_dirs(name), timeout_s=30.0, **kwargs)
    try:
        yield kv
    finally:
        kv.close()
        raykv.stop(name)


@pytest.fixture(scope="module")
def shared_store(ray_cluster):  # noqa: F811
    with running_store(ray_cluster, "st-shared") as kv:
        yield kv


@pytest.fixture
def store(shared_store):
    """The module's 3-shard store, healthy and empty; every key the test left is deleted afterwards."""
    wait_until_steady(shared_store)
    clear(shared_store)
    yield shared_store
    clear(shared_store)


def wait_until_steady(kv: Client, timeout: float = 60.0) -> None:
    """Every shard has a leader and every replica answers as leader or follower (a previous test
    may have killed or cut off a leader: it restarted or healed, and an election may still run)."""
    deadline = time.monotonic() + timeout
    while True:
        status = kv.status(timeout_s=5.0)
        if all(s.leader is not None and all(r.alive and r.role in ("leader", "follower") for r in s.replicas)
               for s in status.shards):
            return
        assert time.monotonic() < deadline, f"the shared store did not settle within {timeout}s:\n{status}"
        time.sleep(0.1)


def clear(kv: Client) -> None:
    keys = [k for k, _ in kv.scan()]
    if keys:
        kv.delete_batch(keys)
    assert list(kv.scan()) == []


def spread_keys(per_char: int) -> list[str]:
    return [f"{c}{i:04d}" for c in SPREAD for i in range(per_char)]


def shard_of(kv: Client, key) -> int:
    return kv.shard_map.shard_for(encode_key(key)).shard


def keys_on_shard(kv: Client, shard: int) -> list:
    """The encoded keys stored on ``shard``, read through its one-group client."""
    pairs, more = kv.shard_client(shard).scan(b"", None, 100_000, "linearizable")
    assert not more
    return [k for k, _ in pairs]


def test_put_get_across_shards_and_status(store) -> None:
    kv = store
    assert isinstance(kv, Client) and len(kv.shard_map.shards) == 3
    keys = spread_keys(3)
    for i, key in enumerate(keys):
        kv.put(key, {"i": i})
    kv.put(b"\x00raw", b"bytes value")
    assert [kv.get(k) for k in keys] == [{"i": i} for i in range(len(keys))]
    assert kv.get(b"\x00raw") == b"bytes value" and kv.get("\x00raw") is None
    assert kv.get("missing", default=7) == 7
    assert kv.get(keys[5], consistency="lease") == {"i": 5}
    assert kv.cas(keys[0], {"i": 0}, "swapped") is True and kv.get(keys[0]) == "swapped"
    assert kv.delete(keys[1]) is True and kv.delete(keys[1]) is False
    assert {shard_of(kv, k) for k in keys} == {1, 2, 3}
    for spec in kv.shard_map.shards:
        stored = keys_on_shard(kv, spec.shard)
        assert stored and all(spec.contains(k) for k in stored), spec
    assert sum(len(keys_on_shard(kv, s.shard)) for s in kv.shard_map.shards) == len(keys)  # -1 deleted, +1 bytes
    check_status(kv, kv.status())
    check_status(kv, asyncio.run(kv.astatus()))


def check_status(kv: Client, status: StoreStatus) -> None:
    assert status.store == kv.store and status.epoch == kv.shard_map.epoch
    assert [s.shard for s in status.shards] == [1, 2, 3] and status.healthy
    assert status.shards[0].start_key == b"" and status.shards[-1].end_key is None
    for shard, spec in zip(status.shards, kv.shard_map.shards):
        assert (shard.start_key, shard.end_key) == (spec.start, spec.end)
        assert shard.leader in {r.replica for r in shard.replicas}
        assert [(r.replica, r.host) for r in shard.replicas] == list(spec.replicas)
        assert len({r.host for r in shard.replicas}) == 3
        for r in shard.replicas:
            assert r.alive and r.role in ("leader", "follower") and r.term >= 1
            assert r.commit >= r.applied >= 1 and r.data_bytes > 0 and r.node_id
            assert r.actor_name == f"raykv:{kv.store}:{shard.shard}:{r.replica}"
    doc = status.to_dict()
    assert json.loads(json.dumps(doc)) == doc
    assert doc["shards"][1]["start_key"] == "'I'" and doc["shards"][2]["end_key"] is None
    text = str(status)
    assert kv.store in text and "leader" in text and text.count("\n") == 1 + 9
    assert repr(status) == text
    html = status._repr_html_()
    assert html.startswith("<table") and html.count("<tr>") == 1 + 9


def test_scans_cross_shards_in_order(store) -> None:
    kv = store
    str_keys = spread_keys(150)  # > FIRST_PAGE_KEYS per shard: several pages per shard
    bytes_keys = [bytes([b]) + b"k" for b in range(0, 256, 7)]
    kv.put_batch({k: k.upper() for k in str_keys})
    kv.put_batch([(k, len(k)) for k in bytes_keys])
    every = list(kv.scan())
    assert [k for k, _ in every] == sorted(bytes_keys) + sorted(str_keys), "bytes keys first, then str keys"
    assert dict(every) == {**{k: k.upper() for k in str_keys}, **{k: len(k) for k in bytes_keys}}
    assert [k for k, _ in kv.scan(start="H0100", end="b0002")] == sorted(
        k for k in str_keys if "H0100" <= k < "b0002")
    assert [k for k, _ in kv.scan(prefix="I")] == [f"I{i:04d}" for i in range(150)]
    assert [k for k, _ in kv.scan(prefix="a01")] == [f"a{i:04d}" for i in range(100, 150)]
    assert [k for k, _ in kv.scan(start="m0140")] == sorted(k for k in str_keys if k >= "m0140")
    assert [k for k, _ in kv.scan(end="00003")] == ["00000", "00001", "00002"]
    assert [k for k, _ in kv.scan(start=b"\x10")] == sorted(k for k in bytes_keys if k >= b"\x10")
    assert [k for k, _ in kv.scan(end=b"\x08")] == [b"\x00k", b"\x07k"]
    assert [k for k, _ in kv.scan(prefix=b"")] == sorted(bytes_keys)
    assert len(list(kv.scan(prefix=""))) == len(str_keys)
    assert [k for k, _ in kv.scan(start="Z0148", limit=5)] == ["Z0148", "Z0149", "a0000", "a0001", "a0002"]
    assert len(list(kv.scan(limit=1234))) == 1234
    assert list(kv.scan(start="z", end="a")) == [] and list(kv.scan(prefix="nope")) == []
    for level in ("lease", "stale"):
        assert len(list(kv.scan(prefix="Q", consistency=level))) == 150
    table = kv.scan_arrow(start="Z0140", end="b0010")
    assert table.schema.names == ["key", "key_is_str", "value"] and table.num_rows == 10 + 150 + 10
    assert table.schema.field("key").type == pa.binary() and table.column("key_is_str").to_pylist() == [True] * 170
    assert table.column("key").to_pylist()[:2] == [b"Z0140", b"Z0141"]
    assert decode_value(table.column("value")[0].as_py()) == "Z0140"
    mixed = kv.scan_arrow(limit=40)
    assert mixed.column("key_is_str").to_pylist() == [False] * len(bytes_keys) + [True] * (40 - len(bytes_keys))
    assert kv.scan_arrow(prefix="nope").num_rows == 0

    async def async_scans():
        pairs = [p async for p in kv.ascan(prefix="b00", limit=20)]
        return pairs, await kv.ascan_arrow(prefix="z")

    pairs, ztable = asyncio.run(async_scans())
    assert pairs == [(f"b{i:04d}", f"B{i:04d}") for i in range(20)] and ztable.num_rows == 150


REROUTED = ("redirects", "retries", "backoffs")
"""Client stats that count a request sent again (a leader moved, a replica failed)."""


def test_batches_with_dicts_pairs_and_arrow(store) -> None:
    kv = store
    data = {k: {"v": k} for k in spread_keys(110)}  # 1210 keys over all shards
    assert kv.put_batch(data) is None
    keys = list(data)
    assert kv.get_batch(keys) == list(data.values())
    with Client(kv.store, timeout_s=30.0) as fresh:  # one read call per shard for ~400 keys each
        for shard in (1, 2, 3):
            fresh.get(next(k for k in keys if shard_of(kv, k) == shard))  # learns each leader
        for _ in range(3):  # measured in a window without a leadership change (the shared store's
            before = fresh.stats()  # router rebalances leaders every minute; an election may come too)
            assert fresh.get_batch(keys) == list(data.values())
            after = fresh.stats()
            calls = {s: after[s]["calls.linearizable"] - before[s]["calls.linearizable"] for s in before}
            moved = sum(after[s].get(k, 0) - before[s].get(k, 0) for s in before for k in REROUTED)
            if not moved:
                break
        assert calls == {1: 1, 2: 1, 3: 1}, (calls, moved)
    assert kv.get_batch(["nope", keys[3], b"nope"]) == [None, data[keys[3]], None]
    assert kv.get_batch(keys[:50], consistency="stale") is not None
    kv.delete_batch(keys[::2])
    assert kv.get_batch(keys[:6]) == [None, data[keys[1]], None, data[keys[3]], None, data[keys[5]]]
    assert len(list(kv.scan())) == len(keys) // 2
    kv.put_batch([("dup", 1), ("dup", 2), (b"dup", 3)])  # a key given twice keeps its last value
    assert kv.get_batch(["dup", b"dup"]) == [2, 3]

    kv.put_batch(pa.table({"key": [f"t{i:05d}" for i in range(1500)], "value": list(range(1500))}))
    kv.put_batch(pa.table({"key": [f"G{i}" for i in range(10)], "value": [{"i": i, "s": "x"} for i in range(10)]}))
    assert kv.get_batch(["t00000", "t01499", "G3"]) == [0, 1499, {"i": 3, "s": "x"}]
    binary = pa.table({"key": pa.array([b"\x01a", b"\x02b"], pa.binary()), "value": [1.5, 2.5]})
    kv.put_batch(binary)
    assert kv.get_batch([b"\x01a", b"\x02b"]) == [1.5, 2.5]
    assert kv.scan_arrow(prefix="t").num_rows == 1500

    async def async_batches():
        await kv.aput_batch({f"as{i}": i for i in range(300)})
        got = await kv.aget_batch([f"as{i}" for i in range(300)])
        await kv.adelete_batch([f"as{i}" for i in range(0, 300, 3)])
        return got, await kv.aget_batch(["as0", "as1"]), await kv.aput("one", 1), await kv.aget("one")

    got, after, _, one = asyncio.run(async_batches())
    assert got == list(range(300)) and after == [None, 1] and one == 1


def test_batches_split_by_the_batch_limits(store) -> None:
    with Client(store.store, timeout_s=30.0, limits=KVLimits(max_batch_ops=64, max_batch_bytes=4096)) as kv:
        data = {f"{c}{i:03d}": "x" * 30 for c in "0Mz" for i in range(400)}
        kv.put_batch(data)
        stats = kv.stats()
        assert all(s["calls.submit"] >= 1 for s in stats.values())
        assert sum(s["items.submit"] for s in stats.values()) >= len(data) // 64
        assert kv.get_batch(list(data)) == list(data.values())
        kv.delete_batch(list(data))
        assert list(kv.scan()) == []


def test_batches_are_atomic_per_shard(store) -> None:
    kv = store
    keys = spread_keys(5)
    for bad in ({**{k: 1 for k in keys}, "Mbad": None},
                {**{k: 1 for k in keys}, "Mbig": b"x" * (KVLimits().max_value_bytes + 1)},
                [(k, 1) for k in keys] + [(7, 1)]):
        with pytest.raises(InvalidRequestError):
            kv.put_batch(bad)
    with pytest.raises(InvalidRequestError):
        kv.delete_batch(["a", None])
    assert kv.get_batch(keys) == [None] * len(keys) and list(kv.scan()) == []
    kv.put("keep", 1)
    # a batch that bypasses the client's checks is refused whole by the replicas (they validate it too)
    shard = kv.shard_client(shard_of(kv, "keep"))
    bad_batch = Batch((Put(encode_key("keep"), encode_value(2)), Put(encode_key("new"), encode_value(3)),
                       Delete(b"")))
    with pytest.raises(InvalidRequestError):
        shard._wait(shard._core.write(bad_batch))
    assert kv.get_batch(["keep", "new"]) == [1, None]
    shard.write_batch([Put(encode_key("keep"), encode_value(2)), Delete(encode_key("keep")),
                       Put(encode_key("new"), encode_value(3))])
    assert kv.get_batch(["keep", "new"]) == [None, 3], "batch ops apply in order"


def test_bad_inputs(ray_cluster) -> None:  # noqa: F811
    """Bad inputs are refused with raykv errors (one data shard is enough: no input here depends on
    which shard owns a key); a stopped store is not found."""
    with pytest.raises(StoreNotFoundError):
        Client("st-none")
    with pytest.raises(StoreNotFoundError):
        raykv.connect("st-none")
    with pytest.raises(InvalidRequestError):
        raykv.start("st-zero", shards=0, replicas=3, data_dir=ray_cluster.data_dirs("st-zero"))
    with pytest.raises(InvalidRequestError):
        Client("bad name!")
    with running_store(ray_cluster, "st-bad", shards=1) as kv:
        for call in (lambda: kv.put(1, "v"), lambda: kv.get(None), lambda: kv.delete(3.0),
                     lambda: kv.cas(["k"], None, 1), lambda: kv.put("k", None), lambda: kv.cas("k", 1, None),
                     lambda: kv.get("k", consistency="strong"), lambda: kv.get_batch(["a", 1]),
                     lambda: kv.get_batch("abc"), lambda: kv.put_batch("abc"), lambda: kv.put_batch(5),
                     lambda: kv.put_batch([("a", 1, 2)]), lambda: kv.put_batch(pa.table({"k": [1], "value": [1]})),
                     lambda: kv.put_batch(pa.table({"key": [1], "value": [1]})),
                     lambda: kv.put_batch(pa.table({"key": ["a", None], "value": [1, 2]})),
                     lambda: kv.put_batch(pa.table({"key": ["a"], "value": pa.array([None], pa.int64())})),
                     lambda: kv.scan(prefix="a", start="b"), lambda: kv.scan(start="a", end=b"b"),
                     lambda: kv.scan(limit=0), lambda: kv.scan(limit=True), lambda: kv.scan(start=5),
                     lambda: kv.scan(consistency="strong"), lambda: kv.scan_arrow(limit=-1),
                     lambda: kv.ascan(end=None, prefix=3)):
            with pytest.raises(InvalidRequestError):
                call()
        with pytest.raises(ValueTooLargeError):
            kv.put("k", b"x" * (KVLimits().max_value_bytes + 1))
        with pytest.raises(KeyTooLargeError):
            kv.put("k" * 600, 1)
        assert list(kv.scan()) == []
    with pytest.raises(StoreNotFoundError):
        Client("st-bad")  # stopped


def test_restart_recovers_every_key(ray_cluster) -> None:  # noqa: F811
    name = "st-restart"
    data = {k: [k, i] for i, k in enumerate(spread_keys(40))}
    with running_store(ray_cluster, name) as kv:
        kv.put_batch(data)
        kv.put(b"\xffbytes", "b")
        kv.delete(next(iter(data)))
        expected = list(kv.scan())
        assert len(expected) == len(data)
    with running_store(ray_cluster, name) as kv:
        assert list(kv.scan()) == expected
        assert kv.get(b"\xffbytes") == "b" and kv.get(next(iter(data))) is None
        kv.put("after", 1)
        assert kv.status().healthy


def test_multi_shard_workload_through_a_leader_kill(store) -> None:
    kv = store
    keys = ["0w", "Aw", "Mw", "Zw", "mw", "zw"]
    assert {shard_of(kv, k) for k in keys} == {1, 2, 3}
    victim = shard_of(kv, "Mw")
    workload = Workload(kv, keys, clients=6, seed=7).start()
    assert workload.wait_for_ops(40, 60), f"no progress before the kill: {workload.stats}"
    leader = wait_leader(kv, victim)
    ray.kill(ray.get_actor(f"raykv:{kv.store}:{victim}:{leader}", namespace=NAMESPACE), no_restart=False)
    assert workload.wait_for_ops(80, 90), f"no progress after the kill: {workload.stats}"
    new_leader = wait_leader(kv, victim)
    assert workload.wait_for_ops(40, 60), f"no progress with the new leader: {workload.stats}"
    result = check(workload.stop_with_final_reads(), timeout_s=120)
    print(f"{workload.stats}, leader {leader} -> {new_leader}; {result.explanation[:100]}")
    assert result.ok is True, result.explanation
    assert {k for k in keys if shard_of(kv, k) == victim} and workload.stats.ok >= 160


def test_multi_shard_workload_through_a_partitioned_leader(store) -> None:
    """One shard's leader is cut off from its followers (it still reaches clients) while clients
    use every shard; the history stays linearizable and the shard elects a new leader."""
    kv = store
    keys = ["0p", "Ap", "Mp", "Zp", "mp", "zp"]
    victim = shard_of(kv, "Mp")
    workload = Workload(kv, keys, clients=6, seed=11).start()
    assert workload.wait_for_ops(40, 60), f"no progress before the partition: {workload.stats}"
    old = wait_leader(kv, victim)
    rids = [r for r, _ in kv.shard_map.by_id(victim).replicas]
    handles = [ray.get_actor(f"raykv:{kv.store}:{victim}:{r}", namespace=NAMESPACE) for r in rids]
    ray.get([h.set_faults.remote(FaultPlan.isolate(old, rids)) for h in handles])
    assert workload.wait_for_ops(80, 90), f"no progress during the partition: {workload.stats}"
    ray.get([h.set_faults.remote(None) for h in handles])
    assert workload.wait_for_ops(40, 60), f"no progress after healing: {workload.stats}"
    result = check(workload.stop_with_final_reads(), timeout_s=120)
    assert result.ok is True, result.explanation
    assert wait_leader(kv, victim) is not None


def wait_leader(kv: Client, shard: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = kv.status(timeout_s=2.0).shards[[s.shard for s in kv.shard_map.shards].index(shard)]
        if status.healthy:
            return status.leader
        time.sleep(0.1)
    raise AssertionError(f"shard {shard} has no leader within {timeout}s")


def test_shard_client_is_the_one_group_client(store) -> None:
    kv = store
    spec = kv.shard_map.shards[0]
    with ShardClient(kv.store, spec.shard, tuple(r for r, _ in spec.replicas), timeout_s=30.0) as one:
        one.put("0x", 1)
        assert kv.get("0x") == 1
        assert one.read_many([encode_key("0x"), encode_key("0y")]) == [encode_value(1), None]
        statuses = one.statuses()
        assert set(statuses) == {1, 2, 3} and all(s is not None for s in statuses.values())


# -- the Ray-free parts of the store client --------------------------------------------------------
def test_scan_ranges_and_pages() -> None:
    from raykv.client import scan
    from raykv.placement import new_shard_map

    limits = KVLimits()
    assert scan.key_range(None, None, None, limits) == (b"b", b"t")
    assert scan.key_range("a", None, None, limits) == (b"sa", b"t")
    assert scan.key_range(None, b"a", None, limits) == (b"b", b"ba")
    assert scan.key_range(None, None, "ab", limits) == (b"sab", b"sac")
    assert scan.key_range(None, None, b"a\xff", limits) == (b"ba\xff", b"bb")
    assert scan.prefix_end(b"\xff\xff") is None
    smap = new_shard_map("s", 3, 3, ["h1", "h2", "h3"])
    segs = scan.segments(smap, b"s0", b"sz")
    assert [(s.shard, s.start, s.end) for s in segs] == [(1, b"s0", b"sI"), (2, b"sI", b"sb"), (3, b"sb", b"sz")]
    assert scan.segments(smap, b"sz", b"sa") == []
    pager = scan.Pager(segs, limit=250)
    first = pager.next_page()
    assert (first.shard, first.start, first.limit) == (1, b"s0", scan.FIRST_PAGE_KEYS)
    pager.feed([(b"s1", b"v")] * 99 + [(b"s5", b"v")], more=True)
    second = pager.next_page()
    assert (second.shard, second.start, second.limit) == (1, b"s5\x00", 150)
    pager.feed([(b"s6", b"v")], more=False)
    assert pager.next_page().shard == 2


def test_batch_outcomes_and_status_rendering() -> None:
    from raykv.client import BatchPartiallyAppliedError
    from raykv.client.batch import chunk, raise_outcome
    from raykv.client.status import show_key

    raise_outcome("put_batch", [(1, None), (2, None)])
    with pytest.raises(UnavailableError):
        raise_outcome("put_batch", [(1, UnavailableError("a")), (2, UnavailableError("b"))])
    with pytest.raises(BatchPartiallyAppliedError) as info:
        raise_outcome("put_batch", [(1, None), (2, UnavailableError("b"))])
    assert info.value.applied == [1] and set(info.value.errors) == {2}
    with pytest.raises(BatchPartiallyAppliedError):
        raise_outcome("put_batch", [(1, OperationTimeoutError("a")), (2, UnavailableError("b"))])
    with pytest.raises(OperationTimeoutError):
        raise_outcome("put_batch", [(1, OperationTimeoutError("a"))])
    ops = [Put(encode_key(f"k{i}"), b"x" * 10) for i in range(10)]
    assert [len(c) for c in chunk(ops, KVLimits(max_batch_ops=4))] == [4, 4, 2]
    assert [len(c) for c in chunk(ops, KVLimits(max_batch_bytes=30))] == [2] * 5
    assert [show_key(k) for k in (b"", None, b"sa", b"b\x00", b"\x01")] == ["", None, "'a'", "b'\\x00'", "<01>"]


class ScanningGroup(FakeGroup):
    """The fake replica group of ``test_userdata`` plus the replica ``scan`` and ``status`` calls
    (replica 3's ``status`` fails)."""

    def execute(self, rid: int, method: str, args: tuple) -> object:
        if method == "status":
            if rid == 3:
                raise RuntimeError("replica 3 is down")
            return {"role": "leader" if rid == self.leader else "follower", "term": 1}
        if method != "scan":
            return super().execute(rid, method, args)
        start, end, limit, level = args
        with self.lock:
            refusal = None if level == "stale" else self._leader_only(rid)
            rows = [(k, v) for k, v in sorted(self.backend.items()) if start <= k and (end is None or k < end)]
        return refusal or (rows[:limit], len(rows) > limit)


def test_shard_client_scan_batch_and_status_over_a_fake_group() -> None:
    group = ScanningGroup()
    kv = ShardClient._over(group, timeout_s=5.0, call_timeout_s=1.0, rng=random.Random(0))
    try:
        kv.write_batch([Put(encode_key(f"k{i}"), encode_value(i)) for i in range(10)] + [Delete(encode_key("k0"))])
        assert group.stored("k0") is None and group.stored("k9") == 9
        assert len(group.writes()) == 1, "one Batch is one write"
        pairs, more = kv.scan(encode_key("k1"), encode_key("k5"), 3)
        assert [k for k, _ in pairs] == [encode_key(f"k{i}") for i in (1, 2, 3)] and more is True
        assert all(rid == 2 for rid, _, _ in group.methods("scan")[-1:]), "linearizable scans go to the leader"
        assert kv.scan(encode_key("k5"), None, 100, "stale")[1] is False
        before = len(group.methods("read"))
        values = kv.read_many([encode_key(f"k{i}") for i in range(10)])
        assert values[0] is None and [decode_value(v) for v in values[1:]] == list(range(1, 10))
        assert len(group.methods("read")) - before == 1, "the reads of one call coalesce"
        with pytest.raises(InvalidRequestError):
            kv.scan(b"k", None, 0)
        with pytest.raises(InvalidRequestError):
            kv.write_batch([Put(b"", b"v")])
        statuses = kv.statuses()
        assert statuses[2]["role"] == "leader" and statuses[1]["role"] == "follower" and statuses[3] is None
    finally:
        kv.close()
        group.pool.shutdown(wait=False, cancel_futures=True)


def test_shard_client_refuses_malformed_scan_pages() -> None:
    group = ScanningGroup()
    group.hook = lambda rid, method, args, run: ([(b"zz", b"v")], False) if method == "scan" else run()
    kv = ShardClient._over(group, timeout_s=1.0, call_timeout_s=0.5, rng=random.Random(0))
    try:
        with pytest.raises(UnavailableError):
            kv.scan(b"a", b"b", 10)  # a key outside the range is a protocol error, retried until the deadline
        assert kv.stats()["protocol_errors"] >= 1
    finally:
        kv.close()
        group.pool.shutdown(wait=False, cancel_futures=True)


def test_reopening_with_other_kv_limits_is_refused(ray_cluster) -> None:  # noqa: F811
    """Apply-time validation depends on the kv limits, so a store keeps the ones it was created
    with: reopening it with others fails with a clear error and changes nothing. (One data shard:
    the meta group, started first, is already refused; more shards would prove nothing more.)"""
    from raykv.errors import UnavailableError
    from raykv.replica.options import ReplicaOptions

    with running_store(ray_cluster, "st-limits", shards=1) as kv:
        kv.put("kept", 1)
    other = ReplicaOptions(limits=KVLimits(max_value_bytes=1000))
    with pytest.raises(UnavailableError, match="kv limits differ"):
        raykv.start("st-limits", data_dir=ray_cluster.data_dirs("st-limits"), options=other)
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith("raykv:st-limits:"):
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
    with running_store(ray_cluster, "st-limits", shards=1) as kv:
        assert kv.get("kept") == 1
