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
raykv.bench baseline``). ``raft`` (one thread, in-order) takes
``deliver`` batches (and waits for the loop's turn that handles each: its answers
to the sender are the call's return value); ``client`` threads wait for their proposals and reads;
``snapshot`` receives chunks; ``admin`` answers pings and status. None of
them touches the engine: they post to the loop thread (:mod:`raykv.runtime.loop`).
"""

from __future__ import annotations

import os
import threading

import ray

from ..errors import InvalidRequestError, OperationTimeoutError, ReplicaLockedError
from ..protocol import HOST_LABEL, NAMESPACE, Write
from ..raft.types import ConfChange
from ..replica.options import ReplicaOptions
from ..storage.replica_store import ReplicaId
from .faults import FaultPlan
from .loop import ReplicaLoop


def _keepalive_timeout_ms() -> int | None:
    """Ray's gRPC keepalive timeout in this process (:mod:`raykv.tcpbackoff`), None if unknown."""
    try:
        return int(ray._raylet.Config.grpc_client_keepalive_timeout_ms())
    except Exception:  # noqa: BLE001 -- a Ray without this setting
        return None


def _late(message: str):
    return lambda: OperationTimeoutError(message)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0,
            concurrency_groups={"raft": 1, "client": 64, "snapshot": 1, "admin": 4})
