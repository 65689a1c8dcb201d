"""Faults on the hosts of a :class:`~raykv.testing.hosts.HostBed`, each with its heal.

A nemesis picks its target hosts with the run's seeded ``random.Random``, breaks something in
:meth:`Nemesis.apply` and repairs it in :meth:`Nemesis.heal`, which returns the evidence that the
fault took effect (packets dropped, processes stopped, bytes written): a nemesis that did nothing
is reported as such, never counted as a passed run.

Network faults are nftables tables inside the target hosts' namespaces (one table per nemesis,
``inet raykv_<name>``, so faults combine: a packet must pass every table), with counters that
say how many packets they dropped. This machine's kernel has no ``sch_netem`` (``tc qdisc add
... netem`` fails: "Specified qdisc kind is unknown"), so loss is nftables' ``numgen random`` and
a slow link is a ``tbf`` rate limit (queueing delay under load), not a fixed added delay.

=============  ======================================================================
name           fault
=============  ======================================================================
partition      one host cut from every other host and from the head, both directions
peers          one host cut from every other replica host, both directions; the head (GCS,
               drivers) still reaches it, so Ray never declares it dead however long the cut
halves         the replica hosts split in two groups that cannot reach each other
one-way        one host's packets to the other replica hosts are lost (theirs arrive)
gcs            one host cut from the head (GCS, drivers) only; replica hosts still talk
loss           25% of one host's packets lost, both directions
slow           one host's outgoing traffic limited to 1 Mbit/s (up to 200 ms of queue)
pause          every process of one host stopped (SIGSTOP), then continued
kill           every process of one host killed (SIGKILL); Ray restarted with its disk
wipe           as kill, and the host comes back with an empty disk
disk-full      one host's data disk filled to the last byte, then freed
disk-full-all  every replica host's data disk filled, then freed
=============  ======================================================================
"""

from __future__ import annotations

import random
import re
import signal
from dataclasses import dataclass, field

from .hosts import Host, HostBed, signal_all

FILLER = ".raykv-nemesis-filler"


@dataclass
class Nemesis:
    """Base class: ``targets`` is set by :meth:`apply`; subclasses set ``name`` and override hooks."""

    name: str = ""
    targets: tuple[Host, ...] = ()
    evidence: dict[str, int] = field(default_factory=dict)

    def apply(self, bed: HostBed, rng: random.Random) -> str:
        """Break something; returns a one-line description naming the hosts."""
        self.targets = self.pick(bed, rng)
        self.evidence = {}
        self.start(bed)
        return f"{self.name} on {', '.join(h.name for h in self.targets)}"

    def heal(self, bed: HostBed) -> dict[str, int]:
        """Undo the fault; returns the evidence that it did something (empty: it did nothing)."""
        self.stop(bed)
        return {k: v for k, v in self.evidence.items() if v}

    def pick(self, bed: HostBed, rng: random.Random) -> tuple[Host, ...]:
        return (rng.choice(bed.hosts),)

    def start(self, bed: HostBed) -> None:
        raise NotImplementedError

    def stop(self, bed: HostBed) -> None:
        raise NotImplementedError


# -- network: nftables ---------------------------------------------------------------------------
def _addresses(hosts) -> str:
    return "{ " + ", ".join(h.ip for h in hosts) + " }"


def _table(name: str, out_rule: str | None, in_rule: str | None) -> str:
    """An nftables table ``inet <name>`` dropping (and counting) what the rules match."""
    lines = [f"table inet {name} {{"]
    for chain, hook, rule in (("output", "output", out_rule), ("input", "input", in_rule)):
        if rule:
            lines += [f"  chain {chain} {{", f"    type filter hook {hook} priority 0; policy accept;",
                      f"    {rule} counter drop", "  }"]
    return "\n".join(lines + ["}", ""])


@dataclass
class Firewall(Nemesis):
    """Drops packets between each target and its peers; subclasses say who the peers are."""

    percent: int = 100
    directions: tuple[str, ...] = ("out", "in")
    _installed: list[Host] = field(default_factory=list)

    @property
    def table(self) -> str:
        return "raykv_" + self.name.replace("-", "_")

    def peers(self, bed: HostBed, target: Host) -> tuple[Host, ...]:
        return tuple(h for h in bed.all_hosts if h != target)

    def cuts(self, bed: HostBed) -> list[tuple[Host, tuple[Host, ...]]]:
        """``(host, hosts it loses packets to and from)`` for every host that gets a table."""
        return [(t, self.peers(bed, t)) for t in self.targets]

    def start(self, bed: HostBed) -> None:
        self._installed = []
        chance = "" if self.percent >= 100 else f" numgen random mod 100 < {self.percent}"
        for host, peers in self.cuts(bed):
            out_rule = f"ip daddr {_addresses(peers)}{chance}" if "out" in self.directions else None
            in_rule = f"ip saddr {_addresses(peers)}{chance}" if "in" in self.directions else None
            bed.netns_run(host, ["nft", "-f", "-"], stdin=_table(self.table, out_rule, in_rule))
            self._installed.append(host)

    def stop(self, bed: HostBed) -> None:
        dropped = 0
        for host in self._installed:
            listing = bed.netns_run(host, ["nft", "list", "table", "inet", self.table], check=False).stdout
            dropped += sum(int(n) for n in re.findall(r"counter packets (\d+)", listing))
            bed.netns_run(host, ["nft", "delete", "table", "inet", self.table], check=False)
        self._installed = []
        self.evidence["packets_dropped"] = dropped


