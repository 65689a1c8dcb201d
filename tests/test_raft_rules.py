"""Rule-level tests of the pure Raft core, each tied to a rule of the Raft paper or thesis.

"Paper" is Ongaro & Ousterhout, *In Search of an Understandable Consensus Algorithm* (2014);
"thesis" is Ongaro, *Consensus: Bridging Theory and Practice* (2014). Every group is driven through
the deterministic :class:`raft_harness.Net` (seeded, no clocks), so each run replays exactly.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from raft_harness import Net
from raykv.errors import ConfChangeError, ProposalDroppedError
from raykv.raft import (
    ConfChange,
    ConfChangeKind,
    ConfChangeSingle,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    MemoryStorage,
    ReadState,
    Role,
)
from raykv.raft.messages import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    InstallSnapshot,
    RequestVote,
    TimeoutNow,
    VoteResponse,
)

E = 10  # election_ticks used by every Net below


def answers(net: Net, i: int, m) -> list:
    """Step ``m`` into node ``i`` and return the messages its Ready loop produces."""
    net.node(i).step(m)
    return [msg for out in net.ready(i) for msg in out.messages]


def vote_request(net: Net, frm: int, to: int, term: int, **flags) -> RequestVote:
    """A RequestVote from ``frm`` whose log equals ``to``'s (so only terms and votes decide)."""
    lg = net.node(to).log
    return RequestVote(frm, to, term, lg.last_index(), lg.last_term(), **flags)


def tick_until_leader(net: Net, max_ticks: int = 10 * E) -> int:
    for _ in range(max_ticks):
        net.tick()
        lead = net.leader()
        if lead is not None and all(net.node(i).lead == lead for i in net.reps if net.reps[i].alive):
            return lead
    raise AssertionError("no leader elected")


def cc(*items: tuple[ConfChangeKind, int]) -> ConfChange:
    return ConfChange(tuple(ConfChangeSingle(kind, node) for kind, node in items))


def crafted(entries: list[tuple[int, int]], term: int, vote: int = 0, voters=(1, 2, 3)) -> MemoryStorage:
    """Storage of a founding member whose log after the bootstrap snapshot is ``(index, term)`` pairs."""
    storage = MemoryStorage.bootstrap(voters)
    storage.append([Entry(i, t, EntryKind.NORMAL, b"e%d@%d" % (i, t)) for i, t in entries])
    storage.set_hard_state(HardState(term=term, vote=vote, commit=1))
    return storage


# -- leader election (paper §5.2) -------------------------------------------------------------------
def test_three_nodes_elect_exactly_one_leader_whose_first_entry_is_a_noop() -> None:
    """Paper §5.2 Election Safety: at most one leader per term; §8 / thesis §6.4: a new leader
    appends an empty no-op entry of its own term (so it can learn what is committed)."""
    net = Net(seed=1)
    leaders_per_term: dict[int, set[int]] = {}
    for _ in range(10 * E):
        net.tick()
        for i, rep in net.reps.items():
            if rep.node.role is Role.LEADER:
                leaders_per_term.setdefault(rep.node.term, set()).add(i)
        if net.leader() is not None:
            break
    lead = net.leader()
    assert lead is not None
    assert all(len(ids) == 1 for ids in leaders_per_term.values()), leaders_per_term
    net.tick(3)
    term = net.node(lead).term
    for i in net.reps:
        assert net.node(i).term == term
        assert net.node(i).lead == lead
        assert net.node(i).role is (Role.LEADER if i == lead else Role.FOLLOWER)
    first_of_term = next(e for e in net.log(lead) if e.term == term)
    assert first_of_term.index == 2  # right after the bootstrap snapshot at index 1
    assert first_of_term.kind is EntryKind.NORMAL and first_of_term.data == b""
    assert all(net.reps[i].machine.applied == 2 for i in net.reps)  # the no-op committed


def test_randomized_election_timeout_lies_in_one_to_two_election_timeouts() -> None:
    """Paper §5.2: election timeouts are chosen randomly from a fixed interval, here
    [election_ticks, 2 * election_ticks): a lone follower campaigns after exactly that many ticks."""
    seen = set()
    for seed in range(80):
        net = Net(seed=seed)
        net.isolate(1)
        ticks = 0
        while net.node(1).role is Role.FOLLOWER:
            net.tick(ids=[1])
            ticks += 1
            assert ticks < 2 * E, "no campaign within 2 * election_ticks"
        assert net.node(1).role is Role.PRE_CANDIDATE
        seen.add(ticks)
    assert seen == set(range(E, 2 * E))  # randomized over the whole interval, never below it


