"""What :meth:`Client.status <raykv.client.store.Client.status>` returns: a store's shards and replicas.

:class:`StoreStatus` holds one :class:`ShardStatus` per shard (key order), each
with one :class:`ReplicaStatus` per replica. Placement (host, actor name) comes
from the shard map; role, term, commit and applied index and data size from each
replica's own ``status()``; a replica that did not answer in time is
``alive=False`` with those fields ``None``. ``leader`` is the alive replica
reporting itself leader in the highest term (``None``: no leader seen).

Renderings: ``str()`` is a plain-text table, ``to_dict()`` plain JSON-able data
(keys shown as in Python: ``'user:1'`` for a str key, ``b'\\x00'`` for a bytes
key, ``''`` for the start of the key space, ``None`` for its unbounded end), and
``_repr_html_()`` an HTML table for Jupyter. No Ray here.
"""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import tcpbackoff
from ..placement import ShardMap, ShardSpec
from ..kv.keys import show_key

SLOW_REJOIN_HINT = ("TCP retransmission backoff not capped or Ray's keepalive timeout short (a replica healed "
                    "from a network cut may lag up to 2 min; set net.ipv4.tcp_rto_max_ms=1000 and "
                    "RAY_grpc_client_keepalive_timeout_ms=900000 before ray start, see docs/operations.md) on")
_COLUMNS = ("shard", "range", "replica", "host", "role", "term", "commit", "applied", "data", "alive")


def show_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    replica: int
    actor_name: str
    host: str
    node_id: str | None
    role: str | None
    term: int | None
    commit: int | None
    applied: int | None
    data_bytes: int | None
    alive: bool
    tcp_rto_max_ms: int | None = None
    """Its host's cap on TCP's retransmission backoff (:mod:`raykv.tcpbackoff`; None: the
    kernel has no such setting, or the replica did not answer)."""
    node_ip: str | None = None
    last_index: int | None = None
    last_term: int | None = None
    keepalive_timeout_ms: int | None = None
    """Ray's gRPC keepalive timeout in the replica's process (:mod:`raykv.tcpbackoff`)."""


@dataclass(frozen=True, slots=True)
class ShardStatus:
    shard: int
    start_key: bytes
    end_key: bytes | None
    epoch: int
    leader: int | None
    replicas: list[ReplicaStatus] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """A leader is seen and a majority of the replicas answered."""
        return self.leader is not None and 2 * sum(r.alive for r in self.replicas) > len(self.replicas)

    @property
    def quorum_lost(self) -> bool:
        """No majority of the replicas answers: the shard cannot elect a leader until they come
        back, or an operator re-founds it from its best survivor (``raykv recover``)."""
        return self.leader is None and 2 * sum(r.alive for r in self.replicas) <= len(self.replicas)

    def quorum_text(self) -> str:
        """What a lost quorum means here and the command that ends it (empty if not lost)."""
        if not self.quorum_lost:
            return ""
        gone = ", ".join(str(r.replica) for r in self.replicas if not r.alive)
        alive = sorted((r for r in self.replicas if r.alive), key=lambda r: (-(r.last_term or 0), -(r.last_index or 0)))
        if not alive:
            return f"shard {self.shard} has lost its quorum: no replica answers (replicas {gone})"
        best = alive[0]
        return (f"shard {self.shard} has lost its quorum: replicas {gone} do not answer; best survivor "
                f"{best.replica} on {best.host} (last log term {_text(best.last_term)}, index "
                f"{_text(best.last_index)}, commit {_text(best.commit)}); if they are gone for good: "
                f"raykv recover --shard {self.shard}")

    def range_text(self) -> str:
        end = show_key(self.end_key)
        return f"[{show_key(self.start_key) or '-inf'}, {'+inf' if end is None else end})"

    def to_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "start_key": show_key(self.start_key), "end_key": show_key(self.end_key),
                "epoch": self.epoch, "leader": self.leader, "healthy": self.healthy, "quorum_lost": self.quorum_lost,
                "replicas": [asdict(r) for r in self.replicas]}


