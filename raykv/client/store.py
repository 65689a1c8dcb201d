"""The store client :class:`Client`: one object for a whole sharded store, sync and asyncio.

::

    kv = raykv.connect("default")            # or Client("default", timeout_s=10.0)
    kv.put("user:1", {"name": "Ada"}); kv.get("user:1"); kv.delete("user:1")
    kv.cas("user:1", None, {"name": "Ada"})
    for key, value in kv.scan(prefix="user:"): ...
    kv.scan_arrow(start="a", end="m")         # pyarrow.Table: key, key_is_str, value
    kv.put_batch({"a": 1, "b": 2}); kv.get_batch(["a", "b"]); kv.delete_batch(["a"])
    print(kv.status())                        # shards, replicas, leaders, indices, sizes

Asyncio counterparts: ``aput``, ``aget``, ``adelete``, ``acas``, ``aput_batch``,
``aget_batch``, ``adelete_batch``, ``astatus``, ``ascan_arrow`` (coroutines) and
``ascan`` (an async iterator: ``async for key, value in kv.ascan(...)``).

Routing: the client reads the shard map (:class:`~raykv.placement.ShardMap`)
from the store's router actor ``raykv:{store}:router`` (namespace ``raykv``)
once, at construction (:meth:`Client.refresh` re-reads it), and keeps one
:class:`~raykv.client.shard.ShardClient` per shard; a key goes to the shard
whose range holds its encoded form (:mod:`raykv.userdata`). While the store
reshards (:meth:`Client.scale`), a shard refuses keys it no longer serves or is
moving (:class:`~raykv.errors.ShardMapChangedError`, definite: nothing applied),
and so does a follower of the new owner that has not yet applied its ingest and
a shard client whose replica actors no longer exist; every operation then
re-reads the map and retries (at the new owner, or again after a short pause
when the map has not changed), within its ``timeout_s`` (a scan continues from
its last key, so no key appears twice). Every single-key
operation has exactly the semantics and error contract of the one-group client
(see :mod:`raykv.client`): linearizable, exactly-once writes, ``timeout_s`` per
request. Multi-key operations: :mod:`raykv.client.batch` (atomic per shard,
parallel across shards; ``get_batch`` reads every shard in parallel, each key a
read at the requested level) and :mod:`raykv.client.scan` (ordered across
shards, paginated, not a snapshot).

Errors: no router for ``store`` -> :class:`~raykv.errors.StoreNotFoundError`
(Ray must be initialized: else :class:`~raykv.errors.UnavailableError`); bad
arguments -> :class:`~raykv.errors.InvalidRequestError` before anything is sent;
the rest as in :mod:`raykv.client`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import ray

from ..errors import RayKVError, ShardMapChangedError, ShutdownError
from ..kv.limits import KVLimits
from ..placement import ShardMap
from ..protocol import replica_actor_name
from ..userdata import decode_key, decode_value, encode_key
from . import batch as _batch
from . import scaling as _scaling
from . import scan as _scan
from .request import _Request
from .shard import ShardClient, check_seconds, _status_or_none, check_consistency
from .status import StoreStatus, shard_status


@dataclass(frozen=True)
class _View:
    """One shard map and its shard clients, swapped as a whole by :meth:`Client.refresh`."""

    smap: ShardMap
    shards: dict[int, ShardClient]

    def client_for(self, raw_key: bytes) -> ShardClient:
        return self.shards[self.smap.shard_for(raw_key).shard]


class Client:
    """A thread-safe, asyncio-friendly client of a whole store (see the module docstring).

    ``timeout_s`` bounds each request (per shard for multi-shard operations);
    ``limits`` must equal the replicas' :class:`~raykv.kv.limits.KVLimits`
    (smaller batch limits only cut batches smaller).
    """

    def __init__(self, store: str = "default", *, timeout_s: float = 10.0, limits: KVLimits | None = None) -> None:
        self._store = _check_store(store)
        self._timeout_s = check_seconds("timeout_s", timeout_s)
        self._limits = limits if limits is not None else KVLimits()
        self._lock = threading.Lock()
        self._closed = False
        self._view: _View | None = None
        self._retired: list[ShardClient] = []
        self.refresh()

    # -- single keys -------------------------------------------------------------------
    def put(self, key: Any, value: Any) -> None:
        """Set ``key`` to ``value`` (not None)."""
        return self._routed(key, lambda shard: shard.put(key, value))

    def get(self, key: Any, default: Any = None, consistency: str = "linearizable") -> Any:
        """The value of ``key``, or ``default`` if it is absent."""
        return self._routed(key, lambda shard: shard.get(key, default, consistency))

    def delete(self, key: Any) -> bool:
        """Remove ``key``; True iff it existed."""
        return self._routed(key, lambda shard: shard.delete(key))

    def cas(self, key: Any, expected: Any, new: Any) -> bool:
        """Set ``key`` to ``new`` iff its value serializes exactly as ``expected`` (None: absent)."""
        return self._routed(key, lambda shard: shard.cas(key, expected, new))

    async def aput(self, key: Any, value: Any) -> None:
        """:meth:`put` for asyncio (never blocks the event loop)."""
        await self._arouted(key, lambda shard: shard.aput(key, value))

    async def aget(self, key: Any, default: Any = None, consistency: str = "linearizable") -> Any:
        """:meth:`get` for asyncio."""
        return await self._arouted(key, lambda shard: shard.aget(key, default, consistency))

    async def adelete(self, key: Any) -> bool:
        """:meth:`delete` for asyncio."""
        return await self._arouted(key, lambda shard: shard.adelete(key))

    async def acas(self, key: Any, expected: Any, new: Any) -> bool:
        """:meth:`cas` for asyncio."""
        return await self._arouted(key, lambda shard: shard.acas(key, expected, new))

    # -- batches -----------------------------------------------------------------------
    def put_batch(self, data: Any) -> None:
        """Write every ``(key, value)`` of ``data``: atomic per shard, parallel across shards
        (a mapping, ``(key, value)`` pairs or a pyarrow Table; see :mod:`raykv.client.batch`)."""
        self._write_parts("put_batch", _batch.put_ops(data, self._limits))

    def delete_batch(self, keys: Any) -> None:
        """Delete every key of ``keys`` (absent ones too): atomic per shard, parallel across shards."""
        self._write_parts("delete_batch", _batch.delete_ops(keys, self._limits))

    def get_batch(self, keys: Any, consistency: str = "linearizable") -> list[Any]:
        """The value of each key (None if absent), in input order; shards are read in parallel."""
        level = check_consistency(consistency)
        raws = [encode_key(key, self._limits) for key in _batch.iterable_keys(keys)]
        return [None if raw is None else decode_value(raw) for raw in self._read_keys(raws, level)]

    async def aput_batch(self, data: Any) -> None:
        await self._awrite_parts("put_batch", _batch.put_ops(data, self._limits))

    async def adelete_batch(self, keys: Any) -> None:
        await self._awrite_parts("delete_batch", _batch.delete_ops(keys, self._limits))

    async def aget_batch(self, keys: Any, consistency: str = "linearizable") -> list[Any]:
        level = check_consistency(consistency)
        raws = [encode_key(key, self._limits) for key in _batch.iterable_keys(keys)]
        return [None if raw is None else decode_value(raw) for raw in await self._aread_keys(raws, level)]

    # -- scans -------------------------------------------------------------------------
    def scan(self, start: Any = None, end: Any = None, prefix: Any = None, limit: int | None = None,
             consistency: str = "linearizable") -> Iterator[tuple[Any, Any]]:
        """``(key, value)`` pairs in key order (see :mod:`raykv.client.scan` for the bounds)."""
        view, pager, level = self._plan_scan(start, end, prefix, limit, consistency)
        return self._iter_scan(view, pager, level)

    def scan_arrow(self, start: Any = None, end: Any = None, prefix: Any = None, limit: int | None = None,
                   consistency: str = "linearizable"):
        """The same range as a ``pyarrow.Table`` (``key``, ``key_is_str``, ``value``); nothing is unpickled."""
        import pyarrow as pa

        view, pager, level = self._plan_scan(start, end, prefix, limit, consistency)
        return _scan.arrow_table(pa, list(self._pages(view, pager, level)))

    def ascan(self, start: Any = None, end: Any = None, prefix: Any = None, limit: int | None = None,
              consistency: str = "linearizable") -> AsyncIterator[tuple[Any, Any]]:
        """:meth:`scan` for asyncio: ``async for key, value in kv.ascan(...)``."""
        view, pager, level = self._plan_scan(start, end, prefix, limit, consistency)
        return self._aiter_scan(view, pager, level)

    async def ascan_arrow(self, start: Any = None, end: Any = None, prefix: Any = None, limit: int | None = None,
                          consistency: str = "linearizable"):
        import pyarrow as pa

        view, pager, level = self._plan_scan(start, end, prefix, limit, consistency)
        return _scan.arrow_table(pa, [page async for page in self._apages(view, pager, level)])

    # -- status and lifecycle ---------------------------------------------------------------
    def status(self, timeout_s: float | None = None) -> StoreStatus:
        """Every shard's range and replicas (role, term, indices, data size; see :mod:`.status`).

        The replicas are asked in parallel; one that does not answer within
        ``timeout_s`` (default: the smaller of ``timeout_s`` and 5 s) is shown dead. The map is
        the router's (it does not wait for the meta group, which may be the group that lost its
        majority)."""
        self.refresh(newest=False)
        view = self._current()
        started = {sid: sc._status_futures(timeout_s) for sid, sc in view.shards.items()}
        deadline = time.monotonic() + max(limit for _, limit in started.values())
        answers = {sid: {rid: _status_or_none(f, deadline - time.monotonic()) for rid, f in futures.items()}
                   for sid, (futures, _) in started.items()}
        return self._status_from(view, answers, _scaling.operation_text(self._store))

    async def astatus(self, timeout_s: float | None = None) -> StoreStatus:
        await asyncio.to_thread(self.refresh, newest=False)
        view = self._current()
        answers = dict(zip(view.shards, await asyncio.gather(
            *(sc.astatuses(timeout_s) for sc in view.shards.values()))))
        return self._status_from(view, answers, await asyncio.to_thread(_scaling.operation_text, self._store))

    def scale(self, shards: int, *, wait: bool = True, timeout_s: float | None = None,
              retire_grace_s: float = 10.0, on_progress: Callable[[dict], None] | None = None) -> dict:
        """Reshard the store online to ``shards`` shards (split by median bytes, merge smallest
        neighbours); see :mod:`raykv.client.scaling`. Returns the operation's record."""
        record = _scaling.scale(self._store, shards, wait=wait, timeout_s=timeout_s,
                                retire_grace_s=retire_grace_s, on_progress=on_progress)
        self.refresh()
        return record

    def recover(self, shard: int, *, replica: int | None = None, force: bool = False,
                timeout_s: float = 120.0) -> dict:
        """UNSAFE, for a shard that lost its majority for good (``status()`` shows
        ``quorum_lost``): re-found its group from its best survivor, or from ``replica``, and
        let repair add fresh replicas (:mod:`raykv.runtime.recovery`; shard 0 is the meta group).
        Refused (:class:`~raykv.errors.InvalidRequestError`) while a majority of its replicas
        answers, unless ``force``, which loses what only the other replicas hold. Returns the
        report: ``kept_index`` (every entry up to it kept and applied), ``commit_before``,
        ``killed``, ``seconds``, ..."""
        report = _scaling.call_router(self._store, "recover", shard, replica, force, timeout_s=timeout_s)
        self.refresh()
        return report

    def scale_status(self) -> dict | None:
        """The record of the store's last resharding operation (None if it never scaled)."""
        return _scaling.call_router(self._store, "scale_status")

    def refresh(self, *, newest: bool = True) -> ShardMap:
        """Re-read the shard map from the router; keeps the shard clients of unchanged shards
        (and the current view when the map is not newer). ``newest``: when the router's map is
        not newer than this client's, the router re-reads it from the meta group."""
        smap = self._read_map(newest)
        with self._lock:
            if self._closed:
                raise _closed_error()
            if self._view is not None and smap.epoch <= self._view.smap.epoch:
                return self._view.smap
            old = self._view.shards if self._view is not None else {}
            shards = {}
            for spec in smap.shards:
                rids = tuple(rid for rid, _ in spec.replicas)
                client = old.get(spec.shard)
                if client is None or client.replicas != rids:
                    client = ShardClient(self._store, spec.shard, rids, timeout_s=self._timeout_s,
                                         limits=self._limits)
                shards[spec.shard] = client
            # replaced clients may have requests in flight on other threads: they finish there
            # (a moved shard answers ShardMapChangedError) and the clients close with this one
            self._retired.extend(c for sid, c in old.items() if shards.get(sid) is not c)
            self._view = _View(smap, shards)
        return smap

    @property
    def shard_map(self) -> ShardMap:
        return self._current().smap

    @property
    def store(self) -> str:
        return self._store

    def shard_client(self, shard: int) -> ShardClient:
        """The one-group client of shard ``shard`` (``KeyError`` if the map has no such shard)."""
        return self._current().shards[shard]

    def stats(self) -> dict[int, dict[str, Any]]:
        """Shard id -> that shard client's :meth:`~raykv.client.shard.ShardClient.stats`."""
        return {sid: sc.stats() for sid, sc in self._current().shards.items()}

    def close(self) -> None:
        """Close every shard client: pending requests fail (see :mod:`raykv.client`), new ones raise ShutdownError."""
        with self._lock:
            self._closed = True
            view = self._view
            retired, self._retired = self._retired, []
        for client in [*(view.shards.values() if view is not None else ()), *retired]:
            client.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        view = self._view
        shards = len(view.shards) if view is not None else 0
        return f"Client(store={self._store!r}, shards={shards}, timeout_s={self._timeout_s:g})"

    # -- helpers -----------------------------------------------------------------------
    def _current(self) -> _View:
        view = self._view
        if self._closed or view is None:
            raise _closed_error()
        return view

    def _read_map(self, newest: bool = True) -> ShardMap:
        """The router's map; one newer than this client's, or else (``newest``) the meta group's
        own (read through the router, whose cache another router's driver may have outdated)."""
        have = self._view.smap.epoch if self._view is not None and newest else 0
        return ShardMap.decode(_scaling.call_router(self._store, "shard_map", have, timeout_s=self._timeout_s))

    # -- routing: every operation re-routes on ShardMapChangedError (see _Rerouter) ---------
    def _routed(self, key: Any, call: Callable[[ShardClient], Any]) -> Any:
        raw = encode_key(key, self._limits)
        rerouter = _Rerouter(self)
        while True:
            view = self._current()
            try:
                return call(view.client_for(raw))
            except ShardMapChangedError as exc:
                rerouter.wait_before_retry(view, exc)

    async def _arouted(self, key: Any, call: Callable[[ShardClient], Any]) -> Any:
        raw = encode_key(key, self._limits)
        rerouter = _Rerouter(self)
        while True:
            view = self._current()
            try:
                return await call(view.client_for(raw))
            except ShardMapChangedError as exc:
                await rerouter.await_before_retry(view, exc)

    def _write_parts(self, what: str, ops: list) -> None:
        """Write ``ops`` atomically per shard, parallel across shards; parts refused by a shard
        that no longer serves them (resharding) are re-split by the new map and written again."""
        rerouter, outcomes = _Rerouter(self), []
        while ops:
            view = self._current()
            results = [(sid, part, req if not isinstance(req, _Request) else _error_of(lambda: shard._wait(req)))
                       for sid, shard, req, part in self._start_parts(view, ops)]
            redo, moved = _moved_parts(results, outcomes)
            if redo:
                rerouter.wait_before_retry(view, moved)
            ops = redo
        _batch.raise_outcome(what, outcomes)

    async def _awrite_parts(self, what: str, ops: list) -> None:
        rerouter, outcomes = _Rerouter(self), []
        while ops:
            view = self._current()
            started = self._start_parts(view, ops)
            errors = await asyncio.gather(*(_aerror_of(shard, req) for _, shard, req, _ in started))
            redo, moved = _moved_parts([(sid, part, error) for (sid, _, _, part), error in zip(started, errors)],
                                       outcomes)
            if redo:
                await rerouter.await_before_retry(view, moved)
            ops = redo
        _batch.raise_outcome(what, outcomes)

    def _start_parts(self, view: _View, ops: list) -> list[tuple[int, ShardClient, _Request | BaseException, tuple]]:
        """One started batch write per chunk of each shard's ops (chunks validated before any start)."""
        by_shard: dict[int, list] = {}
        for op in ops:
            by_shard.setdefault(view.smap.shard_for(op.key).shard, []).append(op)
        chunks = [(sid, part) for sid, shard_ops in by_shard.items() for part in _batch.chunk(shard_ops, self._limits)]
        started = []
        for sid, part in chunks:
            shard = view.shards[sid]
            try:
                started.append((sid, shard, shard._start_batch(part), part))
            except Exception as exc:  # noqa: BLE001 -- e.g. closed meanwhile: that part's outcome
                started.append((sid, shard, _batch.as_error(exc), part))
        return started

    def _read_keys(self, raws: list[bytes], level: str) -> list[bytes | None]:
        """The stored value of each encoded key (None if absent), re-routing keys whose shard moved."""
        values: list[bytes | None] = [None] * len(raws)
        todo, rerouter = list(range(len(raws))), _Rerouter(self)
        while todo:
            view = self._current()
            started = self._start_gets(view, [raws[i] for i in todo], level)
            answers = ((i, _answer_of(lambda: shard._wait(req))) for i, (shard, req) in zip(todo, started))
            redo, moved = _moved_keys(answers, values)  # waits key by key, raises the first other error
            if redo:
                rerouter.wait_before_retry(view, moved)
            todo = redo
        return values

    async def _aread_keys(self, raws: list[bytes], level: str) -> list[bytes | None]:
        values: list[bytes | None] = [None] * len(raws)
        todo, rerouter = list(range(len(raws))), _Rerouter(self)
        while todo:
            view = self._current()
            started = self._start_gets(view, [raws[i] for i in todo], level)
            answers = await asyncio.gather(*(shard._await(req) for shard, req in started), return_exceptions=True)
            redo, moved = _moved_keys(zip(todo, answers), values)
            if redo:
                await rerouter.await_before_retry(view, moved)
            todo = redo
        return values

    def _start_gets(self, view: _View, raws: list[bytes], level: str) -> list[tuple[ShardClient, _Request]]:
        by_shard: dict[int, list[int]] = {}
        for i, raw in enumerate(raws):
            by_shard.setdefault(view.smap.shard_for(raw).shard, []).append(i)
        started: list[Any] = [None] * len(raws)
        for sid, positions in by_shard.items():
            shard = view.shards[sid]
            for i, req in zip(positions, shard._start_reads([raws[i] for i in positions], level)):
                started[i] = (shard, req)
        return started

    def _plan_scan(self, start: Any, end: Any, prefix: Any, limit: Any,
                   consistency: str) -> tuple[_View, _scan.Pager, str]:
        level = check_consistency(consistency)
        count = _scan.check_limit(limit)
        low, high = _scan.key_range(start, end, prefix, self._limits)
        view = self._current()
        return view, _scan.Pager(_scan.segments(view.smap, low, high), count), level

    def _pages(self, view: _View, pager: _scan.Pager, level: str) -> Iterator[list[tuple[bytes, bytes]]]:
        """Each page of the scan; a page refused by a shard that moved is re-planned on the new map
        from where the scan stands (no key twice, none skipped)."""
        rerouter = _Rerouter(self)
        while (page := pager.next_page()) is not None:
            try:
                pairs, more = view.shards[page.shard].scan(page.start, page.end, page.limit, level)
            except ShardMapChangedError as exc:
                rerouter.wait_before_retry(view, exc)
                view = self._current()
                pager.replan(view.smap)
                continue
            rerouter = _Rerouter(self)
            pager.feed(pairs, more)
            yield pairs

    async def _apages(self, view: _View, pager: _scan.Pager, level: str) -> AsyncIterator[list]:
        rerouter = _Rerouter(self)
        while (page := pager.next_page()) is not None:
            try:
                pairs, more = await view.shards[page.shard].ascan(page.start, page.end, page.limit, level)
            except ShardMapChangedError as exc:
                await rerouter.await_before_retry(view, exc)
                view = self._current()
                pager.replan(view.smap)
                continue
            rerouter = _Rerouter(self)
            pager.feed(pairs, more)
            yield pairs

    def _iter_scan(self, view: _View, pager: _scan.Pager, level: str) -> Iterator[tuple[Any, Any]]:
        for pairs in self._pages(view, pager, level):
            yield from _scan.decoded(pairs, decode_key, decode_value)

    async def _aiter_scan(self, view: _View, pager: _scan.Pager, level: str) -> AsyncIterator[tuple[Any, Any]]:
        async for pairs in self._apages(view, pager, level):
            for item in _scan.decoded(pairs, decode_key, decode_value):
                yield item

    def _status_from(self, view: _View, answers: dict[int, dict[int, dict | None]],
                     operation: str | None) -> StoreStatus:
        node_ids = _node_ids()
        shards = [shard_status(view.smap, spec, answers.get(spec.shard, {}),
                               lambda shard, rid: replica_actor_name(self._store, shard, rid), node_ids)
                  for spec in view.smap.shards]
        return StoreStatus(self._store, view.smap.epoch, shards, operation)


