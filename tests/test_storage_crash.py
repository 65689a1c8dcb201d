"""Storage crash tests: a real LMDB replica store in a subprocess, SIGKILLed at random points, reopened.

:mod:`crash_worker` runs a seeded random workload (appends with conflicting
suffixes, hard states, applies, Arrow exports, ``create_snapshot``,
``compact``, snapshot installs) and announces every durable operation before
it starts (an *intent*) and after it returned (an *ack*). The test kills it
after a random number of acks, reopens the store and requires it to be
**exactly** the state after the acknowledged operations, or that state plus
the one operation in flight -- never anything in between (a half-applied
batch, a torn hard state, a mix of the old and the installed snapshot).
Besides that exact comparison it checks the workload's invariants directly
(every key at or below the applied index holds the value derived from its
entry, none above it; term/vote/commit never move back; the log is contiguous)
and that acknowledged snapshot exports are complete files with the right
contents while an interrupted one left either nothing or a complete file
under its final name. Then a new worker resumes on the same directory, to be
killed again.

Workers are forked from a warm server (``crash_worker.py --serve``) so a kill
point costs milliseconds; one test also runs the plain command line
``python tests/crash_worker.py <dir> <seed> <mode>``.
"""

from __future__ import annotations

import copy
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from raykv.raft.types import ConfState, HardState
from raykv.storage.records import encode_u64
from raykv.storage.replica_store import ReplicaStore
from raykv.storage.snapshot import iter_snapshot_rows, read_snapshot_meta

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crash_worker as cw  # noqa: E402

WORKER = Path(cw.__file__).resolve()
DEADLINE_S = 60.0
# (mode, seed, generations): every generation is one kill point.
SCENARIOS = [
    ("log", 1, 50),
    ("log", 2, 40),
    ("snap", 3, 50),
    ("snap", 4, 40),
    ("install", 5, 60),
    ("install", 6, 60),
]
CLI_GENERATIONS = 4
INSTALL_GENERATIONS = 20
STATS: Counter = Counter()