# -- persistent vote and term (paper Figure 2, "persistent state") -------------------------------
def test_vote_survives_crash_and_refuses_another_candidate_in_the_same_term() -> None:
    """Paper Figure 2: currentTerm and votedFor are persisted before responding; RequestVote
    grants at most one vote per term, also across a crash and restart."""
    net = Net(seed=2)
    net.elect(1)
    term = net.node(2).term + 1
    granted = answers(net, 2, vote_request(net, 3, 2, term, transfer=True))
    assert VoteResponse(2, 3, term, True) in granted
    assert net.reps[2].storage.hard_state().vote == 3
    before = net.node(2).term
    net.crash(2)
    net.restart(2)
    assert net.node(2).term == before == net.reps[2].storage.hard_state().term  # never decreases
    assert net.node(2).vote == 3  # came back from storage
    other, same = vote_request(net, 1, 2, term, transfer=True), vote_request(net, 3, 2, term, transfer=True)
    assert VoteResponse(2, 1, term, False) in answers(net, 2, other)  # same term, other candidate
    assert VoteResponse(2, 3, term, True) in answers(net, 2, same)  # re-asking candidate: idempotent
    for candidate in (3, 1, 3):  # more elections, each followed by a crash of node 2
        net.elect(candidate)
        t = net.node(2).term
        net.crash(2)
        net.restart(2)
        assert net.node(2).term == t and net.node(2).vote == candidate


def test_ready_persists_the_vote_before_any_message_is_sent() -> None:
    """Paper Figure 2 / etcd Ready contract: the hard state carrying a vote is durable before the
    VoteResponse leaves. A crash right after persisting sends nothing, yet the vote is on disk."""
    net = Net(seed=3)
    net.elect(1)
    term = net.node(2).term + 1
    net.node(2).step(vote_request(net, 3, 2, term, transfer=True))
    out = net.reps[2].handle_ready(crash_after_persist=True)
    assert out.hard_state is not None and out.hard_state.vote == 3 and out.hard_state.term == term
    assert out.messages == ()
    assert not net.reps[2].alive
    assert net.reps[2].storage.hard_state() == out.hard_state
    net.restart(2)
    assert (net.node(2).term, net.node(2).vote) == (term, 3)
    # A normal turn: whenever a Ready carries a new vote, the grant is in that same Ready's
    # messages and handle_ready has already persisted the hard state when it hands them out.
    net.node(2).step(vote_request(net, 3, 2, term + 1, transfer=True))
    out = net.reps[2].handle_ready()
    assert net.reps[2].storage.hard_state() == out.hard_state and out.hard_state.vote == 3
    assert [type(m) for m in out.messages] == [VoteResponse] and out.messages[0].granted


# -- stale and newer terms (paper §5.1) ---------------------------------------------------------
def test_deposed_leader_learns_higher_term_from_answers_to_its_stale_appends() -> None:
    """Paper §5.1: a request with a stale term is rejected; the reply carries the current term and
    a leader seeing a higher term reverts to follower. Stale entries are never appended."""
    net = Net(seed=4)
    net.elect(1)
    net.isolate(1)
    net.elect(2)
    new_term = net.node(2).term
    net.heal()
    assert net.node(1).role is Role.LEADER and net.node(1).term == new_term - 1
    sent_before = len(net.sent)
    net.node(1).propose(b"stale")
    net.deliver_all()
    assert net.node(1).role is Role.FOLLOWER and net.node(1).term == new_term
    stale_answers = [m for m in net.sent[sent_before:] if isinstance(m, AppendResponse) and m.to == 1]
    assert stale_answers and all(m.term == new_term for m in stale_answers)
    for i in (2, 3):
        assert all(e.data != b"stale" for e in net.log(i))
        assert net.node(i).role is (Role.LEADER if i == 2 else Role.FOLLOWER)


def test_lower_term_requests_are_ignored() -> None:
    """Paper §5.1 (and thesis §9.6 for pre-votes): a lower-term message changes nothing; a stale
    vote request gets no vote (a stale pre-vote is refused with our term), a stale append is refused
    with our term and is not applied."""
    net = Net(seed=5)
    net.elect(1)
    net.elect(2)
    n3 = net.node(3)
    term, lead, log_before, vote = n3.term, n3.lead, list(net.log(3)), n3.vote
    big = n3.log.last_index() + 5
    assert answers(net, 3, RequestVote(1, 3, term - 1, big, term - 1)) == []
    assert answers(net, 3, RequestVote(1, 3, term - 1, big, term - 1, pre=True)) == [
        VoteResponse(3, 1, term, False, True)
    ]
    last = n3.log.last_index()
    stale = AppendEntries(1, 3, term - 1, last, n3.log.last_term(), (Entry(last + 1, term - 1),), last + 1)
    assert answers(net, 3, stale) == [AppendResponse(3, 1, term, 0)]
    assert answers(net, 3, Heartbeat(1, 3, term - 1, n3.log.committed)) == [AppendResponse(3, 1, term, 0)]
    assert (n3.term, n3.lead, n3.vote, list(net.log(3))) == (term, lead, vote, log_before)


@pytest.mark.parametrize("same_term", [False, True])
def test_append_of_current_or_higher_term_makes_a_candidate_follow(same_term: bool) -> None:
    """Paper §5.2: a candidate receiving AppendEntries from a leader whose term is at least its own
    recognizes that leader and returns to follower state; §5.1: a higher term always does so."""
    net = Net(seed=6)
    net.elect(1)
    net.isolate(3)
    n3 = net.node(3)
    n3.campaign(pre=False)
    net.ready(3)
    assert n3.role is Role.CANDIDATE
    term = n3.term if same_term else n3.term + 1
    answers(net, 3, AppendEntries(2, 3, term, n3.log.last_index(), n3.log.last_term(), (), n3.log.committed))
    assert (n3.role, n3.term, n3.lead) == (Role.FOLLOWER, term, 2)


