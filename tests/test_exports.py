import ast
import inspect
import re
from pathlib import Path

import pytest

import fastcleanup as fc
from tests.helpers import run_command

ENTRY_POINTS = pytest.mark.parametrize("module", [False, True], ids=["script", "python-m"])


def test_public_names_are_pinned() -> None:
    assert sorted(fc.__all__) == [
        "AClose", "Call", "Cleaner", "CleanupTask", "RemoveFile", "RemoveTree", "ScratchDir",
        "StagingFile", "Stats", "TempFile", "drain", "init_worker", "metrics", "on_collect", "run",
        "shutdown", "stats", "submit", "sweep", "worker_inited",
    ]  # fmt: skip
    for name in fc.__all__:
        assert getattr(fc, name) is not None


def test_metrics_module_names_are_pinned() -> None:
    assert sorted(fc.metrics.__all__) == [
        "MetricsServer", "aiohttp_handler", "asgi_app", "register", "serve",
    ]  # fmt: skip


def test_readme_states_the_real_defaults() -> None:
    """README's ``fc.Cleaner(...)`` block and shutdown() timeout are the real defaults."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("fc.Cleaner(\n", 1)[1].split("\n)", 1)[0]
    stated = dict(re.findall(r"^\s+(\w+)=([^,]+),", block, re.M))
    params = inspect.signature(fc.Cleaner).parameters
    assert set(stated) == set(params)
    for name, text in stated.items():
        if name == "registry":  # README names the sentinel's meaning: the global REGISTRY
            continue
        assert params[name].default == ast.literal_eval(text), name
    for shutdown in (fc.shutdown, fc.Cleaner.shutdown):
        assert inspect.signature(shutdown).parameters["timeout"].default == 10
    assert "fc.shutdown(timeout=10)" in readme


@ENTRY_POINTS
def test_help_lists_the_commands(module: bool) -> None:
    """``fastcleanup --help`` and ``python -m fastcleanup --help``: exit 0, both commands listed."""
    proc = run_command("--help", module=module)
    assert proc.returncode == 0, proc.stderr
    for command in ("demo", "bench"):
        assert re.search(rf"^  {command}  +\w", proc.stdout, re.M), proc.stdout
    assert proc.stderr == ""


@ENTRY_POINTS
def test_an_unknown_command_exits_2_and_says_so_on_stderr(module: bool) -> None:
    proc = run_command("cleanup-everything", module=module)
    assert proc.returncode == 2
    assert "unknown command 'cleanup-everything'" in proc.stderr
    assert proc.stdout == ""
