"""Run ``python -m raykv.bench KIND --quick [...]`` in a subprocess on its own private, short
``RAY_TMPDIR`` (Ray's socket paths must stay under 107 bytes), removed afterwards; shared by the
bench tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_quick_bench(kind: str, timeout_s: float, extra_args: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess, dict]:
    """``(finished process, the --json report)``; ``extra_args`` (e.g. ``("--out", dir)``) are
    passed on; asserts the bench exited 0."""
    tmp = Path(tempfile.mkdtemp(prefix="rkb-", dir="/tmp"))
    try:
        out = tmp / f"{kind}.json"
        env = {**os.environ, "RAY_TMPDIR": str(tmp)}
        argv = [sys.executable, "-m", "raykv.bench", kind, "--quick", "--json", str(out), *extra_args]
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc, json.loads(out.read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