def test_higher_term_heartbeat_makes_a_leader_follow() -> None:
    """Paper §5.1: if a server sees a larger term, it updates its term and a leader reverts to follower."""
    net = Net(seed=7)
    net.elect(1)
    n1 = net.node(1)
    term = n1.term
    answers(net, 1, Heartbeat(2, 1, term + 1, n1.log.committed))
    assert (n1.role, n1.term, n1.lead) == (Role.FOLLOWER, term + 1, 2)


# -- log matching and repair (paper §5.3) -------------------------------------------------------
def test_conflicting_uncommitted_suffix_is_truncated_and_replaced() -> None:
    """Paper §5.3: if an existing entry conflicts with a new one (same index, different term),
    delete it and all that follow; the leader forces followers' logs to duplicate its own."""
    net = Net(seed=8)
    net.elect(1)
    net.propose(1, b"a")
    net.isolate(1)
    for k in range(5):
        net.node(1).propose(b"lost%d" % k)
    net.deliver_all()
    assert net.node(1).log.last_index() > net.node(1).log.committed
    net.elect(2)
    for k in range(2):
        net.propose(2, b"new%d" % k)
    net.heal()
    net.tick(ids=[2])
    net.deliver_all()
    logs = {i: [(e.index, e.term, e.data) for e in net.log(i)] for i in net.reps}
    assert logs[1] == logs[2] == logs[3]
    assert not any(data.startswith(b"lost") for _, _, data in logs[1])
    assert len({(r.machine.applied, r.machine.digest) for r in net.reps.values()}) == 1


@pytest.mark.parametrize(
    "leader_log, follower_log",
    [
        # follower holds 50 entries of an older term where the leader has a newer one
        ([(2, 2)] + [(i, 3) for i in range(3, 7)], [(2, 2)] + [(i, 2) for i in range(3, 53)]),
        # follower holds 50 entries of a newer term the leader never had
        ([(2, 2)] + [(i, 2) for i in range(3, 7)], [(2, 2)] + [(i, 3) for i in range(3, 53)]),
    ],
    ids=["follower-older-term", "follower-newer-term"],
)
def test_fast_backoff_skips_a_whole_conflicting_term_per_round_trip(leader_log, follower_log) -> None:
    """Paper §5.3 optimisation (thesis §5.4.2 / etcd findConflictByTerm): a rejection carries a
    hint so the leader skips every conflicting entry of a term at once: a follower with 50
    conflicting entries converges after at most one rejection per conflicting term, not 50."""
    storages = {1: crafted(leader_log, 3), 2: crafted(follower_log, 3), 3: crafted(leader_log, 3)}
    net = Net(seed=9, storages=storages)
    net.elect(1)
    rejections = [m for m in net.sent if isinstance(m, AppendResponse) and m.frm == 2 and m.reject]
    assert 1 <= len(rejections) <= 2, rejections
    assert [(e.index, e.term) for e in net.log(2)] == [(e.index, e.term) for e in net.log(1)]
    assert net.node(2).log.last_index() == 7 and net.node(2).log.committed == 7


@pytest.mark.parametrize("broadcast", [True, False])
def test_followers_learn_a_commit_at_once_or_with_the_next_heartbeat(broadcast: bool) -> None:
    """``commit_broadcast=True`` (etcd): once a quorum acknowledges an entry, the leader sends each
    follower an append carrying the new commit index, so followers commit without waiting for a
    tick. False: no such append (a lone write costs two appends, not four); the followers learn
    the commit index from the next heartbeat, and never one the leader has not reached."""
    net = Net(seed=21, commit_broadcast=broadcast)
    net.elect(1)
    start = len(net.sent)
    index = net.propose(1, b"x")
    appends = [m for m in net.sent[start:] if isinstance(m, AppendEntries)]
    assert net.node(1).log.committed == index
    followers = [net.node(i).log.committed for i in (2, 3)]
    if broadcast:
        assert len(appends) == 4 and followers == [index, index]
        return
    assert len(appends) == 2 and all(m.entries for m in appends)
    assert followers == [index - 1, index - 1]
    net.tick(1)  # heartbeat_ticks=1: one heartbeat round
    assert [net.node(i).log.committed for i in (2, 3)] == [index, index]


# -- Figure 8 (paper §5.4.2) ---------------------------------------------------------------------
def figure8_net() -> Net:
    """Paper Figure 8 (c), indices shifted by the bootstrap snapshot at index 1.

    S1 led term 2 and put (2, term 2) on S1, S2; S5 led term 3 and put (2, term 3) on S5 only.
    Now S5 is down and S1 is elected for term 4 by S2, S3, S4. S1 sends one entry per message
    (``max_msg_bytes=1``) and the network hides its term-4 entries from S2, S3 and all appends from
    S4, so the term-2 entry reaches S1, S2, S3 -- a majority of five -- while the no-op does not.
    """
    storages = {
        1: crafted([(2, 2)], term=3, voters=(1, 2, 3, 4, 5)),
        2: crafted([(2, 2)], term=2, vote=1, voters=(1, 2, 3, 4, 5)),
        3: crafted([], term=3, vote=5, voters=(1, 2, 3, 4, 5)),
        4: crafted([], term=3, vote=5, voters=(1, 2, 3, 4, 5)),
        5: crafted([(2, 3)], term=3, vote=5, voters=(1, 2, 3, 4, 5)),
    }
    net = Net(ids=(1, 2, 3, 4, 5), seed=10, storages=storages, max_msg_bytes=1)
    net.crash(5)

    def hide_term4(m):
        if isinstance(m, AppendEntries) and m.to == 4:
            return None
        if isinstance(m, AppendEntries) and m.to in (2, 3):
            return replace(m, entries=tuple(e for e in m.entries if e.term != 4))
        return m

    net.filter = hide_term4
    net.elect(1)
    assert net.node(1).term == 4
    return net


