"""The ``raykv`` CLI without a Ray cluster: version, help, ``sim`` wiring; the store commands' bad
input (exit 2 before Ray is touched), error-to-exit-code mapping and output formats (against an
in-memory fake client); ``bench`` wiring; and the demo's checks against an in-memory store."""

from __future__ import annotations

import json
import socket
import sys
from contextlib import contextmanager

import pytest
from typer.testing import CliRunner

import raykv.cli as cli
from raykv import errors
from raykv.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def restore_ray_logger_level(monkeypatch):
    """The store commands set RAY_LOGGER_LEVEL in-process (CliRunner): undo it after each test."""
    monkeypatch.delenv("RAY_LOGGER_LEVEL", raising=False)


def test_version_prints_package_name() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0, result.output
    assert "raykv" in result.output


def test_help_lists_sim() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "sim" in result.output


def _record_argv(monkeypatch, return_code: int) -> list[list[str]]:
    """Replace ``raykv.testing.sim.main`` with a fake returning ``return_code``; return its call log."""
    import raykv.testing.sim as sim

    calls: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        calls.append(list(argv))
        return return_code

    monkeypatch.setattr(sim, "main", fake_main)
    return calls


def test_sim_passes_defaults_through(monkeypatch) -> None:
    calls = _record_argv(monkeypatch, 0)
    result = runner.invoke(app, ["sim", "--seeds", "0:1"])
    assert result.exit_code == 0, result.output
    assert calls == [["--seeds", "0:1", "--groups", "1", "--replicas", "3", "--jobs", "1"]]


def test_sim_passes_all_options_and_exit_code(monkeypatch) -> None:
    calls = _record_argv(monkeypatch, 3)
    args = ["sim", "--seeds", "5:9", "--groups", "2", "--replicas", "5", "--jobs", "4", "--seconds", "7.5"]
    result = runner.invoke(app, [*args, "--storage", "lmdb"])
    assert result.exit_code == 3, result.output
    assert calls == [
        ["--seeds", "5:9", "--groups", "2", "--replicas", "5", "--jobs", "4", "--storage", "lmdb", "--seconds", "7.5"]
    ]


def test_sim_requires_seeds(monkeypatch) -> None:
    calls = _record_argv(monkeypatch, 0)
    result = runner.invoke(app, ["sim"])
    assert result.exit_code != 0
    assert calls == []


# -- store commands without a Ray cluster: bad input, error mapping, output ---------------------


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if a command tries to reach Ray."""

    def refuse(*args, **kwargs):
        raise AssertionError("the command touched Ray")

    monkeypatch.setattr(cli, "connect_ray", refuse)
    import raykv.demo

    monkeypatch.setattr(raykv.demo, "start_ray", refuse)


def test_help_lists_store_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for command in ("start", "status", "put", "get", "delete", "scan", "stop", "bench", "demo", "sim", "version"):
        assert command in result.output


@pytest.mark.parametrize("args, words", [
    (["start", "--shards", "0"], "shards must be an int in 1..1024, got 0"),
    (["start", "--replicas", "8"], "replicas must be an int in 1..7, got 8"),
    (["start", "--timeout", "0"], "--timeout must be > 0"),
    (["start", "-n", "bad name"], "a store name must be"),
    (["status", "-n", "a/b"], "a store name must be"),
    (["get", "k", "-n", ""], "a store name must be"),
    (["stop", "--name", "x!"], "a store name must be"),
    (["put", "k", "{not json", "--json"], "VALUE is not valid JSON"),
    (["put", "k", "null", "--json"], "VALUE null cannot be stored"),
    (["scan", "--limit", "-1"], "--limit must be >= 0"),
    (["demo", "--keys", "5"], "keys must be an int in 20..1000000"),
    (["demo", "--shards", "0"], "shards must be an int in 1..1024"),
    (["demo", "--name", "no spaces"], "a store name must be"),
])
def test_bad_input_exits_2_before_touching_ray(no_ray, args, words) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and words in result.stderr, result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [
    ["get", "k", "--consistency", "bogus"],
    ["scan", "-c", "strong"],
    ["start", "--shards", "many"],
    ["put", "only-a-key"],
])
def test_usage_errors_exit_2(no_ray, args) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("exc, code, words", [
    (errors.InvalidRequestError("bad key"), 2, "bad key"),
    (errors.KeyTooLargeError("key of 600 bytes"), 2, "600 bytes"),
    (errors.StoreNotFoundError("no store named 'x'"), 3, "no store named"),
    (errors.UnavailableError("no leader"), 3, "no leader"),
    (errors.ShutdownError("closed"), 3, "closed"),
    (ConnectionError("refused"), 3, "cannot reach Ray"),
    (errors.OperationTimeoutError("deadline"), 4, "may or may not have been applied"),
    (errors.LeadershipLostError("lost"), 4, "may or may not have been applied"),
    (errors.CorruptStoreError("bad page", "/data/x"), 5, "CorruptStoreError"),
])
def test_classify_maps_errors_to_exit_codes(exc, code, words) -> None:
    got = cli.classify(exc)
    assert got is not None and got[0] == code and words in got[1], got


def test_classify_leaves_bugs_alone() -> None:
    assert cli.classify(KeyError("x")) is None
    assert cli.classify(TypeError("x")) is None


def test_unreachable_address_exits_3_fast() -> None:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = runner.invoke(app, ["status", "--address", f"127.0.0.1:{port}"])
    assert result.exit_code == 3, result.output
    assert "nothing answers at 127.0.0.1:" in result.stderr
    import ray

    assert not ray.is_initialized()


@pytest.mark.parametrize("how", ["option", "env"])
def test_a_dashboard_url_as_address_exits_2_naming_the_form_that_works(monkeypatch, how) -> None:
    """Ray's job docs have you export RAY_ADDRESS=http://127.0.0.1:8265 (the dashboard); raykv joins
    the cluster at its GCS address instead, and says so (it used to print a traceback, exit 1)."""
    args = ["status"]
    if how == "option":
        args += ["--address", "http://127.0.0.1:8265"]
    else:
        monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "127.0.0.1:6379" in result.stderr and ("--address" if how == "option" else "$RAY_ADDRESS") in result.stderr
    assert "Traceback" not in result.output


BROKEN_PIPE_SCRIPT = """
import contextlib, sys
import raykv.cli as cli

