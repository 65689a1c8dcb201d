"""A seeded random workload on a real LMDB replica store, run until SIGKILLed (storage crash tests).

Usage::

    python tests/crash_worker.py <dir> <seed> <mode>     # one worker on <dir>, until killed
    python tests/crash_worker.py --serve                 # fork server used by test_storage_crash.py

``mode`` is ``log`` (appends with conflicting suffixes, hard states, applies),
``snap`` (``log`` plus Arrow exports, ``create_snapshot`` and ``compact``) or
``install`` (``snap`` plus installing snapshots that it builds on a second
store, ``<dir>/crash-src``). The worker opens whatever is in ``<dir>``: a fresh
directory starts an empty store, an existing one resumes after a crash.

Protocol (stdout, one JSON object per line, each written with one
``os.write`` so a kill never leaves half a line):

* ``{"pid": ...}`` first;
* before every durable operation an *intent* ``{"seq": n, "op": ..., ...}``
  describing it completely, and after the operation returned an
  ``{"ack": n}``: everything an acknowledged intent describes is durable;
  at most the last intent is unacknowledged, and its operation may or may
  not have happened (but never half);
* ``{"error": traceback}`` if the workload itself fails (a bug).

Values are derived from what they describe, so the checker can recompute
them: entry ``i`` of term ``t`` carries ``b"e{i}@{t}:"`` plus padding, applying
it writes key ``b"k{i}"`` = ``b"v{i}@{t}"`` and session ``i % 4`` =
``b"s{i}"``, all in one transaction with the applied index.

``--serve`` imports everything once, then for every command line on stdin
(``{"dir", "seed", "mode"}``) forks one worker writing to the same stdout,
waits for it to die and writes ``{"exit": pid, "status": ...}``. Forking from a
warm process makes a kill point cost milliseconds instead of the ~0.4 s of
starting Python and importing pyarrow, so CI can afford hundreds of them.
"""

from __future__ import annotations

import json
import os
import random
import sys
import traceback
from pathlib import Path

from raykv.raft.types import ConfState, Entry, HardState
from raykv.storage.replica_store import ReplicaId, ReplicaStore

MAIN = ReplicaId("crash", 0, 1)
SOURCE = ReplicaId("crash-src", 0, 1)
CONFS = (
    ConfState(voters=(1, 2, 3)),
    ConfState(voters=(1, 2, 3), learners=(4,)),
    ConfState(voters=(1, 2, 4)),
)
SOURCE_CONF = ConfState(voters=(1, 2, 3), learners=(5,))
MAX_OPS = 100_000  # a runaway guard: the parent kills far earlier
SESSIONS = 4


# -- the derived values, shared with the checker ---------------------------------------------------
def entry_prefix(index: int, term: int) -> bytes:
    return b"e%d@%d:" % (index, term)


def user_key(index: int) -> bytes:
    return b"k%d" % index


def user_value(index: int, term: int) -> bytes:
    return b"v%d@%d" % (index, term)


def session_blob(index: int) -> bytes:
    return b"s%d" % index


def conf_json(conf: ConfState) -> dict:
    return {"voters": list(conf.voters), "learners": list(conf.learners)}


def conf_from_json(obj: dict) -> ConfState:
    return ConfState(voters=tuple(obj["voters"]), learners=tuple(obj["learners"]))


class LogModel:
    """What the worker knows of one store: terms of its log entries and the applied index."""

    def __init__(self, store: ReplicaStore) -> None:
        self.store = store
        hs, self.conf = store.initial_state()
        self.hs = hs
        self.floor = (store.first_index() - 1, store.term(store.first_index() - 1))
        last = store.last_index()
        ents = store.entries(self.floor[0] + 1, last + 1, 2**62) if last > self.floor[0] else []
        self.terms = {e.index: e.term for e in ents}
        self.applied = store.applied_index()
        self.snap_index = store.snapshot().meta.index

    @property
    def last(self) -> int:
        return max(self.terms) if self.terms else self.floor[0]

    def term_at(self, index: int) -> int:
        return self.floor[1] if index == self.floor[0] else self.terms[index]


