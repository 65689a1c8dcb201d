#!/usr/bin/env bash
# Cap TCP's retransmission backoff on this machine before `ray start` (see raykv/tcpbackoff.py).
#
# Ray keeps one TCP connection between two workers for good. A call sent across a network cut
# leaves bytes on it that Linux retransmits with a doubling backoff, up to 120 s by default, so
# after the cut heals a replica can wait up to that long before it hears its peers again.
# `net.ipv4.tcp_rto_max_ms` (Linux 6.15+) caps the backoff; a socket reads it when it is created,
# so this runs before Ray starts. Run by node-prepare.sh on every replica node and by the head's
# start command (drivers and the router talk to replicas too).
#
#   RAYKV_TCP_RTO_MAX_MS  the cap in ms (default 1000; 120000 is the kernel's own)
#   RAYKV_TCP_RTO_KNOB    the file to write (default /proc/sys/net/ipv4/tcp_rto_max_ms; tests)
#
# Never fails the start: on an older kernel, or without the right to set it, it says so on stderr
# (and `raykv status` names the hosts).
set -uo pipefail

WANT="${RAYKV_TCP_RTO_MAX_MS:-1000}"
KNOB="${RAYKV_TCP_RTO_KNOB:-/proc/sys/net/ipv4/tcp_rto_max_ms}"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi

if [ ! -e "$KNOB" ]; then
    echo "tcp-backoff: this kernel ($(uname -r)) has no net.ipv4.tcp_rto_max_ms (Linux 6.15+):" \
         "a replica healed from a network cut may wait up to 2 min for its peers" >&2
    exit 0
fi
if [ "$(cat "$KNOB")" = "$WANT" ]; then exit 0; fi
if ! echo "$WANT" | $SUDO tee "$KNOB" >/dev/null 2>&1; then
    echo "tcp-backoff: could not set net.ipv4.tcp_rto_max_ms=$WANT (it stays $(cat "$KNOB") ms)" >&2
fi
exit 0
