"""Where the state machine keeps user data and the session table.

:class:`KVBackend` is the whole interface between :class:`~raykv.kv.machine.KVStateMachine`
and storage. The replica store implements it over one LMDB write transaction
per applied batch, so data, sessions and the applied index commit together and
replay after a crash is idempotent. :class:`MemoryBackend` is the in-memory
version used by tests and the simulator.

Contracts every implementation must keep (the machine's determinism relies on them):

* ``get`` returns exactly the bytes last ``put`` (``bytes``, not a buffer
  that a later write could change); keys are non-empty and at most
  ``KVLimits.max_key_bytes`` long (the machine validates before calling).
* ``sessions()`` yields every session in ascending session id. The machine
  consumes it completely before it writes, so an implementation may return a
  live cursor.
* Methods raise only for real storage failures; the host must then abort the
  surrounding transaction (the machine may have written part of an entry's
  effects, e.g. the first ops of a batch, before the failure).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from .ranges import RESERVED_PREFIX


@runtime_checkable
class KVBackend(Protocol):
    """User data (``bytes -> bytes``) and session blobs (``int -> bytes``)."""

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key``, or None if it is absent."""
        ...

    def put(self, key: bytes, value: bytes) -> None:
        """Set ``key`` to ``value`` (insert or overwrite)."""
        ...

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; True iff it was present."""
        ...

    def delete_range(self, lo: bytes, hi: bytes | None) -> int:
        """Remove every key in ``[lo, hi)`` (``hi=None``: unbounded) except raykv's own rows
        (keys starting with ``0x00``); returns how many were removed."""
        ...

    def get_session(self, sid: int) -> bytes | None:
        """The blob of session ``sid``, or None if there is no such session."""
        ...

    def put_session(self, sid: int, blob: bytes) -> None:
        """Store (insert or overwrite) the blob of session ``sid``."""
        ...

    def delete_session(self, sid: int) -> None:
        """Remove session ``sid``; a missing session is not an error."""
        ...

    def sessions(self) -> Iterable[tuple[int, bytes]]:
        """Every ``(sid, blob)``, in ascending ``sid``."""
        ...


class MemoryBackend:
    """A :class:`KVBackend` over two dicts. Iteration is sorted, hence deterministic."""

    __slots__ = ("_data", "_sessions")

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._sessions: dict[int, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self._data[bytes(key)] = bytes(value)

    def delete(self, key: bytes) -> bool:
        return self._data.pop(key, None) is not None

    def delete_range(self, lo: bytes, hi: bytes | None) -> int:
        doomed = [k for k in self._data if lo <= k and (hi is None or k < hi) and not k.startswith(RESERVED_PREFIX)]
        for key in doomed:
            del self._data[key]
        return len(doomed)

    def get_session(self, sid: int) -> bytes | None:
        return self._sessions.get(sid)

    def put_session(self, sid: int, blob: bytes) -> None:
        self._sessions[sid] = bytes(blob)

    def delete_session(self, sid: int) -> None:
        self._sessions.pop(sid, None)

    def sessions(self) -> list[tuple[int, bytes]]:
        """A sorted snapshot (safe to hold while the backend changes)."""
        return [(sid, self._sessions[sid]) for sid in sorted(self._sessions)]

    def items(self) -> list[tuple[bytes, bytes]]:
        """All user data, sorted by key (for tests and snapshots)."""
        return [(key, self._data[key]) for key in sorted(self._data)]

    def clone(self) -> "MemoryBackend":
        """An independent copy (values are immutable bytes, so a shallow copy suffices)."""
        other = MemoryBackend()
        other._data = dict(self._data)
        other._sessions = dict(self._sessions)
        return other

    def __len__(self) -> int:
        """Number of user keys."""
        return len(self._data)

    def describe(self) -> str:
        return f"memory backend: {len(self._data)} keys, {len(self._sessions)} sessions"
