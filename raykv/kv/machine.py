"""The deterministic kv state machine every replica of a shard runs over its log.

:meth:`KVStateMachine.apply` maps ``(log index, entry bytes, backend)`` to the
encoded result, reading and writing only through the backend: the machine keeps
no state of its own besides its :class:`~raykv.kv.limits.KVLimits`. So replicas
that start from equal backends and apply the same entries end with equal
backends and give equal answers, and a host that commits one entry's writes
together with its applied index (one LMDB transaction) replays idempotently.

Requirements on the host:

* apply committed entries in log order, each exactly once per backend state
  (the applied index must commit with the entry's writes);
* pass the entry's real log index: ``RegisterSession`` uses it as the new id;
* use the same :class:`KVLimits` on every replica of a group (apply-time
  validation and the session bounds decide outcomes);
* on an exception from the backend, abort the transaction: the entry may be
  half applied. Bad *entry bytes* never raise; they yield ``BAD_COMMAND``.
"""

from __future__ import annotations

from .backend import KVBackend
from .codec import decode_command, decode_result, encode_result
from .commands import (
    Batch,
    Cas,
    Command,
    Delete,
    ErrorCode,
    ExpireSessions,
    Failed,
    Flag,
    Ok,
    Op,
    Put,
    RegisterSession,
    Request,
    Result,
    SessionId,
)
from .limits import KVLimits, validate_command
from .session import Session
from .wire import assert_never


class KVStateMachine:
    """Applies kv commands to a :class:`~raykv.kv.backend.KVBackend`."""

    __slots__ = ("limits",)

    def __init__(self, limits: KVLimits | None = None) -> None:
        self.limits = limits if limits is not None else KVLimits()

    def apply(self, index: int, data: bytes, backend: KVBackend) -> bytes:
        """Apply the entry at log ``index`` and return its encoded result.

        Malformed bytes or a command over the limits give ``Failed(BAD_COMMAND)``
        and change nothing. ``index`` must be the entry's log index (``>= 1``).
        """
        _check_index(index)
        try:
            cmd = decode_command(data)
            validate_command(cmd, self.limits)
        except ValueError as exc:  # InvalidRequestError is a ValueError too
            return encode_result(Failed(ErrorCode.BAD_COMMAND, str(exc)))
        return encode_result(self.execute(index, cmd, backend))

    def execute(self, index: int, cmd: Command, backend: KVBackend) -> Result:
        """Apply an already decoded *and validated* command (see :meth:`apply`)."""
        _check_index(index)
        match cmd:
            case Put() | Delete() | Cas() | Batch():
                return apply_op(cmd, backend)
            case RegisterSession(ts_ms):
                return self._register(index, ts_ms, backend)
            case Request():
                return self._request(cmd, backend)
            case ExpireSessions(cutoff_ms):
                return expire_sessions(cutoff_ms, backend)
            case _:
                assert_never(cmd)

    def _register(self, index: int, ts_ms: int, backend: KVBackend) -> Result:
        """New session ``index``; first evict the least recently active ones if the table is full."""
        entries = list(backend.sessions())
        excess = len(entries) - self.limits.max_sessions + 1
        if excess > 0:
            for _, sid in least_recently_active(entries)[:excess]:
                backend.delete_session(sid)
        backend.put_session(index, Session(last_active_ms=ts_ms).encode())
        return SessionId(index)

    def _request(self, req: Request, backend: KVBackend) -> Result:
        """Exactly-once application of ``req.op`` (Raft thesis §6.3).

        The acknowledgement and the activity time are recorded first: they are
        facts whatever happens to this request, and since ``acked_seq < seq``
        they cannot make it stale or drop its cached answer (they may free room
        in the cache). Then: cached -> the cached answer, not applied again;
        ``seq <= acked`` -> STALE_REQUEST; cache full -> TOO_MANY_PENDING;
        else apply ``req.op`` and cache its encoded result under ``seq``.
        A session whose blob did not change is not rewritten.
        """
        blob = backend.get_session(req.session)
        if blob is None:
            detail = f"session {req.session} is unknown (expired, evicted or never registered)"
            return Failed(ErrorCode.SESSION_EXPIRED, detail)
        before = Session.decode(blob)
        session = before.acknowledge(req.acked_seq, req.ts_ms)
        result, session = self._answer(req, session, backend)
        if session != before:
            backend.put_session(req.session, session.encode())
        return result

    def _answer(self, req: Request, session: Session, backend: KVBackend) -> tuple[Result, Session]:
        cached = session.lookup(req.seq)
        if cached is not None:
            return decode_result(cached), session
        if req.seq <= session.acked_seq:
            detail = f"seq {req.seq} of session {req.session} is at or below acked_seq {session.acked_seq}"
            return Failed(ErrorCode.STALE_REQUEST, detail), session
        if session.pending() >= self.limits.max_pending_per_session:
            detail = (
                f"session {req.session} has {session.pending()} unacknowledged results "
                f"(max_pending_per_session={self.limits.max_pending_per_session})"
            )
            return Failed(ErrorCode.TOO_MANY_PENDING, detail), session
        result = apply_op(req.op, backend)
        return result, session.with_result(req.seq, encode_result(result))


def apply_op(op: Op, backend: KVBackend) -> Result:
    """Apply one validated data operation. A batch's ops were all validated before this."""
    match op:
        case Put(key, value):
            backend.put(key, value)
            return Ok()
        case Delete(key):
            return Flag(backend.delete(key))
        case Cas(key, expected, new):
            if backend.get(key) != expected:
                return Flag(False)
            backend.put(key, new)
            return Flag(True)
        case Batch(ops):
            for item in ops:
                apply_op(item, backend)
            return Ok()
        case _:
            assert_never(op)


def expire_sessions(cutoff_ms: int, backend: KVBackend) -> Result:
    """Delete every session with ``last_active_ms < cutoff_ms``."""
    doomed = [sid for sid, blob in backend.sessions() if Session.decode_last_active(blob) < cutoff_ms]
    for sid in doomed:
        backend.delete_session(sid)
    return Ok()


def least_recently_active(entries: list[tuple[int, bytes]]) -> list[tuple[int, int]]:
    """``(last_active_ms, sid)`` of every session, least recently active first (ties: lower sid)."""
    return sorted((Session.decode_last_active(blob), sid) for sid, blob in entries)


def _check_index(index: int) -> None:
    """A host bug, not bad entry data: raise rather than answer."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 1:
        raise ValueError(f"log index must be an int >= 1, got {index!r}")