# -- talking to workers ------------------------------------------------------------------------------
class Lines:
    """JSON lines from a pipe, read with a deadline (never a sleep)."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buf = fd, b""

    def next(self, deadline: float) -> dict | None:
        """The next line, or None at end of file; fails the test at the deadline."""
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(left, 0))
            if not ready:
                pytest.fail(f"no output from the crash worker within {DEADLINE_S}s (got {self.buf[-500:]!r})")
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                assert not self.buf, f"half a line at end of output: {self.buf!r}"
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


def check_line(line: dict | None, stderr: Path) -> dict:
    if line is None or "error" in line or "done" in line or "exit" in line:
        detail = line.get("error") if line else None
        pytest.fail(f"crash worker stopped before it was killed: {line!r}\n{detail or ''}\n"
                    f"{stderr.read_text()[-3000:]}")
    return line


def run_until_acks(lines: Lines, acks: int, stderr: Path, deadline: float, mid_op: str | None = None,
                   out: list[dict] | None = None) -> list[dict]:
    """Read the worker's lines until its pid line and then ``acks`` acknowledgements.

    With ``mid_op`` (``"any"`` or an operation name), read on to the next
    intent of that operation: the worker has just started it, so a kill now
    tends to land inside its transaction.
    """
    out = [] if out is None else out  # filled in place, so a caller sees the pid even if this fails
    out.append(check_line(lines.next(deadline), stderr))
    assert "pid" in out[0], out[0]
    acked = 0

    def started() -> bool:
        return "seq" in out[-1] and mid_op in ("any", out[-1]["op"])

    while acked < acks or (mid_op and not started()):
        out.append(check_line(lines.next(deadline), stderr))
        acked += "ack" in out[-1]
    return out


class ForkServer:
    """``crash_worker.py --serve``: forks one worker per request from a warm interpreter."""

    def __init__(self, scratch: Path) -> None:
        self.stderr = scratch / "server-stderr.txt"
        env = dict(os.environ, ARROW_DEFAULT_MEMORY_POOL="system", JE_ARROW_MALLOC_CONF="background_thread:false",
                   OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, str(WORKER), "--serve"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, env=env)
        self.lines = Lines(self.proc.stdout.fileno())
        ready = self.lines.next(time.monotonic() + DEADLINE_S)
        assert ready and "ready" in ready, (ready, self.stderr.read_text())
        STATS["server threads at fork"] = ready["threads"]

    def crash(self, root: Path, seed: int, mode: str, acks: int, mid_op: str | None = None, jitter_s: float = 0
              ) -> list[dict]:
        """Start a worker, SIGKILL it after ``acks`` acknowledgements; all it wrote, once it is dead.

        ``jitter_s`` spreads the kill over the operation in flight: a busy
        wait that only picks the moment of the kill (correctness never
        depends on it; the worker's death is observed through its pipe).
        """
        deadline = time.monotonic() + DEADLINE_S
        self.proc.stdin.write((json.dumps({"dir": str(root), "seed": seed, "mode": mode}) + "\n").encode())
        self.proc.stdin.flush()
        out: list[dict] = []
        try:
            run_until_acks(self.lines, acks, self.stderr, deadline, mid_op, out)
        finally:  # kill the worker even when the test failed while reading, and wait for its death
            pid = out[0].get("pid") if out else None
            until = time.perf_counter() + jitter_s
            while time.perf_counter() < until:
                pass
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            tail = self.drain(pid, deadline)
        for line in tail:
            out.append(check_line(line, self.stderr))
        return out

    def drain(self, pid: int | None, deadline: float) -> list[dict]:
        """Lines up to the server's report of the worker's death (after waitpid: nothing more can come)."""
        tail = []
        while True:
            line = self.lines.next(deadline)
            assert line is not None, self.stderr.read_text()
            if "exit" in line:
                assert pid is None or line["exit"] == pid, (pid, line)
                status = line["status"]
                if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
                    tail.append({"exit": line["exit"], "status": status})  # check_line reports it
                return tail
            if pid is None and "pid" in line:
                pid = line["pid"]
                os.kill(pid, signal.SIGKILL)
                continue
            tail.append(line)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            assert self.proc.wait(timeout=DEADLINE_S) == 0, self.stderr.read_text()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()


def crash_cli(root: Path, seed: int, mode: str, acks: int, scratch: Path) -> list[dict]:
    """The same, with the plain command line ``python tests/crash_worker.py <dir> <seed> <mode>``."""
    stderr = scratch / f"cli-stderr-{seed}.txt"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([sys.executable, str(WORKER), str(root), str(seed), mode],
                                stdout=subprocess.PIPE, stderr=err)
    try:
        lines = Lines(proc.stdout.fileno())
        out = run_until_acks(lines, acks, stderr, time.monotonic() + DEADLINE_S)
        assert out[0]["pid"] == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=DEADLINE_S) == -signal.SIGKILL
        while (line := lines.next(time.monotonic() + DEADLINE_S)) is not None:
            out.append(check_line(line, stderr))
        return out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ForkServer(tmp_path_factory.mktemp("crash-server"))
    yield srv
    srv.close()


# -- the checker's model: what the store must hold ---------------------------------------------------
@dataclass
class Model:
    hs: HardState = HardState()
    floor: tuple[int, int] = (0, 0)
    terms: dict[int, int] = field(default_factory=dict)
    applied: int = 0
    snap: tuple = (0, 0, ConfState(), None)  # index, term, conf, payload reference
    conf: ConfState = ConfState()
    data: dict[bytes, bytes] = field(default_factory=dict)
    sessions: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def last(self) -> int:
        return max(self.terms) if self.terms else self.floor[0]

    def term_at(self, index: int) -> int:
        return self.floor[1] if index == self.floor[0] else self.terms[index]

    def state(self) -> dict:
        return {
            "hard_state": self.hs, "first_index": self.floor[0] + 1, "floor_term": self.floor[1],
            "log_terms": tuple(sorted(self.terms.items())), "applied": self.applied, "snapshot": self.snap,
            "conf": self.conf, "data": self.data, "sessions": self.sessions,
        }

    def do(self, op: dict) -> None:
        """Apply one acknowledged operation, as the store's contract says it happens."""
        kind = op["op"]
        if kind == "persist":
            if op["hs"] is not None:
                self.hs = HardState(*op["hs"])
            if op["terms"]:
                self.terms = {i: t for i, t in self.terms.items() if i < op["first"]}
                self.terms.update({op["first"] + n: t for n, t in enumerate(op["terms"])})
        elif kind == "apply":
            for i in range(op["lo"], op["hi"] + 1):
                self.data[cw.user_key(i)] = cw.user_value(i, self.term_at(i))
                self.sessions[encode_u64(i % cw.SESSIONS)] = cw.session_blob(i)
            self.applied = op["hi"]
            if op["conf"] is not None:
                self.conf = cw.conf_from_json(op["conf"])
        elif kind == "create_snapshot":
            self.snap = (op["index"], self.term_at(op["index"]), self.conf, op["data"].encode())
        elif kind == "compact":
            self.floor = (op["index"], self.terms[op["index"]])
            self.terms = {i: t for i, t in self.terms.items() if i > op["index"]}
        elif kind == "install":
            meta = read_snapshot_meta(op["path"])
            rows = list(iter_snapshot_rows(op["path"]))
            self.hs = HardState(*op["hs"])
            self.floor, self.terms, self.applied = (meta.index, meta.term), {}, meta.index
            self.snap = (meta.index, meta.term, meta.conf, Path(op["path"]).name.encode())
            self.conf = meta.conf
            self.data = {k: v for t, k, v in rows if t == 0}
            self.sessions = {k: v for t, k, v in rows if t == 1}
        else:
            assert kind == "export", op


def observe(store: ReplicaStore) -> dict:
    """Everything the store holds, in :meth:`Model.state`'s shape (entry payloads checked on the way)."""
    first, last = store.first_index(), store.last_index()
    assert first <= last + 1, (first, last)
    entries = store.entries(first, last + 1, 2**62) if last >= first else []
    assert [e.index for e in entries] == list(range(first, last + 1)), "the log has a hole"
    for e in entries:
        assert e.data.startswith(cw.entry_prefix(e.index, e.term)), f"entry {e.index}@{e.term} holds {e.data[:40]!r}"
    snap = store.snapshot()
    data, sessions = dict(store.scan("data")), dict(store.scan("sessions"))
    return {
        "hard_state": store.hard_state(), "first_index": first, "floor_term": store.term(first - 1),
        "log_terms": tuple((e.index, e.term) for e in entries), "applied": store.applied_index(),
        "snapshot": (snap.meta.index, snap.meta.term, snap.meta.conf, snap.data),
        "conf": store.initial_state()[1], "data": data, "sessions": sessions,
    }


def check_invariants(obs: dict, before: Model) -> None:
    """The workload's invariants, checked on the reopened store without the model's help."""
    hs, applied, old = obs["hard_state"], obs["applied"], before.hs
    last = obs["log_terms"][-1][0] if obs["log_terms"] else obs["first_index"] - 1
    assert hs.term >= old.term and hs.commit >= old.commit, f"hard state went back: {old} -> {hs}"
    if hs.term == old.term and old.vote:
        assert hs.vote == old.vote, f"vote changed within term {hs.term}: {old.vote} -> {hs.vote}"
    assert applied >= before.applied, f"applied index went back: {before.applied} -> {applied}"
    assert obs["first_index"] - 1 <= applied <= hs.commit <= last, (obs["first_index"], applied, hs, last)
    terms = dict(obs["log_terms"])
    want = {cw.user_key(i) for i in range(1, applied + 1)}
    assert set(obs["data"]) == want, (
        f"applied index {applied} but keys {sorted(set(obs['data']) ^ want)[:10]} disagree (half-applied?)")
    for i in range(obs["first_index"], applied + 1):
        assert obs["data"][cw.user_key(i)] == cw.user_value(i, terms[i]), f"key {i} has a wrong value"
    for sid in range(cw.SESSIONS):
        newest = max((i for i in range(1, applied + 1) if i % cw.SESSIONS == sid), default=None)
        got = obs["sessions"].get(encode_u64(sid))
        assert got == (cw.session_blob(newest) if newest else None), f"session {sid}: {got!r}, applied {applied}"


@dataclass
class Export:
    path: str
    index: int
    data: dict
    sessions: dict
    acked: bool = False


def replay(model: Model, lines: list[dict]) -> tuple[Model, dict | None, list[Export]]:
    """The model after every acknowledged operation, the unacknowledged one (if any), the exports."""
    pending, exports = None, []
    for line in lines[1:]:
        if "ack" in line:
            assert pending is not None and line["ack"] == pending["seq"], (pending, line)
            model.do(pending)
            if pending["op"] == "export":
                exports[-1].acked = True
            pending = None
        else:
            assert pending is None, f"a second operation started before {pending} was acknowledged"
            pending = line
            if line["op"] == "export":
                assert line["index"] == model.applied, line
                exports.append(Export(line["path"], line["index"], dict(model.data), dict(model.sessions)))
    return model, pending, exports


def diff(want: dict, got: dict) -> str:
    out = []
    for key in want:
        if want[key] != got[key]:
            w, g = want[key], got[key]
            if isinstance(w, dict):
                keys = sorted(set(w) | set(g), key=repr)
                w = {k: w.get(k) for k in keys if w.get(k) != g.get(k)}
                g = {k: g.get(k) for k in w}
            out.append(f"  {key}: expected {str(w)[:300]}\n  {' ' * len(key)}  found    {str(g)[:300]}")
    return "\n".join(out)


def check_exports(exports: list[Export]) -> None:
    for ex in exports:
        if not os.path.exists(ex.path):
            assert not ex.acked, f"acknowledged export {ex.path} is missing"
            STATS["interrupted exports (no file)"] += 1
            continue
        # An acknowledged export, or one killed after its rename: either way a complete snapshot.
        assert read_snapshot_meta(ex.path).index == ex.index
        rows = list(iter_snapshot_rows(ex.path))
        assert {k: v for t, k, v in rows if t == 0} == ex.data, f"export {ex.path} does not hold the applied data"
        assert {k: v for t, k, v in rows if t == 1} == ex.sessions, f"export {ex.path} has the wrong sessions"


def verify(root: Path, model: Model, lines: list[dict]) -> tuple[Model, str]:
    """Reopen the killed worker's store: it must be the acknowledged state, or that plus the pending op.

    Returns the matching model and which it was.
    """
    before = copy.deepcopy(model)
    acked, pending, exports = replay(model, lines)
    candidates = [("not landed", acked)]
    if pending is not None:
        after = copy.deepcopy(acked)
        after.do(pending)
        candidates.append(("landed", after))
    if not cw.MAIN.path(root).is_dir():  # killed before the worker created its store
        assert acked.state() == Model().state() and pending is None, "acknowledged operations but no store"
        STATS["killed before the store existed"] += 1
        return acked, "no store yet"
    store = ReplicaStore(root, cw.MAIN, create=False)
    try:
        obs = observe(store)
    finally:
        store.close()
    for name, cand in reversed(candidates):
        if cand.state() == obs:
            outcome = f"in-flight {pending['op']}: {name}" if pending else "killed between operations"
            STATS[outcome] += 1
            check_invariants(obs, before)
            check_exports(exports)
            return cand, outcome
    report = "\n".join(f"vs the state where the in-flight operation {name}:\n{diff(c.state(), obs)}"
                       for name, c in candidates)
    pytest.fail(f"reopened store matches neither the acknowledged state nor it plus the in-flight operation "
                f"{pending}\n{report}")


def kill_after(rng: random.Random) -> int:
    """How many acks to wait for: 0 kills during open/recovery, large values reach deep states."""
    return rng.choice([0, 1, 2, 3, 5, 8, 13, 21, 34, 60, rng.randint(1, 100)])


# -- the tests ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "seed", "generations"), SCENARIOS, ids=[f"{m}-seed{s}" for m, s, _ in SCENARIOS])
def test_kill_and_reopen(server, tmp_path, mode, seed, generations):
    """Kill a worker ``generations`` times on one directory; after each kill the store is exact and whole."""
    rng, model = random.Random(seed), Model()
    for gen in range(generations):
        jitter_s = rng.choice([0, rng.uniform(0, 0.002)])
        mid_op = rng.choice([None, "any"])
        lines = server.crash(tmp_path, seed * 1000 + gen, mode, kill_after(rng), mid_op, jitter_s)
        model, _ = verify(tmp_path, model, lines)
        STATS["kill points"] += 1
        STATS[f"ops acknowledged ({mode})"] += sum("ack" in line for line in lines)


@pytest.mark.parametrize("seed", [11, 12])
def test_kill_during_snapshot_install(server, tmp_path, seed):
    """Kills spread over snapshot installs: the store holds the old state or the installed one, never a mix."""
    rng, model = random.Random(seed), Model()
    outcomes = Counter()
    for gen in range(INSTALL_GENERATIONS):
        lines = server.crash(tmp_path, seed * 1000 + gen, "install", rng.randint(0, 10), "install",
                             rng.uniform(0, 0.004))
        model, outcome = verify(tmp_path, model, lines)
        outcomes[outcome] += 1
        STATS["kill points"] += 1
    STATS[f"install kills seed {seed}"] = dict(outcomes)


def test_kill_points_budget():
    """CI exercises at least 200 kill points (each generation of each scenario is one)."""
    assert sum(g for _, _, g in SCENARIOS) + CLI_GENERATIONS + 2 * INSTALL_GENERATIONS >= 200


def test_cli_worker_kill_and_resume(tmp_path):
    """The plain command line ``python tests/crash_worker.py <dir> <seed> <mode>``, killed and resumed."""
    model, root = Model(), tmp_path / "store"
    for gen in range(CLI_GENERATIONS):
        lines = crash_cli(root, 99_000 + gen, "install", [0, 40, 80, 120][gen], tmp_path)
        model, _ = verify(root, model, lines)
        STATS["kill points"] += 1
    assert model.applied > 0


def test_workload_covers_every_operation(server, tmp_path):
    """The worker really performs conflicting appends, compactions and installs (or the checks prove little)."""
    lines = server.crash(tmp_path, 7, "install", 400)
    ops = Counter(line["op"] for line in lines if "op" in line)
    assert {"persist", "apply", "export", "create_snapshot", "compact", "install"} <= set(ops), ops
    model, pending, conflicts = Model(), None, 0
    for line in lines[1:]:
        if line.get("op") == "persist" and line["terms"] and line["first"] <= model.last:
            conflicts += 1
        if "ack" in line:
            model.do(pending)
        elif "op" in line:
            pending = line
    assert conflicts >= 3, f"only {conflicts} conflicting appends"
    verify(tmp_path, Model(), lines)


def test_report_stats():
    """Prints the kill-point statistics (run with -s to see them); always passes."""
    print("\ncrash test stats:", dict(sorted(STATS.items())))