def test_figure8_entry_of_older_term_on_a_majority_is_not_committed() -> None:
    """Paper §5.4.2 / Figure 8: a leader never commits an entry of a previous term by counting
    replicas; only once an entry of its own term is on a majority are it and all before it committed."""
    net = figure8_net()
    for i in (1, 2, 3):
        assert (2, 2) in [(e.index, e.term) for e in net.log(i)]
    assert [(e.index, e.term) for e in net.log(1)][-1] == (3, 4)
    assert max(net.node(i).log.last_index() for i in (2, 3, 4)) == 2  # the no-op is only on S1
    assert net.node(1).tracker.committed() >= 2  # a majority does hold index 2 ...
    for i in (1, 2, 3, 4):
        assert net.node(i).log.committed == 1  # ... yet nobody considers it committed
        assert net.reps[i].machine.applied == 1
    net.filter = None
    net.tick(ids=[1])  # the next heartbeat round lets the no-op through
    assert net.node(1).log.committed == 3
    net.tick(ids=[1])
    for i in (1, 2, 3):
        first = net.log(i)[0]
        assert (first.index, first.term, first.data) == (2, 2, b"e2@2")
        assert net.reps[i].machine.applied == 3
    assert len({net.reps[i].machine.digest for i in (1, 2, 3)}) == 1


def test_figure8_why_waiting_was_necessary_s5_may_still_overwrite_it() -> None:
    """Paper Figure 8 (d): had S1 crashed then, S5 (last entry of term 3) can still win votes from
    S2, S3, S4 and overwrite the term-2 entry they hold -- so it must not have been committed."""
    net = figure8_net()
    net.crash(1)
    net.heal()
    net.restart(5)
    net.elect(5)
    net.tick(ids=[5])
    for i in (2, 3, 4, 5):
        assert [(e.index, e.term) for e in net.log(i)][0] == (2, 3)
        assert net.node(i).log.committed >= 2
    assert len({net.reps[i].machine.digest for i in (2, 3, 4, 5)}) == 1


# -- pre-vote and check-quorum (thesis §9.6, §6.2) ----------------------------------------------
def test_prevote_partitioned_follower_does_not_raise_its_term_or_disrupt_on_rejoin() -> None:
    """Thesis §9.6: a server first asks whether it could win (pre-vote) and increments its term only
    if a majority says yes, so a partitioned follower rejoining does not depose a healthy leader."""
    net = Net(seed=11)
    lead = tick_until_leader(net)
    term = net.node(lead).term
    f = min(i for i in net.reps if i != lead)
    net.isolate(f)
    roles = set()
    for _ in range(10 * E):
        net.tick()
        roles.add(net.node(f).role)
        assert net.node(f).term == term
    assert Role.PRE_CANDIDATE in roles and Role.CANDIDATE not in roles
    net.heal()
    sent_before = len(net.sent)
    for _ in range(2 * E):  # let f time out once more with its pre-vote reaching the others
        net.tick(ids=[f])
        if any(isinstance(m, RequestVote) and m.frm == f for m in net.sent[sent_before:]):
            break
    assert any(isinstance(m, RequestVote) and m.frm == f and m.pre for m in net.sent[sent_before:])
    net.tick(3 * E)
    assert net.leader() == lead
    assert all(net.node(i).term == term and net.node(i).lead == lead for i in net.reps)


def test_without_prevote_the_same_partition_disrupts_the_leader() -> None:
    """Control for the test above (thesis §9.6's motivation): without pre-vote the partitioned
    follower's term runs ahead and its rejoin forces the healthy leader to step down."""
    net = Net(seed=11, pre_vote=False)
    lead = tick_until_leader(net)
    term = net.node(lead).term
    f = min(i for i in net.reps if i != lead)
    net.isolate(f)
    net.tick(10 * E)
    assert net.node(f).term > term
    net.heal()
    net.tick(3 * E)
    assert max(net.node(i).term for i in net.reps) > term


def test_check_quorum_isolated_leader_steps_down_and_majority_elects_a_new_one() -> None:
    """Thesis §6.2: a leader steps down when an election timeout passes without hearing from a
    majority; the majority side, no longer hearing heartbeats, elects a leader of a higher term."""
    net = Net(seed=12)
    lead = tick_until_leader(net)
    term = net.node(lead).term
    net.isolate(lead)
    stepped = None
    for t in range(1, 4 * E):
        net.tick()
        if stepped is None and net.node(lead).role is not Role.LEADER:
            stepped = t
    assert stepped is not None and stepped <= 2 * E
    new = net.leader()
    assert new is not None and new != lead and net.node(new).term > term
    assert all(net.node(i).lead == new for i in net.reps if i != lead)


