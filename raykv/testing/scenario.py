"""What a seed does: its fault profile, replica options, partitions and membership changes (all seeded)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..raft.types import ConfChange, ConfChangeKind, ConfChangeSingle
from ..replica.options import ReplicaOptions
from .network import LinkFaults, Network


@dataclass(frozen=True)
class Profile:
    """Per-step (50 ms) probabilities of each fault, the replica options, the raft overrides."""

    link_faults: LinkFaults
    partition: float
    crash_host: float
    crash_leader_host: float
    crash_replica: float
    wipe_on_restart: float
    lose_directory: float
    pause: float
    suspend: float
    wedge: float
    slow: float
    twin: float
    crash_after_persist: float
    leader_crash_after_persist: float
    crash_after_send: float
    conf: float
    transfer: float
    propose: float
    clients: int
    options: ReplicaOptions
    raft: dict
    disk_full: float = 0.0


def draw_profile(rng: random.Random) -> Profile:
    """A fault profile for one seed: calm seeds and violent seeds both occur. About a third
    are *leader chaos*: one entry per append, leaders dying right after they append or
    decide, proposals at every leader (stale ones too) -- the recipe of the Raft paper's
    Figure 8, where a wrong commit rule loses committed entries."""
    v = rng.random()
    chaos = rng.random() < 0.35
    options = ReplicaOptions(
        metrics=False,
        heartbeat_ticks=rng.choice([1, 2]),
        compact_every_entries=rng.choice([20, 100, 10_000]),
        compact_keep_entries=rng.choice([0, 5, 50]),
        quiesce_after_ticks=rng.choice([5, 20, 1000]),
        quiet_probe_ticks=rng.choice([5, 20]),
        commit_broadcast=rng.random() < 0.5,
        call_deadline_s=rng.choice([0.5, 2.0]),
    )
    return Profile(
        link_faults=LinkFaults(
            drop_rate=rng.choice([0.0, 0.02, 0.1, 0.25]) * v,
            dup_rate=rng.choice([0.0, 0.02, 0.1]),
            delay_us=rng.choice([(200, 1500), (200, 20_000), (1000, 80_000)]),
        ),
        partition=0.03 * v,
        crash_host=0.02 * v,
        crash_leader_host=rng.choice([0.0, 0.02, 0.05]) * v,
        crash_replica=0.01 * v,
        wipe_on_restart=rng.choice([0.0, 0.1, 0.3]),
        lose_directory=rng.choice([0.0, 0.003, 0.01]) * v,
        pause=0.01 * v,
        suspend=0.005 * v,
        wedge=rng.choice([0.0, 0.005, 0.01]) * v,
        slow=0.01 * v,
        twin=rng.choice([0.0, 0.003, 0.01]) * v,
        crash_after_persist=rng.choice([0.0, 0.002, 0.01]) * v,
        leader_crash_after_persist=max(rng.choice([0.0, 0.05, 0.2, 0.5]) * v, 0.3 if chaos else 0.0),
        crash_after_send=rng.choice([0.0, 0.002, 0.01]) * v,
        conf=rng.choice([0.0, 0.01, 0.04]),
        transfer=rng.choice([0.0, 0.005, 0.02]),
        propose=1.0 if chaos else rng.choice([0.0, 0.3, 1.0]),
        clients=rng.choice([2, 4, 6]),
        options=options,
        raft=dict(max_msg_bytes=1 if chaos else rng.choice([1, 64, 1 << 20, 1 << 20]),
                  max_inflight_msgs=rng.choice([1, 2, 8, 256])),
        disk_full=rng.choice([0.0, 0.005, 0.02]) * v,
    )


def partition(rng: random.Random, network: Network, hosts: list[int]) -> str:
    """Cut the network: isolate one host, split it in two, cut one link both ways (a partial
    partition: the two hosts still reach everyone else), or cut links one way."""
    kind = rng.randrange(4)
    if kind == 0:
        network.isolate(rng.choice(hosts), hosts)
        return "isolate"
    if kind == 1:
        shuffled = list(hosts)
        rng.shuffle(shuffled)
        cut = rng.randint(1, len(hosts) // 2)
        network.split(shuffled[:cut], shuffled[cut:])
        return "split"
    if kind == 2:
        a, b = rng.sample(hosts, 2)
        network.split([a], [b])
        return "partial"
    for _ in range(rng.randint(1, len(hosts))):
        src, dst = rng.sample(hosts, 2)
        network.cut_one_way(src, dst)
    return "one-way"


def membership_change(rng: random.Random, node, replicas: int, free_hosts: bool) -> tuple[str, ConfChange | None]:
    """One random, valid membership change for the leader ``node`` (None if none fits now):
    ``("add_learner", None)`` asks the caller to create a replica and add it."""
    conf = node.tracker.conf
    if conf.joint or node.pending_conf_index > node.log.applied:
        return "none", None
    voters, learners = list(conf.voters), list(conf.learners)
    caught_up = [i for i in learners if node.tracker.progress[i].match >= node.log.committed]
    ops = []
    if len(voters) + len(learners) < replicas + 2 and free_hosts:
        ops.append("add_learner")
    if caught_up and len(voters) < replicas + 1:
        ops.append("promote")
    if caught_up and len(voters) >= 2:
        ops.append("replace")
    if learners:
        ops.append("remove_learner")
    if len(voters) > max(1, replicas - 1):
        ops += ["remove_voter", "demote"]
    if not ops:
        return "none", None
    op = rng.choice(ops)
    if op == "add_learner":
        return op, None
    changes = {
        "promote": lambda: [(ConfChangeKind.ADD_VOTER, rng.choice(caught_up))],
        "replace": lambda: [(ConfChangeKind.ADD_VOTER, rng.choice(caught_up)),
                            (ConfChangeKind.REMOVE_NODE, rng.choice(voters))],
        "remove_learner": lambda: [(ConfChangeKind.REMOVE_NODE, rng.choice(learners))],
        "remove_voter": lambda: [(ConfChangeKind.REMOVE_NODE, rng.choice(voters))],
        "demote": lambda: [(ConfChangeKind.ADD_LEARNER, rng.choice(voters))],
    }[op]()
    return op, ConfChange(tuple(ConfChangeSingle(k, i) for k, i in changes))
