"""The architecture's layering rules, checked on every test run rather than only written down.

docs/architecture.md describes the layers; this file is what keeps the code honest to
them. It reads the source with ``ast`` (nothing under test is imported, so it is fast
and needs no torch) and fails, naming the file, the line and the rule, on:

1. ``layering``: an import that points the wrong way between units (``scheduler``,
   ``cells``, ``loadtest``, ``server.py`` and the sub-packages of ``batchmaker``), as
   listed in ``ALLOWED_IMPORTS``, or a third-party import a unit must not make.
2. ``torch``: torch (or ``safetensors.torch``) imported by a module in ``TORCH_FREE``.
3. ``cycle``: an import cycle between modules, or between units; and ``ALLOWED_IMPORTS``
   must itself be a DAG.

Every import counts: module level, inside functions (lazy imports), under
``if TYPE_CHECKING:``, relative ones (resolved), and ``importlib.import_module("...")``
with a literal name. Rule 2 looks at direct imports only; the subprocess test at the end
checks that the torch-free entry points do not load torch indirectly either.

The checks are functions of a root folder, so the same code checks the real tree and
the small fake trees that prove each rule fires.
"""

from __future__ import annotations

import ast
import functools
import itertools
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------
# The rules, as data. Extend these tables when the architecture changes (and say why).
# ---------------------------------------------------------------------------------------

# The folders (top-level packages) and the root scripts whose imports are checked.
SOURCE_PACKAGES = ("batchmaker", "cells", "scheduler", "loadtest")
SOURCE_SCRIPTS = ("server.py",)

# Generated protobuf stubs (`make proto`): never edited, so never checked; they may still
# be imported by the units that ALLOWED_IMPORTS lets import "batchmaker.v1".
EXEMPT_FOLDERS = ("batchmaker/v1/", "batchmaker/kserve/")

FACE = "batchmaker"
"""The package face, batchmaker/__init__.py: its names lazily import the runtime, so
``from batchmaker import X`` (or ``import batchmaker``) counts as importing the whole
package, whatever X is. Of batchmaker's sub-packages only the CLI may; the others import
from the defining module."""

MAIN = "batchmaker.__main__"
"""``python -m batchmaker``: an entry point, like server.py."""

SCRIPT = "server.py"
"""The root server.py (module ``server``; not to be confused with ``batchmaker.server``)."""


def _bm(*names: str) -> frozenset[str]:
    return frozenset(f"batchmaker.{name}" for name in names)


# Every unit inside batchmaker besides the face and __main__: one per module at the top of
# batchmaker/ (types, errors, config) or sub-package.
BATCHMAKER_UNITS = _bm(
    "types",
    "errors",
    "config",
    "v1",
    "kserve",
    "wire",
    "models",
    "runtime",
    "repository",
    "client",
    "demos",
    "server",
    "transform",
    "bench",
    "sim",
    "cli",
)

