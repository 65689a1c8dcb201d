"""The replica actor: one Raft replica of one shard, as a Ray actor pinned to its host.

Placement and lifecycle (see ``docs/runtime.md``):

* ``num_cpus=0`` (a shard's three replicas fit anywhere), named
  ``raykv:{store}:{shard}:{replica}`` in the ``raykv`` namespace, detached;
* pinned with ``label_selector={"raykv-host": host}``: a stable host identity
  that survives a node restart (Ray node ids do not), so a restarted actor
  finds its LMDB directory again. Hard node affinity would leave it dead, soft
  affinity would move it away from its data;
* ``max_restarts=-1``: a crashed replica comes back in place, from LMDB alone;
  ``max_task_retries=0``: Ray never re-runs a call (a Raft batch delivered
  twice, a client write re-executed): Raft and client sessions retry instead.

Threading: a sync (threaded) actor with concurrency groups, chosen over an
async actor because a sync call costs less CPU here (bench: ``python -m
raykv.bench baseline``). ``raft`` (one thread, in-order) takes one-way
``deliver`` batches; ``client`` threads wait for their proposals and reads;
``snapshot`` receives chunks; ``admin`` answers pings and status. None of
them touches the node: they post to the loop thread (:mod:`raykv.runtime.host`).
"""

from __future__ import annotations

import os

import ray

from ..raft.types import ConfChange
from ..storage.replica_store import ReplicaId
from .faults import FaultPlan
from .host import ReplicaHost
from .options import ReplicaOptions
from .protocol import NAMESPACE, Write

HOST_LABEL = "raykv-host"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0,
            concurrency_groups={"raft": 1, "client": 64, "snapshot": 1, "admin": 4})
class ReplicaActor:
    """Thin Ray shell over :class:`~raykv.runtime.host.ReplicaHost`."""

    def __init__(self, store: str, shard: int, replica: int, voters: tuple[int, ...], data_dir: str,
                 options: ReplicaOptions, create: bool = True) -> None:
        """``voters``: the founding configuration, used only when ``create`` makes a new replica."""
        self.host = ReplicaHost(data_dir, ReplicaId(store, shard, replica), tuple(voters), options, create)

    @ray.method(concurrency_group="raft")
    def deliver(self, batch: tuple) -> None:
        self.host.deliver(batch)

    @ray.method(concurrency_group="client")
    def submit(self, writes: list[Write]) -> list:
        return self.host.submit(writes)

    @ray.method(concurrency_group="client")
    def register_session(self):
        return self.host.register_session()

    @ray.method(concurrency_group="client")
    def read(self, keys: list[bytes], consistency: str = "linearizable"):
        return self.host.read(keys, consistency)

    @ray.method(concurrency_group="client")
    def scan(self, start: bytes, end: bytes | None, limit: int, consistency: str = "linearizable"):
        return self.host.scan(start, end, limit, consistency)

    @ray.method(concurrency_group="client")
    def change_range(self, change):
        """Resharding: propose a :class:`~raykv.kv.commands.RangeChange` (leader only), wait for it."""
        return self.host.change_range(change)

    @ray.method(concurrency_group="client")
    def range_rows(self, lo: bytes, hi: bytes | None, limit: int):
        """Resharding: a linearizable page of the rows in ``[lo, hi)``, fenced or not."""
        return self.host.range_rows(lo, hi, limit)

    @ray.method(concurrency_group="client")
    def range_stats(self, lo: bytes, hi: bytes | None):
        """Resharding: key count, bytes and median key by bytes of ``[lo, hi)`` (linearizable)."""
        return self.host.range_stats(lo, hi)

    @ray.method(concurrency_group="client")
    def export_backup(self, backup_id: str, timeout_s: float = 600.0):
        """Leader only: export the user rows at one ReadIndex-confirmed applied index (see
        :mod:`raykv.storage.backup`); ``{"index", "term", "rows", "bytes", "sha256"}`` or an error value."""
        return self.host.export_backup(backup_id, timeout_s)

    @ray.method(concurrency_group="client")
    def backup_chunk(self, backup_id: str, offset: int, size: int):
        """Bytes ``offset..offset+size`` (at most 8 MiB) of an export, or an error value."""
        return self.host.backups.chunk(backup_id, offset, size)

    @ray.method(concurrency_group="client")
    def backup_done(self, backup_id: str) -> bool:
        """Remove an export once streamed; True if it existed."""
        return self.host.backups.remove(backup_id)

    @ray.method(concurrency_group="snapshot")
    def snapshot_chunk(self, transfer: str, offset: int, data: bytes, final: tuple[int, int] | None) -> bool:
        return self.host.receiver.chunk(transfer, offset, data, final)

    @ray.method(concurrency_group="admin")
    def ping(self) -> bool:
        return True

    @ray.method(concurrency_group="admin")
    def status(self) -> dict:
        return self.host.status()

    @ray.method(concurrency_group="admin")
    def pid(self) -> int:
        return os.getpid()

    @ray.method(concurrency_group="admin")
    def set_faults(self, plan: FaultPlan | None) -> None:
        """Test only: drop or delay this replica's outgoing Raft traffic (see :mod:`raykv.runtime.faults`)."""
        self.host.set_faults(plan)

    @ray.method(concurrency_group="admin")
    def transfer_leader(self, target: int) -> None:
        self.host.call(lambda: self.host.node.transfer_leader(target))

    @ray.method(concurrency_group="admin")
    def change_membership(self, cc: ConfChange, timeout_s: float = 30.0):
        """Leader only: propose ``cc`` and wait until it is applied; the configuration after it
        (``{"voters", "learners", "joint"}``) or an error value (see
        :meth:`~raykv.runtime.host.ReplicaHost.change_membership`)."""
        return self.host.change_membership(cc, timeout_s)

    @ray.method(concurrency_group="admin")
    def shutdown(self) -> None:
        """Stop the loop and close LMDB; the actor can then be killed without losing anything acknowledged."""
        self.host.stop()


def replica_options(name: str, host: str, lifetime: str = "detached") -> dict:
    """``.options(...)`` for a replica actor pinned to ``host`` (the ``raykv-host`` node label)."""
    return dict(name=name, namespace=NAMESPACE, lifetime=lifetime, label_selector={HOST_LABEL: host})
