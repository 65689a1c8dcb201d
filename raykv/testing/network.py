"""A seeded, lossy network between hosts: delay, drop, duplication, reordering, partitions.

Time is in simulator steps. Every message gets an independent random delay in
``[1, max_delay_steps]`` (so messages reorder), may be dropped with
``drop_rate`` or duplicated with ``dup_rate``, and is dropped at delivery time
if the link from the sender's host to the receiver's host is cut then. Cuts are
directed, so one-way partitions are expressible.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LinkFaults:
    drop_rate: float = 0.0
    dup_rate: float = 0.0
    max_delay_steps: int = 1


@dataclass(order=True)
class _InFlight:
    due: int
    seq: int
    payload: Any = field(compare=False)
    src_host: int = field(compare=False)
    dst_host: int = field(compare=False)


class Network:
    def __init__(self, rng: random.Random, faults: LinkFaults) -> None:
        self.rng = rng
        self.faults = faults
        self._queue: list[_InFlight] = []
        self._seq = 0
        self.cut: set[tuple[int, int]] = set()
        self.sent = 0
        self.dropped = 0

    def send(self, now: int, src_host: int, dst_host: int, payload: Any) -> bool:
        """Queue ``payload``; returns False if it was dropped on the way in."""
        self.sent += 1
        if self.rng.random() < self.faults.drop_rate:
            self.dropped += 1
            return False
        copies = 2 if self.rng.random() < self.faults.dup_rate else 1
        for _ in range(copies):
            due = now + 1 + self.rng.randrange(self.faults.max_delay_steps)
            self._seq += 1
            heapq.heappush(self._queue, _InFlight(due, self._seq, payload, src_host, dst_host))
        return True

    def due(self, now: int) -> list[tuple[Any, bool]]:
        """Messages due at ``now`` with whether their link is up (in send order)."""
        out = []
        while self._queue and self._queue[0].due <= now:
            item = heapq.heappop(self._queue)
            up = (item.src_host, item.dst_host) not in self.cut
            if not up:
                self.dropped += 1
            out.append((item.payload, up))
        return out

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
