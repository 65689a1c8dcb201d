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

from collections.abc import Iterable, Sequence

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
    RangeChange,
    RegisterSession,
    Request,
    Result,
    SessionId,
)
from .limits import KVLimits, validate_command
from .ranges import DRIVER_KEY, RANGE_KEY, RangeAction, RangeConflict, RangeState, decode_driver, encode_driver, next_state
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
        return self.apply_run([(index, data)], backend)[0]

    def apply_run(self, entries: Sequence[tuple[int, bytes]], backend: KVBackend) -> list[bytes]:
        """Apply ``(log index, entry bytes)`` pairs in order; their encoded results.

        Same results and same final backend as calling :meth:`apply` on each in
        turn, but a session used by several requests of the run is decoded once
        and written once (see :class:`SessionBuffer`): with many requests in
        flight per session, its cached answers make each decode and encode long.
        """
        sessions = SessionBuffer(backend)
        results = [self._apply_entry(index, data, sessions) for index, data in entries]
        sessions.flush()
        return results

    def _apply_entry(self, index: int, data: bytes, backend: "SessionBuffer") -> bytes:
        _check_index(index)
        try:
            cmd = decode_command(data)
            validate_command(cmd, self.limits)
        except ValueError as exc:  # InvalidRequestError is a ValueError too
            return encode_result(Failed(ErrorCode.BAD_COMMAND, str(exc)))
        return encode_result(self._execute(index, cmd, backend))

    def execute(self, index: int, cmd: Command, backend: KVBackend) -> Result:
        """Apply an already decoded *and validated* command (see :meth:`apply`)."""
        sessions = SessionBuffer(backend)
        result = self._execute(index, cmd, sessions)
        sessions.flush()
        return result

    def _execute(self, index: int, cmd: Command, backend: "SessionBuffer") -> Result:
        """:meth:`execute` inside a run: sessions go through the run's buffer (flushed by the caller)."""
        _check_index(index)
        match cmd:
            case Put() | Delete() | Cas() | Batch():
                refusal = wrong_shard(cmd, backend.range_state())
                return refusal or apply_op(cmd, backend)
            case RegisterSession(ts_ms):
                return self._register(index, ts_ms, backend)
            case Request():
                return self._request(cmd, backend)
            case ExpireSessions(cutoff_ms):
                return expire_sessions(cutoff_ms, backend)
            case RangeChange():
                return change_range(cmd, backend)
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

    def _request(self, req: Request, sessions: "SessionBuffer") -> Result:
        """Exactly-once application of ``req.op`` (Raft thesis §6.3).

        The acknowledgement and the activity time are recorded first: they are
        facts whatever happens to this request, and since ``acked_seq < seq``
        they cannot make it stale or drop its cached answer (they may free room
        in the cache). Then: cached -> the cached answer, not applied again;
        ``seq <= acked`` -> STALE_REQUEST; cache full -> TOO_MANY_PENDING;
        else apply ``req.op`` and cache its encoded result under ``seq``.
        A session whose blob did not change is not rewritten.
        """
        before = sessions.session(req.session)
        if before is None:
            detail = f"session {req.session} is unknown (expired, evicted or never registered)"
            return Failed(ErrorCode.SESSION_EXPIRED, detail)
        session = before.acknowledge(req.acked_seq, req.ts_ms)
        result, session = self._answer(req, session, sessions)
        if session != before:
            sessions.store_session(req.session, session)
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
        result = wrong_shard(req.op, backend.range_state()) or apply_op(req.op, backend)
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


def op_keys(op: Op) -> list[bytes]:
    """Every key ``op`` touches."""
    if isinstance(op, Batch):
        return [item.key for item in op.ops]
    return [op.key]


def wrong_shard(op: Op, state: RangeState | None) -> Failed | None:
    """``Failed(WRONG_SHARD)`` if a key of ``op`` is not served under ``state`` (None: every key is)."""
    if state is None:
        return None
    for key in op_keys(op):
        if not state.serves(key):
            return Failed(ErrorCode.WRONG_SHARD, f"key {key[:40]!r} is not served here: {state.describe()}")
    return None


def change_range(cmd: RangeChange, backend: "SessionBuffer") -> Result:
    """Apply a resharding step (see :mod:`raykv.kv.ranges`): idempotent, all or nothing. A step
    from a placement-driver epoch older than one this group has seen changes nothing
    (``STALE_DRIVER``); an accepted one records its epoch (:func:`note_driver`)."""
    stale = stale_driver(cmd.epoch, backend)
    if stale is not None:
        return Failed(ErrorCode.STALE_DRIVER, f"{cmd.action.name} {stale}")
    state = backend.range_state()
    try:
        after = next_state(state, cmd.action, cmd.lo, cmd.hi, cmd.gen)
    except RangeConflict as exc:
        return Failed(ErrorCode.RANGE_CONFLICT, str(exc))
    note_driver(cmd.epoch, backend)
    ingesting = state is not None and state.incoming == (cmd.lo, cmd.hi)
    if cmd.action is RangeAction.INGEST_ROWS and ingesting:
        for key, value in cmd.rows:
            backend.put(key, value)
    if cmd.action is RangeAction.INGEST_DELETE and ingesting:
        for key, _ in cmd.rows:
            backend.delete(key)
    if cmd.action is RangeAction.INGEST_ABORT and ingesting:
        backend.delete_range(cmd.lo, cmd.hi)  # what the abandoned ingest had copied
    if cmd.action is RangeAction.DROP and state is not None and state.fence == (cmd.lo, cmd.hi):
        backend.delete_range(cmd.lo, cmd.hi)
    if after != state:
        backend.set_range_state(after)
    return Ok()


