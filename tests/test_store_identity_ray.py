"""Stores that know where they live, on a real 3-raylet Ray cluster (one module cluster).

* the start/stop footgun, tried as a new user would (CLI): ``start --data-dir D``, ``stop``
  (``raykv list`` still shows the store and D), then the ``raykv start -n NAME`` that stop suggests reopens D (it used to create an empty
  store under the default directory); options that contradict the store are refused;
* a reopen while the hosts holding the meta group are missing is refused with their names
  and starts nothing; once they are back it reopens every key;
* a start interrupted by Ctrl-C removes the replica actors it started; one killed outright
  leaves them, and ``raykv stop`` removes them; the next start finishes the store;
* two starts of one store at once take turns: the second, refused for its options, removes
  nothing of the first's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
import ray

import raykv
import raykv.api
from raykv.errors import ConfigError, RayKVError, StoreExistsError, UnavailableError
from raykv.protocol import HOST_LABEL
from raykv.runtime.identity import leftover_actors
from raykv.runtime.local_cluster import HOSTS, labelled_cluster
from raykv.runtime.startguard import start_in_progress

from ray_cluster import wait_for

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def cluster():
    with labelled_cluster(HOSTS) as (c, root):
        yield c, root


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raykv.cli", *args], capture_output=True, text=True, timeout=timeout)


def show(proc) -> str:
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def test_stop_then_start_without_a_data_dir_reopens_where_the_store_lives(cluster) -> None:
    c, root = cluster
    address, data = c.address, str(root / "footgun")
    proc = run_cli("start", "-n", "footgun", "--address", address, "--data-dir", data)
    assert proc.returncode == 0 and f"data under {data}" in proc.stdout, show(proc)
    with raykv.connect("footgun") as kv:
        kv.put("kept", "yes")
    listed = {s.name: s for s in raykv.list_stores()}  # (stores of other test modules may be listed too)
    assert listed["footgun"].running and set(listed["footgun"].data_dirs.values()) == {data}
    proc = run_cli("stop", "-n", "footgun", "--address", address)
    reopen = f"raykv start -n footgun --data-dir {data} --address {address}"
    assert proc.returncode == 0 and f"`{reopen}` reopens it" in proc.stdout, show(proc)
    proc = run_cli("list", "--address", address)  # a stopped store is still listed, with where it lives
    assert proc.returncode == 0 and f"footgun\tstopped\t{data}" in proc.stdout.splitlines(), show(proc)

    proc = run_cli("start", "-n", "footgun", "--address", address)  # no --data-dir: the pointers find it
    assert proc.returncode == 0 and f"is running: 3 shards x 3 replicas; data under {data}" in proc.stdout, show(proc)
    with raykv.connect("footgun") as kv:
        assert kv.get("kept") == "yes"

    other = str(root / "elsewhere")
    for args, says in ((("--data-dir", other), f"keeps its data under {data}"),
                       (("--shards", "5"), "has 3 shards, not 5"),
                       (("--replicas", "1"), "has 3 replicas per shard, not 1"),
                       (("--create",), "already exists")):
        proc = run_cli("start", "-n", "footgun", "--address", address, *args)
        assert proc.returncode == 2 and says in proc.stderr, show(proc)
    assert not os.path.exists(other)
    with raykv.connect("footgun") as kv:
        assert kv.get("kept") == "yes"  # the refused starts changed nothing
    proc = run_cli("start", "-n", "nothing-here", "--address", address, "--reopen")
    assert proc.returncode == 3 and "no host holds any trace" in proc.stderr, show(proc)
    raykv.stop("footgun")


def test_a_reopen_without_the_meta_hosts_names_them_and_starts_nothing(cluster) -> None:
    c, root = cluster
    dirs = {h: str(root / "away" / h) for h in HOSTS}
    with raykv.start("away", shards=2, replicas=3, data_dir=dirs, timeout_s=30.0) as kv:
        kv.put_batch({f"k{i}": i for i in range(50)})
    raykv.stop("away")
    for node in _nodes_labelled(c, ("h2", "h3")):
        c.remove_node(node)
    wait_for(lambda: _alive_hosts() == ["h1"], 60, "h2 and h3 to leave")
    with pytest.raises(UnavailableError, match=r"meta replicas.*h2, h3"):
        raykv.start("away")
    assert leftover_actors("away") == []
    for host in ("h2", "h3"):
        c.add_node(num_cpus=0, labels={HOST_LABEL: host})
    wait_for(lambda: _alive_hosts() == list(HOSTS), 60, "h2 and h3 to rejoin")
    with raykv.start("away", timeout_s=30.0) as kv:
        assert kv.get_batch([f"k{i}" for i in range(50)]) == list(range(50))
    raykv.stop("away")


def test_an_interrupted_start_leaves_no_actor_and_the_next_start_finishes(cluster) -> None:
    c, root = cluster
    address, data = c.address, str(root / "intr")

    def start_until_actors_exist() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "raykv.cli", "start", "-n", "intr", "--address", address,
                                 "--data-dir", data], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: leftover_actors("intr") or proc.poll() is not None, 120, "the start to create replicas")
        assert proc.poll() is None, f"the start ended before it could be interrupted: {proc.communicate()}"
        return proc

    proc = start_until_actors_exist()
    proc.send_signal(signal.SIGINT)  # Ctrl-C: the start removes what it started
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err, f"rc={proc.returncode}\n{out}\n{err}"
    wait_for(lambda: leftover_actors("intr") == [], 30, "the interrupted start's actors to go")
    assert not raykv.api.store_running("intr")

    proc = start_until_actors_exist()
    proc.kill()  # killed outright: its actors stay, and stop removes them
    proc.communicate(timeout=60)
    assert leftover_actors("intr")
    done = run_cli("stop", "-n", "intr", "--address", address)
    assert done.returncode == 0 and "had not finished starting" in done.stdout, show(done)
    wait_for(lambda: leftover_actors("intr") == [], 30, "the left actors to go")

    with raykv.start("intr", timeout_s=30.0) as kv:  # a reopen of the half-made store finishes it
        kv.put("done", 1)
        assert kv.get("done") == 1
        assert len(kv.status().shards) == 3
    with pytest.raises(StoreExistsError):
        raykv.start("intr", create=True)
    with pytest.raises(ConfigError):
        raykv.start("intr", data_dir=str(root / "intr-other"))
    raykv.stop("intr")


def test_two_starts_of_one_store_take_turns(cluster) -> None:
    """The second start (options the store will not have) waits for the first, then is refused,
    and removes nothing of the first's (it used to remove the replica actors of a start still
    in progress: a failed start cleans up what it finds of its store)."""
    _, root = cluster
    data, started = str(root / "turns"), {}
    first = threading.Thread(target=lambda: started.setdefault("kv", raykv.start("turns", shards=2, data_dir=data,
                                                                                 timeout_s=30.0)))
    first.start()
    wait_for(lambda: start_in_progress("turns"), 60, "the first start to hold the store's start guard")
    with pytest.raises(RayKVError, match="has 2 shards, not 5"):
        raykv.start("turns", shards=5, data_dir=data)
    assert "kv" in started, "the second start was refused only once the first had ended"
    first.join(60)
    kv = started["kv"]
    kv.put("x", 1)
    assert kv.get("x") == 1 and len(kv.status().shards) == 2 and kv.status().healthy
    kv.close()
    raykv.stop("turns")


def _alive_hosts() -> list[str]:
    return sorted(n["Labels"][HOST_LABEL] for n in ray.nodes() if n["Alive"] and HOST_LABEL in n.get("Labels", {}))


def _nodes_labelled(c, labels: tuple[str, ...]) -> list:
    """The cluster_utils nodes whose raykv-host label is in ``labels``."""
    by_id = {n["NodeID"]: n["Labels"].get(HOST_LABEL) for n in ray.nodes() if n["Alive"]}
    return [node for node in c.worker_nodes if by_id.get(node.node_id) in labels]