class Many:
    def scan(self, **kwargs):
        return ((f"key{i:06d}", i) for i in range(200_000))

@contextlib.contextmanager
def open_client(name, address):
    yield Many()

cli.open_client = open_client
sys.argv = ["raykv", "scan"]
cli.app()
"""


def test_scan_into_a_pipe_closed_early_ends_quietly_with_exit_0() -> None:
    """``raykv scan | head -2``: the reader leaves; the scan stops without an error (it used to say
    "cannot reach Ray: [Errno 32] Broken pipe", exit 3)."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", BROKEN_PIPE_SCRIPT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = [proc.stdout.readline() for _ in range(2)]
    proc.stdout.close()  # what `head -2` does once it has its lines
    _, err = proc.communicate(timeout=60)
    assert first == ["key000000\t0\n", "key000001\t1\n"]
    assert proc.returncode == 0 and err == "", err


class FakeClient:
    """An in-memory stand-in for raykv.client.Client (what the CLI calls)."""

    def __init__(self, data=None, fail=None):
        self.data = dict(data or {})
        self.fail = fail
        self.calls = []

    def _maybe_fail(self):
        if self.fail is not None:
            raise self.fail

    def put(self, key, value):
        self.calls.append(("put", key, value))
        self._maybe_fail()
        self.data[key] = value

    def get(self, key, default=None, consistency="linearizable"):
        self.calls.append(("get", key, consistency))
        self._maybe_fail()
        return self.data.get(key, default)

    def delete(self, key):
        self._maybe_fail()
        return self.data.pop(key, None) is not None

    def scan(self, start=None, end=None, prefix=None, limit=None, consistency="linearizable"):
        self.calls.append(("scan", start, end, prefix, limit, consistency))
        self._maybe_fail()
        rows = [(k, v) for k, v in sorted(self.data.items())
                if (start is None or k >= start) and (end is None or k < end) and k.startswith(prefix or "")]
        return iter(rows[:limit] if limit is not None else rows)


@pytest.fixture
def fake(monkeypatch):
    client = FakeClient({"a": "x", "b": {"n": [1, 2]}, "c": 3})

    @contextmanager
    def open_client(name, address):
        client.calls.append(("open", name, address))
        yield client

    monkeypatch.setattr(cli, "open_client", open_client)
    return client


def test_put_get_string_and_json(fake) -> None:
    assert runner.invoke(app, ["put", "k", "hello", "-n", "s1"]).stdout == "OK\n"
    assert fake.data["k"] == "hello" and ("open", "s1", None) in fake.calls
    assert runner.invoke(app, ["put", "j", '{"a": [1, 2.5, null]}', "--json"]).exit_code == 0
    assert fake.data["j"] == {"a": [1, 2.5, None]}
    assert runner.invoke(app, ["get", "k"]).stdout == "hello\n"
    assert runner.invoke(app, ["get", "k", "--json"]).stdout == '"hello"\n'
    assert json.loads(runner.invoke(app, ["get", "j"]).stdout) == {"a": [1, 2.5, None]}
    result = runner.invoke(app, ["get", "c", "--consistency", "stale", "--address", "h:1"])
    assert result.stdout == "3\n" and ("get", "c", "stale") in fake.calls and ("open", "default", "h:1") in fake.calls


