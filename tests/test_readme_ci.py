"""The README's Quickstart test command and ``.ci/run`` must be the same line, so they cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def section(markdown: str, title: str) -> str:
    """Return the body of the ``## title`` section (up to the next ``## `` heading)."""
    match = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", markdown, re.MULTILINE | re.DOTALL)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def readme_test_command() -> str:
    """The first fenced block under Quickstart that mentions pytest, stripped of surrounding blank lines."""
    blocks = FENCE.findall(section((ROOT / "README.md").read_text(), "Quickstart"))
    for block in blocks:
        if "pytest" in block:
            return block.strip()
    raise AssertionError("no fenced block mentioning pytest under Quickstart")


def ci_command() -> str:
    """The last non-blank, non-comment line of ``.ci/run``."""
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [ln for ln in lines if ln and not ln.startswith("#")]
    assert commands, ".ci/run has no command"
    return commands[-1]


def test_readme_test_command_matches_ci() -> None:
    assert readme_test_command() == ci_command()


def test_ci_script_is_executable() -> None:
    assert (ROOT / ".ci" / "run").stat().st_mode & 0o111