# Rule 1: each unit, and the other units it may import (a unit may always import itself).
# Anything else of the first party is an upward (or sideways) import. A unit that is no
# key here (batchmaker.v1, batchmaker.kserve: generated) is not checked; a file in no unit
# at all is an error, so a new sub-package cannot slip in unchecked.
ALLOWED_IMPORTS: dict[str, frozenset[str]] = {
    # The scheduling policy: pure Python, simulated and tested alone. Depends on nothing.
    "scheduler": frozenset(),
    # The batched torch cells: reusable without the server; depend on nothing of ours.
    "cells": frozenset(),
    # What a caller submits and gets back; re-exports a scheduler enum (FinishReason).
    "batchmaker.types": frozenset({"scheduler"}),
    # Typed errors shared by engine, server and client.
    "batchmaker.errors": frozenset({"scheduler"}),
    # Engine and server settings: plain data, readable before anything heavy is imported.
    "batchmaker.config": _bm("types", "errors") | {"scheduler"},
    # protobuf <-> types conversion, the one place the two meet; shared with the client.
    "batchmaker.wire": _bm("types", "errors", "v1", "kserve"),
    # Model families: cells plus request graphs plus input validation.
    "batchmaker.models": _bm("types", "errors") | {"cells", "scheduler"},
    # Engine, device worker, executors, streams.
    "batchmaker.runtime": _bm("types", "errors", "config", "models") | {"scheduler", "cells"},
    # Model store, importer and the manager that loads versions into engines.
    "batchmaker.repository": (
        _bm("runtime", "models", "types", "errors", "config") | {"cells", "scheduler"}
    ),
    # The Python client: grpc, protobuf, numpy; never the server, the runtime or torch.
    "batchmaker.client": _bm("wire", "types", "errors", "v1"),
    # Demo tasks and their training; the trained models ship with the package.
    "batchmaker.demos": (
        _bm("models", "repository", "client", "types", "errors") | {"cells", "scheduler"}
    ),
    # The gRPC server: servicers, lifecycle, auth, logs, metrics.
    "batchmaker.server": (
        _bm("runtime", "models", "repository", "wire", "types", "errors", "config", "v1")
        | _bm("kserve")
        | {"scheduler", "cells"}
    ),
    # The offline transform (files of requests -> files of answers): in-process on the
    # engine, or on a server through the client; shares the record window with the server.
    "batchmaker.transform": (
        _bm("server", "client", "runtime", "repository", "models", "wire", "types", "errors")
        | _bm("config")
        | {"scheduler", "cells"}
    ),
    # The simulator: the real scheduler on simulated time, with measured step costs. No
    # torch, no runtime: the planner and the SLO controller run it without a model.
    "batchmaker.sim": _bm("types", "errors") | {"scheduler"},
    # Benchmarks drive every layer, but not the CLI (the CLI drives them).
    "batchmaker.bench": (BATCHMAKER_UNITS - _bm("cli")) | {"scheduler", "cells"},
    # The CLI wires everything together (but not __main__, which imports it).
    "batchmaker.cli": BATCHMAKER_UNITS | {FACE, "scheduler", "cells"},
    # The face re-exports names from anywhere in batchmaker; not the CLI, which may import
    # the face (the table must stay a DAG).
    FACE: BATCHMAKER_UNITS - _bm("cli"),
    # `python -m batchmaker` runs the CLI.
    MAIN: BATCHMAKER_UNITS | {FACE},
    # Load tests drive a server over gRPC; they may reuse anything but the CLI.
    "loadtest": (BATCHMAKER_UNITS - _bm("cli")) | {FACE},
    # The root server.py only starts the CLI.
    SCRIPT: _bm("cli"),
}

# Rule 1, third-party side: packages a unit must not import. (torch in scheduler/ is
# reported by rule 2, TORCH_FREE.) The scheduler stays transport-agnostic.
BANNED_THIRD_PARTY: dict[str, frozenset[str]] = {
    "scheduler": frozenset({"grpc"}),
}
# Units whose third-party imports are a closed list (the standard library is always fine).
ONLY_THIRD_PARTY: dict[str, frozenset[str]] = {
    # The cells are torch modules and nothing else: reusable without the server's stack.
    "cells": frozenset({"torch", "numpy"}),
}

# Rule 2: what counts as importing torch.
TORCH_MODULES = ("torch", "safetensors.torch")

# Rule 2: files that must not import torch, and why. "folder/**" covers the whole folder.
TORCH_FREE: dict[str, str] = {
    "scheduler/**": "the scheduling policy is pure Python: simulated and tested without torch",
    "batchmaker/types.py": "request and response types: shared with client processes",
    "batchmaker/errors.py": "typed errors: shared with client processes",
    "batchmaker/config.py": "settings: the CLI parses them before deciding to load a device",
    "batchmaker/wire/**": "protobuf conversion: imported by the client",
    "batchmaker/client/**": "a client process needs only grpc, protobuf and numpy",
    "batchmaker/runtime/**": "engine, worker, streams run torch-free behind the executor",
    "batchmaker/models/base.py": "the model interface: graphs and validation, no tensors",
    "batchmaker/models/checks.py": "input validation, on numpy arrays",
    "batchmaker/sim/**": "the simulator runs without a model or a device",
}
# Rule 2: exceptions inside TORCH_FREE folders, and why.
TORCH_ALLOWED: dict[str, str] = {
    "batchmaker/runtime/torch_executor.py": "the one runtime module that runs cells on torch",
}

