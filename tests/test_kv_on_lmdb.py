"""The KV state machine applied through the LMDB store: same results as in memory, and
exactly-once survives restarts and snapshot installs (sessions travel with the data)."""

from __future__ import annotations

import random

import pytest

from raykv.kv import (
    Batch,
    Cas,
    Delete,
    ExpireSessions,
    KVStateMachine,
    MemoryBackend,
    Put,
    RegisterSession,
    Request,
    SessionId,
    decode_result,
    encode_command,
)
from raykv.kv.limits import KVLimits
from raykv.raft.types import Entry, HardState
from raykv.storage.replica_store import ReplicaId, ReplicaStore
from raykv.storage.snapshot import export_snapshot, install_snapshot

LIMITS = KVLimits()
MACHINE = KVStateMachine(LIMITS)


def random_program(rng: random.Random, length: int) -> list[bytes]:
    """Commands over few keys and sessions, with retries (duplicate requests) and junk entries."""
    program: list[bytes] = [encode_command(RegisterSession(ts_ms=0), LIMITS)]
    seqs: dict[int, int] = {1: 0}
    keys = [b"k%d" % i for i in range(6)]
    for step in range(length):
        roll = rng.random()
        op = rng.choice(
            [
                Put(rng.choice(keys), b"v%d" % step),
                Delete(rng.choice(keys)),
                Cas(rng.choice(keys), rng.choice([None, b"v%d" % rng.randrange(step + 1)]), b"c%d" % step),
                Batch((Put(rng.choice(keys), b"b%d" % step), Delete(rng.choice(keys)))),
            ]
        )
        if roll < 0.05:
            program.append(b"\xff junk")
        elif roll < 0.1:
            program.append(encode_command(ExpireSessions(cutoff_ms=rng.randrange(step + 1)), LIMITS))
        elif roll < 0.15 and program:
            program.append(rng.choice(program))  # a retried entry, applied at a new index
        else:
            seqs[1] += 1
            req = Request(1, seqs[1], max(0, seqs[1] - 3), step, op)
            program.append(encode_command(req, LIMITS))
    return program


def apply_program(store: ReplicaStore, program: list[bytes], first: int, per_txn: int) -> list[bytes]:
    results: list[bytes] = []
    for start in range(0, len(program), per_txn):
        chunk = program[start : start + per_txn]

        def body(tx, chunk=chunk, start=start) -> list[bytes]:
            out = [MACHINE.apply(first + start + i, data, tx) for i, data in enumerate(chunk)]
            tx.set_applied(first + start + len(chunk) - 1)
            return out

        results.extend(store.apply(body))
    return results


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("per_txn", [1, 7, 1000])
def test_lmdb_and_memory_backends_agree(tmp_path, seed, per_txn) -> None:
    program = random_program(random.Random(seed), 150)
    memory = MemoryBackend()
    expected = [MACHINE.apply(1 + i, data, memory) for i, data in enumerate(program)]
    store = ReplicaStore(tmp_path, ReplicaId("kv", 0, 1))
    try:
        assert apply_program(store, program, 1, per_txn) == expected
        assert store.scan("data") == memory.items()
        assert [(int.from_bytes(k, "big"), v) for k, v in store.scan("sessions")] == list(memory.sessions())
        assert store.applied_index() == len(program)
    finally:
        store.close()


def test_retry_after_restart_and_after_snapshot_install_is_not_applied_twice(tmp_path) -> None:
    """A client retries a write whose answer it lost. Whether the replica restarted in between,
    or installed a snapshot taken after the first attempt, the retry returns the cached result."""
    source = ReplicaStore(tmp_path, ReplicaId("kv", 0, 1))
    source.persist(HardState(1, 1, 3), [Entry(1, 1), Entry(2, 1), Entry(3, 1)])
    register = encode_command(RegisterSession(ts_ms=1), LIMITS)
    cas = encode_command(Request(1, 1, 0, 2, Cas(b"x", None, b"first")), LIMITS)

    def first(tx):
        sid = decode_result(MACHINE.apply(1, register, tx))
        won = decode_result(MACHINE.apply(2, cas, tx))
        tx.set_applied(2)
        return sid, won

    sid, won = source.apply(first)
    assert sid == SessionId(1) and won.value is True
    source.close()
    source = ReplicaStore(tmp_path, ReplicaId("kv", 0, 1))  # restart
    retried = source.apply(lambda tx: (MACHINE.apply(3, cas, tx), tx.set_applied(3))[0])
    assert decode_result(retried) == won  # cached: a second CAS on an existing key would fail
    path = tmp_path / "snap.arrow"
    export_snapshot(source, path)
    target = ReplicaStore(tmp_path, ReplicaId("kv", 0, 2))
    install_snapshot(target, path)
    again = target.apply(lambda tx: (MACHINE.apply(4, cas, tx), tx.set_applied(4))[0])
    assert decode_result(again) == won
    assert target.scan("data") == [(b"x", b"first")]
    source.close()
    target.close()


