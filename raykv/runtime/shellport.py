"""The engine's shell port on Ray: Raft messages by one-way actor calls, snapshots as Arrow files.

:class:`RayShellPort` implements :class:`raykv.replica.ports.Shell` for
:class:`~raykv.runtime.loop.ReplicaLoop`. Every method runs on the loop thread,
inside an engine call, and returns at once: outcomes come back to the engine as
posted inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..raft.messages import InstallSnapshot, Message
from ..storage.snapshot import iter_snapshot_rows

if TYPE_CHECKING:
    from .loop import ReplicaLoop


class RayShellPort:
    def __init__(self, loop: "ReplicaLoop") -> None:
        self._loop = loop

    def send(self, messages: list[Message]) -> None:
        self._loop.transport.send(messages)

    def send_snapshot(self, message: InstallSnapshot) -> None:
        """Export the applied state now (the loop thread is the one that may read LMDB) and
        stream it from a worker thread (:mod:`raykv.runtime.snapshots`)."""
        self._loop.sender.start(self._loop.store, message)

    def probe(self, peer: int) -> None:
        """Ping ``peer``'s loop; a failure or missed deadline becomes ``engine.probe_failed``."""
        loop = self._loop
        loop.transport.probe(peer, lambda reason: loop.post(lambda at: loop.engine.probe_failed(peer, reason, at)))

    def snapshot_rows(self, data: bytes):
        path = Path(data.decode())
        return lambda: iter_snapshot_rows(path)

    def drop_snapshot(self, data: bytes) -> None:
        Path(data.decode()).unlink(missing_ok=True)
