"""The store client's re-routing after ShardMapChangedError, without Ray: a map that does
not change (a follower of the new owner that has not yet applied its ingest) is retried
after a short pause, not waited on for a newer map until the timeout."""

from __future__ import annotations

import threading
import time

import pytest

from raykv.client.store import Client, _View
from raykv.errors import ShardMapChangedError
from raykv.kv.limits import KVLimits
from raykv.placement.shardmap import ShardMap, ShardSpec


class _Refusing:
    """A shard client whose gets are refused ``refusals`` times, then answered."""

    replicas = (1, 2, 3)

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.calls = 0

    def get(self, key, default=None, consistency="linearizable"):
        self.calls += 1
        if self.calls <= self.refusals:
            raise ShardMapChangedError(f"{key!r} is not served here yet")
        return "value"

    def close(self) -> None:
        pass


def _client(shard: _Refusing, timeout_s: float, epochs: list[int]) -> Client:
    """A store client over one fake shard whose router answers maps of the given epochs in turn
    (the last one for ever after)."""
    client = Client.__new__(Client)
    client._store, client._timeout_s, client._limits = "s", timeout_s, KVLimits()
    client._lock, client._closed, client._retired = threading.Lock(), False, []
    spec = ShardSpec(1, b"", None, ((1, "h1"), (2, "h2"), (3, "h3")))

    def read_map(newest: bool = True) -> ShardMap:  # stands for Client._read_map
        epoch = epochs.pop(0) if len(epochs) > 1 else epochs[0]
        return ShardMap("s", epoch, (spec,))

    client._read_map = read_map
    client._view = _View(read_map(), {1: shard})
    return client


def test_an_unchanged_map_is_retried_after_a_pause() -> None:
    shard = _Refusing(refusals=3)
    client = _client(shard, timeout_s=30.0, epochs=[1])
    start = time.monotonic()
    assert client.get("k") == "value"
    assert shard.calls == 4
    assert time.monotonic() - start < 5  # paused 10 + 20 + 40 ms, not the 30 s timeout


def test_a_refusal_that_never_ends_is_raised_at_the_timeout() -> None:
    shard = _Refusing(refusals=10**9)
    client = _client(shard, timeout_s=0.5, epochs=[1])
    start = time.monotonic()
    with pytest.raises(ShardMapChangedError, match="not served here"):
        client.get("k")
    assert 0.5 <= time.monotonic() - start < 5
    assert shard.calls > 3


def test_a_newer_map_is_used_at_once() -> None:
    old, new = _Refusing(refusals=10**9), _Refusing(refusals=0)
    client = _client(old, timeout_s=30.0, epochs=[1, 2])
    client._view.shards[1] = old

    def refresh() -> ShardMap:  # the newer map brings a new shard client
        smap = client._read_map()
        client._view = _View(smap, {1: new})
        return smap

    client.refresh = refresh
    assert client.get("k") == "value"
    assert (old.calls, new.calls) == (1, 1)
