"""One shard under faults, simulated: the real engine, kv machine and store in a seeded world.

These are the scenarios that used to run on a Ray cluster (``tests/test_shard_ray.py`` keeps
what only Ray has): elections, replication, stale reads, a leader crash, a follower catching up
through a snapshot, a partitioned leader, a one-way partition, a paused leader and its lease,
and a quiet group. Each runs concurrent clients whose history is checked for linearizability
(the world's Raft invariant checkers run throughout), at several seeds.
"""

from __future__ import annotations

import pytest

from raykv.errors import DiskFullError, InvalidRequestError, NotLeaderError
from raykv.testing.scenarios import KEY, Script
from raykv.testing.world import US

SEEDS = [11, 12, 13]


def load(s: Script, seconds: float, at: int | None = None) -> None:
    """Clients 1.. keep operating (puts, gets at both levels, deletes, cas) for ``seconds``."""
    for c in s.clients[1:]:
        if at is not None:
            c._guess = at
        c.start()
    s.run(seconds)
    for c in s.clients[1:]:
        c.stop()


def through(s: Script, fault, heal=None, before_s: float = 0.5, during_s: float = 2.0, after_s: float = 2.0) -> None:
    """Clients 1.. operate before ``fault()``, through it, after ``heal()`` (if any); then stop."""
    for c in s.clients[1:]:
        c.start()
    s.run(before_s)
    fault()
    s.run(during_s)
    if heal is not None:
        heal()
        s.run(after_s)
    for c in s.clients[1:]:
        c.stop()


def finish(s: Script) -> None:
    """Let the clients finish, read the key once more, and require a linearizable history."""
    s.world.run_until_true(lambda: not any(c.busy for c in s.clients), 20 * US)
    assert s.op("get") == "ok"
    assert s.verdict() is None, s.verdict()


def acked_reads(s: Script, node_id: int, consistency: str):
    """What replica ``node_id`` answers a direct read of KEY at ``consistency`` (not through a client)."""
    shell, got = s.shell(node_id), []
    shell.request(lambda rid, at: shell.engine.read_keys(rid, [KEY], consistency, at), got.append)
    s.world.run_until_true(lambda: bool(got), 5 * US)
    return got[0] if got else None


@pytest.mark.parametrize("seed", SEEDS)
def test_election_replication_and_stale_reads_everywhere(seed) -> None:
    s = Script(seed)
    leader = s.leader()
    assert leader is not None
    load(s, 2.0)
    assert s.op("put") == "ok"
    commit = s.group.leader().engine.node.log.committed
    assert s.world.run_until_true(lambda: all(r.storage.applied_index() >= commit for r in s.group.live()), 2 * US)
    values = {i: acked_reads(s, i, "stale") for i in s.group.replicas}
    assert len({str(v) for v in values.values()}) == 1 and None not in values.values(), values
    assert len({r.engine.node.term for r in s.group.live()}) == 1
    finish(s)


@pytest.mark.parametrize("seed", SEEDS)
def test_leader_crash_elects_a_new_leader_and_writes_resume(seed) -> None:
    s = Script(seed)
    old = s.leader()

    def crash() -> None:
        old.crash()
        assert s.leader(5, among=tuple(s.others(old.id))) is not None, "no new leader within 5 s of the crash"

    through(s, crash, before_s=1.0, during_s=3.0)
    assert old.alive and old.running and old.engine.node.role.value == "follower", "the old leader rejoined"
    assert sum(c.stats.ok for c in s.clients) > 50
    finish(s)