class ReplicaActor:
    """Thin Ray shell over :class:`~raykv.runtime.loop.ReplicaLoop` (which owns the engine)."""

    def __init__(self, store: str, shard: int, replica: int, voters: tuple[int, ...], data_dir: str,
                 options: ReplicaOptions, create: bool = True) -> None:
        """``voters``: the founding configuration, used only when ``create`` makes a new replica.
        A restart (Ray re-running this constructor) never founds: see :mod:`raykv.replica.startup`."""
        reconstructed = ray.get_runtime_context().was_current_actor_reconstructed
        try:
            self.loop = ReplicaLoop(data_dir, ReplicaId(store, shard, replica), tuple(voters), options, create,
                                    reconstructed)
        except ReplicaLockedError as e:  # an older incarnation still runs: exit, Ray restarts us later
            print(f"raykv replica {store}:{shard}:{replica}: {e}; exiting", flush=True)
            os._exit(1)
        self.engine = self.loop.engine
        self.node_ip = ray.util.get_node_ip_address()
        self.keepalive_timeout_ms = _keepalive_timeout_ms()

    @ray.method(concurrency_group="raft")
    def deliver(self, batch: tuple) -> tuple:
        """Raft messages from one peer; returns the messages the loop has for that peer once it
        handled them (see :mod:`raykv.runtime.transport`)."""
        return self.loop.deliver(batch)

    @ray.method(concurrency_group="client")
    def submit(self, writes: list[Write]) -> list:
        n = len(writes) if isinstance(writes, (list, tuple)) else 1
        return self.loop.request(lambda rid, at: self.engine.submit(rid, writes, at),
                                 lambda: [OperationTimeoutError("no outcome within the replica's deadline")] * n)

    @ray.method(concurrency_group="client")
    def register_session(self):
        return self.loop.request(lambda rid, at: self.engine.register_session(rid, at),
                                 _late("session registration timed out"))

    @ray.method(concurrency_group="client")
    def read(self, keys: list[bytes], consistency: str = "linearizable"):
        return self.loop.request(lambda rid, at: self.engine.read_keys(rid, keys, consistency, at),
                                 _late("read not confirmed within the replica's deadline"))

    @ray.method(concurrency_group="client")
    def scan(self, start: bytes, end: bytes | None, limit: int, consistency: str = "linearizable"):
        return self.loop.request(lambda rid, at: self.engine.scan(rid, start, end, limit, consistency, at),
                                 _late("read not confirmed within the replica's deadline"))

    @ray.method(concurrency_group="client")
    def change_range(self, change):
        """Resharding: propose a :class:`~raykv.kv.commands.RangeChange` (leader only), wait for it."""
        return self.loop.request(lambda rid, at: self.engine.change_range(rid, change, at),
                                 _late("range change not applied in time"))

    @ray.method(concurrency_group="client")
    def range_rows(self, lo: bytes, hi: bytes | None, limit: int):
        """Resharding: a linearizable page of the rows in ``[lo, hi)``, fenced or not."""
        return self.loop.request(lambda rid, at: self.engine.range_rows(rid, lo, hi, limit, at),
                                 _late("read not confirmed within the replica's deadline"))

    @ray.method(concurrency_group="client")
    def range_stats(self, lo: bytes, hi: bytes | None):
        """Resharding: key count, bytes and median key by bytes of ``[lo, hi)`` (linearizable)."""
        return self.loop.request(lambda rid, at: self.engine.range_stats(rid, lo, hi, at),
                                 _late("read not confirmed within the replica's deadline"))

    @ray.method(concurrency_group="client")
    def range_state(self):
        """Resharding: the group's range state, leader-confirmed (None: it serves every key)."""
        return self.loop.request(lambda rid, at: self.engine.range_state(rid, at),
                                 _late("read not confirmed within the replica's deadline"))

    @ray.method(concurrency_group="client")
    def export_backup(self, backup_id: str, timeout_s: float = 600.0):
        """Leader only: export the user rows at one ReadIndex-confirmed applied index (see
        :mod:`raykv.storage.backup`); ``{"index", "term", "rows", "bytes", "sha256"}`` or an error value."""
        return self.loop.export_backup(backup_id, timeout_s)

    @ray.method(concurrency_group="client")
    def backup_chunk(self, backup_id: str, offset: int, size: int):
        """Bytes ``offset..offset+size`` (at most 8 MiB) of an export, or an error value."""
        return self.loop.backups.chunk(backup_id, offset, size)

    @ray.method(concurrency_group="client")
    def backup_done(self, backup_id: str) -> bool:
        """Remove an export once streamed; True if it existed."""
        return self.loop.backups.remove(backup_id)

    @ray.method(concurrency_group="snapshot")
    def snapshot_chunk(self, transfer: str, offset: int, data: bytes, final: tuple[int, int] | None) -> bool:
        return self.loop.receiver.chunk(transfer, offset, data, final)

    @ray.method(concurrency_group="admin")
    def ping(self) -> bool:
        """The liveness probe, answered by the replica's loop (a wedged loop does not answer)."""
        return self.loop.ping()

    @ray.method(concurrency_group="admin")
    def status(self) -> dict:
        return {**self.loop.status(), "node_ip": self.node_ip, "keepalive_timeout_ms": self.keepalive_timeout_ms}

    @ray.method(concurrency_group="admin")
    def pid(self) -> int:
        return os.getpid()

    @ray.method(concurrency_group="admin")
    def set_faults(self, plan: FaultPlan | None) -> None:
        """Test only: drop or delay this replica's outgoing Raft traffic (see :mod:`raykv.runtime.faults`)."""
        self.loop.call(lambda: self.loop.transport.set_faults(plan, seed=self.loop.ident.replica))

    @ray.method(concurrency_group="admin")
    def force_solo(self) -> dict:
        """UNSAFE, for ``raykv recover`` only: make this replica the only voter of its group, its
        whole log applied (:mod:`raykv.replica.recovery`); returns what it kept. The process then
        exits and Ray restarts the replica from its store, alone in its group; it elects itself."""
        report = self.loop.force_solo()
        threading.Timer(0.5, os._exit, args=(1,)).start()  # after this reply has left
        return report

    @ray.method(concurrency_group="admin")
    def transfer_leader(self, target: int) -> None:
        """Hand leadership to voter ``target`` (leader only); raises the refusal (NotLeaderError, ...)."""
        outcome = self.loop.request(lambda rid, at: self.engine.transfer_leader(rid, target, at),
                                    _late("leadership transfer not started in time"))
        if isinstance(outcome, Exception):
            raise outcome

    @ray.method(concurrency_group="admin")
    def change_membership(self, cc: ConfChange, timeout_s: float = 30.0):
        """Leader only: propose ``cc`` and wait until it is applied; the configuration after it
        (``{"voters", "learners", "joint"}``) or an error value: :class:`NotLeaderError` (with the
        leader hint), :class:`ConfChangeError` (an earlier change not applied yet, a joint
        configuration, an invalid change, the leader removing itself), :class:`ProposalDroppedError`
        (a leadership transfer is under way), :class:`LeadershipLostError` /
        :class:`OperationTimeoutError` (indeterminate: it may still apply; re-read the
        configuration). A joint change is left automatically by the leader after this returns."""
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
            return InvalidRequestError(f"change_membership timeout_s must be a number of seconds, got {timeout_s!r}")
        late = f"{cc.describe() if isinstance(cc, ConfChange) else cc!r} not applied within {timeout_s}s"
        return self.loop.request(lambda rid, at: self.engine.change_membership(rid, cc, at), _late(late),
                                 max(float(timeout_s), 0.1))

    @ray.method(concurrency_group="admin")
    def shutdown(self) -> None:
        """Stop the loop and close LMDB; the actor can then be killed without losing anything acknowledged."""
        self.loop.stop()


def replica_options(name: str, host: str, lifetime: str = "detached") -> dict:
    """``.options(...)`` for a replica actor pinned to ``host`` (the ``raykv-host`` node label)."""
    return dict(name=name, namespace=NAMESPACE, lifetime=lifetime, label_selector={HOST_LABEL: host})
