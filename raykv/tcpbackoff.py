"""TCP's retransmission backoff, which decides how soon a healed replica hears its peers again.

Replicas talk by Ray actor calls, and Ray keeps one TCP connection from a worker to each worker it
calls, for good (no per-call deadline, no reconnect while the connection lives). A call sent while
a peer is cut off leaves unacknowledged bytes on that connection, and Linux retransmits them with
an exponential backoff: after 0.2 s, then 0.4, 0.8, ... up to ``tcp_rto_max_ms`` (120 s by
default). After the cut heals, nothing moves on the connection until its next retransmission, so a
healed replica waits up to ``min(length of the cut, 120 s)`` before it hears its leader (measured
on the test bed: a 30 s cut, next retransmission 22 s after the heal, caught up 26 s after it).

Linux 6.15 made the cap a sysctl, ``net.ipv4.tcp_rto_max_ms`` (1000..120000, read when a socket
is created). ``deploy/tcp-backoff.sh`` sets it to :data:`RECOMMENDED_MS` on every node before
``ray start``.

A longer cut meets a second limit: gRPC gives Ray's worker connections a TCP user timeout equal to
Ray's keepalive timeout (``grpc_client_keepalive_timeout_ms``, 120 s), so a connection with bytes
unacknowledged for two minutes is dropped, and gRPC's reconnect backoff (growing to two minutes,
each attempt 20 s while the peer is unreachable) then decides when the healed replica hears its
peers again: up to 50 s after a 300 s cut, measured. The deploy raises that timeout to
:data:`KEEPALIVE_TIMEOUT_MS` (15 min, about what the kernel itself allows a connection before it
gives up) in every Ray process's environment (:data:`KEEPALIVE_ENV`), so a connection survives any
cut up to then and moves within a second of the heal. It changes no ping rate, only how long an
unanswered one is waited for (Ray declares dead nodes by its own health check).

Each replica reports both values of its host in its status, so ``raykv status`` can name the hosts
where a healed replica may lag for minutes (docs/operations.md).
"""

from __future__ import annotations

from pathlib import Path

SYSCTL = Path("/proc/sys/net/ipv4/tcp_rto_max_ms")
RECOMMENDED_MS = 1000
"""What the deploy scripts set: a healed connection retransmits within a second."""
KERNEL_DEFAULT_MS = 120_000
TOLERATED_MS = 5_000
"""Above this, ``raykv status`` names the host (a healed replica may lag that long)."""
KEEPALIVE_ENV = "RAY_grpc_client_keepalive_timeout_ms"
KEEPALIVE_TIMEOUT_MS = 900_000
"""What the deploy sets :data:`KEEPALIVE_ENV` to (Ray's default: 120000)."""


def rto_max_ms(sysctl: Path = SYSCTL) -> int | None:
    """This network namespace's cap on TCP's retransmission backoff; None where the kernel has no
    such setting (before Linux 6.15: the cap is then :data:`KERNEL_DEFAULT_MS`) or it cannot be read."""
    try:
        return int(sysctl.read_text().strip())
    except (OSError, ValueError):
        return None


def backoff_too_long(value_ms: int | None, keepalive_timeout_ms: int | None = KEEPALIVE_TIMEOUT_MS) -> bool:
    """Whether a host reporting ``value_ms`` (from :func:`rto_max_ms`) and Ray's keepalive timeout
    ``keepalive_timeout_ms`` may keep a healed replica waiting longer than :data:`TOLERATED_MS`
    (after a cut longer than that timeout: see the module docstring)."""
    rto = KERNEL_DEFAULT_MS if value_ms is None else value_ms
    return rto > TOLERATED_MS or (keepalive_timeout_ms or 0) < KEEPALIVE_TIMEOUT_MS
