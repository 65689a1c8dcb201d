"""Test-only fault injection on the replica transport: drop or delay chosen links.

A :class:`FaultPlan` maps directed links ``(from_replica, to_replica)`` to a
:class:`LinkFault`. Every replica of a group gets the same plan (through the
actor's ``set_faults``) and applies the entries for links *it sends on*, so a
symmetric partition is two entries and a one-way partition one. With no plan
installed the transport checks one attribute per batch: it costs nothing when off.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LinkFault:
    """``drop``: probability a batch on this link is lost; ``delay_s``: extra latency of the rest."""

    drop: float = 1.0
    delay_s: float = 0.0


@dataclass(frozen=True)
class FaultPlan:
    links: dict[tuple[int, int], LinkFault] = field(default_factory=dict)

    @staticmethod
    def partition(side_a: list[int], side_b: list[int], one_way: bool = False) -> "FaultPlan":
        """Cut every link from ``side_a`` to ``side_b`` (and back unless ``one_way``)."""
        links = {(a, b): LinkFault() for a in side_a for b in side_b}
        if not one_way:
            links.update({(b, a): LinkFault() for a in side_a for b in side_b})
        return FaultPlan(links)

    @staticmethod
    def isolate(replica: int, others: list[int]) -> "FaultPlan":
        return FaultPlan.partition([replica], [o for o in others if o != replica])


class LinkFaults:
    """The sender's view of a plan: what to do with one batch to ``peer``."""

    def __init__(self, me: int, plan: FaultPlan, rng: random.Random) -> None:
        self.links = {to: f for (frm, to), f in plan.links.items() if frm == me}
        self.rng = rng

    def verdict(self, peer: int) -> float | None:
        """None: drop the batch; else the delay in seconds (0.0: send now)."""
        fault = self.links.get(peer)
        if fault is None:
            return 0.0
        if fault.drop > 0 and self.rng.random() < fault.drop:
            return None
        return fault.delay_s