class Worker:
    def __init__(self, root: Path, seed: int, mode: str, out_fd: int) -> None:
        self.root, self.mode, self.out = root, mode, out_fd
        self.rng = random.Random(seed)
        self.seq = 0
        self.exports = 0
        self.emit({"pid": os.getpid()})
        self.m = LogModel(ReplicaStore(root, MAIN))
        self.src: LogModel | None = None

    # -- protocol ------------------------------------------------------------------------------
    def emit(self, obj: dict) -> None:
        os.write(self.out, (json.dumps(obj) + "\n").encode())

    def durable(self, intent: dict, operation) -> None:
        """Announce ``intent``, run it, acknowledge it: the acknowledgement means it is durable."""
        self.seq += 1
        self.emit({"seq": self.seq, **intent})
        operation()
        self.emit({"ack": self.seq})

    # -- the workload --------------------------------------------------------------------------
    def run(self) -> None:
        for _ in range(MAX_OPS):
            r = self.rng.random()
            if self.mode == "install" and r < 0.08:
                self.install()
            elif self.mode in ("snap", "install") and r < 0.16:
                self.snapshot_and_compact()
            elif r < 0.45 and self.m.applied < self.m.hs.commit:
                self.apply()
            elif r < 0.6:
                self.hard_state()
            else:
                self.append()
        self.emit({"done": self.seq})

    def new_term(self, hs: HardState, bump: int) -> HardState:
        """Term ``hs.term + bump``, with a vote for a random candidate or none."""
        return HardState(hs.term + bump, self.rng.choice([0, 1, 2, 3]), hs.commit)

    def hard_state(self) -> None:
        m, hs = self.m, self.m.hs
        r = self.rng.random()
        if r < 0.3:
            hs = self.new_term(hs, self.rng.choice([1, 1, 2]))
        elif r < 0.45 and hs.vote == 0:
            hs = HardState(hs.term, self.rng.choice([1, 2, 3]), hs.commit)
        commit = self.rng.randint(hs.commit, m.last) if self.rng.random() < 0.8 else hs.commit
        hs = HardState(hs.term, hs.vote, commit)
        self.durable({"op": "persist", "hs": [hs.term, hs.vote, hs.commit], "first": 0, "terms": []},
                     lambda: m.store.persist(hard_state=hs))
        m.hs = hs

    def append(self) -> None:
        m, hs = self.m, self.m.hs
        low = max(hs.commit, m.floor[0])  # never truncate committed (or compacted) entries
        conflict = m.last > low and self.rng.random() < 0.25
        if conflict or hs.term == 0 or self.rng.random() < 0.1:
            hs = self.new_term(hs, 1)  # a new leader's entries carry its (higher) term
        first = self.rng.randint(low + 1, m.last) if conflict else m.last + 1
        count = self.rng.choice([1, 1, 2, 3, 5, 8, 20, 60])
        pads = [self.rng.choice([0, 0, 16, 100, 1000, 3000]) for _ in range(count)]
        if self.rng.random() < 0.03:
            pads[-1] = 70_000  # an overflow page
        ents = [Entry(first + i, hs.term, data=entry_prefix(first + i, hs.term) + b"." * p) for i, p in enumerate(pads)]
        new_last = first + count - 1
        if self.rng.random() < 0.5:
            hs = HardState(hs.term, hs.vote, self.rng.randint(hs.commit, new_last))
        changed = hs != m.hs
        intent = {"op": "persist", "hs": [hs.term, hs.vote, hs.commit] if changed else None,
                  "first": first, "terms": [hs.term] * count}
        self.durable(intent, lambda: m.store.persist(hard_state=hs if changed else None, entries=ents))
        m.hs = hs
        for i in [i for i in m.terms if i >= first]:
            del m.terms[i]
        m.terms.update({e.index: e.term for e in ents})

    def apply(self) -> None:
        m = self.m
        lo = m.applied + 1
        hi = min(m.hs.commit, lo + self.rng.choice([0, 1, 4, 30]))
        conf = self.rng.choice(CONFS) if self.rng.random() < 0.15 else None
        terms = {i: m.term_at(i) for i in range(lo, hi + 1)}

        def body(tx) -> None:
            for i in range(lo, hi + 1):
                tx.put(user_key(i), user_value(i, terms[i]))
                tx.put_session(i % SESSIONS, session_blob(i))
            if conf is not None:
                tx.set_conf(conf)
            tx.set_applied(hi)

        intent = {"op": "apply", "lo": lo, "hi": hi, "conf": conf_json(conf) if conf else None}
        self.durable(intent, lambda: m.store.apply(body))
        m.applied = hi
        m.conf = conf or m.conf

    def snapshot_and_compact(self) -> None:
        m = self.m
        if m.applied > m.snap_index:
            self.exports += 1
            name = f"main-{m.applied}-{os.getpid()}-{self.exports}.arrow"
            path = self.root / "snaps" / name
            path.parent.mkdir(exist_ok=True)
            chunk = self.rng.choice([64, 1000, 1 << 20])
            self.durable({"op": "export", "path": str(path), "index": m.applied, "chunk": chunk},
                         lambda: export_snapshot(m.store, path, chunk))
            index, conf = m.applied, m.conf
            self.durable({"op": "create_snapshot", "index": index, "data": name},
                         lambda: m.store.create_snapshot(index, conf, name.encode()))
            m.snap_index = index
        if m.snap_index > m.floor[0]:
            upto = m.snap_index if self.rng.random() < 0.5 else self.rng.randint(m.floor[0] + 1, m.snap_index)
            self.durable({"op": "compact", "index": upto}, lambda: m.store.compact(upto))
            m.floor = (upto, m.terms[upto])
            for i in [i for i in m.terms if i <= upto]:
                del m.terms[i]

    # -- snapshot installs: built on a second store, then installed on the main one -------------
    def source(self) -> LogModel:
        """The source store, with everything it holds applied (it may have crashed in between)."""
        if self.src is None:
            self.src = LogModel(ReplicaStore(self.root, SOURCE))
        s = self.src
        if s.applied < s.last:
            lo, hi, terms = s.applied + 1, s.last, dict(s.terms)

            def body(tx) -> None:
                for i in range(lo, hi + 1):
                    tx.put(user_key(i), user_value(i, terms[i]))
                    tx.put_session(i % SESSIONS, session_blob(i))
                tx.set_conf(SOURCE_CONF)
                tx.set_applied(hi)

            s.store.apply(body)
            s.applied = hi
        return s

    def install(self) -> None:
        m, s = self.m, self.source()
        target = max(m.hs.commit + self.rng.randint(1, 40), s.applied + 1)
        term = max(s.hs.term, m.hs.term) + 1
        ents = [Entry(i, term, data=entry_prefix(i, term)) for i in range(s.last + 1, target + 1)]
        s.store.persist(hard_state=HardState(term, 1, target), entries=ents)
        s.hs = HardState(term, 1, target)
        s.terms.update({e.index: e.term for e in ents})
        s = self.source()
        self.exports += 1
        path = self.root / "snaps" / f"src-{target}-{os.getpid()}-{self.exports}.arrow"
        path.parent.mkdir(exist_ok=True)
        export_snapshot(s.store, path, self.rng.choice([100, 4096]))
        hs = HardState(term, 1, target)  # a new leader (node 1) sent it; everything up to target is committed
        self.durable({"op": "install", "path": str(path), "hs": [hs.term, hs.vote, hs.commit]},
                     lambda: install_snapshot(m.store, path, hard_state=hs))
        m.hs, m.terms, m.floor, m.applied, m.snap_index = hs, {}, (target, term), target, target
        m.conf = SOURCE_CONF


def export_snapshot(store, path, chunk):
    from raykv.storage.snapshot import export_snapshot as export

    return export(store, path, chunk)


def install_snapshot(store, path, hard_state):
    from raykv.storage.snapshot import install_snapshot as install

    return install(store, path, hard_state=hard_state)


def run_worker(root: str, seed: int, mode: str, out_fd: int = 1) -> None:
    try:
        Worker(Path(root), seed, mode, out_fd).run()
    except BrokenPipeError:
        pass  # the parent went away
    except BaseException:
        os.write(out_fd, (json.dumps({"error": traceback.format_exc()}) + "\n").encode())
        raise


def serve() -> None:
    """Fork one worker per command on stdin; report its death on stdout (see the module doc)."""
    import raykv.storage.snapshot  # noqa: F401  (warm: children skip importing pyarrow)

    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    os.write(1, (json.dumps({"ready": os.getpid(), "threads": threads}) + "\n").encode())
    for line in sys.stdin:
        cmd = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                run_worker(cmd["dir"], cmd["seed"], cmd["mode"])
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        os.write(1, (json.dumps({"exit": pid, "status": status}) + "\n").encode())


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        root, seed, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
        run_worker(root, seed, mode)
