"""The notebooks under ``notebooks/`` run end to end, each in a fresh Jupyter kernel, and clean up.

* The committed files are valid nbformat 4 with every output cleared (cheap, no kernel).
* Each notebook is executed with nbclient (a per-cell timeout; any cell error fails the test),
  with smaller sizes (:data:`SIZES`), in a kernel whose environment gives it a private store:
  ``RAYKV_NOTEBOOK_PRIVATE_RAY=1`` (a fresh embedded Ray, never one already running on the machine), its own short
  ``RAY_TMPDIR`` (``/tmp/rk-nb-*``), its own ``RAYKV_DATA_DIR`` and store name, and no
  ``RAY_ADDRESS``. Its outputs show what it is for: the quickstart's ``kv.status()`` cell
  renders an HTML ``<table>`` with leaders, the explorer draws PNG figures, the bulk notebook
  reads back as many rows as it wrote, and every last cell reports the store stopped and the
  embedded Ray shut down. Only if Ray itself fails to start in time (its hard-coded 30 s
  node start-up deadline, hit on an overloaded machine) is the notebook run once more.
* Afterwards no process of that notebook's Ray survives: processes are recognised by the
  private ``RAY_TMPDIR`` in their environment or command line (every process the kernel's
  Ray starts inherits it), so only this test's processes are ever killed (after the check,
  or if the kernel died).

The kernel is ipykernel's, from a kernel spec written into a temporary ``JUPYTER_PATH``
(argv = this interpreter), so a fresh ``pip install -e ".[test]"`` is enough.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("quickstart", "cluster_explorer", "bulk_arrow_ray_data")
KERNEL = "raykv-notebook-tests"
CELL_TIMEOUT_S = 300
STORE = "nbstore"
RAY_STARTUP_TIMEOUT = "The current node timed out during startup"
"""Ray's own start-up deadline (30 s, hard-coded in ray._private.node) when the machine is overloaded."""

pytestmark = pytest.mark.timeout(900)


# -- the files as committed ------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_valid_with_outputs_cleared(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code), "clear the outputs"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert "session.close()" in code[-1].source, "the last cell must clean up"


