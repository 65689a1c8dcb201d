"""Session-wide test settings.

Every test (and every process it starts: CLI subprocesses, Ray workers of clusters it
starts) keeps store pointers under a temporary raykv home instead of ``~/.raykv``, so
tests never see each other's or the user's stores (``raykv.runtime.identity.raykv_home``).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest


@pytest.fixture(scope="session", autouse=True)
def _raykv_home():
    home = tempfile.mkdtemp(prefix="raykv-home-")
    before = os.environ.get("RAYKV_HOME")
    os.environ["RAYKV_HOME"] = home
    yield home
    if before is None:
        os.environ.pop("RAYKV_HOME", None)
    else:
        os.environ["RAYKV_HOME"] = before
    shutil.rmtree(home, ignore_errors=True)