@dataclass(frozen=True, slots=True)
class StoreStatus:
    store: str
    epoch: int
    shards: list[ShardStatus] = field(default_factory=list)
    operation: str | None = None
    """The resharding operation in flight (one line), None when there is none."""

    @property
    def healthy(self) -> bool:
        return all(s.healthy for s in self.shards)

    @property
    def slow_rejoin_hosts(self) -> list[str]:
        """Hosts (of answering replicas) whose TCP retransmission backoff is not capped or whose
        Ray keepalive timeout is Ray's short default: after a network cut heals, a replica there
        may wait up to two minutes before it hears its peers (:mod:`raykv.tcpbackoff`; the deploy
        sets both). Empty for a store on one machine (its replicas talk over loopback, which no
        cut separates)."""
        alive = [r for s in self.shards for r in s.replicas if r.alive]
        if len({r.node_ip for r in alive}) < 2:
            return []
        return sorted({r.host for r in alive if tcpbackoff.backoff_too_long(r.tcp_rto_max_ms, r.keepalive_timeout_ms)})

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "epoch": self.epoch, "healthy": self.healthy, "operation": self.operation,
                "slow_rejoin_hosts": self.slow_rejoin_hosts, "shards": [s.to_dict() for s in self.shards]}

    def rows(self) -> list[tuple[str, ...]]:
        """One row of strings per replica, columns as in :data:`_COLUMNS`."""
        out = []
        for s in self.shards:
            for i, r in enumerate(s.replicas):
                head = (str(s.shard), s.range_text()) if i == 0 else ("", "")
                mark = "*" if r.replica == s.leader else ""
                out.append(head + (f"{r.replica}{mark}", r.host, r.role or "-", _text(r.term), _text(r.commit),
                                   _text(r.applied), show_bytes(r.data_bytes), "yes" if r.alive else "NO"))
        return out

    def __str__(self) -> str:
        rows = [_COLUMNS] + self.rows()
        widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
        lines = [f"store {self.store!r} (map epoch {self.epoch}): {len(self.shards)} shards, "
                 f"{'healthy' if self.healthy else 'DEGRADED'}; * = leader"]
        if self.operation:
            lines.append(f"in flight: {self.operation}")
        lines += [f"warning: {s.quorum_text()}" for s in self.shards if s.quorum_lost]
        if self.slow_rejoin_hosts:
            lines.append(f"warning: {SLOW_REJOIN_HINT}: {', '.join(self.slow_rejoin_hosts)}")
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in _COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                       for row in self.rows())
        title = html.escape(f"store {self.store!r} (map epoch {self.epoch}), "
                            f"{'healthy' if self.healthy else 'DEGRADED'}; * = leader")
        return f"<table><caption>{title}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _text(value: int | None) -> str:
    return "-" if value is None else str(value)


def replica_status(spec: ShardSpec, rid: int, host: str, actor_name: str, node_id: str | None,
                   status: dict | None) -> ReplicaStatus:
    if status is None:
        return ReplicaStatus(rid, actor_name, host, node_id, None, None, None, None, None, False)
    return ReplicaStatus(rid, actor_name, host, node_id, status.get("role"), status.get("term"),
                         status.get("commit"), status.get("applied"), status.get("data_bytes"), True,
                         status.get("tcp_rto_max_ms"), status.get("node_ip"), status.get("last_index"),
                         status.get("last_term"), status.get("keepalive_timeout_ms"))


def shard_status(smap: ShardMap, spec: ShardSpec, statuses: dict[int, dict | None],
                 actor_name: Any, node_ids: dict[str, str]) -> ShardStatus:
    """``actor_name(shard, rid)`` names replica actors; ``node_ids`` maps hosts to Ray node ids."""
    replicas = [replica_status(spec, rid, host, actor_name(spec.shard, rid), node_ids.get(host),
                               statuses.get(rid)) for rid, host in spec.replicas]
    leaders = [(r.term or 0, r.replica) for r in replicas if r.alive and r.role == "leader"]
    leader = max(leaders)[1] if leaders else None
    return ShardStatus(spec.shard, spec.start, spec.end, smap.epoch, leader, replicas)
