"""drain() and shutdown() wait for what cleanups submit while they run, and only for that."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import fastcleanup as fc
from fastcleanup._intake import PARENT
from tests.helpers import assert_conserved, make_files

MakeCleaner = Callable[..., fc.Cleaner]


def profile(root: Path, name: str) -> Path:
    make_files(root / name / "Default", 3)
    return root / name


async def test_shutdown_waits_for_the_removal_a_close_submits(
    scratch: Path, make_cleaner: MakeCleaner
) -> None:
    """A Call closes a browser, then submits its profile's removal, which submits one more."""
    cleaner = make_cleaner()
    dirs = [profile(scratch, f"p{i}") for i in range(3)]
    closed: list[str] = []

    async def remove_later(path: Path) -> None:
        await asyncio.sleep(0.02)
        cleaner.submit(fc.RemoveTree(path))  # a follow-up of a follow-up

    async def close_then_remove(i: int) -> None:
        await asyncio.sleep(0.05)  # the browser takes a while to close
        closed.append(f"p{i}")
        cleaner.submit(fc.RemoveTree(dirs[i]) if i < 2 else fc.Call(remove_later, dirs[i]))

    cleaner.init_worker()
    for i in range(3):
        cleaner.submit(fc.Call(close_then_remove, i))
    assert await cleaner.shutdown(timeout=10)
    assert sorted(closed) == ["p0", "p1", "p2"]
    assert os.listdir(scratch) == []  # before the fix: still queued at this point
    stats = cleaner.stats()
    assert (stats.submitted, stats.completed, stats.queued) == (7, 7, 0)
    assert_conserved(stats)


async def test_drain_does_not_wait_for_what_the_application_submits_after_it(
    scratch: Path, make_cleaner: MakeCleaner
) -> None:
    cleaner = make_cleaner()
    target = profile(scratch, "profile")
    hang_started, release = asyncio.Event(), asyncio.Event()

    async def hang() -> None:
        hang_started.set()
        await release.wait()

    async def close_then_remove() -> None:
        await hang_started.wait()  # the application's task is in a batch of its own by now
        cleaner.submit(fc.RemoveTree(target))

    async with cleaner:
        cleaner.submit(fc.Call(close_then_remove))
        drained = asyncio.create_task(cleaner.drain(timeout=10))
        await asyncio.sleep(0)  # drain() has taken its target
        cleaner.submit(fc.Call(hang))  # after the call: not waited for
        assert await drained
        assert not target.exists() and not release.is_set()
        assert cleaner.stats().in_flight == 1  # the hang, still running
        release.set()


async def test_a_follow_up_from_a_thread_of_the_cleanup_is_waited_for(
    make_cleaner: MakeCleaner,
) -> None:
    cleaner = make_cleaner()
    done: list[str] = []

    async def slow_removal() -> None:
        await asyncio.sleep(0.1)  # still running when the cleanup that submitted it is over
        done.append("removed")

    def blocking_close() -> None:
        cleaner.submit(fc.Call(slow_removal))  # to_thread copies the cleanup's context

    async def close() -> None:
        await asyncio.to_thread(blocking_close)

    async with cleaner:
        cleaner.submit(fc.Call(close))
        assert await cleaner.drain(timeout=10)
        assert done == ["removed"]


async def test_an_ordered_task_s_follow_ups_are_waited_for(make_cleaner: MakeCleaner) -> None:
    cleaner = make_cleaner()
    done: list[str] = []

    async def slow_removal(name: str) -> None:
        await asyncio.sleep(0.1)
        done.append(name)

    async def close_then_remove(name: str) -> None:
        cleaner.submit(fc.Call(slow_removal, name))

    async with cleaner:
        cleaner.submit(fc.InOrder(fc.Call(close_then_remove, "a"), fc.Call(close_then_remove, "b")))
        assert await cleaner.drain(timeout=10)
        assert sorted(done) == ["a", "b"]


async def test_submit_asks_whose_task_it_is_only_while_a_cleanup_runs(
    make_cleaner: MakeCleaner, scratch: Path
) -> None:
    cleaner = make_cleaner()
    seen: list[bool] = []

    async def probe() -> None:
        seen.append(cleaner._hot[PARENT] is not None)

    async with cleaner:
        assert cleaner._hot[PARENT] is None
        for path in make_files(scratch, 100):  # files alone run no code of the user's
            cleaner.submit(fc.RemoveFile(path))
        assert await cleaner.drain(timeout=10)
        assert cleaner._hot[PARENT] is None
        cleaner.submit(fc.Call(probe))
        assert await cleaner.drain(timeout=10)
        assert seen == [True] and cleaner._hot[PARENT] is None
