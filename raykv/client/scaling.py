"""The client side of online resharding: :meth:`Client.scale <raykv.client.store.Client.scale>`.

The store's router records the operation in the meta group and drives it
(:mod:`raykv.runtime.scale`); this module starts it and, with ``wait``, polls
its record until it is done, calling ``on_progress`` with each new record.
Reads and writes keep working meanwhile: the client re-routes by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray
import ray.exceptions

from ..errors import OperationTimeoutError, PlacementError, RayKVError, StoreNotFoundError, UnavailableError

POLL_S = 0.25
"""How often a waiting :func:`scale` re-reads the operation's record."""


def call_router(store: str, method: str, *args: Any, timeout_s: float = 60.0) -> Any:
    """``router.method(*args)`` on the router of ``store``. Raises StoreNotFoundError (no such
    router, or it was stopped), UnavailableError (Ray not initialized, the router failed or did not
    answer), or the raykv error the router raised."""
    from ..protocol import router_name
    from ..protocol import NAMESPACE

    if not ray.is_initialized():
        raise UnavailableError("Ray is not initialized in this process: use raykv.connect() or ray.init() first")
    try:
        router = ray.get_actor(router_name(store), namespace=NAMESPACE)
    except ValueError:
        raise StoreNotFoundError(f"no store named {store!r} runs on this Ray cluster") from None
    try:
        return ray.get(getattr(router, method).remote(*args), timeout=timeout_s)
    except ray.exceptions.ActorDiedError:
        raise StoreNotFoundError(f"the store {store!r} was stopped") from None
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, RayKVError):
            raise cause from None
        raise UnavailableError(f"the router of store {store!r} failed: {exc}") from None
    except ray.exceptions.RayError as exc:
        raise UnavailableError(f"the router of store {store!r} did not answer: {exc!r}") from None


def scale(store: str, shards: int, *, wait: bool = True, timeout_s: float | None = None,
          retire_grace_s: float = 10.0, on_progress: Callable[[dict], None] | None = None) -> dict:
    """Start resharding ``store`` to ``shards`` shards; with ``wait``, return once it is done.

    Returns the operation's final record (``state``, ``steps_done``, ``moved_bytes``, ...).
    Raises InvalidRequestError (bad count, another scale in flight), PlacementError if the
    operation failed, OperationTimeoutError if ``timeout_s`` passed first (it goes on).
    """
    record = call_router(store, "scale", shards, retire_grace_s)
    if on_progress is not None:
        on_progress(record)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while wait and record.get("state") == "running":
        if deadline is not None and time.monotonic() > deadline:
            raise OperationTimeoutError(f"store {store!r}: scale to {shards} still running after {timeout_s:g}s "
                                        f"(it continues): {record.get('text', '')}")
        time.sleep(POLL_S)
        fresh = call_router(store, "scale_status")
        if fresh is not None and fresh != record:
            record = fresh
            if on_progress is not None:
                on_progress(record)
    if record.get("state") == "failed":
        raise PlacementError(f"store {store!r}: scale to {shards} failed: {record.get('error')}")
    return record


def operation_text(store: str) -> str | None:
    """One line about the resharding in flight, None if none (or the router cannot say)."""
    try:
        record = call_router(store, "scale_status", timeout_s=5.0)
    except RayKVError:
        return None
    return record.get("text") if record and record.get("state") == "running" else None
