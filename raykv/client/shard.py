"""The one-group client :class:`ShardClient`: argument checks, serialization, waiting, result decoding.

See the :mod:`raykv.client` docstring for the API and its error contract. Besides
the user-key API (``put``/``get``/``delete``/``cas``), a :class:`ShardClient`
offers what the store client (:class:`~raykv.client.store.Client`) builds on.
These methods take **encoded** keys (:func:`~raykv.userdata.encode_key`) and
values and return stored bytes; they go through the same lanes, coalescing,
routing and retries as the rest:

* :meth:`ShardClient.write_batch` -- one atomic :class:`~raykv.kv.commands.Batch`
  of puts and deletes, as one exactly-once write (session and seq like any write);
* :meth:`ShardClient.read_many` -- one read per key, queued together so each
  lane sends them as one ``read(keys, level)`` call (split only by the lane's caps);
* :meth:`ShardClient.scan` -- one page of the replica's ``scan`` (the leader for
  ``"linearizable"``/``"lease"``, any replica for ``"stale"``) -> ``(pairs, more)``;
* :meth:`ShardClient.statuses` -- each replica's ``status()`` dict, ``None`` for a
  replica that does not answer (dead, restarting, paused) within the timeout.

Each has an ``a*`` asyncio counterpart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import random
import time
import weakref
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError, InvalidRequestError
from ..kv.commands import Batch, Cas, Delete, Flag, Put, Result
from ..kv.limits import KVLimits, validate_key, validate_op
from ..protocol import CONSISTENCY_LEVELS
from ..userdata import decode_value, encode_key, encode_value
from .core import _Core
from .lanes import CALL_TIMEOUT_S, MAX_CALLS_IN_FLIGHT
from .request import _ReadRequest, _Request, _ScanRequest
from .route import SUSPECT_S, is_int, _ShardRoute
from .transport import _RayTransport, _Transport

_WAIT_GRACE_S = 1.0
"""Sync callers wait this much past the deadline before expiring the request themselves."""


def check_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def check_consistency(consistency: object) -> str:
    """``consistency`` if it is one of :data:`CONSISTENCY_LEVELS`, else :class:`InvalidRequestError`."""
    if not isinstance(consistency, str) or consistency not in CONSISTENCY_LEVELS:
        raise InvalidRequestError(
            f"consistency must be one of {', '.join(map(repr, CONSISTENCY_LEVELS))}, got {consistency!r}"
        )
    return consistency


def _put_result(result: Result) -> None:
    return None


def _flag_result(result: Result) -> bool:
    assert isinstance(result, Flag), result
    return result.value


class ShardClient:
    """A thread-safe, asyncio-friendly client of one shard group (see the module docstring).

    ``store``/``shard`` name the group (its replicas are the actors
    :func:`~raykv.protocol.replica_actor_name`).
    ``replicas`` are the replica ids of the group; ``timeout_s`` bounds each
    request; ``limits`` must equal the replicas' :class:`KVLimits` (key and
    value bounds are checked before sending; ``max_pending_per_session`` sizes
    the window of outstanding write seqs, see :meth:`_Core._bind_session`).
    ``call_timeout_s`` (one actor call's deadline) and ``max_calls_in_flight``
    (per replica) are tuning knobs. Constructor arguments that are out of range
    raise :class:`~raykv.errors.ConfigError`; a process without ``ray.init``
    raises :class:`~raykv.errors.UnavailableError`.
    """

    def __init__(self, store: str = "default", shard: int = 0, replicas: tuple[int, ...] = (1, 2, 3), *,
                 timeout_s: float = 10.0, limits: KVLimits | None = None,
                 call_timeout_s: float = CALL_TIMEOUT_S, max_calls_in_flight: int = MAX_CALLS_IN_FLIGHT) -> None:
        replicas = tuple(replicas) if isinstance(replicas, (list, tuple)) else replicas
        route = _ShardRoute(store, shard, replicas, rng=random.Random(int.from_bytes(os.urandom(8), "big")))
        self._setup(route, None, timeout_s, limits, call_timeout_s, max_calls_in_flight)

    @classmethod
    def _over(cls, transport: _Transport, *, store: str = "default", shard: int = 0,
              replicas: tuple[int, ...] = (1, 2, 3), timeout_s: float = 10.0, limits: KVLimits | None = None,
              call_timeout_s: float = CALL_TIMEOUT_S, max_calls_in_flight: int = MAX_CALLS_IN_FLIGHT,
              rng: random.Random | None = None, suspect_s: float = SUSPECT_S) -> "ShardClient":
        """A client over another transport (tests)."""
        client = cls.__new__(cls)
        route = _ShardRoute(store, shard, replicas, rng=rng, suspect_s=suspect_s)
        client._setup(route, transport, timeout_s, limits, call_timeout_s, max_calls_in_flight, rng)
        return client

    def _setup(self, route: _ShardRoute, transport: _Transport | None, timeout_s: float,
               limits: KVLimits | None, call_timeout_s: float, max_calls_in_flight: int,
               rng: random.Random | None = None) -> None:
        self._timeout_s = check_seconds("timeout_s", timeout_s)
        call_timeout_s = check_seconds("call_timeout_s", call_timeout_s)
        if not is_int(max_calls_in_flight) or max_calls_in_flight < 1:
            raise ConfigError(f"max_calls_in_flight must be an int >= 1, got {max_calls_in_flight!r}")
        if limits is not None and not isinstance(limits, KVLimits):
            raise ConfigError(f"limits must be a KVLimits, got {type(limits).__name__}")
        self._limits = limits if limits is not None else KVLimits()
        self._store, self._shard, self._replicas = route.store, route.shard, route.replica_ids
        self._call_timeout_s = call_timeout_s
        transport = transport if transport is not None else _RayTransport(route)
        self._core = _Core(route, transport, timeout_s=self._timeout_s, call_timeout_s=call_timeout_s,
                           max_calls_in_flight=max_calls_in_flight,
                           window=self._limits.max_pending_per_session, rng=rng)
        self._finalizer = weakref.finalize(self, _Core.close, self._core)
        self._finalizer.atexit = False

    # -- sync API ----------------------------------------------------------------------
    def put(self, key: Any, value: Any) -> None:
        """Set ``key`` to ``value`` (not None)."""
        return _put_result(self._wait(self._core.write(self._put_op(key, value))))

    def get(self, key: Any, default: Any = None, consistency: str = "linearizable") -> Any:
        """The value of ``key``, or ``default`` if it is absent."""
        return self._value(self._wait(self._start_read(key, consistency)), default)

    def delete(self, key: Any) -> bool:
        """Remove ``key``; True iff it existed."""
        return _flag_result(self._wait(self._core.write(self._delete_op(key))))

    def cas(self, key: Any, expected: Any, new: Any) -> bool:
        """Set ``key`` to ``new`` iff its value serializes exactly as ``expected`` (None: absent)."""
        return _flag_result(self._wait(self._core.write(self._cas_op(key, expected, new))))

    # -- asyncio API -------------------------------------------------------------------
    async def aput(self, key: Any, value: Any) -> None:
        """:meth:`put` for asyncio: awaits without blocking the event loop."""
        return _put_result(await self._await(self._core.write(self._put_op(key, value))))

    async def aget(self, key: Any, default: Any = None, consistency: str = "linearizable") -> Any:
        """:meth:`get` for asyncio."""
        return self._value(await self._await(self._start_read(key, consistency)), default)

    async def adelete(self, key: Any) -> bool:
        """:meth:`delete` for asyncio."""
        return _flag_result(await self._await(self._core.write(self._delete_op(key))))

    async def acas(self, key: Any, expected: Any, new: Any) -> bool:
        """:meth:`cas` for asyncio."""
        return _flag_result(await self._await(self._core.write(self._cas_op(key, expected, new))))

    # -- encoded-key API (what the store client builds on) --------------------------------
    def write_batch(self, ops: Sequence[Put | Delete]) -> None:
        """Apply ``ops`` (encoded puts and deletes, in order) atomically: all or nothing."""
        self._wait(self._start_batch(ops))

    async def awrite_batch(self, ops: Sequence[Put | Delete]) -> None:
        """:meth:`write_batch` for asyncio."""
        await self._await(self._start_batch(ops))

    def read_many(self, keys: Sequence[bytes], consistency: str = "linearizable") -> list[bytes | None]:
        """The stored bytes (or None) of each encoded key, in order."""
        return [self._wait(req) for req in self._start_reads(keys, consistency)]

    async def aread_many(self, keys: Sequence[bytes], consistency: str = "linearizable") -> list[bytes | None]:
        """:meth:`read_many` for asyncio."""
        return list(await asyncio.gather(*(self._await(req) for req in self._start_reads(keys, consistency))))

    def scan(self, start: bytes, end: bytes | None, limit: int,
             consistency: str = "linearizable") -> tuple[list[tuple[bytes, bytes]], bool]:
        """Up to ``limit`` stored ``(key, value)`` pairs with ``start <= key < end`` (``end=None``:
        unbounded) in key order, and whether the range holds more: ``(pairs, more)``."""
        return self._wait(self._start_scan(start, end, limit, consistency))

    async def ascan(self, start: bytes, end: bytes | None, limit: int,
                    consistency: str = "linearizable") -> tuple[list[tuple[bytes, bytes]], bool]:
        """:meth:`scan` for asyncio."""
        return await self._await(self._start_scan(start, end, limit, consistency))

    def statuses(self, timeout_s: float | None = None) -> dict[int, dict | None]:
        """Replica id -> its ``status()`` dict, or None if it did not answer within ``timeout_s``
        (default: the smaller of the client's ``timeout_s`` and 5 s). The replicas are asked in parallel."""
        futures, limit = self._status_futures(timeout_s)
        deadline = time.monotonic() + limit
        return {rid: _status_or_none(f, deadline - time.monotonic()) for rid, f in futures.items()}

    async def astatuses(self, timeout_s: float | None = None) -> dict[int, dict | None]:
        """:meth:`statuses` for asyncio."""
        futures, limit = self._status_futures(timeout_s)
        wrapped = {rid: asyncio.wrap_future(f) for rid, f in futures.items()}
        await asyncio.wait(wrapped.values(), timeout=limit)
        return {rid: _done_status(w) for rid, w in wrapped.items()}

    @property
    def store(self) -> str:
        return self._store

    @property
    def shard(self) -> int:
        return self._shard

    @property
    def replicas(self) -> tuple[int, ...]:
        return self._replicas

    @property
    def limits(self) -> KVLimits:
        return self._limits

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        """Stop the client: pending requests fail (see the error contract), new ones raise ShutdownError."""
        self._finalizer()

    def __enter__(self) -> "ShardClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """Diagnostics: calls and items sent per kind, retries, timeouts, leader, session, acked_seq."""
        return self._core.stats()

    def __repr__(self) -> str:
        return f"ShardClient(store={self._store!r}, shard={self._shard}, timeout_s={self._timeout_s:g})"

    # -- helpers -----------------------------------------------------------------------
    def _put_op(self, key: Any, value: Any) -> Put:
        return Put(encode_key(key, self._limits), encode_value(value, self._limits))

    def _delete_op(self, key: Any) -> Delete:
        return Delete(encode_key(key, self._limits))

    def _cas_op(self, key: Any, expected: Any, new: Any) -> Cas:
        raw_key = encode_key(key, self._limits)
        if new is None:
            raise InvalidRequestError("cas needs a new value (None cannot be stored; use delete() to remove a key)")
        raw_expected = None if expected is None else encode_value(expected, self._limits)
        return Cas(raw_key, raw_expected, encode_value(new, self._limits))

    def _start_batch(self, ops: Sequence[Put | Delete]) -> _Request:
        if not isinstance(ops, (list, tuple)):
            raise InvalidRequestError(f"batch ops must be a list or tuple, got {type(ops).__name__}")
        batch = Batch(tuple(ops))
        validate_op(batch, self._limits)
        return self._core.write(batch)

    def _start_reads(self, keys: Sequence[bytes], consistency: str) -> list[_ReadRequest]:
        level = check_consistency(consistency)
        keys = list(keys)
        for key in keys:
            validate_key(key, self._limits)
        return self._core.read_many(keys, level) if keys else []

    def _start_scan(self, start: bytes, end: bytes | None, limit: int, consistency: str) -> _ScanRequest:
        level = check_consistency(consistency)
        if not isinstance(start, bytes) or len(start) > self._limits.max_key_bytes:
            raise InvalidRequestError(f"scan start must be bytes of at most {self._limits.max_key_bytes}, "
                                      f"got {type(start).__name__}")
        if end is not None and not isinstance(end, bytes):
            raise InvalidRequestError(f"scan end must be bytes or None, got {type(end).__name__}")
        if not is_int(limit) or limit < 1:
            raise InvalidRequestError(f"scan limit must be an int >= 1, got {limit!r}")
        return self._core.scan(start, end, limit, level)

    def _status_futures(self, timeout_s: float | None) -> tuple[dict[int, concurrent.futures.Future], float]:
        limit = min(self._timeout_s, 5.0) if timeout_s is None else check_seconds("timeout_s", timeout_s)
        return {rid: self._core.call_replica(rid, "status") for rid in self._replicas}, limit

    def _start_read(self, key: Any, consistency: str) -> _ReadRequest:
        level = check_consistency(consistency)
        return self._core.read(encode_key(key, self._limits), level)

    @staticmethod
    def _value(raw: bytes | None, default: Any) -> Any:
        return default if raw is None else decode_value(raw)

    def _wait(self, req: _Request) -> Any:
        try:
            return req.future.result(timeout=self._timeout_s + _WAIT_GRACE_S)
        except concurrent.futures.TimeoutError:
            if req.future.done():
                raise
            self._core.expire(req)
            return req.future.result()

    @staticmethod
    async def _await(req: _Request) -> Any:
        return await asyncio.wrap_future(req.future)


def _status_or_none(future: concurrent.futures.Future, timeout_s: float) -> dict | None:
    try:
        status = future.result(timeout=max(0.0, timeout_s))
    except Exception:  # noqa: BLE001 -- any failure or timeout: no status
        future.cancel()
        return None
    return status if isinstance(status, dict) else None


def _done_status(future: asyncio.Future) -> dict | None:
    if not future.done():
        future.cancel()
        return None
    if future.cancelled() or future.exception() is not None:
        return None
    status = future.result()
    return status if isinstance(status, dict) else None