def test_check_quorum_steps_down_within_two_election_timeouts_of_last_hearing_from_a_quorum() -> None:
    """Thesis §6.2 and the Config docstring: the leader checks every election_ticks ticks that a
    quorum answered since the previous check, so a leader cut off from its quorum steps down within
    2 * election_ticks ticks. Isolate the leader right after a heartbeat round was acknowledged, at
    every phase of its check-quorum period, and measure the worst case."""
    worst = 0
    for phase in range(E):
        net = Net(seed=12)
        lead = tick_until_leader(net)
        net.tick(phase)  # every tick delivers: the quorum has just acknowledged a heartbeat
        net.isolate(lead)
        for t in range(1, 4 * E):
            net.tick()
            if net.node(lead).role is not Role.LEADER:
                worst = max(worst, t)
                break
    assert worst <= 2 * E, f"an isolated leader kept leading for {worst} ticks (election_ticks={E})"


# -- linearizable reads (thesis §6.4) ------------------------------------------------------------
def test_read_index_on_healthy_leader_after_one_heartbeat_round() -> None:
    """Thesis §6.4: the leader records its commit index as the read index, confirms leadership with
    one heartbeat round acknowledged by a majority, then answers at that index."""
    net = Net(seed=13)
    net.elect(1)
    net.propose(1, b"x")
    commit = net.node(1).log.committed
    net.node(1).read_index(b"r1")
    net.ready(1)
    assert net.reads[1] == []
    assert {m.to for m in net.queue if isinstance(m, Heartbeat) and m.ctx == b"r1"} == {2, 3}
    net.deliver_all()  # one round, no ticks
    assert net.reads[1] == [ReadState(commit, b"r1")]


def test_read_index_on_partitioned_leader_is_never_answered_and_is_dropped() -> None:
    """Thesis §6.4: without a majority acknowledging the round the read is not served; when the
    leader steps down (check-quorum, §6.2) the pending read is failed definitely."""
    net = Net(seed=14)
    net.elect(1)
    net.isolate(1)
    net.node(1).read_index(b"r2")
    net.tick(4 * E)
    assert net.node(1).role is not Role.LEADER and net.leader() in (2, 3)
    assert all(rs.ctx != b"r2" for rs in net.reads[1])
    assert b"r2" in net.dropped_reads[1]


def test_new_leader_defers_reads_until_its_noop_commits() -> None:
    """Thesis §6.4 step 1: a new leader's commit index may lag; it must commit an entry of its own
    term (the no-op) before serving ReadIndex, and then reads at least at the no-op's index."""
    net = Net(seed=15)
    net.elect(1)
    net.propose(1, b"committed-by-1")
    net.drop(lambda m: isinstance(m, AppendEntries) and m.frm == 2)
    net.elect(2)
    noop = net.node(2).log.last_index()
    assert net.node(2).log.committed < noop
    net.node(2).read_index(b"r3")
    net.deliver_all()
    assert net.reads[2] == []
    assert not any(isinstance(m, Heartbeat) and m.ctx == b"r3" for m in net.sent)
    net.drop(None)
    net.tick(ids=[2])
    assert net.node(2).log.committed >= noop
    assert net.reads[2] == [ReadState(net.node(2).log.committed, b"r3")]


def test_a_lease_read_waiting_for_a_new_leaders_first_commit_is_confirmed_by_a_round() -> None:
    """A lease read that arrived before the new leader's no-op committed is released by the commit,
    and then confirmed by a ReadIndex round, never by the lease: the release happens inside the
    message that committed the entry, where the host's idea of the time is least fresh."""
    net = Net(seed=15)
    net.elect(1)
    net.propose(1, b"committed-by-1")
    net.drop(lambda m: isinstance(m, AppendEntries) and m.frm == 2)
    net.elect(2)
    net.node(2).read_index(b"w1", lease=True)
    net.deliver_all()
    assert net.reads[2] == []
    net.drop(None)
    net.tick(ids=[2])  # the no-op commits, the read is released ...
    assert any(isinstance(m, Heartbeat) and m.ctx == b"w1" for m in net.sent), "... into a ReadIndex round"
    assert net.reads[2] == [ReadState(net.node(2).log.committed, b"w1")]


