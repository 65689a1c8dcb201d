"""What clients say to replicas, as plain picklable data, and the names they meet on Ray (no Ray here).

Shared by the client, the replica engine and the runtime, so none of them imports another
for it. Names: a replica's actor name (:func:`replica_actor_name`), a store's router
(:func:`router_name`), the namespace, the node label pinning replicas (:data:`HOST_LABEL`),
what a store may be called (:func:`check_store_name`).

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

from .errors import InvalidRequestError, RayKVError

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


NAMESPACE = "raykv"
"""The Ray namespace of every raykv actor."""
HOST_LABEL = "raykv-host"
"""The Ray node label naming a host stably (``ray start --labels raykv-host=<name>``): replicas are
pinned by it, and it names the node-local data they reopen after a restart."""


def replica_actor_name(store: str, shard: int, replica: int) -> str:
    """The Ray actor name of a replica (in the ``raykv`` namespace)."""
    return f"raykv:{store}:{shard}:{replica}"


STORE_ENV = "RAYKV_STORE"
"""The environment variable naming the store every CLI command, job and notebook uses unless told otherwise."""


def router_name(store: str) -> str:
    """The detached actor name of store ``store``'s router (namespace ``raykv``)."""
    return f"raykv:{store}:router"


def start_guard_name(store: str) -> str:
    """The name of the actor held while a process starts ``store`` (:mod:`raykv.runtime.startguard`)."""
    return f"raykv-start:{store}"


def check_store_name(name: object) -> str:
    """``name`` if it can name a store (1-100 letters, digits, ``-`` or ``_``), else InvalidRequestError."""
    if not isinstance(name, str) or not name or len(name) > 100 or not name.replace("-", "").replace("_", "").isalnum():
        raise InvalidRequestError(f"a store name must be 1-100 letters, digits, '-' or '_', got {name!r}")
    return name