def test_commit_index_rides_on_the_apply_transaction(tmp_path) -> None:
    """The runtime writes a commit-only hard state change inside the apply transaction: it is
    durable with the applied entries (and only with them), and survives a reopen."""
    ident = ReplicaId("s", 1, 1)
    store = ReplicaStore(tmp_path, ident)
    store.persist(HardState(term=3, vote=1, commit=0), entries=[Entry(1, 3, data=encode_command(RegisterSession(0), LIMITS))])

    def body(tx):
        out = MACHINE.apply(1, store.entries(1, 2, 1 << 20)[0].data, tx)
        tx.set_applied(1)
        tx.set_hard_state(HardState(term=3, vote=1, commit=1))
        return out

    assert decode_result(store.apply(body)) == SessionId(1)
    assert store.hard_state() == HardState(3, 1, 1)
    store.close()
    reopened = ReplicaStore(tmp_path, ident, create=False)
    assert reopened.hard_state() == HardState(3, 1, 1) and reopened.applied_index() == 1
    reopened.close()


def test_one_transaction_persists_a_ready_and_applies_its_committed_entries(tmp_path) -> None:
    """``persist(..., apply=body)``: the Ready's hard state and entries and the applied entries
    (data, sessions, applied index) commit together, and survive a reopen. Entries persisted and
    committed by the same Ready (a follower's append carrying the commit) apply in that one
    transaction. A snapshot cannot carry an apply (nothing is written)."""
    ident = ReplicaId("s", 1, 1)
    store = ReplicaStore(tmp_path, ident)
    register = Entry(1, 3, data=encode_command(RegisterSession(0), LIMITS))
    put = Entry(2, 3, data=encode_command(Request(1, 1, 0, 0, Put(b"k", b"v")), LIMITS))

    def body(tx):
        out = MACHINE.apply_run([(register.index, register.data), (put.index, put.data)], tx)
        tx.set_applied(put.index)
        return out

    outs = store.persist(HardState(term=3, vote=1, commit=2), entries=[register, put], apply=body)
    assert [decode_result(o) for o in outs][0] == SessionId(1)
    assert store.applied_index() == 2 and store.last_index() == 2 and store.hard_state().commit == 2
    with pytest.raises(ValueError, match="snapshot"):
        store.persist(snapshot=store.snapshot(), apply=body)
    store.close()
    reopened = ReplicaStore(tmp_path, ident, create=False)
    assert reopened.applied_index() == 2 and reopened.last_index() == 2
    assert reopened.hard_state() == HardState(3, 1, 2) and reopened.scan("data") == [(b"k", b"v")]
    assert len(reopened.scan("sessions")) == 1
    reopened.close()


def test_a_pinned_setting_cannot_change(tmp_path) -> None:
    """Settings every replica must keep for its whole life (the kv limits) are recorded at first
    open; reopening with other values is refused with a clear error and changes nothing."""
    from raykv.errors import StoreIdentityError

    ident = ReplicaId("s", 1, 1)
    store = ReplicaStore(tmp_path, ident)
    store.pin_setting("kv limits", b"max_key_bytes=511")
    store.pin_setting("kv limits", b"max_key_bytes=511")  # the same again: fine
    with pytest.raises(StoreIdentityError, match="kv limits differ"):
        store.pin_setting("kv limits", b"max_key_bytes=100")
    store.close()
    reopened = ReplicaStore(tmp_path, ident, create=False)
    with pytest.raises(StoreIdentityError):
        reopened.pin_setting("kv limits", b"max_key_bytes=100")
    reopened.pin_setting("kv limits", b"max_key_bytes=511")
    reopened.close()
