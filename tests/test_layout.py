"""The package's layout: every module imports alone, no import cycle, the library stands alone.

The import graph is read from the source (``ast``), so it sees imports inside
functions too, which an import at run time would only meet when the function
runs. Imports under ``if TYPE_CHECKING:`` never run and so cannot form an
import cycle; they still count for the layering check, since a library
module that names ``bench`` even for its types depends on it.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import fastcleanup
from tests.helpers import PROJECT_ROOT

PACKAGE = Path(fastcleanup.__file__).parent
OUTSIDE = ("bench", "examples", "tests")  # the checkout's other packages: never installed


def module_files(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module under ``root`` by dotted name (a package by its own name)."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, typing_too: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test) and not typing_too:
            yield from _imports(ast.Module(body=node.orelse, type_ignores=[]), typing_too)
        else:
            yield from _imports(node, typing_too)


def imported(
    name: str, path: Path, modules: Iterable[str], *, typing_too: bool = False
) -> set[str]:
    """The modules among ``modules`` that module ``name`` (source at ``path``) imports."""
    known = set(modules)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _imports(ast.parse(path.read_text(), str(path)), typing_too):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = package.split(".")
            if node.level > 1:
                base = base[: len(base) - (node.level - 1)]
            if node.level == 0:
                base = []
            stem = ".".join([*base, *([node.module] if node.module else [])])
            # `from pkg import x` imports the module pkg.x when there is one, else pkg.
            subs = [f"{stem}.{alias.name}" for alias in node.names]
            targets = [s for s in subs if s in known] or [stem]
            if len(targets) < len(subs):
                targets.append(stem)
        for target in targets:
            # `import a.b.c` runs a.b.c; its parents are packages it needs anyway.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(*, typing_too: bool = False) -> dict[str, set[str]]:
    """Module -> the package modules it imports, for all of ``fastcleanup/``."""
    files = module_files()
    # A compiled module is known by its stub (_cbulk.pyi): a leaf that imports nothing of ours.
    compiled = {
        ".".join([PACKAGE.name, *stub.relative_to(PACKAGE).with_suffix("").parts])
        for stub in PACKAGE.rglob("*.pyi")
        if not stub.with_suffix(".py").exists()
    }
    known = [*files, *compiled]
    graph = {
        name: imported(name, path, known, typing_too=typing_too) for name, path in files.items()
    }
    graph.update((name, set()) for name in compiled)
    return graph


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or None if it has none."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        # A depth-first walk; the stack is the path from start to the node on top.
        stack = [(start, iter(sorted(graph.get(start, ()))))]
        on_path = {start}
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_path.discard(node)
                done.add(node)
            elif child in on_path:
                path = [n for n, _ in stack]
                return [*path[path.index(child) :], child]
            elif child not in done:
                stack.append((child, iter(sorted(graph.get(child, ())))))
                on_path.add(child)
    return None


def test_find_cycle_finds_a_hand_made_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"d", "a"}, "d": set(), "e": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"x"}}) == ["x", "x"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({}) is None


def test_the_graph_sees_relative_absolute_and_function_level_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import f\nimport pkg.c\n"
    )
    (pkg / "c.py").write_text("from pkg.sub.b import x\n")
    files = module_files(pkg)
    assert set(files) == {"pkg", "pkg.a", "pkg.sub", "pkg.sub.b", "pkg.c"}
    graph = {n: imported(n, p, files) for n, p in files.items()}
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.sub.b"},
        "pkg.sub": set(),
        "pkg.sub.b": {"pkg.c"},
        "pkg.c": {"pkg.sub.b"},
    }
    assert find_cycle(graph) == ["pkg.sub.b", "pkg.c", "pkg.sub.b"]
    assert imported("pkg.sub.b", files["pkg.sub.b"], files, typing_too=True) == {"pkg.a", "pkg.c"}


def test_every_module_imports_alone() -> None:
    # One fresh interpreter per module, all started at once: a module that only
    # imports because another one ran first fails here.
    names = sorted(module_files())
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", f"import {name}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    }
    failed = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            failed[name] = err.strip().splitlines()[-1:]
    if importlib.util.find_spec("playwright") is None:
        # Without the extra, the one opt-in module refuses to import, saying how to fix it.
        message = failed.pop("fastcleanup.playwright", [""])[-1]
        assert "pip install 'fastcleanup[playwright]'" in message, message
    assert not failed, failed
    assert {"fastcleanup", "fastcleanup._cleaner", "fastcleanup.metrics"} <= set(names)


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_no_import_cycle_even_for_types() -> None:
    """Type-only imports cannot cycle at run time, but a reader follows them too."""
    cycle = find_cycle(import_graph(typing_too=True))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def outside_imports(path: Path) -> list[str]:
    """The modules of the checkout's other packages (``OUTSIDE``) that ``path`` imports."""
    found = []
    for node in _imports(ast.parse(path.read_text(), str(path)), typing_too=True):
        if isinstance(node, ast.Import):
            heads = [alias.name for alias in node.names]
        else:
            heads = [node.module or ""] if node.level == 0 else []
        found += [h for h in heads if h.split(".")[0] in OUTSIDE]
    return sorted(found)


def test_outside_imports_are_seen(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, bench.cli\nfrom .bench import x\ndef f():\n    from examples.demo import cli\n"
    )
    assert outside_imports(probe) == ["bench.cli", "examples.demo"]


def test_the_library_never_imports_the_checkouts_other_packages() -> None:
    """bench/, examples/ and tests/ are not installed: a library module naming one would break."""
    offenders = {name: outside_imports(path) for name, path in module_files().items()}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_only_the_library_is_installed() -> None:
    """The wheel holds ``fastcleanup`` alone, and the package no command or benchmark."""
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["tool"]["setuptools"]["packages"] == ["fastcleanup"]
    assert "scripts" not in pyproject["project"]
    assert [p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"] == []
    assert not (PACKAGE / "__main__.py").exists()
