"""Imports go down the package layering only, and no two packages import each other.

The layering is written once, in ``MAY_IMPORT`` below (docs/dev-guide.md, "Package graph", draws it).
Every ``.py`` file of the repository root (the installed ``recurlm`` package, plus ``benchmarks/``;
not ``tests/``, ``build/`` or ``docs/``) is parsed with ``ast``. Every import counts, wherever it
is written: at module level, inside a function (an import moved into a function still runs, so it
cannot hide a cycle), relative (``from ..data import x``), ``from recurlm import models``, and
``importlib.import_module("recurlm....")`` / ``__import__`` with a literal (or f-string) name.
"""
from __future__ import annotations

import ast
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIPPED_DIRS = {"tests", "build", "docs"}
SKIPPED_FILES = {"setup.py"}  # the build script (not in the wheel)

KERNELS, DATA, MODELS, EVAL, TRAIN, LAUNCH, CONFIGS, CLI, BENCHMARKS = (
    "kernels", "data", "models", "eval", "train", "launch", "configs", "cli", "benchmarks")
ROOT_PACKAGE = ""
"""``recurlm/__init__.py`` (only ``__version__``): anyone may import it."""
TESTS = "tests"
"""Not in the wheel and not walked as a source; only benchmarks (also run from a checkout) may import
it, for the tests' comparison harness and fla's CPU stand-ins."""

MAY_IMPORT: dict[str, set[str]] = {
    # package: the packages it may import (lowest first; nothing may import a package on its own row
    # or above). ``cli`` is the root module cli.py; a package's ``__main__.py`` counts as ``cli``
    # too: it is run (``python -m recurlm.train``), never imported, so it can close no cycle.
    KERNELS: set(),
    DATA: set(),
    MODELS: {KERNELS},
    EVAL: {MODELS, DATA, KERNELS},
    TRAIN: {EVAL, MODELS, DATA, KERNELS},
    LAUNCH: {TRAIN, EVAL, MODELS, DATA, KERNELS},  # never composes a job: it is handed a typed one
    CONFIGS: {LAUNCH, TRAIN, EVAL, MODELS, DATA, KERNELS},  # composes and types the job
    CLI: {CONFIGS, LAUNCH, TRAIN, EVAL, MODELS, DATA, KERNELS},  # thin entry points
    BENCHMARKS: {TESTS, CLI, CONFIGS, LAUNCH, TRAIN, EVAL, MODELS, DATA, KERNELS},
}


@dataclass(frozen=True)
class Edge:
    source: str
    """Package of the importing file."""
    target: str
    """Package of the imported module (``ROOT_PACKAGE`` for ``recurlm`` itself)."""
    module: str
    """The imported module, e.g. ``recurlm.models.pretrained``."""
    where: str
    """``<file relative to the root>:<line>``."""


def package_of_file(relative: Path) -> str:
    """The package a file belongs to: its top folder, ``cli`` for cli.py and every ``__main__.py``,
    ``ROOT_PACKAGE`` for the root ``__init__.py``."""
    if relative.name == "__main__.py" or relative.parts == ("cli.py",):
        return CLI
    if len(relative.parts) == 1:
        return ROOT_PACKAGE if relative.name == "__init__.py" else relative.stem
    return relative.parts[0]