def test_one_spelling_of_the_store_everywhere(fake, monkeypatch) -> None:
    """``--store``/``--name``/``-n`` and ``$RAYKV_STORE`` in the CLI, the jobs and the notebooks."""
    from raykv import explore
    from raykv.jobs import bulk, consistency, mixed

    assert runner.invoke(app, ["get", "c"], env={"RAYKV_STORE": "from-env"}).exit_code == 0
    assert runner.invoke(app, ["get", "c", "--store", "by-option"], env={"RAYKV_STORE": "from-env"}).exit_code == 0
    assert [c for c in fake.calls if c[0] == "open"] == [("open", "from-env", None), ("open", "by-option", None)]
    monkeypatch.setenv("RAYKV_STORE", "from-env")
    assert bulk.parse_args(["--input", "x.parquet"]).store == "from-env"
    assert mixed.mixed_workload_parser().parse_args(["-n", "short"]).store == "short"
    assert consistency.consistency_check_parser().parse_args(["--name", "long"]).store == "long"
    assert explore.STORE_ENV == "RAYKV_STORE"
    monkeypatch.delenv("RAYKV_STORE")
    with pytest.raises(SystemExit):  # no store named anywhere: the jobs' usage error
        mixed.mixed_workload_parser().parse_args([])


def test_get_and_delete_missing_exit_1(fake) -> None:
    result = runner.invoke(app, ["get", "nope"])
    assert result.exit_code == 1 and result.stdout == "" and "key not found: 'nope'" in result.stderr
    assert runner.invoke(app, ["delete", "a"]).exit_code == 0 and "a" not in fake.data
    result = runner.invoke(app, ["delete", "a"])
    assert result.exit_code == 1 and "key not found: 'a'" in result.stderr


def test_scan_lines_and_json_lines(fake) -> None:
    result = runner.invoke(app, ["scan"])
    assert result.exit_code == 0 and result.stdout == 'a\tx\nb\t{"n": [1, 2]}\nc\t3\n'
    result = runner.invoke(app, ["scan", "--start", "b", "--end", "c", "--json", "-c", "lease"])
    assert [json.loads(line) for line in result.stdout.splitlines()] == [{"key": "b", "value": {"n": [1, 2]}}]
    assert ("scan", "b", "c", None, None, "lease") in fake.calls
    result = runner.invoke(app, ["scan", "--prefix", "c", "--limit", "5"])
    assert result.stdout == "c\t3\n" and ("scan", None, None, "c", 5, "linearizable") in fake.calls
    assert runner.invoke(app, ["scan", "--keys-only"]).stdout == "a\nb\nc\n"
    result = runner.invoke(app, ["scan", "--keys-only", "--json", "--start", "b"])
    assert [json.loads(line) for line in result.stdout.splitlines()] == [{"key": "b"}, {"key": "c"}]


def test_count_counts_what_scan_would_print(fake) -> None:
    assert runner.invoke(app, ["count"]).stdout == "3\n"
    assert runner.invoke(app, ["count", "--start", "b", "-c", "stale"]).stdout == "2\n"
    assert runner.invoke(app, ["count", "--prefix", "z"]).stdout == "0\n"
    assert ("scan", "b", None, None, None, "stale") in fake.calls