# -- execution -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """ipykernel's kernel spec for this interpreter, found through a temporary JUPYTER_PATH."""
    from ipykernel.kernelspec import write_kernel_spec

    root = tmp_path_factory.mktemp("jupyter")
    write_kernel_spec(root / "kernels" / KERNEL, overrides={"display_name": "raykv notebook tests"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(root))
        yield KERNEL


def processes_of(private_dir: str) -> list[int]:
    """Pids (other than this one) whose environment or command line names ``private_dir``."""
    marks = (f"RAY_TMPDIR={private_dir}\0".encode(), private_dir.encode())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env, cmdline = (entry / "environ").read_bytes(), (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marks[0] in env or marks[1] in cmdline:
            found.append(int(entry.name))
    return found


def wait_until_gone(private_dir: str, timeout_s: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := processes_of(private_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


SIZES = {"RAYKV_NOTEBOOK_SAMPLES": "50", "RAYKV_NOTEBOOK_ROWS": "5000", "RAYKV_NOTEBOOK_DATASET_ROWS": "1000"}
"""The notebooks' size knobs (defaults 200, 20000, 5000: notebooks/README.md), smaller here: the
same cells run and the same checks hold; an environment that sets them keeps its own."""


def kernel_env(ray_tmp: str, data_dir: Path) -> dict[str, str]:
    env = {**SIZES, **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}}
    env.update(RAY_TMPDIR=ray_tmp, RAYKV_DATA_DIR=str(data_dir), RAYKV_STORE=STORE,
               RAYKV_NOTEBOOK_PRIVATE_RAY="1")
    return env


def execute(name: str, kernel: str, scratch: Path) -> tuple[nbformat.NotebookNode, float]:
    """Run the notebook ``name``; returns it with outputs and the wall time. Fails on any cell
    error and if a process of its Ray outlives it."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    ray_tmp = tempfile.mkdtemp(prefix="rk-nb-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    client = NotebookClient(nb, kernel_name=kernel, timeout=CELL_TIMEOUT_S, allow_errors=False,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    started = time.monotonic()
    try:
        client.execute(env=kernel_env(ray_tmp, scratch / "data"))
        seconds = time.monotonic() - started
        survivors = wait_until_gone(ray_tmp)
        assert not survivors, f"{name}: processes of its Ray outlived the notebook: {survivors}"
    finally:
        kill_all(processes_of(ray_tmp))  # only this notebook's processes: they carry its private RAY_TMPDIR
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return nb, seconds


def outputs(nb: nbformat.NotebookNode) -> list:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def cell_with(nb: nbformat.NotebookNode, fragment: str):
    """The first code cell whose source contains ``fragment``."""
    return next(c for c in nb.cells if c.cell_type == "code" and fragment in c.source)


def text_of(cell) -> str:
    return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")


def assert_cleaned_up(name: str, nb: nbformat.NotebookNode) -> None:
    last = text_of(nb.cells[-1])
    assert f"store {STORE!r} stopped" in last and "embedded Ray shut down" in last, (name, last)


def cell_seconds(cell) -> float:
    """A cell's execution time from nbclient's timing metadata (0 if absent)."""
    from datetime import datetime

    timing = cell.get("metadata", {}).get("execution", {})
    try:
        began, ended = timing["iopub.execute_input"], timing["shell.execute_reply"]
    except KeyError:
        return 0.0
    return (datetime.fromisoformat(ended.replace("Z", "+00:00"))
            - datetime.fromisoformat(began.replace("Z", "+00:00"))).total_seconds()


def report(name: str, nb: nbformat.NotebookNode, seconds: float) -> None:
    """Print the wall time and the slowest cells; keep the executed notebook if
    ``$RAYKV_EXECUTED_NOTEBOOKS`` names a directory (a CI artifact)."""
    slowest = sorted(((cell_seconds(c), i) for i, c in enumerate(nb.cells) if c.cell_type == "code"), reverse=True)
    print(f"{name}: executed in {seconds:.1f} s; slowest cells: "
          + ", ".join(f"#{i} {t:.1f} s" for t, i in slowest[:3]))
    keep = os.environ.get("RAYKV_EXECUTED_NOTEBOOKS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, Path(keep) / f"{name}.ipynb")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_and_cleans_up(name: str, kernel_name: str, tmp_path: Path) -> None:
    try:
        nb, seconds = execute(name, kernel_name, tmp_path / "first")
    except CellExecutionError as exc:
        if RAY_STARTUP_TIMEOUT not in str(exc):
            raise
        print(f"{name}: Ray's node start-up timed out (an overloaded machine): running it once more")
        nb, seconds = execute(name, kernel_name, tmp_path / "second")
    report(name, nb, seconds)
    assert not [o for o in outputs(nb) if o.output_type == "error"]
    assert_cleaned_up(name, nb)
    CHECKS[name](nb)


def check_quickstart(nb: nbformat.NotebookNode) -> None:
    status = next(c for c in nb.cells if c.cell_type == "code" and c.source.strip() == "kv.status()")
    html = next(o.data["text/html"] for o in status.outputs if "text/html" in o.get("data", {}))
    assert "<table" in html and "leader" in html and "<th>applied</th>" in html and f"store &#x27;{STORE}&#x27;" in html
    assert html.count("<tr>") == 1 + 9, "a header row and one row per replica (3 shards x 3 replicas)"
    cas = text_of(cell_with(nb, "cas 0 -> 1"))
    assert "cas 0 -> 1: True" in cas and "cas 0 -> 2: False" in cas and "delete: True then False" in cas


def check_cluster_explorer(nb: nbformat.NotebookNode) -> None:
    images = [o for o in outputs(nb) if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "the shard map and the latency histogram"
    tables = [o.data["text/html"] for o in outputs(nb) if "text/html" in o.get("data", {})]
    assert any("lag" in t for t in tables), "the Raft indices table"
    assert any("p99_ms" in t for t in tables), "the latency summary"


def check_bulk(nb: nbformat.NotebookNode) -> None:
    text = "".join(text_of(c) for c in nb.cells if c.cell_type == "code")
    assert "keys/s" in text and "keys under 'bulk:'" in text
    assert "as many as written" in text


CHECKS = {"quickstart": check_quickstart, "cluster_explorer": check_cluster_explorer,
          "bulk_arrow_ray_data": check_bulk}