def stale_driver(epoch: int, backend: KVBackend) -> str | None:
    """Why a placement change from driver ``epoch`` is refused here (None: it is not): a group
    follows the newest epoch that changed its range or its membership. A superseded driver -- a
    router cut off from Ray's control plane while its successor runs -- must change nothing."""
    newest = decode_driver(backend.get(DRIVER_KEY))
    return None if epoch >= newest else f"from placement driver epoch {epoch}: this group follows epoch {newest}"


def note_driver(epoch: int, backend: KVBackend) -> None:
    """Record that driver ``epoch`` changed this group (the epoch only ever grows)."""
    if epoch > decode_driver(backend.get(DRIVER_KEY)):
        backend.put(DRIVER_KEY, encode_driver(epoch))


def expire_sessions(cutoff_ms: int, backend: KVBackend) -> Result:
    """Delete every session with ``last_active_ms < cutoff_ms``."""
    doomed = [sid for sid, blob in backend.sessions() if Session.decode_last_active(blob) < cutoff_ms]
    for sid in doomed:
        backend.delete_session(sid)
    return Ok()


def least_recently_active(entries: list[tuple[int, bytes]]) -> list[tuple[int, int]]:
    """``(last_active_ms, sid)`` of every session, least recently active first (ties: lower sid)."""
    return sorted((Session.decode_last_active(blob), sid) for sid, blob in entries)


def read_range_state(backend: KVBackend) -> RangeState | None:
    """The range state stored in ``backend`` (None if the group never had one: it serves every key)."""
    return RangeState.decode_stored(backend.get(RANGE_KEY))


def _check_index(index: int) -> None:
    """A host bug, not bad entry data: raise rather than answer."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 1:
        raise ValueError(f"log index must be an int >= 1, got {index!r}")


class SessionBuffer:
    """A :class:`KVBackend` over another that holds decoded sessions until :meth:`flush`.

    Within one run of entries (one transaction), :meth:`session` decodes a
    session at most once and :meth:`store_session` keeps the new value in
    memory; :meth:`flush` writes each changed session once. Every other call
    sees the same state as if each store had been written through: data calls
    pass straight on, and the session-table calls (``get_session``,
    ``put_session``, ``delete_session``, ``sessions``) flush first and forget
    what they may change. Flush before the transaction commits.
    """

    __slots__ = ("backend", "_decoded", "_dirty", "_range")

    def __init__(self, backend: KVBackend) -> None:
        self.backend = backend
        self._decoded: dict[int, Session | None] = {}
        self._dirty: set[int] = set()
        self._range: tuple[RangeState | None] | None = None

    def range_state(self) -> RangeState | None:
        """The group's :class:`~raykv.kv.ranges.RangeState` (None: it serves every key), read once per run."""
        if self._range is None:
            self._range = (read_range_state(self.backend),)
        return self._range[0]

    def set_range_state(self, state: RangeState) -> None:
        self.backend.put(RANGE_KEY, state.encode())
        self._range = (state,)

    def session(self, sid: int) -> Session | None:
        """Session ``sid`` as it stands in this run (None if it does not exist)."""
        if sid not in self._decoded:
            blob = self.backend.get_session(sid)
            self._decoded[sid] = None if blob is None else Session.decode(blob)
        return self._decoded[sid]

    def store_session(self, sid: int, session: Session) -> None:
        """Set session ``sid``; written at the next :meth:`flush`."""
        self._decoded[sid] = session
        self._dirty.add(sid)

    def flush(self) -> None:
        """Write every session changed since the last flush (ascending id), once each."""
        for sid in sorted(self._dirty):
            self.backend.put_session(sid, self._decoded[sid].encode())
        self._dirty.clear()

    def _forget(self, sid: int | None = None) -> None:
        self.flush()
        if sid is None:
            self._decoded.clear()
        else:
            self._decoded.pop(sid, None)

    # -- KVBackend --------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        return self.backend.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.backend.put(key, value)

    def delete(self, key: bytes) -> bool:
        return self.backend.delete(key)

    def delete_range(self, lo: bytes, hi: bytes | None) -> int:
        return self.backend.delete_range(lo, hi)

    def get_session(self, sid: int) -> bytes | None:
        self.flush()
        return self.backend.get_session(sid)

    def put_session(self, sid: int, blob: bytes) -> None:
        self._forget(sid)
        self.backend.put_session(sid, blob)

    def delete_session(self, sid: int) -> None:
        self._forget(sid)
        self.backend.delete_session(sid)

    def sessions(self) -> Iterable[tuple[int, bytes]]:
        self._forget()
        return self.backend.sessions()
