"""Layering and determinism hygiene of the pure packages (``raykv/raft``, ``kv``, ``placement``, ``replica``).

The pure layers must stay replayable from a seed: no clocks, threads, I/O, processes, Ray, LMDB,
Arrow, pickling, unseeded randomness, ``id()`` or ``hash()``. They may import the standard library
and, inside the project, only ``raykv.raft``, ``raykv.kv``, ``raykv.placement``, ``raykv.replica``
(the replica engine the simulator and the Ray shell both drive), ``raykv.protocol`` (the Ray-free
wire types) and ``raykv.errors``.
Imports are read with :mod:`ast`, so the check needs no import of the code under test.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PURE_PACKAGES = ("raft", "kv", "placement", "replica")

FORBIDDEN_TOP_LEVEL = frozenset({
    "ray", "lmdb", "pyarrow", "time", "threading", "asyncio", "socket", "multiprocessing",
    "subprocess", "os", "uuid", "datetime", "secrets", "cloudpickle", "pickle",
})
ALLOWED_PROJECT = ("raykv.raft", "raykv.kv", "raykv.placement", "raykv.replica", "raykv.protocol", "raykv.errors")
# Module-level functions of `random` that use the hidden global (unseeded) generator;
# SystemRandom is added because it cannot be seeded at all.
GLOBAL_RANDOM_FUNCTIONS = frozenset({
    "random", "randint", "choice", "shuffle", "uniform", "randrange", "sample", "seed",
    "getrandbits", "SystemRandom",
})
NONDETERMINISTIC_BUILTINS = frozenset({"id", "hash"})


def _resolve_from(node: ast.ImportFrom, module_name: str) -> str | None:
    """Absolute module named by ``from ... import``; None if a relative import escapes the top.

    ``module_name`` is the importing module's dotted name; a package's ``__init__.py`` is named
    ``pkg.__init__`` so that its relative imports resolve against ``pkg`` itself.
    """
    if node.level == 0:
        return node.module or ""
    parts = module_name.split(".")[: -node.level]
    if not parts:
        return None
    return ".".join(parts + ([node.module] if node.module else []))


def _import_violation(target: str) -> str | None:
    """Why importing the absolute module ``target`` breaks layering, or None if it is allowed."""
    top = target.split(".")[0]
    if top == "raykv":
        if any(target == p or target.startswith(p + ".") for p in ALLOWED_PROJECT):
            return None
        return f"project module {target!r} is outside the pure layers"
    if top in FORBIDDEN_TOP_LEVEL:
        return f"forbidden module {top!r}"
    if top not in sys.stdlib_module_names:
        return f"non-stdlib module {top!r}"
    return None


def _imported_modules(node: ast.Import | ast.ImportFrom, module_name: str) -> list[str] | None:
    """Absolute modules an import statement loads (None: relative import beyond the top package).

    ``from raykv import x`` (or ``from .. import x`` landing on ``raykv``) loads ``raykv.x``, so
    the names are checked as submodules; otherwise the ``from`` module itself is checked.
    """
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = _resolve_from(node, module_name)
    if base is None:
        return None
    if base == "raykv":
        return [f"raykv.{alias.name}" for alias in node.names]
    return [base]


def _check_import(node: ast.Import | ast.ImportFrom, module_name: str) -> list[str]:
    """Violations of one import statement (layering and ``from random import <function>``)."""
    modules = _imported_modules(node, module_name)
    if modules is None:
        return [f"line {node.lineno}: relative import escapes the top package"]
    found = [f"line {node.lineno}: {why}" for why in map(_import_violation, modules) if why]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "random":
        found += [
            f"line {node.lineno}: 'from random import {alias.name}' (only Random is allowed)"
            for alias in node.names if alias.name != "Random"
        ]
    return found


def _random_aliases(tree: ast.AST) -> set[str]:
    """Names bound to the ``random`` module itself (``import random [as r]``)."""
    names = {"random"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.asname or alias.name for alias in node.names if alias.name == "random"}
    return names


def _check_call(node: ast.Call, random_names: set[str]) -> list[str]:
    """Violations of one call: global-generator ``random.f()``, unseeded ``Random()``, id/hash."""
    func = node.func
    unseeded = not node.args and not node.keywords
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        if func.value.id in random_names and func.attr in GLOBAL_RANDOM_FUNCTIONS:
            return [f"line {node.lineno}: {func.value.id}.{func.attr}() uses unseeded randomness"]
        if func.value.id in random_names and func.attr == "Random" and unseeded:
            return [f"line {node.lineno}: {func.value.id}.Random() without a seed"]
    if isinstance(func, ast.Name):
        if func.id in NONDETERMINISTIC_BUILTINS:
            return [f"line {node.lineno}: {func.id}() is not deterministic across runs"]
        if func.id == "Random" and unseeded:
            return [f"line {node.lineno}: Random() without a seed"]
    return []


def forbidden_imports(source: str, module_name: str) -> list[str]:
    """Every layering or determinism violation in ``source``, as ``"line N: why"`` strings.

    ``module_name`` is the dotted name of the module (``raykv.raft.core``; ``raykv.raft.__init__``
    for a package's ``__init__.py``) and is used to resolve relative imports. An empty list means
    the module is fit for a pure layer.
    """
    tree = ast.parse(source)
    random_names = _random_aliases(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found += _check_import(node, module_name)
        elif isinstance(node, ast.Call):
            found += _check_call(node, random_names)
    return sorted(found, key=lambda s: int(s.split(":")[0].split()[1]))


def module_name_for(path: Path) -> str:
    """Dotted module name of a file under the repository root (``__init__`` kept, see above)."""
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def pure_sources() -> list[Path]:
    """All ``.py`` files of the pure packages that exist, in sorted order."""
    files: list[Path] = []
    for package in PURE_PACKAGES:
        directory = ROOT / "raykv" / package
        if directory.is_dir():
            files += sorted(directory.rglob("*.py"))
    return files


def test_raft_package_exists_and_has_modules() -> None:
    raft = ROOT / "raykv" / "raft"
    assert raft.is_dir(), "raykv/raft must exist"
    assert list(raft.rglob("*.py")), "raykv/raft must contain Python modules"


def test_pure_layers_have_no_forbidden_imports_or_nondeterminism() -> None:
    report = []
    for path in pure_sources():
        for violation in forbidden_imports(path.read_text(), module_name_for(path)):
            report.append(f"{path.relative_to(ROOT)} {violation}")
    assert not report, "pure-layer violations:\n" + "\n".join(report)


def test_protocol_module_imports_only_errors() -> None:
    """The wire types are shared by the client, the engine and the runtime: Ray-free, pure."""
    path = ROOT / "raykv" / "protocol.py"
    assert forbidden_imports(path.read_text(), "raykv.protocol") == []


def test_errors_module_is_stdlib_only() -> None:
    tree = ast.parse((ROOT / "raykv" / "errors.py").read_text())
    tops = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            tops |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"line {node.lineno}: errors.py must not import project modules"
            tops.add((node.module or "").split(".")[0])
    assert not tops & {"ray", "lmdb", "pyarrow", "raykv"}, tops
    assert tops <= set(sys.stdlib_module_names), tops - set(sys.stdlib_module_names)


SNIPPET = """\
import ray
from time import monotonic
import random
from random import Random
from . import x
from ..runtime import y

def f():
    return random.random()
"""


def test_forbidden_imports_bites() -> None:
    found = forbidden_imports(SNIPPET, "raykv.raft.snippet")
    assert found == [
        "line 1: forbidden module 'ray'",
        "line 2: forbidden module 'time'",
        "line 6: project module 'raykv.runtime' is outside the pure layers",
        "line 9: random.random() uses unseeded randomness",
    ]


def test_forbidden_imports_more_cases() -> None:
    cases = {
        "from random import choice": ["line 1: 'from random import choice' (only Random is allowed)"],
        "import random as r\nr.shuffle([])": ["line 2: r.shuffle() uses unseeded randomness"],
        "import random\nrandom.Random()": ["line 2: random.Random() without a seed"],
        "import random\nrandom.Random(7)": [],
        "from .. import runtime": ["line 1: project module 'raykv.runtime' is outside the pure layers"],
        "from .. import errors": [],
        "from raykv.errors import RaftError": [],
        "import os.path": ["line 1: forbidden module 'os'"],
        "import numpy": ["line 1: non-stdlib module 'numpy'"],
        "from .... import z": ["line 1: relative import escapes the top package"],
        "x = id(object())\ny = hash('a')": [
            "line 1: id() is not deterministic across runs",
            "line 2: hash() is not deterministic across runs",
        ],
    }
    for source, expected in cases.items():
        assert forbidden_imports(source, "raykv.raft.snippet") == expected, source


def test_package_init_resolves_relative_imports_against_itself() -> None:
    assert forbidden_imports("from .core import Node", "raykv.raft.__init__") == []
    assert forbidden_imports("from ..runtime import a", "raykv.raft.__init__") == [
        "line 1: project module 'raykv.runtime' is outside the pure layers"
    ]


def _top_level_imports(path: Path) -> set[str]:
    """Absolute top-level module names imported anywhere in ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for module in _imported_modules(node, module_name_for(path)) or []:
                names.add(module)
    return names


RAY_PACKAGES = ("runtime", "bench", "client", "jobs")
RAY_ENTRY_MODULES = ("cli.py", "api.py", "demo.py", "data.py", "backup.py", "explore.py",  # top level only
                     "testing/jepsen.py", "testing/recovery.py")  # testing/'s Ray drivers: real hosts, real Ray


def test_only_the_runtime_imports_ray() -> None:
    """The Ray shell is raykv/runtime/, the client, the benches, the jobs and the top-level entry
    modules (api, cli, demo, data, backup, explore); storage, kv, raft, placement and testing never
    import ray (``storage/backup.py`` is not ``backup.py``), but for the host test bed's drivers
    ``testing/jepsen.py`` and ``testing/recovery.py``."""
    offenders = []
    for path in sorted((ROOT / "raykv").rglob("*.py")):
        rel = path.relative_to(ROOT / "raykv")
        if rel.parts[0] in RAY_PACKAGES or rel.as_posix() in RAY_ENTRY_MODULES:
            continue
        if any(m == "ray" or m.startswith("ray.") for m in _top_level_imports(path)):
            offenders.append(str(rel))
    assert not offenders, f"modules outside raykv/runtime import ray: {offenders}"


def test_the_client_does_not_import_the_runtime() -> None:
    """Client and runtime share the wire protocol (``raykv/protocol.py``), not each other's code:
    the client must work where the runtime's Ray-side modules would be wrong to load."""
    offenders = []
    for path in sorted((ROOT / "raykv" / "client").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 2 and (node.module or "").startswith("runtime"):
                offenders.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("raykv.runtime"):
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders

