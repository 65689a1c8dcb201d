"""A seeded, lossy network between hosts: delay, drop, duplication, reordering, partitions.

Time is in microseconds. Every payload gets an independent random delay in
``delay_us`` (so payloads reorder), may be dropped with ``drop_rate`` or duplicated
with ``dup_rate``, and is lost at delivery time if the link from the sender's host
to the receiver's host is cut then. Cuts are directed, so one-way partitions are
expressible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class LinkFaults:
    drop_rate: float = 0.0
    dup_rate: float = 0.0
    delay_us: tuple[int, int] = (200, 1500)


class Network:
    def __init__(self, rng: random.Random, faults: LinkFaults) -> None:
        self.rng = rng
        self.faults = faults
        self.cut: set[tuple[int, int]] = set()
        self.slow: dict[tuple[int, int], int] = {}
        """Directed links with an extra delay (microseconds) on every payload."""
        self.sent = 0
        self.dropped = 0

    def plan(self, now_us: int, src_host: int, dst_host: int, once: bool = False) -> list[int]:
        """When copies of one payload sent now arrive: none if dropped on the way in, two if
        duplicated (never with ``once``). Whether the link is up is decided at arrival (:meth:`up`)."""
        self.sent += 1
        if src_host != dst_host and self.rng.random() < self.faults.drop_rate:
            self.dropped += 1
            return []
        copies = 2 if src_host != dst_host and self.rng.random() < self.faults.dup_rate and not once else 1
        extra = self.slow.get((src_host, dst_host), 0)
        return [now_us + extra + self.rng.randint(*self.faults.delay_us) for _ in range(copies)]

    def up(self, src_host: int, dst_host: int) -> bool:
        return (src_host, dst_host) not in self.cut

    # -- partitions ----------------------------------------------------------------
    def isolate(self, host: int, hosts: list[int]) -> None:
        for other in hosts:
            if other != host:
                self.cut.update({(host, other), (other, host)})

    def split(self, side_a: list[int], side_b: list[int]) -> None:
        for a in side_a:
            for b in side_b:
                self.cut.update({(a, b), (b, a)})

    def cut_one_way(self, src: int, dst: int) -> None:
        self.cut.add((src, dst))

    def heal(self) -> None:
        self.cut.clear()
        self.slow.clear()
