"""Moving a replica's state to a lagging follower: Arrow snapshot files streamed in bounded chunks.

Sender (the leader; see :class:`SnapshotSender`): when the core asks to send an
``InstallSnapshot`` to a peer, the loop thread exports the replica's *current
applied state* (one LMDB read transaction; its index is at or above the
snapshot the core named, which the core accepts: the follower answers with
the index it installed) to an Arrow IPC file, then a background thread
streams it in ``snapshot_chunk_bytes`` chunks to the peer's
``snapshot_chunk`` method, each call with a deadline, paced to
``snapshot_rate_bytes_per_s``. At most one transfer per peer runs at a time;
the outcome goes back to the core as ``report_snapshot(peer, ok)``.

Receiver (:class:`SnapshotReceiver`): chunks are appended to a part file and
must arrive in order (a gap aborts the transfer; the leader retries later).
The last chunk carries the leader's id and term; the file is fsynced, renamed,
its metadata checked, and an ``InstallSnapshot`` message naming the file is
handed to the core like any other message. The replica installs the rows
(digests verified) in the same transaction as the snapshot metadata, or not at all.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import ray

from ..errors import RayKVError
from ..raft.messages import InstallSnapshot
from ..raft.types import Snapshot
from ..storage.replica_store import ReplicaStore, fsync_dir
from ..storage.snapshot import export_snapshot, read_snapshot_meta
from ..replica.options import ReplicaOptions


class SnapshotSender:
    """Outbound transfers, one per peer at most (loop thread starts them, a worker thread streams)."""

    def __init__(self, me: int, directory: Path, options: ReplicaOptions, handle_of: Callable[[int], object],
                 post: Callable[[Callable[[], None]], None], report: Callable[[int, bool], None]) -> None:
        self.me = me
        self.directory = directory
        self.options = options
        self.handle_of = handle_of
        self.post = post
        self.report = report
        self.active: set[int] = set()
        self._ids = itertools.count(1)
        self.sent = self.sent_bytes = 0  # completed transfers (loop thread)
        for stale in directory.glob("out-*") if directory.is_dir() else ():
            stale.unlink(missing_ok=True)  # exports of transfers cut short by a restart

    def start(self, store: ReplicaStore, msg: InstallSnapshot) -> None:
        """Export now (loop thread: LMDB is only touched there) and stream in the background."""
        if msg.to in self.active:
            return
        handle = self.handle_of(msg.to)
        if handle is None:
            self.post(lambda: self.report(msg.to, False))  # not now: we are inside a Ready
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        transfer = f"{self.me}-{msg.term}-{next(self._ids)}-{os.getpid()}"
        path = self.directory / f"out-{transfer}.arrow"
        export_snapshot(store, path)
        self.active.add(msg.to)
        worker = threading.Thread(target=self._stream, args=(handle, msg, transfer, path), daemon=True,
                                  name=f"raykv-snapshot-to-{msg.to}")
        worker.start()

    def _stream(self, handle, msg: InstallSnapshot, transfer: str, path: Path) -> None:
        ok, size = False, 0
        try:
            size = path.stat().st_size
            ok = self._send_chunks(handle, msg, transfer, path)
        except Exception:  # noqa: BLE001 -- a failed transfer is reported, the leader retries later
            ok = False
        finally:
            path.unlink(missing_ok=True)
            self.post(lambda: self._finished(msg.to, ok, size))

    def _send_chunks(self, handle, msg: InstallSnapshot, transfer: str, path: Path) -> bool:
        size, chunk = path.stat().st_size, self.options.snapshot_chunk_bytes
        started = time.monotonic()
        with open(path, "rb") as f:
            offset = 0
            while True:
                data = f.read(chunk)
                final = (msg.frm, msg.term) if offset + len(data) >= size else None
                ref = handle.snapshot_chunk.remote(transfer, offset, data, final)
                if not ray.get(ref, timeout=self.options.call_deadline_s + len(data) / self.options.snapshot_rate_bytes_per_s):
                    return False
                offset += len(data)
                if final is not None:
                    return True
                self._pace(offset, started)

    def _pace(self, sent_bytes: int, started: float) -> None:
        ahead = sent_bytes / self.options.snapshot_rate_bytes_per_s - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)

    def _finished(self, peer: int, ok: bool, size: int) -> None:
        self.active.discard(peer)
        self.sent += ok
        self.sent_bytes += size if ok else 0
        self.report(peer, ok)


class SnapshotReceiver:
    """Inbound transfers: ordered chunks into part files, then a message for the core."""

    def __init__(self, me: int, directory: Path, deliver: Callable[[InstallSnapshot], None]) -> None:
        self.me = me
        self.directory = directory
        self.deliver = deliver
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}
        self.received = self.received_bytes = 0  # complete files; chunk bytes (snapshot thread)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("in-*"):
            stale.unlink(missing_ok=True)  # transfers cut short by a restart

    def chunk(self, transfer: str, offset: int, data: bytes, final: tuple[int, int] | None) -> bool:
        """Append one chunk; False if it does not continue the transfer (the sender gives up)."""
        if not transfer.replace("-", "").isalnum():
            return False
        part = self.directory / f"in-{transfer}.part"
        with self._lock:
            if offset == 0:
                self._drop_other_parts(transfer)
            if offset != self._sizes.get(transfer, 0):
                self._sizes.pop(transfer, None)
                part.unlink(missing_ok=True)
                return False
            with open(part, "ab" if offset else "wb") as f:
                f.write(data)
                if final is not None:
                    f.flush()
                    os.fsync(f.fileno())
            self._sizes[transfer] = offset + len(data)
            self.received_bytes += len(data)
            if final is None:
                return True
            del self._sizes[transfer]
        return self._complete(part, transfer, final)

    def _drop_other_parts(self, transfer: str) -> None:
        """A new transfer starts: earlier ones that never finished (their sender gave up) go."""
        for other in list(self._sizes):
            if other != transfer:
                del self._sizes[other]
                (self.directory / f"in-{other}.part").unlink(missing_ok=True)

    def _complete(self, part: Path, transfer: str, final: tuple[int, int]) -> bool:
        path = self.directory / f"in-{transfer}.arrow"
        os.replace(part, path)
        fsync_dir(self.directory)
        try:
            meta = read_snapshot_meta(path)
        except RayKVError:
            path.unlink(missing_ok=True)
            return False
        frm, term = final
        self.received += 1
        self.deliver(InstallSnapshot(frm, self.me, term, Snapshot(meta, str(path).encode())))
        return True
