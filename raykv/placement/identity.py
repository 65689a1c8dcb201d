"""Which store a start opens: its identity, where it lives, and whether to create, reopen or refuse.

Pure (stdlib only). The Ray shell (:mod:`raykv.runtime.store`) asks every host what it holds
of a store (:class:`HostTraces`) and lets :func:`plan_start` decide; :func:`check_reopen`
compares the options asked for with the store as its shard map has it.

A store's **identity** (:class:`StoreIdentity`: name, a random id, the data directory of
each host, the shape it was created with, where its meta group was placed) is written
at creation into the store's directory under the data root of every host, and each host
keeps a **pointer** in its raykv home naming the data root that holds the store there
(file names: :mod:`raykv.storage.layout`). So a start that names no data directory reopens the store where
it lives (not an empty store under the default directory), and a start that names
another one is refused while the store still has data where the pointer says.

The rules (each a refusal with raykv's own error, nothing created or started):

* a data directory asked for that differs from where a host's pointer says the store
  lives (and the store still has files there) -> :class:`~raykv.errors.ConfigError`;
* ``create=True`` while any trace of the store exists -> :class:`~raykv.errors.StoreExistsError`;
  ``create=False`` with no trace -> :class:`~raykv.errors.StoreNotFoundError`;
  ``create=None`` (the default) creates only when no host holds any trace;
* identities that disagree (two stores of one name mixed in one directory) ->
  :class:`~raykv.errors.StoreIdentityError`;
* fewer meta replicas on alive hosts than a majority of the meta group ->
  :class:`~raykv.errors.UnavailableError` naming the hosts that are missing (a reopen
  never founds a second meta group next to the old one);
* ``shards`` or ``replicas`` other than the store has -> :class:`~raykv.errors.ConfigError`
  (resize with ``raykv scale``); a shard group with no majority on alive hosts ->
  :class:`~raykv.errors.UnavailableError` naming the missing hosts.

A pointer is *stale* when its host holds nothing of the store under the directory it
names (the directory was deleted): it is ignored and rewritten.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

from ..errors import (
    ConfigError,
    CorruptStoreError,
    StoreExistsError,
    StoreIdentityError,
    StoreNotFoundError,
    UnavailableError,
)
from .shardmap import META_SHARD, ShardMap, plan_replicas

IDENTITY_FORMAT = 1


@dataclass(frozen=True)
class StoreIdentity:
    """Who a store is (see the module docstring). ``data_dirs``: host -> data root, for the
    hosts present at creation; ``meta``: the meta group's ``(replica id, host)`` at creation."""

    name: str
    store_id: str
    created_ms: int
    shards: int
    replicas: int
    data_dirs: dict[str, str]
    meta: tuple[tuple[int, str], ...]
    complete: bool = True
    """False while the store is being created: recorded before its first replica exists and
    set once a start finished (before that, no client could reach it)."""

    def encode(self) -> bytes:
        return json.dumps({"format": IDENTITY_FORMAT, "name": self.name, "store_id": self.store_id,
                           "created_ms": self.created_ms, "shards": self.shards, "replicas": self.replicas,
                           "data_dirs": self.data_dirs, "meta": [list(m) for m in self.meta],
                           "complete": self.complete}, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes, path: str) -> "StoreIdentity":
        """Raises :class:`CorruptStoreError` naming ``path`` if ``raw`` is not an identity."""
        try:
            d = json.loads(raw)
            if d["format"] != IDENTITY_FORMAT:
                raise ValueError(f"format {d['format']!r}")
            return cls(str(d["name"]), str(d["store_id"]), int(d["created_ms"]), int(d["shards"]),
                       int(d["replicas"]), {str(h): str(p) for h, p in d["data_dirs"].items()},
                       tuple((int(r), str(h)) for r, h in d["meta"]), bool(d["complete"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CorruptStoreError(f"not a raykv store identity: {e!r}", path) from None


@dataclass(frozen=True)
class HostTraces:
    """What one host holds of a store: ``pointer`` the data root its pointer names (None: no
    pointer, or a stale one); under the root the start will use, ``identity`` (or None) and
    ``replicas`` (shard id -> replica ids with a directory)."""

    host: str
    root: str
    pointer: str | None = None
    identity: StoreIdentity | None = None
    replicas: dict[int, list[int]] = field(default_factory=dict)

    @property
    def has_trace(self) -> bool:
        return self.identity is not None or bool(self.replicas)


class StartMode(enum.Enum):
    CREATE = "create"
    """No trace anywhere: a new store."""
    RESUME = "resume"
    """A creation that did not finish (interrupted, killed): it is finished now. Nothing was
    ever served, so replicas that never existed (no directory, no creation record: the
    replica's own start rule decides) may still be created as founders -- but only on hosts
    that hold the identity (a host whose whole data root was wiped must not found)."""
    REOPEN = "reopen"


@dataclass(frozen=True)
class StartPlan:
    mode: StartMode
    identity: StoreIdentity | None
    """The store's identity (None: a store created before identities; the start writes one)."""
    found: dict[int, dict[int, str]]
    """Shard id -> {replica id -> host} of the replica directories found."""
    founding_hosts: frozenset[str] = frozenset()
    """RESUME: the hosts where missing replicas may be created as founders."""


def root_for(asked: str | None, pointer: str | None, default: str) -> str:
    """The data root a start uses on one host: the one asked for, else where the host's
    (live) pointer says the store lives, else the default."""
    return asked or pointer or default


def _check_roots(name: str, traces: list[HostTraces], asked: bool) -> None:
    """Refuse (:class:`ConfigError`) a data directory asked for that differs from where a
    host's live pointer says the store lives."""
    clashes = [t for t in traces if asked and t.pointer is not None and t.pointer != t.root]
    if clashes:
        where = ", ".join(f"{t.pointer} on {t.host}" for t in clashes)
        wanted = ", ".join(f"{t.root} on {t.host}" for t in clashes)
        raise ConfigError(f"store {name!r} keeps its data under {where}, not under the data directory asked for "
                          f"({wanted}): start it with that data directory, or without one")


def plan_start(name: str, traces: list[HostTraces], create: bool | None, data_dir_asked: bool) -> StartPlan:
    """Create, reopen or refuse (see the module docstring). ``traces``: one per alive host;
    ``data_dir_asked``: the caller named the data directory (else each host's pointer or
    the default chose it)."""
    _check_roots(name, traces, data_dir_asked)
    identities = [t.identity for t in traces if t.identity is not None]
    ids = sorted({i.store_id for i in identities})
    if len(ids) > 1:
        where = ", ".join(f"{t.host}:{t.root}" for t in traces if t.identity is not None)
        raise StoreIdentityError(f"two different stores named {name!r} ({', '.join(ids)}) have data on these hosts; "
                                 f"nothing was started", where)
    found = _found_replicas(traces)
    if not any(t.has_trace for t in traces):
        if create is False:
            roots = sorted({t.root for t in traces})
            raise StoreNotFoundError(f"no host holds any trace of store {name!r} (looked under {', '.join(roots)})")
        return StartPlan(StartMode.CREATE, None, {})
    identity = max(identities, key=lambda i: i.created_ms) if identities else None
    if create is True:
        since = f", created at {identity.created_ms} ms" if identity else ""
        raise StoreExistsError(f"store {name!r} already exists (data on {', '.join(_hosts_with(traces))}{since}): "
                               f"start it without --create to reopen it")
    if identity is not None and not any(i.complete for i in identities):
        holders = frozenset(t.host for t in traces if t.identity is not None)
        _check_founding_hosts(name, {h for _, h in identity.meta}, holders)
        return StartPlan(StartMode.RESUME, identity, found, holders)
    _check_meta_majority(name, identity, found, {t.host for t in traces})
    return StartPlan(StartMode.REOPEN, identity, found)


def check_reopen(name: str, smap: ShardMap, shards: int | None, replicas: int | None, alive: set[str]) -> None:
    """Refuse options that contradict the store as its map has it, and shard groups with no
    majority of their replicas on alive hosts (naming the missing hosts)."""
    if shards is not None and shards != len(smap.shards):
        raise ConfigError(f"store {name!r} has {len(smap.shards)} shards, not {shards}: resize it online with "
                          f"`raykv scale -n {name} --shards {shards}` (or start it without --shards)")
    have = max(len(s.replicas) for s in smap.shards)
    if replicas is not None and replicas != have:
        raise ConfigError(f"store {name!r} has {have} replicas per shard, not {replicas}: start it without --replicas")
    short = {s.shard: sorted({h for _, h in s.replicas if h not in alive}) for s in smap.shards
             if 2 * sum(h in alive for _, h in s.replicas) <= len(s.replicas)}
    if short:
        detail = "; ".join(f"shard {sid} misses {', '.join(hs)}" for sid, hs in sorted(short.items()))
        raise UnavailableError(f"store {name!r} cannot start: {detail}. Start those hosts "
                               f"(`ray start --labels raykv-host=<name>`) and run start again")


def _check_founding_hosts(name: str, meta_hosts: set[str], holders: frozenset[str]) -> None:
    """Finishing a creation needs a majority of the meta group's hosts holding the identity."""
    if 2 * len(meta_hosts & holders) > len(meta_hosts):
        return
    missing = ", ".join(sorted(meta_hosts - holders))
    raise UnavailableError(f"store {name!r} did not finish being created; to finish it, a majority of its meta "
                           f"group's hosts must hold its identity, and {missing} do not (missing, or their data "
                           f"root was lost); nothing was started")


def _check_meta_majority(name: str, identity: StoreIdentity | None, found: dict[int, dict[int, str]],
                         alive: set[str]) -> None:
    meta_found = found.get(META_SHARD, {})
    size = max(identity.replicas if identity else 0, len(meta_found), 1)
    if 2 * len(meta_found) > size:
        return
    known = {h for _, h in identity.meta} | set(identity.data_dirs) if identity else set()
    missing = sorted(known - alive)
    hint = (f"hosts that held its data and are not in this cluster: {', '.join(missing)}" if missing
            else "no missing host is known")
    raise UnavailableError(f"store {name!r} exists but only {len(meta_found)} of its {size} meta replicas are on "
                           f"alive hosts ({hint}); nothing was started (a new meta group would found a second, "
                           f"empty store). Start those hosts (`ray start --labels raykv-host=<name>`) and run start "
                           f"again")


def _found_replicas(traces: list[HostTraces]) -> dict[int, dict[int, str]]:
    """Shard id -> {replica id -> host}. A directory seen from several hosts (one machine, a
    shared file system) goes to the host the planner gives that replica, if it is among
    them, else to the first."""
    seen: dict[int, dict[int, list[str]]] = {}
    for t in traces:
        for shard, rids in t.replicas.items():
            for rid in rids:
                seen.setdefault(shard, {}).setdefault(rid, []).append(t.host)
    hosts = sorted(t.host for t in traces)
    found: dict[int, dict[int, str]] = {}
    for shard, by_rid in seen.items():
        planned = dict(plan_replicas(shard, max(by_rid), hosts))
        found[shard] = {rid: planned[rid] if planned.get(rid) in hs else hs[0] for rid, hs in by_rid.items()}
    return found


def _hosts_with(traces: list[HostTraces]) -> list[str]:
    return sorted(t.host for t in traces if t.has_trace)


def encode_pointer(store_id: str, root: str) -> bytes:
    return json.dumps({"format": IDENTITY_FORMAT, "store_id": store_id, "data_dir": root}).encode()


def decode_pointer(raw: bytes, path: str) -> str:
    """The data root a pointer names; :class:`CorruptStoreError` naming ``path`` if malformed."""
    try:
        d = json.loads(raw)
        if d["format"] != IDENTITY_FORMAT or not isinstance(d["data_dir"], str) or not d["data_dir"]:
            raise ValueError("bad fields")
        return d["data_dir"]
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptStoreError(f"not a raykv store pointer: {e!r}", path) from None