@pytest.mark.parametrize("seed", SEEDS)
def test_follower_restarts_and_catches_up_through_a_snapshot(seed) -> None:
    s = Script(seed, compact_every_entries=40, compact_keep_entries=0)
    leader = s.leader()
    follower = s.others(leader.id)[0]
    s.isolate(follower)
    load(s, 3.0)  # the log is compacted past the isolated follower
    assert leader.storage.first_index() > s.shell(follower).storage.last_index()
    s.shell(follower).crash()
    s.world.network.heal()
    installed = lambda: s.world.stats.get("snapshots_installed", 0) >= 1  # noqa: E731
    assert s.world.run_until_true(installed, 10 * US), "the follower installed no snapshot"
    commit = s.group.leader().engine.node.log.committed
    assert s.world.run_until_true(lambda: s.shell(follower).running
                                  and s.shell(follower).storage.applied_index() >= commit, 10 * US)
    assert acked_reads(s, follower, "stale") == acked_reads(s, s.group.leader().id, "stale")
    finish(s)


@pytest.mark.parametrize("seed", SEEDS)
def test_partitioned_leader_steps_down_and_serves_no_stale_reads(seed) -> None:
    s = Script(seed)
    old = s.leader()

    def isolate() -> None:
        s.isolate(old.id)
        assert s.world.run_until_true(lambda: not old.is_leader(), 3 * US), "check-quorum: the cut leader steps down"
        for consistency in ("linearizable", "lease"):
            assert isinstance(acked_reads(s, old.id, consistency), NotLeaderError)

    through(s, isolate, s.world.network.heal)
    finish(s)


@pytest.mark.parametrize("seed", SEEDS)
def test_one_way_partition_keeps_the_history_linearizable(seed) -> None:
    s = Script(seed)
    old = s.leader()

    def cut() -> None:  # the leader can send, never hear back
        for other in s.others(old.id):
            s.world.network.cut_one_way(s.group.host_of[other], s.group.host_of[old.id])

    through(s, cut, s.world.network.heal, during_s=4.0)
    finish(s)


@pytest.mark.parametrize("seed", SEEDS)
def test_paused_leader_is_replaced_and_its_lease_ends_on_resume(seed) -> None:
    s = Script(seed)
    old = s.leader()
    host = s.group.host_of[old.id]

    def pause() -> None:
        s.world.pause_host(host)
        assert s.leader(5, among=tuple(s.others(old.id))) is not None

    def resume() -> None:
        s.world.resume_host(host)
        assert s.world.run_until_true(lambda: not old.is_leader(), 2 * US), "the resumed leader steps down"

    through(s, pause, resume, during_s=1.0, after_s=1.0)
    finish(s)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_quiet_group_sends_nothing_and_wakes_on_traffic(seed) -> None:
    s = Script(seed, quiesce_after_ticks=4)
    s.leader()
    assert s.op("put") == "ok"
    assert s.world.run_until_true(lambda: all(r.engine.quiet.quiesced for r in s.group.live()), 5 * US)
    before = s.world.stats.get("messages", 0)
    s.run(1.0)  # an idle second: heartbeats would be 2 x 20 messages; quiet followers probe about once
    assert s.world.stats.get("messages", 0) - before <= 6
    assert s.op("get") == "ok" and s.op("put") == "ok" and s.op("lease") == "ok"
    finish(s)


FOREVER_US = 10**15


@pytest.mark.parametrize("seed", SEEDS)
def test_a_leader_whose_disk_fills_hands_over_and_writes_go_on(seed) -> None:
    s = Script(seed)
    old = s.leader()
    host = s.world.hosts[s.group.host_of[old.id]]

    def fill() -> None:
        host.disk_full_until_us = FOREVER_US
        assert s.leader(3, among=tuple(s.others(old.id))) is not None, "a replica with room leads within 3 s"
        assert old.engine.disk_low and not old.is_leader()

    def free() -> None:
        host.disk_full_until_us = 0

    through(s, fill, free, during_s=2.0, after_s=2.0)
    assert sum(c.stats.ok for c in s.clients) > 50
    commit = s.group.leader().engine.node.log.committed
    assert s.world.run_until_true(lambda: old.storage.applied_index() >= commit, 5 * US), "it catches up"
    finish(s)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_follower_whose_disk_fills_takes_in_nothing_until_space_returns(seed) -> None:
    s = Script(seed)
    leader = s.leader()
    full = s.shell(s.others(leader.id)[0])
    s.world.hosts[full.hid].disk_full_until_us = FOREVER_US
    assert s.world.run_until_true(lambda: full.engine.disk_low, 1 * US)
    stored = full.storage.last_index()
    load(s, 2.0)
    assert s.group.leader().engine.node.log.committed > stored + 10, "the other two commit"
    assert full.storage.last_index() == stored, "a full replica stores (and acknowledges) nothing"
    s.world.hosts[full.hid].disk_full_until_us = 0
    commit = s.group.leader().engine.node.log.committed
    assert s.world.run_until_true(lambda: full.storage.applied_index() >= commit, 5 * US), "it catches up"
    finish(s)