@dataclass
class Partition(Firewall):
    name: str = "partition"


@dataclass
class PeerPartition(Firewall):
    name: str = "peers"

    def peers(self, bed: HostBed, target: Host) -> tuple[Host, ...]:
        return tuple(h for h in bed.hosts if h != target)


@dataclass
class Halves(Firewall):
    """The replica hosts in two groups; the head stays with the larger one."""

    name: str = "halves"

    def pick(self, bed: HostBed, rng: random.Random) -> tuple[Host, ...]:
        hosts = list(bed.hosts)
        rng.shuffle(hosts)
        return tuple(sorted(hosts[: len(hosts) // 2], key=lambda h: h.name))

    def cuts(self, bed: HostBed) -> list[tuple[Host, tuple[Host, ...]]]:
        minority = set(self.targets)
        majority = tuple(h for h in bed.all_hosts if h not in minority)
        return [(h, majority) for h in self.targets] + [(h, self.targets) for h in majority]


@dataclass
class OneWay(Firewall):
    name: str = "one-way"
    directions: tuple[str, ...] = ("out",)

    def peers(self, bed: HostBed, target: Host) -> tuple[Host, ...]:
        return tuple(h for h in bed.hosts if h != target)


@dataclass
class GcsPartition(Firewall):
    name: str = "gcs"

    def peers(self, bed: HostBed, target: Host) -> tuple[Host, ...]:
        return (bed.head,)


@dataclass
class Loss(Firewall):
    name: str = "loss"
    percent: int = 25


@dataclass
class Slow(Nemesis):
    """A token bucket on the target's outgoing traffic: ``rate`` with at most ``latency`` of queue."""

    name: str = "slow"
    rate: str = "1mbit"
    latency: str = "200ms"

    def start(self, bed: HostBed) -> None:
        for host in self.targets:
            bed.netns_run(host, ["tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", self.rate,
                                 "burst", "16kb", "latency", self.latency])

    def stop(self, bed: HostBed) -> None:
        sent = 0
        for host in self.targets:
            stats = bed.netns_run(host, ["tc", "-s", "qdisc", "show", "dev", "eth0"], check=False).stdout
            match = re.search(r"tbf.*?Sent \d+ bytes (\d+) pkt", stats, re.S)
            sent += int(match.group(1)) if match else 0
            bed.netns_run(host, ["tc", "qdisc", "del", "dev", "eth0", "root"], check=False)
        self.evidence["packets_shaped"] = sent


# -- processes -----------------------------------------------------------------------------------
@dataclass
class Pause(Nemesis):
    name: str = "pause"
    _stopped: list[int] = field(default_factory=list)

    def start(self, bed: HostBed) -> None:
        self._stopped = [pid for h in self.targets for pid in bed.signal_host(h, signal.SIGSTOP)]
        self.evidence["processes_stopped"] = len(self._stopped)

    def stop(self, bed: HostBed) -> None:
        signal_all(self._stopped, signal.SIGCONT)
        for host in self.targets:  # a process forked while the others were stopped
            bed.signal_host(host, signal.SIGCONT)
        self._stopped = []


@dataclass
class Kill(Nemesis):
    """SIGKILL every process of the host; the heal starts Ray on it again (``wipe``: empty disk)."""

    name: str = "kill"
    wipe: bool = False

    def start(self, bed: HostBed) -> None:
        killed = 0
        for host in self.targets:
            killed += len(bed.pids(host))
            bed.kill_host(host)
            if self.wipe:
                bed.wipe_disk(host)
        self.evidence["processes_killed"] = killed

    def stop(self, bed: HostBed) -> None:
        for host in self.targets:
            bed.start_ray(host)


@dataclass
class Wipe(Kill):
    name: str = "wipe"
    wipe: bool = True


@dataclass
class DiskFull(Nemesis):
    """Fills the target's data disk with one file until the filesystem refuses a byte more."""

    name: str = "disk-full"

    def start(self, bed: HostBed) -> None:
        written = 0
        for host in self.targets:
            written += fill(host.data / FILLER)
        self.evidence["bytes_filled"] = written

    def stop(self, bed: HostBed) -> None:
        for host in self.targets:
            (host.data / FILLER).unlink(missing_ok=True)


@dataclass
class DiskFullAll(DiskFull):
    """Every replica host's disk full at once: writes must fail definitely, reads go on."""

    name: str = "disk-full-all"

    def pick(self, bed: HostBed, rng: random.Random) -> tuple[Host, ...]:
        return bed.hosts


def fill(path) -> int:
    """Write zeros to ``path`` until the disk is full (ENOSPC); returns the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 4096, 1):  # big blocks, then what is left of the last pages
            block = b"\0" * size
            while True:
                try:
                    n = f.write(block)
                except OSError:
                    break
                if not n:
                    break
                written += n
    return written


NEMESES: dict[str, type[Nemesis]] = {
    cls.name: cls for cls in (Partition, PeerPartition, Halves, OneWay, GcsPartition, Loss, Slow, Pause, Kill, Wipe, DiskFull,
                              DiskFullAll)
}
"""Every nemesis by its name (the runner's ``--nemesis`` names)."""


def make(names: str) -> list[Nemesis]:
    """``"partition,kill"`` -> fresh nemeses; ValueError naming the known ones for an unknown name."""
    out = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name not in NEMESES:
            raise ValueError(f"unknown nemesis {name!r}; known: {', '.join(NEMESES)}")
        out.append(NEMESES[name]())
    if not out:
        raise ValueError(f"no nemesis named; known: {', '.join(NEMESES)}")
    return out
