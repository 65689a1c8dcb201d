"""What a seed does: its fault profile, partitions and membership changes (all seeded)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..raft.types import ConfChange, ConfChangeKind, ConfChangeSingle
from .network import LinkFaults, Network


@dataclass(frozen=True)
class Scenario:
    """Per-tick probabilities of each fault and client action, and the node tunables."""

    link_faults: LinkFaults
    partition_rate: float
    crash_rate: float
    leader_crash_rate: float
    pause_rate: float
    crash_after_persist_rate: float
    leader_crash_after_persist_rate: float
    compact_rate: float
    conf_rate: float
    transfer_rate: float
    propose_rate: float
    read_rate: float
    node_config: dict = field(default_factory=dict)


def draw_scenario(rng: random.Random) -> Scenario:
    """A fault profile for one seed: calm seeds and violent seeds both occur."""
    violence = rng.random()
    return Scenario(
        link_faults=LinkFaults(
            drop_rate=rng.choice([0.0, 0.02, 0.1, 0.25]) * violence,
            dup_rate=rng.choice([0.0, 0.02, 0.1]),
            max_delay_steps=rng.choice([1, 4, 12]),
        ),
        partition_rate=0.03 * violence,
        crash_rate=0.02 * violence,
        leader_crash_rate=rng.choice([0.0, 0.02, 0.05]) * violence,
        pause_rate=0.01 * violence,
        crash_after_persist_rate=rng.choice([0.0, 0.002, 0.01]) * violence,
        leader_crash_after_persist_rate=rng.choice([0.0, 0.1, 0.3, 0.5]) * violence,
        compact_rate=rng.choice([0.0, 0.02, 0.1]),
        conf_rate=rng.choice([0.0, 0.01, 0.04]),
        transfer_rate=rng.choice([0.0, 0.005, 0.02]),
        propose_rate=rng.choice([0.05, 0.3, 0.7, 1.0]),
        read_rate=rng.choice([0.1, 0.5, 3.0]),  # above 1: several reads per tick
        node_config=dict(
            election_ticks=10,
            heartbeat_ticks=rng.choice([1, 2]),
            pre_vote=rng.random() < 0.85,
            check_quorum=rng.random() < 0.85,
            max_msg_bytes=rng.choice([1, 1, 64, 1 << 20]),  # 1: one entry per append,
            max_inflight_msgs=rng.choice([1, 2, 8, 256]),
            commit_broadcast=rng.random() < 0.5,  # False is what the Ray replicas run
        ),
    )


def partition(rng: random.Random, network: Network, hosts: list[int]) -> None:
    """Cut the network: isolate one host, split it in two, cut one link both ways (a
    partial partition: the two hosts still reach everyone else), or cut links one way."""
    kind = rng.randrange(4)
    if kind == 3:
        a, b = rng.sample(hosts, 2)
        network.split([a], [b])
    elif kind == 0:
        network.isolate(rng.choice(hosts), hosts)
    elif kind == 1:
        shuffled = list(hosts)
        rng.shuffle(shuffled)
        cut = rng.randint(1, len(hosts) // 2)
        network.split(shuffled[:cut], shuffled[cut:])
    else:
        for _ in range(rng.randint(1, len(hosts))):
            src, dst = rng.sample(hosts, 2)
            network.cut_one_way(src, dst)


def change_membership(rng: random.Random, cluster, group, leader, replicas: int) -> None:
    """Propose one random, valid membership change at ``leader`` (if none is pending)."""
    node = leader.node
    conf = node.tracker.conf
    if conf.joint or node.pending_conf_index > node.log.applied:
        return
    voters, learners = list(conf.voters), list(conf.learners)
    caught_up = [i for i in learners if node.tracker.progress[i].match >= node.log.committed]
    ops = []
    if len(voters) + len(learners) < replicas + 2:
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
        return
    op = rng.choice(ops)
    if op == "add_learner":
        cluster.add_member(group, leader, as_voter=False)
        return
    changes = {
        "promote": lambda: [(ConfChangeKind.ADD_VOTER, rng.choice(caught_up))],
        "replace": lambda: [(ConfChangeKind.ADD_VOTER, rng.choice(caught_up)), (ConfChangeKind.REMOVE_NODE, rng.choice(voters))],
        "remove_learner": lambda: [(ConfChangeKind.REMOVE_NODE, rng.choice(learners))],
        "remove_voter": lambda: [(ConfChangeKind.REMOVE_NODE, rng.choice(voters))],
        "demote": lambda: [(ConfChangeKind.ADD_LEARNER, rng.choice(voters))],
    }[op]()
    cluster.propose_conf(group, leader, ConfChange(tuple(ConfChangeSingle(k, i) for k, i in changes)))