def test_lease_read_immediate_while_quorum_acked_recently_then_falls_back_and_never_after_transfer() -> None:
    """Thesis §6.4.1: with a lease (check-quorum keeps voters from electing anyone for an election
    timeout) the leader may answer without a round while a quorum acked within
    election_ticks - lease_margin_ticks; after that it falls back to ReadIndex. A leadership
    transfer (§3.10) bypasses the voters' lease, so no lease read is served once one starts."""
    net = Net(seed=16)
    net.elect(1)
    n1 = net.node(1)
    lease_ticks = n1.cfg.election_ticks - n1.cfg.lease_margin_ticks
    n1.read_index(b"l1", lease=True)
    outs = net.ready(1)
    assert [rs for o in outs for rs in o.read_states] == [ReadState(n1.log.committed, b"l1")]
    assert all(o.messages == () for o in outs)  # no heartbeat round was needed
    net.tick(lease_ticks - 1, ids=[1], deliver=False)
    n1.read_index(b"l2", lease=True)
    assert ReadState(n1.log.committed, b"l2") in [rs for o in net.ready(1) for rs in o.read_states]
    net.tick(1, ids=[1], deliver=False)  # now the newest quorum ack is lease_ticks old
    n1.read_index(b"l3", lease=True)
    assert all(rs.ctx != b"l3" for o in net.ready(1) for rs in o.read_states)
    assert any(isinstance(m, Heartbeat) and m.ctx == b"l3" for m in net.queue)
    net.deliver_all()
    assert net.reads[1][-1] == ReadState(n1.log.committed, b"l3")
    n1.read_index(b"l4", lease=True)  # lease freshly renewed by that round
    assert [rs.ctx for o in net.ready(1) for rs in o.read_states] == [b"l4"]
    net.cut(1, 2)
    n1.transfer_leader(2)  # TimeoutNow is lost: n1 stays leader, transfer pending
    n1.read_index(b"l5", lease=True)
    assert all(rs.ctx != b"l5" for o in net.ready(1) for rs in o.read_states)
    net.deliver_all()  # node 3 acks: answered by a ReadIndex round, not by the lease
    assert any(isinstance(m, Heartbeat) and m.ctx == b"l5" for m in net.sent)
    net.tick(E, ids=[1], deliver=False)  # the transfer is abandoned; the lease stays revoked
    assert n1.role is Role.LEADER and n1.lead_transferee == 0
    net.heal()
    net.deliver_all()
    n1.read_index(b"l6", lease=True)
    assert all(rs.ctx != b"l6" for o in net.ready(1) for rs in o.read_states)


def test_lease_reads_of_an_isolated_leader_stop_before_a_new_leader_exists() -> None:
    """Thesis §6.4.1 safety: lease reads may continue on a leader cut off from the others only
    while no other leader can have been elected (equal tick rates assumed)."""
    net = Net(seed=17)
    net.elect(1)
    net.isolate(1)
    served, new_leader_at = [], None
    for t in range(1, 4 * E):
        net.tick()
        if new_leader_at is None and any(net.node(i).role is Role.LEADER for i in (2, 3)):
            new_leader_at = t
        if net.node(1).role is Role.LEADER:
            ctx = b"t%d" % t
            net.node(1).read_index(ctx, lease=True)
            if any(rs.ctx == ctx for o in net.ready(1) for rs in o.read_states):
                served.append(t)
    assert served and new_leader_at is not None
    assert max(served) < new_leader_at


# -- leadership transfer (thesis §3.10) ------------------------------------------------------------
def test_transfer_makes_target_leader_at_higher_term_and_drops_proposals_meanwhile() -> None:
    """Thesis §3.10: the leader stops accepting requests, sends TimeoutNow to a caught-up target,
    which starts an election at once (term + 1) and wins."""
    net = Net(seed=18)
    net.elect(1)
    term = net.node(1).term
    net.node(1).transfer_leader(2)
    with pytest.raises(ProposalDroppedError):
        net.node(1).propose(b"during-transfer")
    net.deliver_all()
    assert TimeoutNow(1, 2, term) in net.sent
    assert net.leader() == 2 and net.node(2).term == term + 1
    assert net.node(1).role is Role.FOLLOWER and net.node(1).lead == 2
    assert all(e.data != b"during-transfer" for e in net.log(2))


def test_transfer_to_lagging_follower_first_catches_it_up() -> None:
    """Thesis §3.10 step 1: the leader first brings the target's log up to date, then TimeoutNow."""
    net = Net(seed=19)
    net.elect(1)
    net.isolate(3)
    for k in range(5):
        net.propose(1, b"p%d" % k)
    net.heal()
    last = net.node(1).log.last_index()
    assert net.node(3).log.last_index() < last
    net.node(1).transfer_leader(3)
    with pytest.raises(ProposalDroppedError):
        net.node(1).propose(b"x")
    net.deliver_all()
    caught_up = next(
        k for k, m in enumerate(net.sent)
        if isinstance(m, AppendResponse) and m.frm == 3 and not m.reject and m.index == last
    )
    timeout_now = next(k for k, m in enumerate(net.sent) if isinstance(m, TimeoutNow))
    assert caught_up < timeout_now
    assert net.leader() == 3 and [e.data for e in net.log(3)][:6] == [b""] + [b"p%d" % k for k in range(5)]


def test_transfer_to_unreachable_target_is_abandoned_after_an_election_timeout() -> None:
    """Thesis §3.10: if the transfer does not complete within an election timeout the leader aborts
    it and resumes accepting client requests."""
    net = Net(seed=20)
    net.elect(1)
    net.cut(1, 2)
    net.node(1).transfer_leader(2)
    with pytest.raises(ProposalDroppedError):
        net.node(1).propose(b"x")
    net.tick(E, ids=[1])
    assert net.node(1).role is Role.LEADER
    net.propose(1, b"y")
    assert net.node(1).log.committed == net.node(1).log.last_index()


# -- membership (thesis §4) -----------------------------------------------------------------------
def add_learner(net: Net, leader: int, new: int) -> None:
    net.add(new, MemoryStorage())
    net.node(leader).propose_conf_change(cc((ConfChangeKind.ADD_LEARNER, new)))
    net.deliver_all()