def test_a_leader_alone_with_a_full_disk_refuses_writes_definitely() -> None:
    s = Script(21, replicas=1, spare_hosts=0)
    leader = s.leader()
    s.world.hosts[leader.hid].disk_full_until_us = FOREVER_US
    assert s.world.run_until_true(lambda: leader.engine.disk_low, 1 * US)
    got = []
    leader.request(lambda rid, at: leader.engine.register_session(rid, at), got.append)
    assert s.world.run_until_true(lambda: bool(got), 2 * US)
    assert isinstance(got[0], DiskFullError) and "reserve" in str(got[0]), got
    assert leader.is_leader(), "nobody to hand over to: it keeps leading (reads go on)"
    assert acked_reads(s, leader.id, "linearizable") == [None]


# -- unsafe recovery of a group that lost its majority (raykv recover) ----------------------------------
@pytest.mark.parametrize("seed,compacted", [(11, False), (12, False), (13, True)])
def test_a_survivor_forced_alone_refounds_its_group_with_every_write_it_held(seed, compacted) -> None:
    """Two of three hosts die for good: no leader can ever be elected. The survivor, forced alone
    (:mod:`raykv.replica.recovery`), applies its whole log, restarts as the only voter, elects
    itself and serves every write it held; no older configuration change comes back. (``compacted``:
    the survivor's snapshot sits at its last index, as on an idle replica.)"""
    s = Script(seed, spare_hosts=0)
    leader = s.leader()
    load(s, 1.5)
    commit = leader.engine.node.log.committed
    assert s.world.run_until_true(lambda: all(r.storage.applied_index() >= commit for r in s.group.live()), 2 * US)
    survivor = s.shell(s.others(leader.id)[0])
    for rid in s.others(survivor.id):
        s.world.crash_host(s.group.host_of[rid])
    s.run(2.0)
    assert not survivor.is_leader(), "no majority: no leader"
    held = survivor.storage.last_index()
    if compacted:
        survivor.storage.create_snapshot(held, survivor.storage.initial_state()[1], None)
        survivor.storage.compact(held)
    report = survivor.engine.force_solo(survivor.stamp())
    assert (report.replica, report.kept_index) == (survivor.id, held)
    assert set(report.voters_before) == set(s.group.replicas)
    survivor.crash()  # the shell restarts the replica from its store (the Ray actor exits; Ray restarts it)
    assert s.leader(5, among=(survivor.id,)) is survivor, "alone in its configuration, it elects itself"
    assert survivor.engine.node.tracker.conf.voters == (survivor.id,)
    assert survivor.storage.applied_index() >= held and survivor.storage.first_index() > held, \
        "its log was applied and replaced by a snapshot: no older configuration change can apply again"
    assert s.op("put", at=survivor.id) == "ok", "it takes writes alone"
    finish(s)


def test_a_leader_is_never_forced_alone() -> None:
    s = Script(31)
    leader = s.leader()
    with pytest.raises(InvalidRequestError, match="has a majority"):
        leader.engine.force_solo(leader.stamp())
    assert leader.is_leader()