def _moved_parts(results: list, outcomes: list) -> tuple[list, ShardMapChangedError | None]:
    """``results``: ``(shard, ops, error or None)`` per part. The ops of parts refused because
    their shard moved (to write again) and the last such refusal; the other outcomes are
    appended to ``outcomes`` as ``(shard, error or None)``."""
    redo, moved = [], None
    for sid, part, error in results:
        if isinstance(error, ShardMapChangedError):
            redo.extend(part)
            moved = error
        else:
            outcomes.append((sid, error))
    return redo, moved


def _moved_keys(answers, values: list) -> tuple[list[int], ShardMapChangedError | None]:
    """``answers``: ``(position, value or exception)`` per key read. Values go into ``values``;
    returns the positions refused because their shard moved (to read again) and the last such
    refusal; any other exception is raised."""
    redo, moved = [], None
    for i, answer in answers:
        if isinstance(answer, ShardMapChangedError):
            redo.append(i)
            moved = answer
        elif isinstance(answer, BaseException):
            raise answer
        else:
            values[i] = answer
    return redo, moved


def _answer_of(wait: Callable[[], Any]) -> Any:
    """``wait()``'s value, or the exception it raised (for :func:`_moved_keys`)."""
    try:
        return wait()
    except Exception as exc:  # noqa: BLE001 -- sorted (and re-raised if not a move) by the caller
        return exc