# Entry points that must not load torch, even indirectly (checked in a subprocess each).
TORCH_FREE_ENTRY_POINTS = (
    "scheduler",
    "batchmaker.client",
    "batchmaker.wire.v1",
    "batchmaker.runtime.engine",
    "batchmaker.models.base",
    "batchmaker.sim.simulator",
    "batchmaker.sim.plan",
)

FIRST_PARTY = frozenset({*SOURCE_PACKAGES, SCRIPT.removesuffix(".py")})

# ---------------------------------------------------------------------------------------
# The checker: functions of a root folder.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Violation:
    """One broken rule, at a file and line."""

    path: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.rule}] {self.message}"


@dataclass(frozen=True)
class Import:
    """One imported module, as a statement names it (made absolute)."""

    path: str
    line: int
    importer: str
    module: str
    """``a.b`` for ``import a.b``; ``m`` for ``from m import x, y``."""
    names: tuple[str, ...]
    """``("x", "y")`` for ``from m import x, y``; empty for ``import a.b``."""
    statement: str


@dataclass(frozen=True)
class Tree:
    """The checked sources under a root: module name -> path, and every import."""

    modules: Mapping[str, str]
    """Every module, exempt ones included (they can be imported)."""
    imports: tuple[Import, ...]
    """Every import made by a non-exempt module."""
    errors: tuple[Violation, ...]
    """Files that could not be parsed, imports that could not be resolved."""


def module_name(relpath: str) -> str:
    parts = relpath.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _source_files(root: Path) -> Iterator[str]:
    for package in SOURCE_PACKAGES:
        folder = root / package
        if folder.is_dir():
            for path in sorted(folder.rglob("*.py")):
                yield path.relative_to(root).as_posix()
    for script in SOURCE_SCRIPTS:
        if (root / script).is_file():
            yield script