def module_of_file(relative: Path) -> str:
    parts = ["recurlm", *relative.with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of_module(module: str) -> str:
    """``recurlm.train.trainer`` -> ``train``; ``recurlm`` and ``recurlm.__version__`` -> ``ROOT_PACKAGE``."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__version__":
        return ROOT_PACKAGE
    return parts[1]  # a package, ``tests``, or a root module (``cli``): anything unknown is an edge too


def _dynamic_name(call: ast.Call) -> str | None:
    """The literal module name of ``importlib.import_module(...)`` / ``__import__(...)``; for an
    f-string, its leading literal part (enough to know the package)."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in ("import_module", "__import__") or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value)
    return None


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(absolute ``recurlm...`` module, line) of every import in ``source``, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[:len(module.split(".")) - node.level + (1 if is_package else 0)]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            # ``from recurlm import models`` imports recurlm.models; ``from recurlm.x import f`` imports recurlm.x
            found += [(f"{parent}.{alias.name}" if parent == "recurlm" else parent, node.lineno)
                      for alias in node.names]
        elif isinstance(node, ast.Call):
            name = _dynamic_name(node)
            if name is not None:
                found.append((name, node.lineno))
    return sorted({(name, line) for name, line in found if name == "recurlm" or name.startswith("recurlm.")},
                  key=lambda item: (item[1], item[0]))


def python_files(root: Path) -> list[Path]:
    """The root's own modules and those under its top folders that are packages (an
    ``__init__.py``) or named in ``MAY_IMPORT`` (``benchmarks/`` has no ``__init__.py``); run
    outputs, build and egg-info folders are neither."""
    files = [Path(n) for n in sorted(os.listdir(root)) if n.endswith(".py") and n not in SKIPPED_FILES]
    for top in sorted(os.listdir(root)):
        if top in SKIPPED_DIRS or not (root / top).is_dir() or \
                not (top in MAY_IMPORT or (root / top / "__init__.py").is_file()):
            continue
        for parent, dirs, names in os.walk(root / top):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
            files += [Path(parent).relative_to(root) / n for n in sorted(names) if n.endswith(".py")]
    return files


def import_edges(root: Path) -> list[Edge]:
    """Every import of a recurlm module by a file of another package (the root package excluded)."""
    edges = []
    for relative in python_files(root):
        source_package = package_of_file(relative)
        module = module_of_file(relative)
        for name, line in imported_modules((root / relative).read_text(), module, relative.name == "__init__.py"):
            target = package_of_module(name)
            if target not in (ROOT_PACKAGE, source_package):
                edges.append(Edge(source_package, target, name, f"{relative}:{line}"))
    return edges


def cycles(pairs: set[tuple[str, str]]) -> list[list[str]]:
    """The groups of packages that import each other, directly or through others (the strongly
    connected components of the (importer, imported) graph with more than one package), sorted."""
    graph: dict[str, set[str]] = {}
    for a, b in pairs:
        graph.setdefault(a, set()).add(b)

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reach = {node: reachable(node) for node in graph}
    groups = {frozenset({a} | {b for b in reach[a] if a in reach.get(b, ())}) for a in graph if a in reach[a]}
    return sorted(sorted(group) for group in groups)


def test_the_layering_itself_has_no_cycle():
    assert cycles({(a, b) for a, allowed in MAY_IMPORT.items() for b in allowed}) == []


def test_every_package_is_in_the_layering():
    packages = {package_of_file(f) for f in python_files(ROOT)} - {ROOT_PACKAGE}
    assert packages <= set(MAY_IMPORT), f"add {sorted(packages - set(MAY_IMPORT))} to MAY_IMPORT"


def test_imports_only_go_down():
    edges = import_edges(ROOT)
    assert len(edges) > 100  # the walk found the code (~150 cross-package imports)
    upward = [e for e in edges if e.target not in MAY_IMPORT.get(e.source, set())]
    assert not upward, "imports against the layering (MAY_IMPORT in tests/test_import_direction.py):\n" + \
        "\n".join(f"  {e.where}: {e.source} -> {e.target} ({e.module})" for e in upward)


def test_no_package_cycle():
    edges = import_edges(ROOT)
    found = cycles({(e.source, e.target) for e in edges})
    lines = []
    for group in found:
        lines.append(f"  {', '.join(group)} import each other:")
        lines += [f"    {e.where}: {e.source} -> {e.target} ({e.module})"
                  + ("" if e.target in MAY_IMPORT[e.source] else "   <- against the layering")
                  for e in edges if e.source in group and e.target in group]
    assert not found, "package import cycles:\n" + "\n".join(lines)


def test_the_walk_sees_nested_relative_and_dynamic_imports(tmp_path):
    """A tree with one upward import of each kind: every one is found, with its file and line."""
    files = {
        "__init__.py": "__version__ = '0'\n",
        "cli.py": "from recurlm.configs import compose\n",
        "models/__init__.py": "",
        "models/a.py": textwrap.dedent("""\
            import importlib
            from recurlm import __version__
            from . import b
            def f():
                from ..train import loop
                return importlib.import_module(f"recurlm.eval.{loop}")
            """),
        "models/b.py": "from recurlm import data\n",
        "train/__init__.py": "",
        "train/__main__.py": "from recurlm.cli import main\n",
        "tests/test_x.py": "from recurlm.cli import main\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    edges = {(e.where, e.source, e.target, e.module) for e in import_edges(tmp_path)}
    assert edges == {
        ("cli.py:1", CLI, CONFIGS, "recurlm.configs"),
        ("models/a.py:5", MODELS, TRAIN, "recurlm.train"),
        ("models/a.py:6", MODELS, EVAL, "recurlm.eval."),
        ("models/b.py:1", MODELS, DATA, "recurlm.data"),
    }  # train/__main__.py -> cli is inside the cli layer; tests/ is not walked
    assert cycles({(MODELS, TRAIN), (TRAIN, EVAL), (EVAL, MODELS), (TRAIN, DATA), (CLI, LAUNCH), (LAUNCH, CLI)}) \
        == [[CLI, LAUNCH], [EVAL, MODELS, TRAIN]]
