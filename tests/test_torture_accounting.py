"""Exact accounting: a task counted completed has had its effect, and every
accepted task is counted once, whatever the paths, the timeouts or the loop do.

The cleaner tests run on both file paths (the compiled lane and the executor,
see ``tests.test_lane.file_path``) where both have the code in question.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import fastcleanup as fc
from fastcleanup._paths import UnlinkJob
from tests.conftest import loop_factory
from tests.helpers import make_files
from tests.test_lane import file_path  # noqa: F401  (the fixture of usefixtures below)
from tests.torture_helpers import ErrorLogs

MakeCleaner = Callable[..., fc.Cleaner]


class Sub(fc.RemoveFile):
    """A subclass that keeps RemoveFile's run: removed by the batch's file job."""


class Unreadable(fc.RemoveFile):
    """A file task whose path cannot be read."""

    @property
    def path(self) -> Any:
        raise OSError("the path went away")

    @path.setter
    def path(self, value: Any) -> None:
        pass


class Unshowable:
    """A path that is no path and cannot even be shown."""

    def __fspath__(self) -> str:
        raise ValueError("no path")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class Odd(fc.RemoveFile):
    """A file task whose path is ``Unshowable``."""

    @property
    def path(self) -> Any:
        return Unshowable()

    @path.setter
    def path(self, value: Any) -> None:
        pass


def failed_by(registry: Any, cleaner: fc.Cleaner, reason: str) -> float:
    value = registry.get_sample_value(
        "fastcleanup_failed_total",
        {"cleaner": cleaner.name, "task": "remove_file", "reason": reason},
    )
    return float(value or 0)


# -- the file watchdog decides on what was begun -------------------------------------


async def test_the_watchdog_never_times_out_a_file_not_yet_begun(
    make_cleaner: MakeCleaner,
) -> None:
    """A thread that finished file 0 and waits for a CPU before file 1 is no hang; once
    it has begun file 1 and stays there past task_timeout, file 1 is the timeout."""
    c = make_cleaner(task_timeout=0.05)
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[bool] = loop.create_future()
    job = UnlinkJob(["a", "b", "c"], None, loop, fut)
    job.running = True  # a thread took the job ...
    job.state[0] = job.state[2] = 1  # ... finished file 0 and has not begun file 1
    c._watch(job, fut, 1, time.monotonic() - 10)  # no progress for ages
    assert not fut.done() and not job.stop and job.hung_at == -1
    job.state[2] = 2  # file 1 begun, and it hangs
    assert await asyncio.wait_for(fut, 5) is True
    assert (job.hung_at, job.stop) == (1, True)
    assert job.watchdog is not None
    job.watchdog.cancel()


@pytest.mark.usefixtures("file_path")
async def test_a_tiny_timeout_counts_no_file_it_never_began(
    scratch: Path, make_cleaner: MakeCleaner, registry: Any
) -> None:
    """task_timeout=1 ms over 30,000 files: whatever is counted a timeout was under
    way (its thread finishes it), so once the threads are done no file is left,
    and each file is counted once."""
    files = make_files(scratch, 30_000)
    c = make_cleaner(task_timeout=0.001, registry=registry)
    c.init_worker()
    for p in files:
        c.submit(fc.RemoveFile(p))
    assert await c.drain(timeout=120)
    assert await c.shutdown(timeout=10)
    s = c.stats()
    timeouts = failed_by(registry, c, "timeout")
    assert (s.completed + s.failed, s.failed, s.in_flight) == (30_000, timeouts, 0), s
    # A timed-out unlink may still be finishing on its thread.
    left = await asyncio.to_thread(wait_until_empty, scratch, 10)
    assert left == [], f"{len(left)} left, {timeouts} timeouts"


def wait_until_empty(directory: Path, timeout: float) -> list[str]:
    """What is left in ``directory`` once it is empty or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while (left := os.listdir(directory)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


# -- a batch mixing RemoveFile with a subclass: one order everywhere -----------------


def test_a_mixed_batch_taken_back_mid_unlink_leaves_no_file(
    loop_kind: str, scratch: Path, make_cleaner: MakeCleaner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sub, Sub, a slow RemoveFile, seven more: the loop dies inside the slow unlink,
    a second loop takes the batch back. Each file is removed and counted once."""
    entered, release = threading.Event(), threading.Event()
    real_unlink = os.unlink

    def unlink(path: Any, *, dir_fd: int | None = None) -> None:
        if os.fsdecode(path).endswith("slow"):
            entered.set()
            release.wait(10)
        real_unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", unlink)  # the executor's path, which honours it
    subs = make_files(scratch, 2, prefix="sub")
    slow = str(scratch / "slow")
    Path(slow).touch()
    plain = make_files(scratch, 7, prefix="plain")
    c = make_cleaner(task_timeout=5)

    async def first() -> None:
        c.init_worker()
        for task in [*map(Sub, subs), fc.RemoveFile(slow), *map(fc.RemoveFile, plain)]:
            c.submit(task)
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 5)

    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        runner.run(first())
    # Closing the runner cancelled the worker: its batch went back to the queue.
    release.set()

    async def second() -> None:
        c.init_worker()
        assert await c.drain(timeout=10)
        assert await c.shutdown()

    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        runner.run(second())
    s = c.stats()
    assert os.listdir(scratch) == []
    assert (s.submitted, s.completed, s.failed, s.in_flight) == (10, 10, 0, 0), s


@pytest.mark.usefixtures("file_path")
async def test_a_mixed_batch_counts_an_unreadable_path_as_failed(
    scratch: Path,
    make_cleaner: MakeCleaner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Confined, with a relative path the lane hands over: the task whose path cannot
    be read fails, and the three files go, each counted once."""
    monkeypatch.chdir(scratch)
    a, y, z = make_files(scratch, 3)
    c = make_cleaner(allowed_roots=[scratch])
    c.init_worker()
    for task in [Unreadable("x"), fc.RemoveFile(a), fc.RemoveFile(os.path.basename(y))]:
        c.submit(task)  # one batch: the dispatcher takes them once this test awaits
    c.submit(fc.RemoveFile(z))
    assert await c.drain(timeout=10)
    s = c.stats()
    assert os.listdir(scratch) == []
    assert (s.completed, s.failed, s.in_flight) == (3, 1, 0), s


# -- errors that cannot be shown ------------------------------------------------------


@pytest.mark.usefixtures("file_path")
async def test_a_path_that_cannot_be_shown_fails_alone_and_is_counted(
    scratch: Path, make_cleaner: MakeCleaner, registry: Any
) -> None:
    (a,) = make_files(scratch, 1)
    c = make_cleaner(registry=registry)
    c.init_worker()
    c.submit(fc.RemoveFile(a))
    c.submit(Odd("x"))
    assert await c.drain(timeout=10)
    s = c.stats()
    assert os.listdir(scratch) == []
    assert (s.completed, s.failed, s.in_flight) == (1, 1, 0), s
    assert failed_by(registry, c, "error") == 1


class Anything(fc.RemoveFile):
    """A subclass whose path holds whatever is set, on both builds."""

    @property
    def path(self) -> Any:
        return self.__dict__["p"]

    @path.setter
    def path(self, value: Any) -> None:
        self.__dict__["p"] = value


@pytest.mark.usefixtures("file_path")
async def test_a_task_that_is_its_own_path_fails_alone(
    scratch: Path, make_cleaner: MakeCleaner
) -> None:
    """``t.path = t`` (the C RemoveFile refuses it; a subclass may not): the task
    fails, its repr recursing, while its sibling is removed and counted."""
    make_files(scratch, 1)
    (a,) = make_files(scratch / "sibling", 1)
    t = Anything(str(scratch / "f0"))
    t.path = t
    c = make_cleaner()
    c.init_worker()
    c.submit(fc.RemoveFile(a))
    c.submit(t)
    assert await c.drain(timeout=10)
    s = c.stats()
    assert os.listdir(scratch / "sibling") == []
    assert sorted(os.listdir(scratch)) == ["f0", "sibling"]  # its own path was never one
    assert (s.completed, s.failed, s.in_flight) == (1, 1, 0), s


# -- fork ----------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
async def test_a_child_forked_from_the_loop_logs_nothing_about_the_parent_s_tasks(
    scratch: Path, make_cleaner: MakeCleaner
) -> None:
    c = make_cleaner(task_timeout=5)
    c.init_worker()
    c.submit(fc.RemoveFile(make_files(scratch, 1)[0]))
    assert await c.drain(timeout=5)
    await asyncio.sleep(0)  # the dispatcher is parked, waiting for work
    logs = ErrorLogs()
    with logs.installed():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads
            pid = os.fork()
        if pid == 0:
            code = 3
            try:
                gc.collect()
                logging.shutdown()
                code = 0 if not logs.records and not c.worker_inited() else 1
            finally:
                os._exit(code)
    _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child logged an error"
    c.submit(fc.RemoveFile(make_files(scratch, 1, prefix="after")[0]))
    assert await c.drain(timeout=5)  # the parent's dispatcher is untouched
    assert os.listdir(scratch) == []