@pytest.mark.parametrize("compact", [False, True])
def test_learner_catches_up_and_never_votes_or_campaigns(compact: bool) -> None:
    """Thesis §4.2.1: a new server joins as a non-voting member (learner) and receives the log --
    through InstallSnapshot (§5) when the leader compacted it; it never votes or campaigns."""
    net = Net(seed=21)
    net.elect(1)
    for k in range(4):
        net.propose(1, b"v%d" % k)
    if compact:
        assert net.reps[1].compact() > 0
    add_learner(net, 1, 4)
    net.tick(2)
    snaps = [m for m in net.sent if isinstance(m, InstallSnapshot) and m.to == 4]
    assert snaps  # a brand-new member always starts from a snapshot (the bootstrap one at least)
    if compact:
        assert snaps[0].snapshot.meta.index > 1
    assert net.reps[4].machine.applied == net.reps[1].machine.applied
    assert net.reps[4].machine.digest == net.reps[1].machine.digest
    assert net.node(4).tracker.conf.learners == (4,)
    net.isolate(1)
    net.tick(10 * E)
    assert net.node(4).role is Role.FOLLOWER
    assert not any(isinstance(m, (RequestVote, VoteResponse)) and 4 in (m.frm, m.to) for m in net.sent)
    assert net.leader() in (2, 3)


def test_promoted_learner_becomes_a_voter() -> None:
    """Thesis §4.2.1: once caught up, the learner is promoted by a configuration change."""
    net = Net(seed=22)
    net.elect(1)
    add_learner(net, 1, 4)
    net.node(1).propose_conf_change(cc((ConfChangeKind.ADD_VOTER, 4)))
    net.deliver_all()
    net.tick()
    for i in (1, 2, 3, 4):
        assert net.node(i).tracker.conf == ConfState(voters=(1, 2, 3, 4))
    net.elect(4)
    assert net.leader() == 4


def test_joint_change_replaces_two_voters_and_leaves_joint_automatically() -> None:
    """Thesis §4.3: changing several voters at once goes through a joint configuration C_old,new
    (decisions need both majorities) and then to C_new, here without a further request."""
    net = Net(seed=23)
    net.elect(1)
    net.add(4, MemoryStorage())
    net.add(5, MemoryStorage())
    net.node(1).propose_conf_change(cc((ConfChangeKind.ADD_LEARNER, 4), (ConfChangeKind.ADD_LEARNER, 5)))
    net.deliver_all()
    replace_two = cc(
        (ConfChangeKind.ADD_VOTER, 4), (ConfChangeKind.ADD_VOTER, 5),
        (ConfChangeKind.REMOVE_NODE, 2), (ConfChangeKind.REMOVE_NODE, 3),
    )
    net.node(1).propose_conf_change(replace_two)
    net.deliver_all()
    net.tick(2)
    confs = [conf for _, conf in net.confs[1]]
    joint = ConfState(voters=(1, 4, 5), voters_outgoing=(1, 2, 3), auto_leave=True)
    assert joint in confs
    assert confs[-1] == ConfState(voters=(1, 4, 5))
    assert confs.index(joint) == len(confs) - 2
    for i in (1, 4, 5):
        assert net.node(i).tracker.conf == ConfState(voters=(1, 4, 5))
    net.crash(2)
    net.crash(3)
    net.propose(1, b"new-majority")
    assert net.node(1).log.committed == net.node(1).log.last_index()


def test_leader_refuses_to_remove_itself_and_is_removed_after_a_transfer() -> None:
    """Thesis §4.2.2 / TiKV and CockroachDB practice: the leader never proposes its own removal or
    demotion (ConfChangeError: transfer first); after transferring leadership the new leader
    removes it and the remaining servers carry on."""
    net = Net(seed=24)
    net.elect(1)
    for kind in (ConfChangeKind.REMOVE_NODE, ConfChangeKind.ADD_LEARNER):
        with pytest.raises(ConfChangeError, match="transfer leadership first"):
            net.node(1).propose_conf_change(cc((kind, 1)))
    net.node(1).transfer_leader(2)
    net.deliver_all()
    assert net.leader() == 2
    net.node(2).propose_conf_change(cc((ConfChangeKind.REMOVE_NODE, 1)))
    net.deliver_all()
    for i in (2, 3):
        assert net.node(i).tracker.conf.voters == (2, 3)
    net.tick(3 * E)
    assert net.leader() == 2
    net.propose(2, b"after-removal")
    assert net.node(2).log.committed == net.node(2).log.last_index()


def _inherit_own_removal(net: Net) -> None:
    """Leader 1 proposes removing 2; 2 stores the entry but 1 never learns it (its acks are lost);
    1 crashes and 2, whose log is longest, is elected: 2 now leads with its own removal pending."""
    net.elect(1)
    net.drop(lambda m: (isinstance(m, AppendResponse) and m.frm == 2) or (isinstance(m, AppendEntries) and m.to == 3))
    net.node(1).propose_conf_change(cc((ConfChangeKind.REMOVE_NODE, 2)))
    net.deliver_all()
    net.drop(None)
    net.crash(1)
    net.elect(2)


