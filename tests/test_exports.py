import ast
import inspect
import re
from pathlib import Path

import fastcleanup as fc


def test_public_names_are_pinned() -> None:
    assert sorted(fc.__all__) == [
        "AClose", "Call", "Cleaner", "CleanupTask", "InOrder", "RemoveFile", "RemoveTree",
        "ScratchDir", "StagingFile", "Stats", "TempFile", "configure", "drain", "init_worker",
        "metrics", "on_collect", "run", "shutdown", "stats", "submit", "sweep", "worker_inited",
    ]  # fmt: skip
    for name in fc.__all__:
        assert getattr(fc, name) is not None


def test_metrics_module_names_are_pinned() -> None:
    assert sorted(fc.metrics.__all__) == [
        "MetricsServer", "aiohttp_handler", "asgi_app", "register", "serve",
    ]  # fmt: skip


def test_the_docs_state_the_real_defaults() -> None:
    """The crawler guide's ``fc.Cleaner(...)`` block and shutdown() timeouts are the real ones."""
    root = Path(__file__).resolve().parent.parent
    guide = (root / "docs" / "guides" / "crawler.md").read_text(encoding="utf-8")
    block = guide.split("fc.Cleaner(\n", 1)[1].split("\n)", 1)[0]
    stated = dict(re.findall(r"^\s+(\w+)=([^,]+),", block, re.M))
    params = inspect.signature(fc.Cleaner).parameters
    assert set(stated) == set(params)
    for name, text in stated.items():
        if name == "registry":  # the guide names the sentinel's meaning: the global REGISTRY
            continue
        assert params[name].default == ast.literal_eval(text), name
    for shutdown in (fc.shutdown, fc.Cleaner.shutdown):
        assert inspect.signature(shutdown).parameters["timeout"].default == 10
    assert "fc.shutdown(timeout=10)" in guide
    assert "fc.shutdown(timeout=10)" in (root / "README.md").read_text(encoding="utf-8")


def test_a_cleaner_has_the_default_cleaner_s_functions_as_methods() -> None:
    """README: ``fc.Cleaner(...)`` is "an independent cleaner with the same methods"."""
    cleaner = fc.Cleaner(registry=None)
    for name in ("init_worker", "submit", "worker_inited", "drain", "shutdown", "stats"):
        function, method = getattr(fc, name), getattr(cleaner, name)
        assert inspect.iscoroutinefunction(function) == inspect.iscoroutinefunction(method), name
        if name in ("drain", "shutdown", "stats"):  # the rest are the default cleaner's own
            assert inspect.signature(function) == inspect.signature(method), name