def _error_of(wait: Callable[[], Any]) -> BaseException | None:
    try:
        wait()
        return None
    except Exception as exc:  # noqa: BLE001 -- a part's outcome, combined by the caller
        return _batch.as_error(exc)


async def _aerror_of(shard: ShardClient, req: Any) -> BaseException | None:
    if not isinstance(req, _Request):
        return req
    try:
        await shard._await(req)
        return None
    except Exception as exc:  # noqa: BLE001 -- a part's outcome, combined by the caller
        return _batch.as_error(exc)


class _Rerouter:
    """Paces the retries after a :class:`ShardMapChangedError`, within the client's timeout.

    A shard refuses keys it no longer serves (moved) or is moving (fenced while
    its rows are copied); a follower of a new owner refuses them until it has
    applied the ingest that made them its own; a shard client whose replica
    actors no longer exist refuses everything. All are definite: nothing was
    applied. Each wait re-reads the map from the router and returns at once when
    its epoch grew; otherwise (a move in progress, a follower behind, an
    unchanged map) it pauses (10 ms doubling to 200 ms) and the caller retries
    with the map it has. Past ``timeout_s`` the last refusal is raised.
    """

    def __init__(self, client: "Client") -> None:
        self.client = client
        self.deadline = time.monotonic() + client._timeout_s
        self.pause_s = 0.01

    def _next(self, error: ShardMapChangedError) -> float:
        """Seconds to pause before retrying; raises ``error`` past the deadline."""
        if time.monotonic() >= self.deadline:
            raise error
        pause, self.pause_s = self.pause_s, min(self.pause_s * 2, 0.2)
        return pause

    def wait_before_retry(self, view: _View, error: ShardMapChangedError) -> None:
        pause = self._next(error)
        if self.client.refresh().epoch <= view.smap.epoch:
            time.sleep(pause)

    async def await_before_retry(self, view: _View, error: ShardMapChangedError) -> None:
        pause = self._next(error)
        if (await asyncio.to_thread(self.client.refresh)).epoch <= view.smap.epoch:
            await asyncio.sleep(pause)


def _check_store(store: Any) -> str:
    from ..protocol import check_store_name

    return check_store_name(store)


def _closed_error() -> RayKVError:
    return ShutdownError("the raykv client is closed")


def _node_ids() -> dict[str, str]:
    """``raykv-host`` label -> Ray node id of the alive nodes (empty if Ray cannot say)."""
    from ..protocol import HOST_LABEL

    try:
        return {n["Labels"][HOST_LABEL]: n["NodeID"] for n in ray.nodes()
                if n.get("Alive") and HOST_LABEL in n.get("Labels", {})}
    except Exception:  # noqa: BLE001 -- status is best effort about node ids
        return {}
