"""How the client reaches replica actors: the :class:`_Transport` protocol and its Ray implementation.

Also the transport-level failures the core distinguishes: :class:`_CallNotSent`
(definitely not sent), :class:`_CallLost` (no reply in time; may have executed)
and :class:`_ProtocolError` (a malformed reply, treated like a lost one).
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import TYPE_CHECKING, Any, Protocol

import ray
import ray.exceptions

from ..errors import UnavailableError
from ..protocol import NAMESPACE

if TYPE_CHECKING:
    from .route import _ShardRoute


class _CallNotSent(Exception):
    """The call never reached a replica (its actor could not be looked up or submitted to)."""


class _ActorGone(_CallNotSent):
    """The replica's actor does not exist (Ray knows no actor by its name): not restarting, gone."""


class _CallLost(Exception):
    """The call's reply did not arrive within its deadline (the call may still execute)."""


class _ProtocolError(Exception):
    """A reply did not match the protocol (a replica bug); treated like a lost reply."""


class _Transport(Protocol):
    """How the client reaches replica actors (the Ray one, or a fake in tests).

    ``call`` may block briefly (an actor lookup) and is made from lane threads
    only. It returns a future of the method's reply value; the future fails
    with any exception if the call failed in transport. ``call`` itself raises
    :class:`_CallNotSent` when nothing was sent.
    """

    def call(self, rid: int, method: str, args: tuple) -> concurrent.futures.Future: ...

    def close(self) -> None: ...


class _RayTransport:
    """Calls replica actors by name through Ray; caches handles, forgets those of dead actors."""

    def __init__(self, route: _ShardRoute) -> None:
        if not ray.is_initialized():
            raise UnavailableError(
                "Ray is not initialized in this process: call ray.init(address=...) before creating a Client"
            )
        self._route = route
        self._handles: dict[int, Any] = {}
        self._lock = threading.Lock()

    def call(self, rid: int, method: str, args: tuple) -> concurrent.futures.Future:
        handle = self._handle(rid)
        try:
            ref = getattr(handle, method).remote(*args)
        except Exception as exc:
            self._forget(rid, handle)
            raise _CallNotSent(f"cannot call {method} on {self._route.actor_name(rid)!r}: {exc!r}") from exc
        future = ref.future()
        future.add_done_callback(lambda f: self._after_call(rid, handle, f))
        return future

    def close(self) -> None:
        with self._lock:
            self._handles.clear()

    def _handle(self, rid: int) -> Any:
        with self._lock:
            handle = self._handles.get(rid)
        if handle is not None:
            return handle
        try:
            handle = ray.get_actor(self._route.actor_name(rid), namespace=NAMESPACE)
        except ValueError as exc:  # no actor by that name
            raise _ActorGone(f"replica actor {self._route.actor_name(rid)!r} not found: {exc}") from exc
        except Exception as exc:  # RaySystemError: Ray shut down
            raise _CallNotSent(f"cannot look up replica actor {self._route.actor_name(rid)!r}: {exc}") from exc
        with self._lock:
            return self._handles.setdefault(rid, handle)

    def _forget(self, rid: int, handle: Any) -> None:
        with self._lock:
            if self._handles.get(rid) is handle:
                del self._handles[rid]

    def _after_call(self, rid: int, handle: Any, future: concurrent.futures.Future) -> None:
        """A dead actor may be re-created under the same name: look it up again next time."""
        if not future.cancelled() and isinstance(future.exception(), ray.exceptions.ActorDiedError):
            self._forget(rid, handle)