def test_leader_that_inherits_its_own_removal_keeps_leading_until_it_hands_over() -> None:
    """Thesis §4.2.2: a leader that applies its own removal keeps managing the group without
    counting itself and refuses proposals; stepping down at once could leave no electable node
    (the remaining voters may still need its vote while lacking entries only it holds). It hands
    leadership to the most caught-up voter with TimeoutNow once that voter can win."""
    net = Net(seed=29)
    _inherit_own_removal(net)
    assert net.node(2).tracker.conf.voters == (1, 3)  # committed with 3's ack, then applied
    assert net.node(2).role is Role.LEADER  # 1 is down: no voter of {1, 3} could win yet
    with pytest.raises(ProposalDroppedError):
        net.node(2).propose(b"refused while handing over")
    net.restart(1)
    net.tick(3 * E)
    assert any(isinstance(m, TimeoutNow) and m.frm == 2 and m.to == 3 for m in net.sent)
    assert net.leader() == 3 and net.node(2).role is Role.FOLLOWER
    net.propose(3, b"after-removal")
    assert net.node(1).log.committed == net.node(3).log.last_index()


def test_removed_server_that_missed_its_removal_does_not_disrupt() -> None:
    """Thesis §4.2.3: a removed server that never learns of its removal times out and campaigns;
    servers that heard from a current leader within the minimum election timeout disregard it
    (with pre-vote it does not even raise its term), so the leader and term are unchanged."""
    net = Net(seed=28)
    net.elect(1)
    net.isolate(3)
    net.node(1).propose_conf_change(cc((ConfChangeKind.REMOVE_NODE, 3)))
    net.deliver_all()
    assert net.node(1).tracker.conf.voters == (1, 2)
    term = net.node(1).term
    net.heal()
    sent_before = len(net.sent)
    net.tick(10 * E)
    assert any(isinstance(m, RequestVote) and m.frm == 3 for m in net.sent[sent_before:])
    assert net.leader() == 1 and net.node(1).term == net.node(2).term == term
    net.propose(1, b"still-available")
    assert net.node(1).log.committed == net.node(1).log.last_index()


def test_a_candidate_that_applies_its_own_removal_abandons_its_campaign() -> None:
    """A node may campaign before its host applies a committed entry removing it (it was a voter
    when its timer fired). Once the removal is applied it is no voter: its campaign ends, and
    votes arriving later cannot make it a leader that is not a member (the simulator found a
    candidate winning that way and then failing on its own missing progress)."""
    net = Net(seed=29)
    net.elect(1)
    n3 = net.node(3)
    n3.campaign(pre=False, transfer=True)  # its election timer fires first
    assert n3.role is Role.CANDIDATE
    n3.apply_conf_change(cc((ConfChangeKind.REMOVE_NODE, 3)))  # then its host applies the removal
    assert n3.tracker.conf.voters == (1, 2) and n3.role is Role.FOLLOWER
    for voter in (1, 2):
        n3.step(VoteResponse(voter, 3, n3.term, True, False))
    assert n3.role is Role.FOLLOWER


def test_second_conf_change_while_one_is_pending_is_refused() -> None:
    """Thesis §4.1: only one configuration change may be outstanding at a time."""
    net = Net(seed=25)
    net.elect(1)
    net.node(1).propose_conf_change(cc((ConfChangeKind.ADD_LEARNER, 4)))
    with pytest.raises(ConfChangeError):
        net.node(1).propose_conf_change(cc((ConfChangeKind.ADD_LEARNER, 5)))
    net.deliver_all()
    net.node(1).propose_conf_change(cc((ConfChangeKind.ADD_LEARNER, 5)))  # applied: allowed again


def test_new_leader_refuses_conf_change_until_its_noop_is_applied() -> None:
    """Documented in Node.propose_conf_change ("which also covers a new leader's no-op") and in
    raykv.raft.confchange ("none before it has committed an entry of its own term (the no-op)"),
    after Ongaro's raft-dev fix for single-server changes across leader changes (2015)."""
    net = Net(seed=26)
    net.drop(lambda m: isinstance(m, AppendEntries))
    net.elect(1)
    n1 = net.node(1)
    assert n1.log.committed < n1.log.last_index()  # the no-op is not committed yet
    with pytest.raises(ConfChangeError):
        n1.propose_conf_change(cc((ConfChangeKind.ADD_LEARNER, 4)))


# -- snapshots (paper §7) ------------------------------------------------------------------------
def test_follower_down_during_compaction_catches_up_by_snapshot() -> None:
    """Paper §7: the leader sends InstallSnapshot to a follower whose next entry it has discarded;
    afterwards both state machines agree at the same applied index (State Machine Safety)."""
    net = Net(seed=27)
    net.elect(1)
    net.crash(3)
    for k in range(10):
        net.propose(1, b"k%d" % k)
    index = net.reps[1].compact()
    assert index == net.node(1).log.committed and net.node(1).log.first_index() == index + 1
    net.restart(3)
    net.tick(2)
    snaps = [m for m in net.sent if isinstance(m, InstallSnapshot) and m.to == 3]
    assert [m.snapshot.meta.index for m in snaps] == [index]
    assert net.reps[3].machine.applied == net.reps[1].machine.applied == index
    assert net.reps[3].machine.digest == net.reps[1].machine.digest
    net.propose(1, b"after")
    net.tick()
    assert len({(r.machine.applied, r.machine.digest) for r in net.reps.values()}) == 1
