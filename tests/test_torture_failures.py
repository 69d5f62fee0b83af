"""Failure injection at scale: exact counts by reason, everything else completed.

The sizes come from ``tests/torture_helpers.scale``: 10,000 cleanups by
default, 100,000 under ``FASTCLEANUP_LARGE=1``.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import fastcleanup as fc
from tests.conftest import loop_factory
from tests.torture_helpers import (
    ErrorLogs,
    LoopErrors,
    UnlinkSpy,
    conserved,
    existing,
    failures_by_reason,
    report,
    scale,
    scrape,
    total,
    touch_all,
)


def submit_all(cleaner: fc.Cleaner, tasks: list[object]) -> None:
    for t in tasks:
        cleaner.submit(t)  # type: ignore[arg-type]


class Raises:
    """A cleanup of the user's own that fails."""

    kind = "flaky_close"

    def __init__(self, n: int) -> None:
        self.n = n

    async def run(self) -> None:
        await asyncio.sleep(0)
        raise ConnectionResetError(f"injected failure {self.n}")


class Hangs:
    """A cleanup of the user's own that never finishes by itself."""

    kind = "stuck_close"

    async def run(self) -> None:
        await asyncio.Event().wait()


class Closes:
    kind = "page_close"
    closed = 0

    async def run(self) -> None:
        await asyncio.sleep(0)
        Closes.closed += 1


@pytest.mark.timeout(600)
async def test_failure_injection_at_scale(scratch: Path, loop_kind: str) -> None:
    """10% of the cleanups fail (raise, are refused, are invalid, hit a directory),
    1% hang past the timeout; every failure is counted under its reason and
    every other cleanup completes."""
    n = scale(10_000, 100_000)
    rng = random.Random(f"failures-{n}")
    root, outside = scratch / "root", scratch / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "a-directory").mkdir()
    (root / "a-file").write_bytes(b"x")

    plan: list[str] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.01:
            plan.append("hang")
        elif r < 0.05:
            plan.append("raise")
        elif r < 0.07:
            plan.append("refused")
        elif r < 0.08:
            plan.append("invalid")
        elif r < 0.09:
            plan.append("dir_as_file")
        elif r < 0.11:
            plan.append("file_as_tree")
        elif r < 0.13:
            plan.append("close")
        else:
            plan.append("file")
    files = [str(root / f"f{i}") for i, what in enumerate(plan) if what == "file"]
    touch_all(files)
    (outside / "keep").write_bytes(b"x")

    tasks: list[object] = []
    fi = iter(files)
    for i, what in enumerate(plan):
        if what == "file":
            tasks.append(fc.RemoveFile(next(fi)))
        elif what == "hang":
            tasks.append(Hangs())
        elif what == "raise":
            tasks.append(Raises(i))
        elif what == "refused":
            tasks.append(fc.RemoveFile(outside / "keep"))
        elif what == "invalid":
            tasks.append(rng.choice([None, 42, "not a task", object()]))
        elif what == "dir_as_file":
            tasks.append(fc.RemoveFile(root / "a-directory"))
        elif what == "file_as_tree":
            tasks.append(fc.RemoveTree(root / "a-file"))
        else:
            tasks.append(Closes())
    want = Counter(plan)
    Closes.closed = 0

    registry = CollectorRegistry()
    cleaner = fc.Cleaner(
        batch_size=64,
        task_timeout=1.0,
        max_batches=64,
        allowed_roots=[root],
        registry=registry,
        name="scale",
    )
    errors = LoopErrors()
    errors.attach()
    started = time.monotonic()
    async with cleaner:
        # Half from two other threads, half from the loop thread in bursts.
        half = len(tasks) // 2
        producers = [
            threading.Thread(target=submit_all, args=(cleaner, tasks[k:half:2])) for k in range(2)
        ]
        for p in producers:
            p.start()
        for k in range(half, len(tasks), 500):
            for t in tasks[k : k + 500]:
                cleaner.submit(t)  # type: ignore[arg-type]
            await asyncio.sleep(0)
        for p in producers:
            await asyncio.to_thread(p.join)
        assert await cleaner.drain(timeout=300), cleaner.stats()
        s = cleaner.stats()
    elapsed = time.monotonic() - started

    samples = scrape(registry)
    assert failures_by_reason(samples) == +Counter(  # unary +: without the zero entries
        {
            ("stuck_close", "timeout"): want["hang"],
            ("flaky_close", "error"): want["raise"],
            ("remove_file", "refused"): want["refused"],
            ("invalid", "invalid"): want["invalid"],
            ("remove_file", "error"): want["dir_as_file"],
            ("remove_tree", "error"): want["file_as_tree"],
        }
    )
    failed = n - want["file"] - want["close"]
    assert (s.submitted, s.completed, s.failed) == (n, want["file"] + want["close"], failed)
    assert (s.queued, s.in_flight, s.dropped_at_exit) == (0, 0, 0)
    assert conserved(s)
    assert total(samples, "fastcleanup_completed_total", task="remove_file") == want["file"]
    assert Closes.closed == want["close"]
    assert existing(files) == []  # every file that could go is gone
    assert (outside / "keep").exists() and (root / "a-directory").is_dir()
    assert errors.messages() == []
    report(
        "failure_injection",
        loop=loop_kind,
        operations=n,
        faults=failed,
        hangs=want["hang"],
        files_lost=len(existing(files)),
        deadlocks=0,
        seconds=round(elapsed, 2),
    )


