"""The Ray shell's loop without a Ray cluster: one-voter replicas in temporary directories.

What only the real shell can show: its clock keeps counting through a suspend, a second
process cannot open a replica's directory, the liveness probe is answered by the loop (a
wedged loop fails it), a replica that lost its directory comes back amnesiac, and a quiet
replica's loop sleeps through its ticks.
"""

from __future__ import annotations

import threading
import time

import pytest

from raykv.errors import ReplicaDataLostError, ReplicaLockedError
from raykv.kv.codec import encode_op
from raykv.kv.commands import Put
from raykv.protocol import SessionGrant, Write
from raykv.replica.options import ReplicaOptions
from raykv.replica.startup import StartMode
from raykv.runtime import loop as loop_module
from raykv.runtime.loop import ReplicaLoop, open_replica
from raykv.storage import layout
from raykv.storage.replica_store import ReplicaId

OPTIONS = ReplicaOptions(metrics=False, quiesce_after_ticks=4, request_timeout_s=5.0)


@pytest.fixture
def replica(tmp_path):
    loops: list[ReplicaLoop] = []

    def make(ident=ReplicaId("loop", 1, 1), **kwargs) -> ReplicaLoop:
        loops.append(ReplicaLoop(str(tmp_path), ident, (1,), OPTIONS, **kwargs))
        return loops[-1]

    yield make
    for r in loops:
        r.stop()


def leads(r: ReplicaLoop, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if r.status()["role"] == "leader":
            return True
        time.sleep(0.02)
    return False


def test_the_clock_keeps_counting_through_a_suspend() -> None:
    if not hasattr(time, "CLOCK_BOOTTIME"):
        pytest.skip("CLOCK_BOOTTIME is Linux only")  # the fallback is documented in raykv.replica.clock
    boot, stamp = time.clock_gettime(time.CLOCK_BOOTTIME), loop_module.now()
    assert abs(stamp.mono_s - boot) < 1.0 and abs(stamp.wall_ms / 1000 - time.time()) < 1.0


def test_a_one_voter_replica_takes_writes_and_reads(replica) -> None:
    r = replica()
    assert leads(r)
    grant = r.request(lambda rid, at: r.engine.register_session(rid, at), lambda: None)
    assert isinstance(grant, SessionGrant)
    write = Write(grant.session, 1, 0, encode_op(Put(b"k", b"v")))
    assert isinstance(r.request(lambda rid, at: r.engine.submit(rid, [write], at), lambda: None)[0], bytes)
    assert r.request(lambda rid, at: r.engine.read_keys(rid, [b"k"], "linearizable", at), lambda: None) == [b"v"]


def test_a_second_process_cannot_open_a_running_replicas_directory(replica) -> None:
    replica()
    with pytest.raises(ReplicaLockedError, match="another process"):
        replica(lock_wait_s=0.2)


def test_the_liveness_probe_is_answered_by_the_loop(replica) -> None:
    r = replica()
    assert r.ping() is True
    release = threading.Event()
    r.post(lambda at: release.wait(10))  # the loop is wedged (a hung fsync, a blocking lookup)
    with pytest.raises(TimeoutError):
        r.ping()
    release.set()
    assert r.ping() is True


def test_a_replica_that_lost_its_directory_comes_back_amnesiac(tmp_path) -> None:
    ident = ReplicaId("gone", 1, 1)
    store, mode = open_replica(str(tmp_path), ident, (1, 2, 3), create=True, reconstructed=False)
    assert mode is StartMode.FOUND and layout.was_created(tmp_path, ident)
    store.close()
    import shutil

    shutil.rmtree(layout.replica_dir(tmp_path, ident))  # the directory is wiped; its record stays
    assert open_replica(str(tmp_path), ident, (1, 2, 3), create=True, reconstructed=False) == (None, StartMode.AMNESIAC)
    other = ReplicaId("gone", 1, 2)  # a new disk: no record either, but Ray says it is a restart
    assert open_replica(str(tmp_path), other, (1, 2, 3), create=True, reconstructed=True) == (None, StartMode.AMNESIAC)
    r = ReplicaLoop(str(tmp_path), ident, (1, 2, 3), OPTIONS)
    try:
        assert r.status()["mode"] == "amnesiac"
        assert isinstance(r.request(lambda rid, at: r.engine.read_keys(rid, [b"k"], "stale", at), lambda: None),
                          ReplicaDataLostError)
        assert not layout.has_data(tmp_path, ident), "an amnesiac writes nothing"
    finally:
        r.stop()


def test_a_quiet_replica_sleeps_through_its_ticks(replica) -> None:
    r = replica()
    assert leads(r)
    deadline = time.monotonic() + 5
    while not r.status()["quiesced"] and time.monotonic() < deadline:
        time.sleep(0.05)
    before = r.status()["turns"]
    time.sleep(1.0)
    assert r.status()["turns"] - before <= 4, "about one turn a second (and one per status call), not 20"