def _is_exempt(relpath: str) -> bool:
    return relpath.startswith(EXEMPT_FOLDERS)


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    package = importer if is_package else importer.rpartition(".")[0]
    parts = package.split(".") if package else []
    if level > len(parts):
        raise ValueError("relative import beyond the top-level package")
    base = parts[: len(parts) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _dynamic_import(node: ast.Call) -> str | None:
    """The literal module of ``importlib.import_module("m")`` / ``__import__("m")``."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in {"import_module", "__import__"} or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value if first.value and not first.value.startswith(".") else None
    return None


def _imports_of(
    relpath: str, importer: str, tree: ast.Module
) -> Iterator[tuple[int, str, tuple[str, ...], str]]:
    is_package = relpath.endswith("__init__.py")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, (), f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                try:
                    module = _resolve_relative(importer, is_package, node.level, node.module)
                except ValueError as exc:
                    raise SyntaxError(str(exc), (relpath, node.lineno, 0, "")) from exc
            names = tuple(alias.name for alias in node.names)
            yield node.lineno, module, names, ast.unparse(node)
        elif isinstance(node, ast.Call) and (module := _dynamic_import(node)):
            yield node.lineno, module, (), ast.unparse(node)


@functools.cache
def scan(root: Path) -> Tree:
    modules: dict[str, str] = {}
    imports: list[Import] = []
    errors: list[Violation] = []
    for relpath in _source_files(root):
        modules[module_name(relpath)] = relpath
    for name, relpath in sorted(modules.items(), key=lambda item: item[1]):
        if _is_exempt(relpath):
            continue
        try:
            parsed = ast.parse((root / relpath).read_text(encoding="utf-8"), relpath)
            for line, module, names, statement in _imports_of(relpath, name, parsed):
                imports.append(Import(relpath, line, name, module, names, statement))
        except SyntaxError as exc:
            errors.append(Violation(relpath, exc.lineno or 0, "parse", exc.msg))
    return Tree(modules, tuple(imports), tuple(errors))


def unit_of(module: str) -> str | None:
    """The unit a first-party module belongs to; None for stdlib and third-party."""
    parts = module.split(".")
    top = parts[0]
    if top not in FIRST_PARTY:
        return None
    if top == SCRIPT.removesuffix(".py"):
        return SCRIPT
    if top != "batchmaker":
        return top
    if len(parts) == 1:
        return FACE
    return f"batchmaker.{parts[1]}"


def _allowed_list(unit: str) -> str:
    allowed = sorted(ALLOWED_IMPORTS.get(unit, frozenset()) - {unit})
    return ", ".join(allowed) if allowed else "nothing of the first party"


def check_layering(root: Path) -> list[Violation]:
    """Rule 1: imports between units go only where ALLOWED_IMPORTS says."""
    tree = scan(root)
    found = list(tree.errors)
    for relpath in sorted(set(tree.modules.values())):
        unit = unit_of(module_name(relpath))
        if not _is_exempt(relpath) and unit not in ALLOWED_IMPORTS:
            found.append(
                Violation(
                    relpath,
                    1,
                    "layering",
                    f"{relpath} belongs to unit {unit!r}, which ALLOWED_IMPORTS does not "
                    "list: add the unit and what it may import",
                )
            )
    for imp in tree.imports:
        unit = unit_of(imp.importer)
        if unit not in ALLOWED_IMPORTS:
            continue  # reported above, once per file
        target = unit_of(imp.module)
        top = imp.module.split(".")[0]
        if target is None:
            problem = _third_party_problem(unit, top)
            message = f"`{imp.statement}`: {problem}" if problem else None
        elif target == unit or target in ALLOWED_IMPORTS[unit]:
            continue
        elif target == FACE:
            message = (
                f"`{imp.statement}`: {unit} imports the package face `batchmaker` "
                "(batchmaker/__init__.py, which lazily imports the runtime); only "
                "batchmaker.cli may. Import from the defining module"
            )
            named = {f"batchmaker.{name}" for name in imp.names} & tree.modules.keys()
            banned = sorted(
                other
                for other in {unit_of(module) or "" for module in named}
                if other != unit and other not in ALLOWED_IMPORTS[unit]
            )
            if banned:
                message += f" (but {unit} may not import {', '.join(banned)} either)"
            message += f"; {unit} may import: {_allowed_list(unit)}"
        else:
            message = (
                f"`{imp.statement}`: {unit} may not import {target}; "
                f"{unit} may import: {_allowed_list(unit)}"
            )
        if message:
            found.append(Violation(imp.path, imp.line, "layering", message))
    return sorted(found)


def _third_party_problem(unit: str, top: str) -> str | None:
    if top in BANNED_THIRD_PARTY.get(unit, frozenset()):
        return f"{unit} may not import {top}"
    only = ONLY_THIRD_PARTY.get(unit)
    if only is not None and top not in only and top not in sys.stdlib_module_names:
        return f"{unit} may import only the standard library and {', '.join(sorted(only))}"
    return None


def _matches(relpath: str, pattern: str) -> bool:
    if pattern.endswith("/**"):
        return relpath.startswith(pattern.removesuffix("**"))
    return relpath == pattern


def is_torch_free(relpath: str) -> bool:
    if relpath in TORCH_ALLOWED:
        return False
    return any(_matches(relpath, pattern) for pattern in TORCH_FREE)


def imports_torch(imp: Import) -> bool:
    named = [imp.module, *(f"{imp.module}.{name}" for name in imp.names)]
    return any(
        module == torch or module.startswith(f"{torch}.")
        for module in named
        for torch in TORCH_MODULES
    )


def check_torch(root: Path) -> list[Violation]:
    """Rule 2: no torch in the modules of TORCH_FREE."""
    tree = scan(root)
    found = []
    for imp in tree.imports:
        if is_torch_free(imp.path) and imports_torch(imp):
            found.append(
                Violation(
                    imp.path,
                    imp.line,
                    "torch",
                    f"`{imp.statement}`: {imp.path} must stay torch-free: "
                    f"{_torch_reason(imp.path)}",
                )
            )
    return sorted(found)


def _torch_reason(relpath: str) -> str:
    return next(reason for pattern, reason in TORCH_FREE.items() if _matches(relpath, pattern))


Edges = dict[str, dict[str, tuple[str, int]]]
"""node -> imported node -> (path, line) of the first import that makes the edge."""


def _add_edge(edges: Edges, source: str, target: str, where: tuple[str, int]) -> None:
    if source == target:
        return
    targets = edges.setdefault(source, {})
    if target not in targets or where < targets[target]:
        targets[target] = where


def _known_module(modules: Mapping[str, str], module: str) -> str | None:
    """The longest prefix of ``module`` that is a file of the tree."""
    parts = module.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def module_graph(root: Path) -> Edges:
    """Imports between files: ``from pkg import name`` goes to pkg/name.py if it exists."""
    tree = scan(root)
    edges: Edges = {}
    for imp in tree.imports:
        targets = [f"{imp.module}.{name}" for name in imp.names] or [imp.module]
        for target in targets:
            known = target if target in tree.modules else _known_module(tree.modules, imp.module)
            if known is not None:
                _add_edge(edges, imp.importer, known, (imp.path, imp.line))
    return edges


def unit_graph(root: Path) -> Edges:
    tree = scan(root)
    edges: Edges = {}
    for imp in tree.imports:
        source, target = unit_of(imp.importer), unit_of(imp.module)
        if source is not None and target is not None:
            _add_edge(edges, source, target, (imp.path, imp.line))
    return edges


def strongly_connected(edges: Mapping[str, Mapping[str, object]]) -> list[list[str]]:
    """Tarjan's algorithm; the components with more than one node, sorted."""
    nodes = sorted({*edges, *(t for targets in edges.values() for t in targets)})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, {})):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in nodes:
        if node not in index:
            visit(node)
    return sorted(components)


