"""Raft messages: a closed union of frozen dataclasses.

Every message carries ``frm``, ``to`` and ``term``. The core handles them with
``match`` + ``assert_never`` so adding a type without a handler fails type
checking. Responses come back as messages too: no call ever waits for a peer.

``lease_tick`` on appends and heartbeats is the sender's tick counter at send
time; responses echo it so the leader can date its lease from when it *sent*
the message a follower acknowledged (see :mod:`raykv.raft.node`, lease reads).
"""

from __future__ import annotations

from dataclasses import dataclass

from .types import Entry, Snapshot


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """Leader -> follower: entries after (prev_index, prev_term); ``commit`` is the leader's."""

    frm: int
    to: int
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int
    lease_tick: int = 0


@dataclass(frozen=True, slots=True)
class AppendResponse:
    """Follower -> leader. On success ``index`` is the last index now known to match.

    On rejection ``index`` echoes the rejected ``prev_index`` and
    ``(hint_index, hint_term)`` is the fast back-off hint: the largest index
    ``<= hint_index`` whose term is ``<= hint_term`` may match.
    """

    frm: int
    to: int
    term: int
    index: int
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0
    lease_tick: int = 0


@dataclass(frozen=True, slots=True)
class RequestVote:
    """A (pre-)vote request. ``pre`` votes carry the term the candidate would use.

    ``transfer`` marks a campaign started by TimeoutNow: it bypasses the
    check-quorum lease on the voters.
    """

    frm: int
    to: int
    term: int
    last_index: int
    last_term: int
    pre: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class VoteResponse:
    frm: int
    to: int
    term: int
    granted: bool
    pre: bool = False


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leader -> follower. ``commit`` is capped at the follower's match index.

    ``ctx`` is non-empty when the heartbeat also confirms a ReadIndex round.
    """

    frm: int
    to: int
    term: int
    commit: int
    ctx: bytes = b""
    lease_tick: int = 0


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    frm: int
    to: int
    term: int
    ctx: bytes = b""
    lease_tick: int = 0


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """Leader -> follower whose next entry was compacted away (Raft §7)."""

    frm: int
    to: int
    term: int
    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leader -> transfer target: campaign now, bypassing pre-vote and leases (§3.10)."""

    frm: int
    to: int
    term: int


Message = (
    AppendEntries
    | AppendResponse
    | RequestVote
    | VoteResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | TimeoutNow
)

MESSAGE_TYPES = (
    AppendEntries,
    AppendResponse,
    RequestVote,
    VoteResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    TimeoutNow,
)


def describe(m: Message) -> str:
    """One canonical line per message."""
    head = f"{type(m).__name__} {m.frm}->{m.to} t{m.term}"
    match m:
        case AppendEntries():
            ents = " ".join(e.describe() for e in m.entries)
            return f"{head} prev={m.prev_index}@{m.prev_term} commit={m.commit} [{ents}]"
        case AppendResponse():
            if m.reject:
                return f"{head} reject {m.index} hint={m.hint_index}@{m.hint_term}"
            return f"{head} ok {m.index}"
        case RequestVote():
            flags = ("pre " if m.pre else "") + ("transfer " if m.transfer else "")
            return f"{head} {flags}last={m.last_index}@{m.last_term}"
        case VoteResponse():
            return f"{head} {'pre ' if m.pre else ''}{'granted' if m.granted else 'rejected'}"
        case Heartbeat():
            return f"{head} commit={m.commit} ctx={m.ctx.hex()}"
        case HeartbeatResponse():
            return f"{head} ctx={m.ctx.hex()}"
        case InstallSnapshot():
            return f"{head} {m.snapshot.meta.describe()}"
        case TimeoutNow():
            return head
