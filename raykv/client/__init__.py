"""The raykv clients: :class:`Client` for a whole store, :class:`ShardClient` for one shard group.

* :class:`Client` (:mod:`raykv.client.store`) is what applications use
  (``raykv.start``/``raykv.connect`` return one): it reads the store's shard map
  from its router and routes every key to its shard; it adds range scans
  (``scan``, ``scan_arrow``: :mod:`raykv.client.scan`), batches (``put_batch``,
  ``get_batch``, ``delete_batch``: atomic per shard, parallel across shards,
  :mod:`raykv.client.batch`) and ``status()`` (:mod:`raykv.client.status`).
* :class:`ShardClient` (:mod:`raykv.client.shard`) talks to the replicas of one
  shard group; the store client holds one per shard, and the store's bootstrap
  uses one for the meta group. The rest of this docstring describes it: the
  single-key semantics and the error contract below hold for both clients.

ShardClient API
---------------
::

    with ShardClient(store="default", shard=0, replicas=(1, 2, 3), timeout_s=10.0) as kv:
        kv.put("user:1", {"name": "Ada"})          # -> None
        kv.get("user:1")                          # -> {"name": "Ada"}; missing -> default (None)
        kv.get("user:1", consistency="stale")     # "linearizable" (default) | "lease" | "stale"
        kv.cas("user:1", {"name": "Ada"}, {"name": "Ada L."})  # -> True iff swapped
        kv.cas("new-key", None, 1)                # expected=None: the key must be absent
        kv.delete("user:1")                       # -> True iff the key existed
        await kv.aput(...); await kv.aget(...); await kv.adelete(...); await kv.acas(...)

Keys are ``str`` or bytes-like, values anything picklable except ``None``; see
:mod:`raykv.userdata` for the encoding, the size limits and why ``cas``
compares serialized values byte for byte. Arguments are validated (and values
serialized) in the calling thread before anything is sent. Ray must already be
initialized (``ray.init(...)``) in the process that creates the client; the
replicas are the named actors :func:`~raykv.protocol.replica_actor_name`
in namespace :data:`~raykv.protocol.NAMESPACE`. ``close()`` (or leaving
the ``with`` block) stops the client's threads; requests still pending then fail.

Consistency levels: ``"linearizable"`` reads go to the leader, which confirms
its leadership (ReadIndex); ``"lease"`` reads are served by the leader under
its lease (falling back to ReadIndex); ``"stale"`` reads are spread round-robin
over all replicas and may return an older value (never one that was not
written). Writes are always linearizable and go to the leader.

Error contract
--------------
Every error is a :class:`~raykv.errors.RayKVError`:

* :class:`~raykv.errors.InvalidRequestError` (and its
  :class:`~raykv.errors.KeyTooLargeError` / :class:`~raykv.errors.ValueTooLargeError`)
  -- a bad key, value or argument, raised before anything is sent (or a
  replica's refusal of a malformed request). Definite.
* :class:`~raykv.errors.UnavailableError` -- the deadline (``timeout_s`` per
  request) passed and the request was never handed to a replica that might
  have applied it (no leader found, all replicas unreachable, every attempt
  refused). Definite. Reads always fail with this on a deadline: they have no effect.
* :class:`~raykv.errors.SessionExpiredError` -- the client's session expired
  before a write's first delivery and no new session could be registered
  before the deadline. Definite.
* :class:`~raykv.errors.OperationTimeoutError` -- a *write* was handed to a
  replica (or an attempt's reply was lost, or the session expired while the
  write was being retried) and no outcome arrived before the deadline. The
  write **may or may not have applied**. Indeterminate.
* :class:`~raykv.errors.DiskFullError` -- until the deadline every leader
  that was asked had less free disk than its reserve and refused the write
  before appending it (a full leader hands leadership to a replica with room,
  so this means the group has none). Definite.
* :class:`~raykv.errors.ShutdownError` -- the client is closed. Definite for
  requests never sent; a write in flight at ``close()`` gets
  ``OperationTimeoutError`` instead.
* Machine failures of a write are raised as ``Failed.to_error()`` (see
  :class:`~raykv.kv.commands.Failed`).

A caller that sees an :class:`~raykv.errors.IndeterminateError` must read back
to find out. ``NotLeaderError``, ``LeadershipLostError``,
``OperationTimeoutError``, ``ProposalDroppedError`` and ``DiskFullError`` answered by a replica
are never raised as such: the client retries them until the deadline (safe for
writes thanks to sessions, below) and then raises one of the errors above.

Exactly-once writes (sessions)
------------------------------
Every write carries ``(session, seq)`` (Raft thesis §6.3): the client
registers a session at the leader on its first write, numbers writes from 1
and reuses a write's ``seq`` on every retry, so the replicated state machine
applies it at most once and answers a retry with the cached result. Each write
also carries ``acked_seq``: the highest seq such that every seq at or below it
is finished (answered, or abandoned by the client after its deadline or a
cancellation; an abandoned seq is never retried), so replicas can drop those
cached answers. At most ``limits.max_pending_per_session`` seqs above
``acked_seq`` are outstanding (later writes wait in the client), so the
session's cache of answers never overflows. If the machine answers ``SESSION_EXPIRED`` to a write's only
attempt, the client registers a new session and resends the write under it
transparently; if the write had been retried (an earlier attempt may have
applied), it raises ``OperationTimeoutError``.

Leader discovery and retries
----------------------------
The client starts at any replica and follows ``NotLeaderError.leader_id``
hints (at most one hop per replica in a row, then it backs off); a refusal
without a hint moves on to the next replica after a backoff (20 ms doubling to
100 ms, with jitter: ``BACKOFF_INITIAL_S``, ``BACKOFF_MAX_S``); a replica that
names itself (a leader not ready to serve) is retried after a backoff. A
transport failure (any ``ray.exceptions.RayError``: actor died, unavailable,
task error...) or a call without a reply within its deadline (a lost message)
marks the replica suspect for a second and retries elsewhere. The deadline is
``call_timeout_s`` (default 0.5 s: a dead or frozen leader is given up on
quickly), doubled for each earlier timed-out call of the same request, up to
16x (a slow but healthy replica still gets to answer); writes keep their seq. ``ProposalDroppedError``
and ``TOO_MANY_PENDING`` are retried after a backoff.

Threading model and coalescing
------------------------------
A client may be shared by any number of threads and asyncio tasks. The
``a*`` methods never block the event loop: they enqueue the request and await
an ``asyncio.wrap_future`` of a ``concurrent.futures.Future``; cancelling the
awaiting task abandons the request (a write may still apply). The sync methods
block the calling thread on the same future. Do not call the sync methods from
an event loop thread.

Behind the API every request is an event-driven state machine (no thread per
request, no polling): one *lane* per replica holds queued requests and has one
dispatcher thread that takes **everything queued** for a kind -- all writes
(``submit(list[Write])``), or all reads of one consistency level
(``read(list[key], level)``) -- and sends it as **one actor call**, with at most
``max_calls_in_flight`` (default 2) calls outstanding per lane. So requests
that arrive while calls are in flight coalesce into the next call (group
commit). Two beat four at 64 concurrent callers (fewer, fuller calls: every
actor call costs about 0.3 ms of CPU on each side whatever it carries); one was
a little faster still but would make reads wait behind a write call. A scan page is one request of its own kind (``scan:<level>``), one per
call; a batch write (``Batch``) is one write like any other. Replies complete
through ``ObjectRef.future()`` callbacks, deadlines and backoffs through one
timer thread per client. The lanes, timer and routing state are internal
(:class:`~raykv.client.route._ShardRoute` knows replica ids, actor names and
the believed leader).
:meth:`ShardClient.stats` reports calls and items sent per kind (so coalescing is
observable), retries, backoffs, timeouts and errors seen.

Package layout
--------------
:mod:`.store` (:class:`Client`), :mod:`.scan`, :mod:`.batch` and :mod:`.status`
(its scans, batches and status report), :mod:`.shard` (:class:`ShardClient`,
argument checks, result decoding), :mod:`.core`
(``_Core``: request lifecycle, routing, sessions), :mod:`.calls` (sending
calls and handling their replies), :mod:`.lanes` (per-replica queues and the
``_Call`` record), :mod:`.request` (the request records), :mod:`.route`
(``_ShardRoute``, ``_Backoff``, ``_SeqTracker``), :mod:`.timers` and
:mod:`.transport` (``_RayTransport`` and the ``_Transport`` protocol). The API
is :class:`Client`, :class:`ShardClient`, the status classes,
:class:`BatchPartiallyAppliedError` and :data:`CONSISTENCY_LEVELS`; the public
constants and :func:`check_consistency` are re-exported here as before.
"""

from __future__ import annotations

from ..protocol import CONSISTENCY_LEVELS
from .batch import BatchPartiallyAppliedError
from .lanes import CALL_TIMEOUT_S, MAX_CALL_BYTES, MAX_CALLS_IN_FLIGHT, MAX_KEYS_PER_CALL, MAX_WRITES_PER_CALL
from .route import BACKOFF_INITIAL_S, BACKOFF_MAX_S, SUSPECT_S
from .shard import ShardClient, check_consistency
from .status import ReplicaStatus, ShardStatus, StoreStatus
from .store import Client

__all__ = ["BatchPartiallyAppliedError", "CONSISTENCY_LEVELS", "Client", "ReplicaStatus", "ShardClient",
           "ShardStatus", "StoreStatus"]
