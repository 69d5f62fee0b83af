"""What making a task costs: the compiled RemoveFile and Call against the Python classes.

Each round makes ``TASKS`` tasks of one kind in a loop, as a producer's
``submit(RemoveFile(p))`` does; ``extra_info["ns_per_task"]`` is the round's
time per task, the loop included. A round fails only when it made the
wrong thing. docs/how/pipeline.md quotes these figures.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from fastcleanup import _tasks

TASKS = 10_000
PATHS = [f"/var/tmp/crawler/page-{i:05d}.html" for i in range(TASKS)]


async def _close(*args: object, **kw: object) -> None:
    pass


def _remove_files(cls: type) -> Callable[[], list[object]]:
    return lambda: [cls(p) for p in PATHS]


def _calls(cls: type) -> Callable[[], list[object]]:
    return lambda: [cls(_close, p, 5) for p in PATHS]


BUILDS = {
    "RemoveFile": (_tasks.RemoveFile, _remove_files),
    "RemoveFile-python": (_tasks.PurePythonRemoveFile, _remove_files),
    "Call": (_tasks.Call, _calls),
    "Call-python": (_tasks.PurePythonCall, _calls),
}


@pytest.mark.parametrize("build", BUILDS)
def test_task_construction(benchmark: BenchmarkFixture, build: str) -> None:
    cls, maker = BUILDS[build]
    if not build.endswith("-python") and cls is BUILDS[f"{build}-python"][0]:
        pytest.skip("the compiled module is not in use")
    made: list[object] = benchmark.pedantic(maker(cls), rounds=7, iterations=1)  # type: ignore[no-untyped-call]
    assert len(made) == TASKS and all(type(t) is cls for t in made)
    assert benchmark.stats is not None
    benchmark.extra_info["ns_per_task"] = benchmark.stats.stats.median * 1e9 / TASKS