def shortest_cycle(edges: Mapping[str, Mapping[str, object]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first node, staying in the component."""
    start, members = component[0], set(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for target in sorted(edges.get(node, {})):
                if target not in members:
                    continue
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if target not in parent:
                    parent[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle in the component {component}")


def _describe_cycles(edges: Edges, what: str) -> list[str]:
    found = []
    for component in strongly_connected(edges):
        cycle = shortest_cycle(edges, component)
        steps = [cycle[0]]
        for source, target in itertools.pairwise(cycle):
            path, line = edges[source][target]
            steps.append(f"  -> {target}    ({path}:{line})")
        text = f"[cycle] {what} import cycle:\n  " + "\n  ".join(steps)
        if len(component) > len(cycle) - 1:
            text += f"\n  (all in one cycle group: {', '.join(component)})"
        found.append(text)
    return found


def check_module_cycles(root: Path) -> list[str]:
    """Rule 3: no import cycle between modules (files)."""
    return _describe_cycles(module_graph(root), "module")


def check_unit_cycles(root: Path) -> list[str]:
    """Rule 3: no import cycle between the units of ALLOWED_IMPORTS."""
    return _describe_cycles(unit_graph(root), "unit")


def table_cycles(table: Mapping[str, Iterable[str]]) -> list[list[str]]:
    return strongly_connected({unit: dict.fromkeys(allowed) for unit, allowed in table.items()})


def _report(title: str, problems: Iterable[object]) -> str:
    lines = [str(problem) for problem in problems]
    return f"{title} ({len(lines)}):\n" + "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The real tree.
# ---------------------------------------------------------------------------------------


def test_no_import_points_the_wrong_way() -> None:
    found = check_layering(REPO)
    assert not found, _report("imports against ALLOWED_IMPORTS (docs/architecture.md)", found)


def test_torch_only_where_allowed() -> None:
    found = check_torch(REPO)
    assert not found, _report("torch imported by a torch-free module (TORCH_FREE)", found)


def test_no_module_import_cycles() -> None:
    found = check_module_cycles(REPO)
    assert not found, _report("import cycles between modules", found)


def test_no_unit_import_cycles() -> None:
    found = check_unit_cycles(REPO)
    assert not found, _report("import cycles between units", found)


def test_allowed_imports_table_is_a_dag() -> None:
    assert not table_cycles(ALLOWED_IMPORTS), table_cycles(ALLOWED_IMPORTS)


def test_torch_tables_name_real_files() -> None:
    """A renamed or deleted file must not leave a stale entry that checks nothing."""
    stale = [pattern for pattern in TORCH_FREE if not (REPO / pattern.removesuffix("/**")).exists()]
    assert not stale, f"TORCH_FREE names paths that do not exist: {stale}"


# ---------------------------------------------------------------------------------------
# The checker itself: it must fail on wrong code and pass clean code.
# ---------------------------------------------------------------------------------------


def write_tree(root: Path, files: Mapping[str, str]) -> Path:
    for relpath, text in files.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


# One or more broken rules per file; the tests below name each expected report.
BAD_TREE: dict[str, str] = {
    "scheduler/__init__.py": "",
    "scheduler/x.py": "import torch\n",
    "scheduler/y.py": "def f() -> None:\n    import grpc\n",
    "cells/__init__.py": "",
    # cells.p <-> cells.q: `from cells import q` resolves to cells/q.py.
    "cells/p.py": "from cells import q\n",
    "cells/q.py": (
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from cells.p import P\n"
    ),
    "cells/r.py": "import loadtest\n",
    "loadtest/__init__.py": "",
    "batchmaker/__init__.py": "",
    "batchmaker/config.py": "from safetensors.torch import load_file\n",
    "batchmaker/runtime/__init__.py": "",
    "batchmaker/runtime/a.py": "import batchmaker.server.b\n",
    "batchmaker/runtime/torch_executor.py": "import torch\n",
    "batchmaker/server/__init__.py": "",
    # Allowed (server -> runtime), but closes the cycle runtime.a <-> server.b.
    "batchmaker/server/b.py": "def serve() -> None:\n    from batchmaker.runtime import a\n",
    "batchmaker/models/__init__.py": "",
    "batchmaker/models/m.py": "from batchmaker import Engine\n",
    "batchmaker/client/__init__.py": "",
    "batchmaker/client/c.py": "from ..server import b\n",
    "batchmaker/wire/__init__.py": "",
    "batchmaker/wire/v1.py": "import torch.nn as nn\n",
    "batchmaker/novel/__init__.py": "import batchmaker.types\n",
    "batchmaker/types.py": "",
    "batchmaker/v1/__init__.py": "import torch\nimport batchmaker.cli\n",  # exempt
    "loadtest/broken.py": "import math\nfrom ... import x\n",
}


def where(found: Iterable[Violation]) -> set[tuple[str, int]]:
    return {(violation.path, violation.line) for violation in found}


def test_checker_reports_upward_imports(tmp_path: Path) -> None:
    found = check_layering(write_tree(tmp_path, BAD_TREE))
    assert where(found) == {
        ("scheduler/y.py", 2),  # grpc, lazily
        ("cells/r.py", 1),  # loadtest
        ("batchmaker/runtime/a.py", 1),  # runtime -> server
        ("batchmaker/models/m.py", 1),  # the package face
        ("batchmaker/client/c.py", 1),  # client -> server, relative
        ("batchmaker/novel/__init__.py", 1),  # a unit missing from the table
        ("loadtest/broken.py", 2),  # a relative import above the top
    }, _report("found", found)
    by_path = {violation.path: violation for violation in found}
    assert by_path.pop("loadtest/broken.py").rule == "parse"
    assert all(violation.rule == "layering" for violation in by_path.values())
    by_path = {path: violation.message for path, violation in by_path.items()}
    assert (
        "batchmaker.runtime may not import batchmaker.server" in by_path["batchmaker/runtime/a.py"]
    )
    assert "package face" in by_path["batchmaker/models/m.py"]
    assert "batchmaker.client may not import batchmaker.server" in by_path["batchmaker/client/c.py"]


def test_checker_reports_torch(tmp_path: Path) -> None:
    found = check_torch(write_tree(tmp_path, BAD_TREE))
    assert where(found) == {
        ("scheduler/x.py", 1),
        ("batchmaker/config.py", 1),  # safetensors.torch
        ("batchmaker/wire/v1.py", 1),
    }, _report("found", found)
    assert all(violation.rule == "torch" for violation in found)


def test_checker_reports_cycles(tmp_path: Path) -> None:
    write_tree(tmp_path, BAD_TREE)
    assert strongly_connected(module_graph(tmp_path)) == [
        ["batchmaker.runtime.a", "batchmaker.server.b"],
        ["cells.p", "cells.q"],
    ]
    modules = check_module_cycles(tmp_path)
    assert len(modules) == 2
    assert "cells/q.py:4" in modules[1]
    assert strongly_connected(unit_graph(tmp_path)) == [["batchmaker.runtime", "batchmaker.server"]]
    assert len(check_unit_cycles(tmp_path)) == 1


def test_checker_reports_a_cyclic_table() -> None:
    table = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}), "d": frozenset()}
    assert table_cycles(table) == [["a", "b", "c"]]


def test_checker_passes_a_clean_tree(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "scheduler/__init__.py": "from scheduler.base import S\n",
            "scheduler/base.py": "import heapq\n\nimport numpy as np\n\nS = 1\n",
            "cells/__init__.py": "import torch\n\nfrom cells import base\n",
            "cells/base.py": "import numpy\n",
            "batchmaker/__init__.py": (
                "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                "    from batchmaker.runtime.engine import Engine\n"
            ),
            "batchmaker/__main__.py": "from batchmaker.cli.main import main\n",
            "batchmaker/types.py": "from scheduler import S\n",
            "batchmaker/runtime/__init__.py": "",
            "batchmaker/runtime/engine.py": (
                "from batchmaker.runtime import torch_executor\nfrom batchmaker.types import S\n"
            ),
            "batchmaker/runtime/torch_executor.py": "import torch\n\nimport cells\n",
            "batchmaker/client/__init__.py": "from .sync import Client\n",
            "batchmaker/client/sync.py": "import grpc\n\nfrom batchmaker.v1 import pb\n",
            "batchmaker/v1/__init__.py": "",
            "batchmaker/v1/pb.py": "",
            "batchmaker/bench/__init__.py": "",
            "batchmaker/bench/launcher.py": "import subprocess\n",
            "batchmaker/cli/__init__.py": "",
            "batchmaker/cli/main.py": (
                "def main() -> None:\n    from batchmaker import Engine\n"
                "    from batchmaker.bench import launcher\n"
            ),
            "loadtest/run.py": "from batchmaker.bench.launcher import X\n",
            "server.py": "from batchmaker.cli.main import main\n",
        },
    )
    assert check_layering(tmp_path) == []
    assert check_torch(tmp_path) == []
    assert check_module_cycles(tmp_path) == []
    assert check_unit_cycles(tmp_path) == []


# ---------------------------------------------------------------------------------------
# Torch-free entry points, imported for real: one fresh interpreter each, all in parallel.
# ---------------------------------------------------------------------------------------

TORCH_LOADED = 3
"""The probe's exit status when torch got loaded; any other failure exits 1."""

# Imports the module named by argv[1]; if that loaded torch, prints the first-party import
# chain that loaded it and exits with TORCH_LOADED.
_PROBE = """
import importlib, sys, traceback
module, repo, torch_loaded = sys.argv[1], sys.argv[2], int(sys.argv[3])
chain = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not chain:
            chain.extend(
                f"{f.filename.removeprefix(repo + '/')}:{f.lineno}: {f.line}"
                for f in traceback.extract_stack()[:-1]
                if f.filename.startswith(repo + "/") and "/site-packages/" not in f.filename
            )
        return None
sys.meta_path.insert(0, Spy())
importlib.import_module(module)
if "torch" in sys.modules:
    print("torch was imported by:", *chain, sep="\\n  ")
    sys.exit(torch_loaded)
"""


@dataclass(frozen=True)
class ProbeResult:
    returncode: int
    output: str


@pytest.fixture(scope="module")
def torch_probes() -> dict[str, ProbeResult]:
    processes = {
        module: subprocess.Popen(
            [sys.executable, "-c", _PROBE, module, str(REPO), str(TORCH_LOADED)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for module in TORCH_FREE_ENTRY_POINTS
    }
    results: dict[str, ProbeResult] = {}
    try:
        for module, process in processes.items():
            output, _ = process.communicate(timeout=120)
            results[module] = ProbeResult(process.returncode, output)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()
    return results


@pytest.mark.parametrize("module", TORCH_FREE_ENTRY_POINTS)
def test_entry_point_does_not_load_torch(module: str, torch_probes: dict[str, ProbeResult]) -> None:
    result = torch_probes[module]
    assert result.returncode != TORCH_LOADED, (
        f"`import {module}` must not load torch:\n{result.output}"
    )
    assert result.returncode == 0, f"`import {module}` failed:\n{result.output}"
