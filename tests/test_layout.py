"""The package's layout: every module imports alone, no import cycle, the library stands alone.

The import graph is read from the source (``ast``), so it sees imports inside
functions too, which an import at run time would only meet when the function
runs. Imports under ``if TYPE_CHECKING:`` never run and so cannot form an
import cycle; they still count for the layering check, since a library
module that names ``fastcleanup.bench`` even for its types depends on it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import fastcleanup

PACKAGE = Path(fastcleanup.__file__).parent
APPS = ("fastcleanup.bench", "fastcleanup.demo")  # the commands' subpackages, not the library


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
    assert not failed, failed
    assert {"fastcleanup", "fastcleanup.bench.cli", "fastcleanup.demo.cli"} <= set(names)


def _is_app(name: str) -> bool:
    return any(name == a or name.startswith(a + ".") for a in APPS)


def test_no_import_cycle_among_the_commands() -> None:
    apps = {n: {t for t in ts if _is_app(t)} for n, ts in import_graph().items() if _is_app(n)}
    assert "fastcleanup.bench.harness" in apps["fastcleanup.bench.cli"]
    cycle = find_cycle(apps)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_no_import_cycle_even_for_types() -> None:
    """Type-only imports cannot cycle at run time, but a reader follows them too."""
    cycle = find_cycle(import_graph(typing_too=True))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_the_library_never_imports_the_commands() -> None:
    graph = import_graph(typing_too=True)
    assert "fastcleanup.demo.report" in graph  # the apps are in the graph, and seen importing
    assert "fastcleanup.bench.harness" in graph["fastcleanup.demo.report"]

    offenders = {
        name: sorted(filter(_is_app, targets))
        for name, targets in graph.items()
        if not _is_app(name) and any(map(_is_app, targets))
    }
    # __main__ is the commands' dispatcher: the one module that must import them.
    assert offenders == {"fastcleanup.__main__": ["fastcleanup.bench.cli", "fastcleanup.demo.cli"]}
