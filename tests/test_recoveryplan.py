"""Which replica ``raykv recover`` re-founds a group from, and when it refuses (pure rules of
:mod:`raykv.placement.recoveryplan`), plus how ``raykv status`` shows a lost quorum and an
uncapped TCP backoff (:mod:`raykv.client.status`)."""

from __future__ import annotations

import pytest

from raykv.client.status import ReplicaStatus, ShardStatus, StoreStatus
from raykv.errors import InvalidRequestError, UnavailableError
from raykv.placement.recoveryplan import choose_survivor, quorum_lost


def st(last_term: int, last_index: int, commit: int = 0, role: str = "follower", mode: str = "running") -> dict:
    return {"last_term": last_term, "last_index": last_index, "commit": commit, "role": role, "mode": mode}


def test_the_survivor_holds_the_most_of_the_log_by_term_then_index() -> None:
    statuses = {1: None, 2: st(4, 90, 88), 3: None}
    assert quorum_lost((1, 2, 3), statuses)
    assert choose_survivor(7, (1, 2, 3), statuses).replica == 2
    five = {1: st(5, 10), 2: st(4, 90), 3: None, 4: None, 5: None}
    assert choose_survivor(7, (1, 2, 3, 4, 5), five).replica == 1, "a later term wins over a longer log"


def test_an_amnesiac_or_silent_replica_is_no_survivor() -> None:
    statuses = {1: st(9, 99, mode="amnesiac"), 2: None, 3: None}
    with pytest.raises(UnavailableError, match="no replica of shard 4 answers with its data"):
        choose_survivor(4, (1, 2, 3), statuses)
    with pytest.raises(InvalidRequestError, match="replica 1 of shard 4 does not answer with its data"):
        choose_survivor(4, (1, 2, 3), statuses, chosen=1)


def test_a_group_with_a_majority_or_a_leader_is_refused_unless_forced() -> None:
    majority = {1: st(3, 50), 2: st(3, 49), 3: None}
    assert not quorum_lost((1, 2, 3), majority)
    with pytest.raises(InvalidRequestError, match="shard 2 has a quorum .*--force"):
        choose_survivor(2, (1, 2, 3), majority)
    assert choose_survivor(2, (1, 2, 3), majority, force=True).replica == 1
    assert choose_survivor(2, (1, 2, 3), majority, chosen=2, force=True).replica == 2
    leading = {1: st(3, 50, role="leader"), 2: None, 3: None, 4: None}
    with pytest.raises(InvalidRequestError, match="has a leader"):
        choose_survivor(2, (1, 2, 3, 4), leading)


def test_a_named_replica_must_belong_to_the_group() -> None:
    with pytest.raises(InvalidRequestError, match="replica 9 is not a replica of shard 2"):
        choose_survivor(2, (1, 2, 3), {1: st(1, 1), 2: None, 3: None}, chosen=9)


def replica(rid: int, host: str, alive: bool, ip: str = "10.0.0.1", rto: int | None = 1000, **kw) -> ReplicaStatus:
    if not alive:
        return ReplicaStatus(rid, f"raykv:s:2:{rid}", host, None, None, None, None, None, None, False)
    return ReplicaStatus(rid, f"raykv:s:2:{rid}", host, None, kw.get("role", "follower"), 3, kw.get("commit", 40), 40,
                         1024, True, rto, ip, kw.get("last", 42), 3, kw.get("keepalive", 900_000))


def test_status_names_a_lost_quorum_its_best_survivor_and_the_command() -> None:
    shard = ShardStatus(2, b"", None, 5, None, [replica(1, "h2", True, last=42), replica(2, "h3", False),
                                                replica(3, "h4", False)])
    assert shard.quorum_lost and not shard.healthy
    text = str(StoreStatus("s", 5, [shard]))
    assert "shard 2 has lost its quorum: replicas 2, 3 do not answer; best survivor 1 on h2" in text
    assert "index 42" in text and "raykv recover --shard 2" in text
    assert StoreStatus("s", 5, [shard]).to_dict()["shards"][0]["quorum_lost"] is True


def test_status_names_hosts_whose_tcp_backoff_is_not_capped_on_a_multi_machine_store() -> None:
    spread = [replica(1, "h1", True, "10.0.0.1", rto=1000, role="leader"), replica(2, "h2", True, "10.0.0.2", rto=None),
              replica(3, "h3", True, "10.0.0.3", rto=120_000), replica(4, "h4", True, "10.0.0.4", keepalive=120_000)]
    status = StoreStatus("s", 1, [ShardStatus(1, b"", None, 1, 1, spread)])
    assert status.slow_rejoin_hosts == ["h2", "h3", "h4"]
    assert "tcp_rto_max_ms" in str(status) and "h2, h3, h4" in str(status)
    one_machine = [replica(r, f"h{r}", True, "10.0.0.1", rto=None) for r in (1, 2, 3)]
    assert StoreStatus("s", 1, [ShardStatus(1, b"", None, 1, 1, one_machine)]).slow_rejoin_hosts == []


def test_a_host_reports_its_cap_or_none_where_the_kernel_has_no_such_setting(tmp_path) -> None:
    from raykv import tcpbackoff

    knob = tmp_path / "tcp_rto_max_ms"
    knob.write_text("1000\n")
    assert tcpbackoff.rto_max_ms(knob) == 1000 and not tcpbackoff.backoff_too_long(1000)
    assert tcpbackoff.rto_max_ms(tmp_path / "absent") is None and tcpbackoff.backoff_too_long(None)
    assert tcpbackoff.backoff_too_long(1000, 120_000), "Ray's default keepalive timeout drops a long-cut connection"
