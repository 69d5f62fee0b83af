"""Every ``async def`` test runs twice: on asyncio's loop and on uvloop.

No pytest-asyncio: a 20-line hook gives each test a fresh ``asyncio.Runner``
with the loop factory of its ``loop_kind`` parameter, so ids read
``test_x[asyncio]`` and ``test_x[uvloop]``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import fastcleanup as fc
from fastcleanup import _log

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is not on Windows
    uvloop = None  # type: ignore[assignment]

LOOP_KINDS = ["asyncio", "uvloop"] if uvloop is not None else ["asyncio"]


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    factory: Callable[[], asyncio.AbstractEventLoop]
    factory = uvloop.new_event_loop if kind == "uvloop" else asyncio.new_event_loop
    return factory


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "loop_kind" in metafunc.fixturenames or inspect.iscoroutinefunction(metafunc.function):
        if "loop_kind" not in metafunc.fixturenames:
            metafunc.fixturenames.append("loop_kind")
        metafunc.parametrize("loop_kind", LOOP_KINDS)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    kind = pyfuncitem.callspec.params["loop_kind"]
    assert isinstance(kind, str)
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        runner.run(pyfuncitem.obj(**kwargs))
    return True


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A fresh directory on tmpfs when there is one.

    On this project's ext4 machines, creating files right after mass
    deletes is slow (seconds per 10k); tmpfs keeps big tests fast.
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="fastcleanup-test-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _fresh_failure_log() -> None:
    """Each test starts with the whole budget of failure lines (see fastcleanup._log)."""
    _log.FAILURES.reset()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def make_cleaner(registry: CollectorRegistry) -> Iterator[Callable[..., fc.Cleaner]]:
    """Build cleaners on a fresh registry; each is emptied at teardown."""
    made: list[fc.Cleaner] = []

    def make(**kwargs: Any) -> fc.Cleaner:
        kwargs.setdefault("registry", registry)
        cleaner = fc.Cleaner(**kwargs)
        made.append(cleaner)
        return cleaner

    yield make
    for cleaner in made:
        # Whatever a test left queued must not run at the session's exit.
        if cleaner._executor is not None:
            cleaner._executor.shutdown(wait=False)
        if cleaner._lane is not None:  # else its threads wait for jobs until the session ends
            cleaner._lane.close()
        cleaner._reset()
