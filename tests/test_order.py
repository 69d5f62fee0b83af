"""InOrder: tasks run one after the other, each counted as itself, on every path a task takes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import fastcleanup as fc
from tests.conftest import loop_factory
from tests.helpers import assert_conserved, make_files

MakeCleaner = Callable[..., fc.Cleaner]


def tree(root: Path, name: str, files: int = 3) -> Path:
    make_files(root / name / "sub", files)
    return root / name


def test_constructor_checks_its_tasks_at_once() -> None:
    with pytest.raises(ValueError, match="at least one"):
        fc.InOrder()
    with pytest.raises(TypeError, match="got object"):
        fc.InOrder(fc.RemoveFile("/a"), object())  # type: ignore[arg-type]

    class Invalid:
        kind = "invalid"

        async def run(self) -> None:
            pass

    with pytest.raises(TypeError, match="got Invalid"):
        fc.InOrder(Invalid())
    with pytest.raises(TypeError, match="cannot be subclassed"):

        class Mine(fc.InOrder):
            pass

    a, b, c = fc.RemoveFile("/a"), fc.RemoveFile("/b"), fc.RemoveTree("/c")
    assert fc.InOrder(fc.InOrder(a, b), c).tasks == (a, b, c)  # nested ones are flattened
    assert isinstance(fc.InOrder(a), fc.CleanupTask)


async def test_runs_in_order_each_counted_under_its_own_kind(
    scratch: Path, make_cleaner: MakeCleaner, registry: CollectorRegistry
) -> None:
    profile = tree(scratch, "profile")
    seen: list[str] = []

    async def close(name: str) -> None:
        await asyncio.sleep(0.01)
        seen.append(f"{name} closed, profile there: {profile.exists()}")

    cleaner = make_cleaner(name="ordered")
    async with cleaner:
        cleaner.submit(
            fc.InOrder(fc.Call(close, "page"), fc.Call(close, "context"), fc.RemoveTree(profile))
        )
        assert await cleaner.drain(timeout=10)
        stats = cleaner.stats()
    assert seen == ["page closed, profile there: True", "context closed, profile there: True"]
    assert not profile.exists()
    assert (stats.submitted, stats.completed, stats.failed) == (3, 3, 0)
    assert_conserved(stats)

    def sample(name: str, task: str) -> float | None:
        return registry.get_sample_value(
            f"fastcleanup_{name}_total", {"cleaner": "ordered", "task": task}
        )

    assert (sample("submitted", "call"), sample("completed", "call")) == (2, 2)
    assert (sample("submitted", "remove_tree"), sample("completed", "remove_tree")) == (1, 1)
    assert sample("submitted", "in_order") is None


async def test_a_failure_or_a_timeout_does_not_stop_the_next(
    scratch: Path, make_cleaner: MakeCleaner
) -> None:
    profiles = [tree(scratch, f"p{i}") for i in range(2)]

    async def crash() -> None:
        raise RuntimeError("the browser is gone")

    async def hang() -> None:
        await asyncio.Event().wait()

    # Each task has its own timeout: three 0.15 s tasks in a row outlast one 0.3 s timeout.
    async def slow() -> None:
        await asyncio.sleep(0.15)

    cleaner = make_cleaner(task_timeout=0.3)
    async with cleaner:
        cleaner.submit(fc.InOrder(fc.Call(crash), fc.RemoveTree(profiles[0])))
        cleaner.submit(fc.InOrder(fc.Call(hang), fc.RemoveTree(profiles[1])))
        cleaner.submit(fc.InOrder(fc.Call(slow), fc.Call(slow), fc.Call(slow)))
        assert await cleaner.drain(timeout=10)
        stats = cleaner.stats()
    assert not any(p.exists() for p in profiles)
    assert cleaner._tally.failed_by == {("call", "error"): 1, ("call", "timeout"): 1}
    assert cleaner._tally.completed_by == {"remove_tree": 2, "call": 3}
    assert (stats.submitted, stats.completed, stats.failed) == (7, 5, 2)
    assert_conserved(stats)


async def test_a_tree_inside_stays_confined(scratch: Path, make_cleaner: MakeCleaner) -> None:
    root = scratch / "root"
    inside, outside = tree(root, "inside"), tree(scratch, "outside")
    cleaner = make_cleaner(allowed_roots=[root])
    async with cleaner:
        cleaner.submit(
            fc.InOrder(fc.RemoveTree(outside), fc.RemoveTree(inside), fc.RemoveTree(root))
        )
        assert await cleaner.drain(timeout=10)
    assert outside.exists() and root.is_dir() and not inside.exists()
    assert cleaner._tally.failed_by == {("remove_tree", "refused"): 2}
    assert cleaner._tally.completed_by == {"remove_tree": 1}


def test_before_init_each_task_is_dropped_and_counted(make_cleaner: MakeCleaner) -> None:
    cleaner = make_cleaner()
    cleaner.submit(fc.InOrder(fc.RemoveFile("/a"), fc.RemoveTree("/b"), fc.RemoveFile("/c")))
    assert cleaner._tally.dropped_before_init_by.keys() == {"remove_file", "remove_tree"}
    stats = cleaner.stats()
    assert (stats.dropped_before_init, stats.submitted, stats.queued) == (3, 0, 0)


def run_on(kind: str, coro: Any) -> Any:
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(coro)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("death", ["cancelled", "closed"])
def test_a_dying_loop_requeues_what_did_not_finish(
    loop_kind: str, scratch: Path, make_cleaner: MakeCleaner, death: str
) -> None:
    """The loop dies during the second of three tasks: the next loop runs the second and
    third, each counted once. asyncio.run's end cancels the ordered task; a loop closed
    with it pending never lets it see its end."""
    profile = tree(scratch, "profile")
    runs: Counter[str] = Counter()
    started = asyncio.Event()

    async def close(name: str) -> None:
        runs[name] += 1
        if name == "context" and runs[name] == 1:
            started.set()
            await asyncio.Event().wait()  # cut short by the loop's end

    cleaner = make_cleaner()

    async def first() -> None:
        cleaner.init_worker()
        cleaner.submit(
            fc.InOrder(fc.Call(close, "page"), fc.Call(close, "context"), fc.RemoveTree(profile))
        )
        await asyncio.wait_for(started.wait(), timeout=10)

    if death == "cancelled":
        run_on(loop_kind, first())
    else:
        loop = loop_factory(loop_kind)()
        try:
            loop.run_until_complete(first())
        finally:
            for task in asyncio.all_tasks(loop):  # abandoned on purpose: no log when freed
                task._log_destroy_pending = False  # type: ignore[attr-defined]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loop.close()
    assert profile.exists()

    async def second() -> None:
        cleaner.init_worker()  # adopts what the dead loop left
        mid = cleaner.stats()
        assert (mid.submitted, mid.completed, mid.queued, mid.in_flight) == (3, 1, 2, 0)
        assert_conserved(mid)
        assert await cleaner.drain(timeout=10)
        await cleaner.shutdown()

    run_on(loop_kind, second())
    assert runs == {"page": 1, "context": 2}  # the finished one never runs again
    assert not profile.exists()
    stats = cleaner.stats()
    assert (stats.submitted, stats.completed, stats.queued, stats.in_flight) == (3, 3, 0, 0)
    assert cleaner._tally.taken_by == {"call": 2, "remove_tree": 1}  # counted once each
    assert_conserved(stats)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("interrupted", [False, True], ids=["queued", "interrupted"])
def test_at_exit_its_removals_still_run_in_order(scratch: Path, interrupted: bool) -> None:
    """Queued (or cut short by a dead loop) at exit: the call is dropped, the removals run."""
    paths = make_files(scratch / "files", 2)
    profile = tree(scratch, "profile")
    code = """
        import asyncio, atexit, sys

        def report():  # registered first, so it runs after fastcleanup's exit work
            s = fc.stats()
            c = fc._default.default_cleaner._tally
            print(s.submitted, s.completed, s.dropped_at_exit, s.queued, s.in_flight)
            print(sorted(c.taken_by.items()), sorted(c.dropped_at_exit_by.items()))

        atexit.register(report)
        import fastcleanup as fc

        started = asyncio.Event()

        async def hang():
            started.set()
            await asyncio.Event().wait()

        async def main(interrupted):
            fc.init_worker()
            task = fc.InOrder(
                fc.RemoveFile(sys.argv[1]), fc.Call(hang), fc.RemoveFile(sys.argv[2]),
                fc.RemoveTree(sys.argv[3]),
            )
            fc.submit(task)
            if interrupted:
                await started.wait()

        fc.run(main(sys.argv[4] == "1"))
        """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *paths, str(profile), str(int(interrupted))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "dropped 1 queued task(s) at exit, unrun: call 1" in proc.stderr, proc.stderr
    assert os.listdir(scratch / "files") == [] and not profile.exists()
    counts, kinds = proc.stdout.splitlines()
    assert counts == "4 3 1 0 0"
    assert kinds == "[('call', 1), ('remove_file', 2), ('remove_tree', 1)] [('call', 1)]"


async def test_run_on_its_own_raises_the_failures_together(scratch: Path) -> None:
    gone = tree(scratch, "gone")

    async def crash() -> None:
        raise RuntimeError("boom")

    with pytest.raises(ExceptionGroup) as info:
        await fc.InOrder(fc.Call(crash), fc.RemoveTree(gone)).run()
    assert not gone.exists()
    assert [str(e) for e in info.value.exceptions] == ["boom"]
