"""One start of a store at a time: a named actor held while a process starts it.

Two processes starting the same store at once would race on its actors: the replica actors
are named (``get_if_exists``), so both hold the same ones, and a start that fails or is
interrupted removes the replica actors it started -- which would be the other start's too.
So :func:`start_store <raykv.runtime.store.start_store>` first takes the store's guard: a
named actor (:func:`~raykv.protocol.start_guard_name`) that only one process can create. A
second start waits until the first ended (then it reopens what the first created). The guard
is not detached: it dies with the process that holds it, so a start killed with ``kill -9``
frees it, and its leftover actors are what the next start (or ``stop``) removes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import ray

from ..errors import UnavailableError
from ..protocol import NAMESPACE, start_guard_name

START_WAIT_S = 300.0
"""How long a start waits for another start of the same store to end."""


@ray.remote(num_cpus=0, max_restarts=0)
class _StartGuard:
    """Holds the name; does nothing else."""

    def held(self) -> bool:
        return True


@contextlib.contextmanager
def one_start_at_a_time(store: str, wait_s: float = START_WAIT_S) -> Iterator[None]:
    """Hold ``store``'s start guard for the ``with`` block, waiting up to ``wait_s`` for another
    start to end. Raises :class:`UnavailableError` if it did not."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            guard = _StartGuard.options(name=start_guard_name(store), namespace=NAMESPACE).remote()
            break
        except ValueError:  # ActorAlreadyExistsError: another process is starting this store
            if time.monotonic() >= deadline:
                raise UnavailableError(f"another start of store {store!r} has been running for {wait_s:g}s; "
                                       f"wait for it (or interrupt it) and try again") from None
            time.sleep(0.2)
    try:
        yield
    finally:
        _release(guard)


def _release(guard) -> None:
    """Kill the guard once its actor is up (killing one whose worker is still starting makes
    the GCS log errors onto the user's console); a start takes longer than that anyway."""
    try:
        ray.get(guard.held.remote(), timeout=30)
    except Exception:  # noqa: BLE001 -- killed below whatever state it is in
        pass
    ray.kill(guard, no_restart=True)


def start_in_progress(store: str, wait_s: float = 0.0) -> bool:
    """Whether a process is starting ``store`` (it holds the guard), after waiting up to
    ``wait_s`` for that start to end (a process killed while starting frees the guard once
    Ray has noticed its death: about a second)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            ray.get_actor(start_guard_name(store), namespace=NAMESPACE)
        except ValueError:
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.2)
