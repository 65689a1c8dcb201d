"""TCP's retransmission backoff, which decides how soon a healed replica hears its peers again.

Replicas talk by Ray actor calls, and Ray keeps one TCP connection from a worker to each worker it
calls, for good (no per-call deadline, no reconnect while the connection lives). A call sent while
a peer is cut off leaves unacknowledged bytes on that connection, and Linux retransmits them with
an exponential backoff: after 0.2 s, then 0.4, 0.8, ... up to ``tcp_rto_max_ms`` (120 s by
default). After the cut heals, nothing moves on the connection until its next retransmission, so a
healed replica waits up to ``min(length of the cut, 120 s)`` before it hears its leader (measured
on the test bed: a 30 s cut, next retransmission 22 s after the heal, caught up 26 s after it).

Linux 6.15 made the cap a sysctl, ``net.ipv4.tcp_rto_max_ms`` (1000..120000, read when a socket
is created). ``deploy/node-prepare.sh`` sets it to :data:`RECOMMENDED_MS` on every node before
``ray start``, and each replica reports its host's value in its status, so ``raykv status`` can
name the hosts where a healed replica may lag for minutes. No Ray setting helps: Ray's worker
channels have no reconnect backoff setting and its gRPC keepalive cannot be made short without
Ray declaring busy nodes dead (docs/operations.md).
"""

from __future__ import annotations

from pathlib import Path

SYSCTL = Path("/proc/sys/net/ipv4/tcp_rto_max_ms")
RECOMMENDED_MS = 1000
"""What the deploy scripts set: a healed connection retransmits within a second."""
KERNEL_DEFAULT_MS = 120_000
TOLERATED_MS = 5_000
"""Above this, ``raykv status`` names the host (a healed replica may lag that long)."""


def rto_max_ms(sysctl: Path = SYSCTL) -> int | None:
    """This network namespace's cap on TCP's retransmission backoff; None where the kernel has no
    such setting (before Linux 6.15: the cap is then :data:`KERNEL_DEFAULT_MS`) or it cannot be read."""
    try:
        return int(sysctl.read_text().strip())
    except (OSError, ValueError):
        return None


def backoff_too_long(value_ms: int | None) -> bool:
    """Whether a host reporting ``value_ms`` (from :func:`rto_max_ms`) may keep a healed replica
    waiting longer than :data:`TOLERATED_MS`."""
    return (KERNEL_DEFAULT_MS if value_ms is None else value_ms) > TOLERATED_MS
