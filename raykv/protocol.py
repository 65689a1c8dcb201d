"""What clients say to replicas, as plain picklable data (no Ray here).

A client talks to one replica actor of a shard with these calls (all answer
with values, never by raising, so no exception has to survive Ray's wrapping):

* ``register_session() -> SessionGrant | RayKVError`` -- leader only; proposes
  :class:`~raykv.kv.commands.RegisterSession` and answers once it is applied.
* ``submit(writes: list[Write]) -> list[Outcome]`` -- leader only; proposes all
  writes as one batch (group commit) and answers, in order, with each write's
  encoded :mod:`~raykv.kv.commands` result or the error for that write.
* ``read(keys: list[bytes], consistency: str) -> list[bytes | None] | RayKVError``
  -- ``"linearizable"`` (ReadIndex, leader only), ``"lease"`` (leader lease,
  falls back to ReadIndex), ``"stale"`` (any replica, its applied state).
* ``scan(start: bytes, end: bytes | None, limit: int, consistency: str)
  -> (list[(key, value)], more: bool) | RayKVError`` -- encoded keys in
  ``[start, end)`` in key order, at most ``limit``, at the same consistency
  levels as ``read``; ``more`` says whether the range holds further keys.
* ``status() -> dict`` -- the replica's view (role, term, leader, indices, sizes).

Errors a reply may carry (see :mod:`raykv.errors`): ``NotLeaderError`` (definite;
``leader_id`` is a hint), ``ProposalDroppedError`` (definite),
``InvalidRequestError`` subclasses (definite), ``LeadershipLostError`` and
``OperationTimeoutError`` (indeterminate), ``ShutdownError`` (definite).

Raft messages between replicas travel as ``deliver(batch: tuple[Message, ...])``
one-way calls (see :mod:`raykv.runtime.transport`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import RayKVError

CONSISTENCY_LEVELS = ("linearizable", "lease", "stale")


@dataclass(frozen=True, slots=True)
class Write:
    """One client write in session ``session`` (thesis §6.3): applied at most once per ``seq``.

    ``acked_seq``: every sequence number at or below it has had its answer
    delivered to the caller, so the replicas may forget those answers.

    ``op``: the operation encoded by :func:`raykv.kv.codec.encode_op` (bytes, not an
    :class:`~raykv.kv.commands.Op`: Ray pickles bytes for free, while pickling a 100k-op
    batch of dataclasses cost more than a second). The leader wraps it into the
    ``Request`` entry without decoding it; replicas validate it when they apply it.
    """

    session: int
    seq: int
    acked_seq: int
    op: bytes


@dataclass(frozen=True, slots=True)
class SessionGrant:
    """A registered session: its id is the log index of its registration."""

    session: int


Outcome = bytes | RayKVError
"""An encoded :class:`~raykv.kv.commands.Result`, or the error for that one request."""


def replica_actor_name(store: str, shard: int, replica: int) -> str:
    """The Ray actor name of a replica (in the ``raykv`` namespace)."""
    return f"raykv:{store}:{shard}:{replica}"


NAMESPACE = "raykv"
