"""Concurrent client workloads that record histories for the linearizability checker.

:class:`Workload` runs ``clients`` threads against any object with raykv's
client API (``put``, ``get``, ``delete``, ``cas``), each doing random
operations on a small key set so operations conflict, and records every
operation in a :class:`~raykv.testing.history.HistoryRecorder` following the
error contract of :mod:`raykv.errors`: a :class:`DefiniteError` drops the op,
an :class:`IndeterminateError` (or an op still running when the history is
taken) records it as indeterminate. Written values are unique per history, so
a read identifies the write it saw. Needs no Ray: tests pass a real client.

To keep the checker's search small, indeterminate writes are bounded per key:
after ``max_indeterminate_per_key`` a client stops writing that key.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..errors import DefiniteError, IndeterminateError
from .history import HistoryRecorder, Op


@dataclass
class WorkloadStats:
    ok: int = 0
    failed: int = 0
    indeterminate: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class Workload:
    """Random put/get/delete/cas traffic from ``clients`` threads; see the module docstring."""

    def __init__(self, client, keys: list, clients: int = 4, seed: int = 0,
                 consistency: str | Sequence[str] = "linearizable", max_indeterminate_per_key: int = 6,
                 mix: tuple[float, float, float] = (0.45, 0.35, 0.1), first_client: int = 0,
                 recorder=None) -> None:
        """``mix``: probabilities of put, get and delete; the rest is cas. ``consistency``: the read
        level of every client, or one per client in turn (client ``c`` reads with ``[c % len]``).
        ``first_client``: the id of the first thread (ids, and so written values, must not repeat
        across workloads whose histories are checked together); ``recorder``: where the history
        goes (default a :class:`HistoryRecorder`; an :class:`~raykv.testing.history.EventLog` keeps
        it in a file that outlives the process)."""
        self.client = client
        self.keys = list(keys)
        self.clients = clients
        self.seed = seed
        self.consistency = (consistency,) if isinstance(consistency, str) else tuple(consistency)
        self.mix = mix
        self.max_indeterminate_per_key = max_indeterminate_per_key
        self.first_client = first_client
        self.recorder = recorder if recorder is not None else HistoryRecorder()
        self.stats = WorkloadStats()
        self.acknowledged: dict[object, object] = {}
        """Key -> a value recently written there (a guess for cas's ``expected``, not a check)."""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._counter = 0
        self._indeterminate: dict[object, int] = {}
        self._threads: list[threading.Thread] = []

    def start(self) -> "Workload":
        for c in range(self.first_client, self.first_client + self.clients):
            t = threading.Thread(target=self._run, args=(c, random.Random(self.seed * 1000 + c)), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout_s: float = 60.0) -> list[Op]:
        """Stop the threads (each finishes its current op) and return the history."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout_s)
        return self.recorder.history()

    def stop_with_final_reads(self, timeout_s: float = 60.0) -> list[Op]:
        """:meth:`stop`, then one linearizable read of every key, recorded after everything
        else under a client id of its own: the history then also checks the final state
        (every acknowledged write that was not overwritten is still there)."""
        self.stop(timeout_s)
        for key in self.keys:
            token = self.recorder.invoke(self.first_client + self.clients, "get", key)
            self.recorder.ok(token, self.client.get(key))
        return self.recorder.history()

    def wait_for_ops(self, count: int, timeout_s: float) -> bool:
        """Block until ``count`` more ops completed successfully (True) or the timeout passed."""
        target = self.stats.ok + count
        deadline = threading.Event()
        timer = threading.Timer(timeout_s, deadline.set)
        timer.start()
        try:
            while self.stats.ok < target and not deadline.is_set():
                deadline.wait(0.05)
            return self.stats.ok >= target
        finally:
            timer.cancel()

    def _unique_value(self, client: int) -> str:
        with self._lock:
            self._counter += 1
            return f"c{client}-{self._counter}"

    def _run(self, client: int, rng: random.Random) -> None:
        while not self._stop.is_set():
            key = rng.choice(self.keys)
            kind = self._pick_kind(rng, key)
            args = self._args(kind, client, key, rng)
            self._one(client, kind, key, args)

    def _pick_kind(self, rng: random.Random, key) -> str:
        roll = rng.random()
        put, get, delete = self.mix
        if self._indeterminate.get(key, 0) >= self.max_indeterminate_per_key:
            return "get"
        if roll < put:
            return "put"
        if roll < put + get:
            return "get"
        return "delete" if roll < put + get + delete else "cas"

    def _args(self, kind: str, client: int, key, rng: random.Random) -> tuple:
        if kind == "put":
            return (self._unique_value(client),)
        if kind == "cas":
            expected = self.acknowledged.get(key) if rng.random() < 0.7 else None
            return (expected, self._unique_value(client))
        return ()

    def _call(self, client: int, kind: str, key, args: tuple) -> Callable[[], object]:
        c = self.client
        return {
            "put": lambda: c.put(key, args[0]),
            "get": lambda: c.get(key, consistency=self.consistency[client % len(self.consistency)]),
            "delete": lambda: c.delete(key),
            "cas": lambda: c.cas(key, args[0], args[1]),
        }[kind]

    def _one(self, client: int, kind: str, key, args: tuple) -> None:
        token = self.recorder.invoke(client, kind, key, args)
        try:
            output = self._call(client, kind, key, args)()
        except IndeterminateError as e:
            self.recorder.indeterminate(token)
            self._count_error(e, indeterminate=True, key=key)
            return
        except DefiniteError as e:
            self.recorder.failed(token)
            self._count_error(e, indeterminate=False, key=key)
            return
        self.recorder.ok(token, output)
        with self._lock:
            self.stats.ok += 1
            if kind == "put" or (kind == "cas" and output):
                self.acknowledged[key] = args[-1]
            elif kind == "delete":
                self.acknowledged.pop(key, None)

    def _count_error(self, e: Exception, indeterminate: bool, key) -> None:
        with self._lock:
            name = type(e).__name__
            self.stats.errors[name] = self.stats.errors.get(name, 0) + 1
            if indeterminate:
                self.stats.indeterminate += 1
                self._indeterminate[key] = self._indeterminate.get(key, 0) + 1
            else:
                self.stats.failed += 1