@pytest.mark.parametrize("exc, code, words", [
    (errors.OperationTimeoutError("no outcome before the deadline"), 4, "may or may not have been applied"),
    (errors.UnavailableError("no leader within 10s"), 3, "no leader within 10s"),
    (errors.InvalidRequestError("key must be str or bytes"), 2, "key must be str or bytes"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_store_errors_exit_codes_without_traceback(fake, exc, code, words) -> None:
    fake.fail = exc
    for args in (["put", "k", "v"], ["get", "k"], ["scan"]):
        result = runner.invoke(app, args)
        assert result.exit_code == code, (args, result.output)
        assert words in result.stderr and "Traceback" not in result.output


def test_status_prints_table_and_json(monkeypatch) -> None:
    from raykv.client.status import ReplicaStatus, ShardStatus, StoreStatus

    replicas = [ReplicaStatus(r, f"raykv:s:1:{r}", f"h{r}", None, "leader" if r == 1 else "follower", 2, 7, 7,
                              65536, True) for r in (1, 2, 3)]
    status = StoreStatus("s", 1, [ShardStatus(1, b"", None, 1, 1, replicas)])

    class StatusClient:
        def status(self):
            return status

    @contextmanager
    def open_client(name, address):
        yield StatusClient()

    monkeypatch.setattr(cli, "open_client", open_client)
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0 and result.stdout == str(status) + "\n"
    assert "leader" in result.stdout and "follower" in result.stdout
    result = runner.invoke(app, ["status", "--json"])
    assert json.loads(result.stdout) == status.to_dict()


def test_wait_for_leaders_polls_then_times_out() -> None:
    class Shard:
        def __init__(self, leader):
            self.leader, self.replicas = leader, [1, 2, 3]

    class Status:
        def __init__(self, leaders):
            self.shards = [Shard(x) for x in leaders]

    class Polled:
        def __init__(self, answers):
            self.answers = list(answers)

        def status(self):
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    done = Status([1, 2])
    assert cli.wait_for_leaders(Polled([Status([None, None]), Status([1, None]), done]), 10) is done
    with pytest.raises(errors.UnavailableError, match="only 1 of 2 shards elected a leader"):
        cli.wait_for_leaders(Polled([Status([1, None])]), 0.3)


def test_bench_runs_the_full_bench_and_passes_its_exit_code(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda argv: calls.append(argv) or 7)
    result = runner.invoke(app, ["bench", "--quick", "--json", "out.json", "--out", "docs"])
    assert result.exit_code == 7
    assert calls == [[sys.executable, "-m", "raykv.bench", "full", "--quick", "--json", "out.json", "--out", "docs"]]
    assert cli.bench_argv(False, None) == [sys.executable, "-m", "raykv.bench", "full"]





# -- the demo's checks against an in-memory store ------------------------------------------------
class MemoryStore(FakeClient):
    """Enough of raykv.client.Client for raykv.demo.exercise (str keys: str order is key order)."""

    def __init__(self, shards=3):
        super().__init__()
        from raykv.placement import new_shard_map

        self.shard_map = new_shard_map("demo", shards, 3, ["h"])
        self.lagging = set()

    def put_batch(self, data):
        self.data.update(data)

    def get_batch(self, keys, consistency="linearizable"):
        return [None if consistency == "stale" and k in self.lagging else self.data.get(k) for k in keys]

    def delete_batch(self, keys):
        for k in keys:
            self.data.pop(k, None)

    def cas(self, key, expected, new):
        if self.data.get(key) != expected:
            return False
        self.data[key] = new
        return True


def exercise(client, keys=200):
    import raykv.demo as demo

    report = demo.Report()
    demo.exercise(client, demo.DemoConfig(keys=keys), report)
    return report


def test_demo_exercise_passes_on_a_correct_store(capsys) -> None:
    report = exercise(MemoryStore())
    assert report.passed, report.lines()
    assert len(report.checks) >= 15
    out = capsys.readouterr().out
    assert "[ok] scan (after writes) crosses shard boundaries (3 of 3 shards hold keys)" in out
    assert report.lines()[-1] == f"all {len(report.checks)} checks passed"


def test_demo_exercise_catches_a_wrong_read(capsys) -> None:
    class Forgetful(MemoryStore):
        def get(self, key, default=None, consistency="linearizable"):
            return None if key == "7-000007" else super().get(key, default, consistency)

    report = exercise(Forgetful())
    assert not report.passed
    failed = [what for what, ok, _ in report.checks if not ok]
    assert failed == ["get (linearizable) returns all 200 values written"], failed
    assert "FAILED" in report.lines()[-1] or "FAILED" in "\n".join(report.lines())


def test_demo_exercise_catches_a_scan_that_drops_a_shard(capsys) -> None:
    class Partial(MemoryStore):
        def scan(self, start=None, end=None, prefix=None, limit=None, consistency="linearizable"):
            return (kv for kv in super().scan(start, end, prefix, limit, consistency) if not kv[0].startswith("z"))

    report = exercise(Partial())
    failed = [what for what, ok, _ in report.checks if not ok]
    assert any(w.startswith("scan (after writes) returns exactly") for w in failed), failed
    assert any(w.startswith("scan prefix 'z'") for w in failed), failed


def test_demo_stale_reads_may_lag_but_must_catch_up(monkeypatch, capsys) -> None:
    import raykv.demo as demo

    store = MemoryStore()
    store.data = {"a": 1, "b": 2}
    store.lagging = {"b"}
    monkeypatch.setattr(demo, "STALE_CATCH_UP_S", 0.5)
    what, ok, detail = demo.stale_check(store, store.data, ["a", "b"], [1, None])
    assert not ok and "1 keys still absent" in detail  # "b" never catches up
    store.lagging = set()
    assert demo.stale_check(store, store.data, ["a", "b"], [1, None])[1]
    what, ok, detail = demo.stale_check(store, store.data, ["a", "b"], [1, 99])
    assert not ok and "'b': read 99" in detail


def test_demo_refuses_a_store_that_is_not_empty(capsys) -> None:
    store = MemoryStore()
    store.data = {"left-over": 1}
    report = exercise(store)
    assert not report.passed and report.checks[0][0] == "the store starts empty" and len(report.checks) == 1


def test_python_m_raykv_demo_shares_the_cli_options(no_ray) -> None:
    import raykv.demo as demo

    assert demo.main(["--keys", "3"]) == 2
