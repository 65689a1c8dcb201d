"""Raft messages between replica actors: batched, pipelined, one-way, with deadlines.

Contract with the replica loop (all methods run on the loop's thread):

* :meth:`Transport.send` groups a Ready's messages per peer and sends each
  group as one ``deliver(batch)`` actor call. The receiver's loop takes the batch
  in its next turn, and the messages that turn has for the sender -- a follower's
  acknowledgement of an append, after it persisted it; a heartbeat's answer that
  confirms a read -- go back as the call's return value (a :class:`ReplySlot`), so
  a replication round costs one call per follower, not two. Only the receiver's
  actor thread waits, never a loop: no replica's loop ever waits on another (two
  replicas calling each other cannot deadlock). Messages that find no open slot
  (none of the peer's calls is waiting, its wait ended, a fault plan is
  installed) go in calls of their own.
* At most ``max_calls_in_flight`` calls per peer are outstanding; messages
  produced meanwhile wait in a bounded backlog and leave together in the next
  call when one completes (pipelining plus coalescing). Past
  ``max_backlog_msgs`` new messages are dropped: Raft retransmits.
* Completion is observed by :meth:`Transport.poll`, once per loop turn: one
  ``ray.wait(timeout=0)`` over the calls in flight. Not by ``ObjectRef.future()``
  callbacks: Ray runs those on its I/O thread, which must then take the GIL
  from the busy loop, stalling every other RPC of the process meanwhile (the
  replica bench measured it). The loop turns whenever a message arrives, and
  while a call sent in the last :data:`REPLY_WINDOW_S` is in flight at least every
  :data:`REPLY_POLL_S` (older calls: every :data:`SLOW_REPLY_POLL_S`). A failed call (``RayActorError``,
  ``ActorUnavailableError``, ...) or one without answer after
  ``call_deadline_s`` is a lost batch: the peer is reported unreachable to the
  core, never retried by Ray (``max_task_retries=0``: a re-run would deliver twice).
* A call without answer after its deadline is given up on, but Ray still holds it:
  every later call to that peer queues behind it on the same TCP connection, and
  the peer runs them one by one, in order, once the connection moves again. So the
  peer is *stalled*: no new call goes to it (its messages are dropped; Raft
  retransmits) until one of the stalled calls finishes (the connection moves again)
  or :data:`STALL_RETRY_S` passed (then one call goes, alone, and the wait starts
  again if it stalls too).
  Before, new calls went on being sent (``max_calls_in_flight`` per call deadline),
  so a peer cut off for a minute found a few hundred stale calls queued for it after
  the heal and ran them all before the first useful one (docs/operations.md has
  the measurement).
* Every peer of the configuration gets a call at least every :data:`WARM_EVERY_S`
  (:meth:`Transport.warm`: an empty ``deliver`` where nothing else went), so Ray holds
  an established connection to each before any cut. A first call made *during* a cut
  needs a new connection, and gRPC retries a failed connection with a backoff that grows
  to two minutes (Ray has no setting for it on worker channels): after a 300 s cut a
  replica waited 10-30 s past the heal for the next attempt. An established
  connection instead moves again within TCP's (capped) retransmission backoff. Only
  leaders call followers on their own (answers ride return values), and Ray closes a
  connection idle for 30 min, so without this a follower that became leader during a
  cut met exactly that case.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ray
import ray.exceptions

from ..raft.messages import Message
from .faults import FaultPlan, LinkFaults
from ..replica.options import ReplicaOptions
from ..protocol import NAMESPACE

REPLY_POLL_S = 0.0005
"""How soon the loop looks again for finished calls while one sent less than
:data:`REPLY_WINDOW_S` ago is in flight: a call's return value carries the peer's answers (an
acknowledgement the leader is waiting for), which come within a few milliseconds."""
REPLY_WINDOW_S = 0.05
SLOW_REPLY_POLL_S = 0.01
"""The same for older calls (a peer that is slow, partitioned or dead: not worth a core)."""
WARM_EVERY_S = 10.0
"""How often at least each peer gets a call (see the module docstring)."""
STALL_RETRY_S = 10.0
"""How long a stalled peer gets no new call: bounds how many calls queue behind a dead
connection (one per this many seconds), in case Ray never ends the stalled ones."""


class ReplySlot:
    """The messages the receiver of one ``deliver`` call has for its sender, handed back as
    the call's return value. The loop fills it (:meth:`take`) while it handles the batch and
    releases it at the end of that turn; the actor thread that runs the call waits for it
    (:meth:`wait`) and then closes it: a message the loop offers after that is refused and
    goes in a call of its own, so none is lost."""

    def __init__(self, peer: int) -> None:
        self.peer = peer
        self._messages: list[Message] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._closed = False

    def take(self, batch: list[Message]) -> bool:
        """Carry ``batch`` back to the sender; False once the call has returned."""
        with self._lock:
            if self._closed:
                return False
            self._messages.extend(batch)
            return True

    def release(self) -> None:
        self._released.set()

    def wait(self, timeout_s: float) -> tuple[Message, ...]:
        """The messages taken, once released or after ``timeout_s``; closes the slot."""
        self._released.wait(timeout_s)
        with self._lock:
            self._closed = True
            return tuple(self._messages)


@dataclass
class _Peer:
    name: str
    handle: object | None = None
    lookup_after: float = 0.0
    """After a failed name lookup, the next one waits until then (lookups cost a GCS round trip)."""
    in_flight: dict[int, tuple[float, object, int]] = field(default_factory=dict)
    """Call id -> (deadline in monotonic seconds, the call's ObjectRef, messages it carries)."""
    backlog: list[Message] = field(default_factory=list)
    stalled: dict[int, object] = field(default_factory=dict)
    """Call id -> ObjectRef of calls given up on after their deadline that Ray still holds."""
    stalled_until: float = 0.0
    """While calls are stalled, no new call before then (:data:`STALL_RETRY_S`)."""
    last_call: float = 0.0
    """When the last call to this peer was sent (monotonic seconds)."""


class Transport:
    """Per-peer batching and pipelining of ``deliver`` calls (see the module docstring)."""

    def __init__(self, me: int, name_of: Callable[[int], str], options: ReplicaOptions,
                 post: Callable[[Callable[[], None]], None]) -> None:
        """``name_of(pid)`` is peer ``pid``'s actor name (peers are known on demand: whoever the
        Raft configuration names); ``post(fn)`` runs ``fn`` later on the loop's thread."""
        self.me = me
        self.name_of = name_of
        self.options = options
        self.post = post
        self.peers: dict[int, _Peer] = {}
        self.unreachable: set[int] = set()
        self.faults: LinkFaults | None = None
        self._delayed: list[tuple[float, int, int, list[Message]]] = []
        self._ids = itertools.count(1)
        self._probes: dict[int, tuple[float, Callable[[str], None]]] = {}
        self.calls = 0
        self.lost = 0
        self.replied = 0
        """Messages that went back as the return value of the peer's call."""
        self.warmed = 0
        """Empty calls sent to keep a connection to a peer (:meth:`warm`)."""
        self._open: dict[int, ReplySlot] = {}
        """Peer -> the slot of its call whose batch this loop turn handles."""
        self._replies: list[Message] = []
        """Messages peers returned from our calls, for the engine (:meth:`take_replies`)."""

    # -- configuration -----------------------------------------------------------
    def _peer(self, pid: int) -> _Peer:
        peer = self.peers.get(pid)
        if peer is None:
            peer = self.peers[pid] = _Peer(self.name_of(pid))
        return peer

    def set_faults(self, plan: FaultPlan | None, seed: int = 0) -> None:
        self.faults = LinkFaults(self.me, plan, random.Random(seed)) if plan and plan.links else None

    # -- sending -------------------------------------------------------------------
    def send(self, messages: tuple[Message, ...] | list[Message]) -> None:
        by_peer: dict[int, list[Message]] = {}
        for m in messages:
            by_peer.setdefault(m.to, []).append(m)
        for pid, batch in by_peer.items():
            self._route(pid, batch)

    def _route(self, pid: int, batch: list[Message]) -> None:
        if pid == self.me or pid < 1:
            self.lost += len(batch)
            return
        self._peer(pid)
        slot = self._open.get(pid)
        if slot is not None and self.faults is None and slot.take(batch):
            self.replied += len(batch)
            return
        if self.faults is not None:
            delay = self.faults.verdict(pid)
            if delay is None:
                self.lost += len(batch)
                return
            if delay > 0:
                heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._ids), pid, batch))
                return
        self._enqueue(pid, batch)

    def _enqueue(self, pid: int, batch: list[Message]) -> None:
        peer = self.peers[pid]
        room = self.options.max_backlog_msgs - len(peer.backlog)
        if room < len(batch):
            self.lost += len(batch) - max(room, 0)
            batch = batch[: max(room, 0)]
        peer.backlog.extend(batch)
        self._pump(pid)

    def _pump(self, pid: int) -> None:
        peer = self.peers[pid]
        if not peer.backlog or len(peer.in_flight) >= self.options.max_calls_in_flight:
            return
        if peer.stalled and (peer.in_flight or time.monotonic() < peer.stalled_until):
            self.lost += len(peer.backlog)  # it would only queue behind the stalled calls
            peer.backlog = []
            return
        batch, peer.backlog = tuple(peer.backlog), []
        handle = self._handle(peer)
        if handle is None:
            self._lose(pid, len(batch))
            return
        call_id = next(self._ids)
        try:
            ref = handle.deliver.remote(batch)
        except Exception:  # noqa: BLE001 -- any submission failure is a lost batch
            self._lose(pid, len(batch))
            return
        self._sent(peer, call_id, ref, len(batch))

    def _sent(self, peer: _Peer, call_id: int, ref, size: int) -> None:
        self.calls += 1
        peer.last_call = time.monotonic()
        peer.in_flight[call_id] = (peer.last_call + self.options.call_deadline_s, ref, size)

    def warm(self, pids, now: float) -> None:
        """An empty ``deliver`` to each peer among ``pids`` that got no call for
        :data:`WARM_EVERY_S` and has none in flight, stalled or waiting (see the module docstring)."""
        for pid in pids:
            if pid == self.me or pid < 1:
                continue
            peer = self._peer(pid)
            if peer.in_flight or peer.stalled or peer.backlog or now - peer.last_call < WARM_EVERY_S:
                continue
            handle = self._handle(peer)
            if handle is None:
                continue
            try:
                ref = handle.deliver.remote(())
            except Exception:  # noqa: BLE001 -- a failed submission: the next turn tries again
                continue
            self.warmed += 1
            self._sent(peer, next(self._ids), ref, 0)

    # -- replies -------------------------------------------------------------------
    def open_reply(self, slot: ReplySlot) -> None:
        """This turn handles ``slot.peer``'s batch: what it has for that peer goes in ``slot``."""
        previous = self._open.get(slot.peer)
        if previous is not None:
            previous.release()
        self._open[slot.peer] = slot

    def release_replies(self) -> None:
        """End of a turn: the open slots' calls return what they carry."""
        for slot in self._open.values():
            slot.release()
        self._open.clear()

    def take_replies(self) -> list[Message]:
        """The messages peers returned from our calls since the last time (for the engine)."""
        replies, self._replies = self._replies, []
        return replies

    def handle_of(self, pid: int):
        """The actor handle of peer ``pid``, or None if it cannot be looked up now."""
        return None if pid == self.me else self._handle(self._peer(pid))

    def probe(self, pid: int, on_fail: Callable[[str], None]) -> None:
        """Ping peer ``pid``; ``on_fail(reason)`` runs on the loop if it fails or misses its deadline."""
        handle = self.handle_of(pid)
        if handle is None:
            on_fail(f"peer {pid} cannot be looked up")
            return
        call_id = next(self._ids)
        try:
            ref = handle.ping.remote()
        except Exception as e:  # noqa: BLE001 -- a failed submission is a failed probe
            on_fail(f"ping not sent: {e!r}")
            return
        self._probes[call_id] = (time.monotonic() + self.options.call_deadline_s, on_fail)
        ref.future().add_done_callback(lambda fut: self.post(lambda: self._probe_done(call_id, fut)))

    def _probe_done(self, call_id: int, fut) -> None:
        entry = self._probes.pop(call_id, None)
        if entry is not None and fut.exception() is not None:
            entry[1](f"ping failed: {type(fut.exception()).__name__}")

    def _handle(self, peer: _Peer):
        if peer.handle is None and time.monotonic() >= peer.lookup_after:
            try:
                peer.handle = ray.get_actor(peer.name, namespace=NAMESPACE)
            except Exception:  # noqa: BLE001 -- not created yet, gone, or GCS trouble: try later
                peer.lookup_after = time.monotonic() + 1.0
        return peer.handle

    def _reap(self) -> None:
        """Retire the calls that finished (one ``ray.wait``), stalled ones included; failed ones
        are lost batches."""
        owner = {ref: (pid, cid) for pid, peer in self.peers.items()
                 for cid, ref in [*((c, r) for c, (_, r, _) in peer.in_flight.items()), *peer.stalled.items()]}
        if not owner:
            return
        finished = _finished(list(owner))
        if not finished:
            return
        values, errors = _call_results(finished)
        for ref in finished:
            pid, cid = owner[ref]
            self._done(pid, cid, errors.get(ref))
            self._replies.extend(values.get(ref) or ())

    def _done(self, pid: int, call_id: int, error: BaseException | None) -> None:
        peer = self.peers[pid]
        size = peer.in_flight.pop(call_id)[2] if call_id in peer.in_flight else 0
        if peer.stalled.pop(call_id, None) is not None:
            peer.stalled.clear()  # the connection moves again: the rest follow in order
        if error is not None:
            if isinstance(error, ray.exceptions.ActorDiedError):
                peer.handle = None  # the name may belong to a new actor now: look it up again
            self._lose(pid, size)
        self._pump(pid)

    def _lose(self, pid: int, size: int) -> None:
        self.lost += size
        self.unreachable.add(pid)

    # -- time ----------------------------------------------------------------------
    def poll(self, now: float) -> set[int]:
        """Release due delayed batches, expire overdue calls; returns peers found unreachable since last poll."""
        while self._delayed and self._delayed[0][0] <= now:
            _, _, pid, batch = heapq.heappop(self._delayed)
            self._enqueue(pid, batch)
        self._reap()
        for pid, peer in self.peers.items():
            overdue = [cid for cid, (deadline, _, _) in peer.in_flight.items() if deadline <= now]
            for cid in overdue:
                peer.stalled[cid] = peer.in_flight.pop(cid)[1]
                peer.stalled_until = now + STALL_RETRY_S
                self._lose(pid, 0)
            if overdue:
                self._pump(pid)
        for cid in [cid for cid, (deadline, _) in self._probes.items() if deadline <= now]:
            self._probes.pop(cid)[1]("ping missed its deadline")
        found, self.unreachable = self.unreachable, set()
        return found

    def seconds_to_next_event(self, now: float) -> float | None:
        """How long the loop may sleep before :meth:`poll` has work: a delayed batch falls due,
        or a call is in flight (its reply may carry answers: :data:`REPLY_POLL_S`, or
        :data:`SLOW_REPLY_POLL_S` once every call in flight is older than :data:`REPLY_WINDOW_S`);
        None: no limit."""
        waits = [max(0.0, self._delayed[0][0] - now)] if self._delayed else []
        recent = now + self.options.call_deadline_s - REPLY_WINDOW_S  # deadline of a call sent REPLY_WINDOW_S ago
        deadlines = [deadline for peer in self.peers.values() for deadline, _, _ in peer.in_flight.values()]
        if deadlines:
            waits.append(REPLY_POLL_S if max(deadlines) > recent else SLOW_REPLY_POLL_S)
        if any(peer.stalled for peer in self.peers.values()):
            waits.append(SLOW_REPLY_POLL_S)
        return min(waits) if waits else None


def _finished(refs: list) -> list:
    """The calls among ``refs`` that finished, without waiting."""
    return ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)[0]


def _call_results(refs: list) -> tuple[dict, dict]:
    """``(return value of each call that succeeded, error of each that failed)`` of finished
    calls (usually no error: one ``ray.get`` for all)."""
    try:
        return dict(zip(refs, ray.get(refs, timeout=0))), {}
    except Exception:  # noqa: BLE001 -- find which ones failed
        pass
    values, errors = {}, {}
    for ref in refs:
        try:
            values[ref] = ray.get(ref, timeout=0)
        except Exception as e:  # noqa: BLE001 -- RayActorError, ActorUnavailableError, ...
            errors[ref] = e
    return values, errors