@pytest.mark.timeout(60)
def test_a_deadline_that_passes_before_a_cleanup_starts_counts_a_timeout(loop_kind: str) -> None:
    """The loop stops (or stalls) past ``task_timeout`` just after a worker
    spawned its cleanups. uvloop then fires the deadline before they first
    run: each is a timeout, none is left in flight, and drain() does not
    return while one is."""
    # Stop the loop after each of its first few turns: one of them falls
    # between the spawn and the cleanups' first step.
    unstarted = sum(stop_then_wait(loop_kind, turns, timeout=0.05) for turns in range(6))
    if loop_kind == "uvloop":  # else the case never arose and this test proved nothing
        assert unstarted > 0


def stop_then_wait(loop_kind: str, turns: int, timeout: float) -> int:
    """Submit 3 calls, stop the loop after ``turns`` turns, let the deadline pass,
    drain; check the counts and return how many calls timed out unstarted."""
    ran: list[int] = []

    async def close(n: int) -> None:
        ran.append(n)  # no await: a cleanup that starts completes

    async def submit_then_stop() -> None:
        cleaner.init_worker()
        for n in range(3):
            cleaner.submit(fc.Call(close, n))
        for _ in range(turns):
            await asyncio.sleep(0)

    registry = CollectorRegistry()
    cleaner = fc.Cleaner(batch_size=3, task_timeout=timeout, registry=registry, name="late")
    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        runner.run(submit_then_stop())
        time.sleep(timeout * 2)  # no loop runs: the batch's deadline passes
        assert runner.run(cleaner.drain(timeout=10)), cleaner.stats()
        s = cleaner.stats()
        assert (s.queued, s.in_flight, s.completed) == (0, 0, len(ran)), (turns, s)
        assert conserved(s), s
        want = Counter({("call", "timeout"): 3 - len(ran)})
        assert failures_by_reason(scrape(registry)) == want, turns
        assert runner.run(cleaner.shutdown(timeout=1))
    return 3 - len(ran)


@pytest.mark.timeout(60)
async def test_a_hung_unlink_times_out_alone(scratch: Path) -> None:
    """One unlink stuck in the kernel (a dead NFS mount) is a timeout; the rest
    of its batch and the batches after it complete."""
    names = [f"hu{i}" for i in range(200)]
    paths = [str(scratch / n) for n in names]
    touch_all(paths)
    spy = UnlinkSpy("hu")
    spy.gates[names[30]] = threading.Event()  # hangs until the test ends
    registry = CollectorRegistry()
    with spy.installed():
        async with fc.Cleaner(task_timeout=0.2, registry=registry, name="hung") as cleaner:
            errors = LoopErrors()
            errors.attach()
            for p in paths:
                cleaner.submit(fc.RemoveFile(p))
            assert await cleaner.drain(timeout=20), cleaner.stats()
            s = cleaner.stats()
        assert failures_by_reason(scrape(registry)) == Counter({("remove_file", "timeout"): 1})
        assert (s.completed, s.failed, s.in_flight, s.queued) == (199, 1, 0, 0)
        assert existing(paths) == []
        assert errors.messages() == []


@pytest.mark.timeout(120)
async def test_an_unlink_that_ends_at_its_deadline_is_counted_once(scratch: Path) -> None:
    """The file in progress finishes just as its timeout fires, while the loop
    is busy with the host's own work: the files after it must still be
    removed, and every file is counted exactly once.
    """
    timeout = 0.05
    trials = scale(25, 100)
    spy = UnlinkSpy("dl")
    loop = asyncio.get_running_loop()
    errors = LoopErrors()
    errors.attach()
    busy = True

    def host_work() -> None:
        # A host application's CPU-bound callback: holds the loop 4 ms each turn.
        time.sleep(0.004)
        if busy:
            loop.call_soon(host_work)

    outcomes: Counter[str] = Counter()
    with spy.installed(), ErrorLogs().installed() as logs:
        loop.call_soon(host_work)
        try:
            for t in range(trials):
                names = [f"dl{t}x{i}" for i in range(4)]
                paths = [str(scratch / n) for n in names]
                touch_all(paths)
                # The second file returns a little after its timeout: from 1x to
                # 1.5x the timeout over the trials, in steps finer than the 4 ms
                # the loop spends in host_work, so that in some trial the
                # watchdog has just given up on the file (however late it looks)
                # when the file finishes, before the worker resumes.
                spy.delays[names[1]] = timeout * (1 + 0.5 * t / trials) + 0.001
                registry = CollectorRegistry()
                cleaner = fc.Cleaner(task_timeout=timeout, registry=registry, name=f"dl{t}")
                async with cleaner:
                    for p in paths:
                        cleaner.submit(fc.RemoveFile(p))
                    assert await cleaner.drain(timeout=10), cleaner.stats()
                    s = cleaner.stats()
                assert conserved(s) and (s.submitted, s.queued, s.in_flight) == (4, 0, 0), s
                reasons = failures_by_reason(scrape(registry))
                assert set(reasons) <= {("remove_file", "timeout")}, reasons
                assert s.failed <= 1, (t, s)  # only the slow file may time out
                assert existing(paths) == [], (t, existing(paths), s)
                outcomes["timeout" if s.failed else "completed"] += 1
        finally:
            busy = False
        assert errors.messages() == []
        assert logs.messages() == []
    report("deadline_race", operations=trials * 4, faults=trials, **outcomes)
