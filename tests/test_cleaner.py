"""The hot path: submit -> queue -> dispatcher -> batch worker -> counters."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import gc
import logging
import os
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytest

import fastcleanup as fc
from fastcleanup import _lane, _tree, _unlink
from fastcleanup._intake import IDLE
from fastcleanup._paths import Roots
from tests.helpers import assert_conserved, make_files

MakeCleaner = Callable[..., fc.Cleaner]
_P = ParamSpec("_P")
_T = TypeVar("_T")


async def join_threads(threads: list[threading.Thread]) -> None:
    loop = asyncio.get_running_loop()
    for t in threads:
        await loop.run_in_executor(None, t.join)


@pytest.mark.timeout(120)
async def test_threads_and_finalizers_burst(scratch: Path, make_cleaner: MakeCleaner) -> None:
    """8 threads x 10,000 submits while another thread collects objects that submit in __del__."""
    cleaner = make_cleaner()
    cleaner.init_worker()
    per_thread = [make_files(scratch / f"t{t}", 10_000) for t in range(8)]
    gc_files = make_files(scratch / "gc", 2_000)

    class Doomed:
        def __init__(self, path: str) -> None:
            self.path = path
            self.cycle = self  # only the cyclic collector frees it: __del__ runs inside gc

        def __del__(self) -> None:
            cleaner.submit(fc.RemoveFile(self.path))

    start = threading.Barrier(9)

    def producer(paths: list[str]) -> None:
        start.wait()
        for p in paths:
            cleaner.submit(fc.RemoveFile(p))

    def collector() -> None:
        start.wait()
        for i in range(0, len(gc_files), 100):
            for p in gc_files[i : i + 100]:
                Doomed(p)
            gc.collect()
            threading.Event().wait(0.001)  # block briefly: never spin beside unlink threads

    threads = [threading.Thread(target=producer, args=(ps,)) for ps in per_thread]
    threads.append(threading.Thread(target=collector))
    for t in threads:
        t.start()
    await join_threads(threads)
    gc.collect()
    assert await cleaner.drain(timeout=60)

    left = os.listdir(scratch / "gc")
    for n in range(8):
        left += os.listdir(scratch / f"t{n}")
    assert left == []
    stats = cleaner.stats()
    assert stats.submitted == 82_000
    assert stats.completed == 82_000
    assert stats.failed == 0
    assert_conserved(stats)
    await cleaner.shutdown()


async def test_batch_failures_are_isolated(make_cleaner: MakeCleaner) -> None:
    """One raise and one hang in a batch of 64: the other 62 complete."""
    cleaner = make_cleaner(batch_size=64, task_timeout=0.5)
    cleaner.init_worker()
    done: list[int] = []

    async def ok(i: int) -> None:
        await asyncio.sleep(0.01)
        done.append(i)

    async def boom() -> None:
        raise OSError("disk on fire")

    async def hang() -> None:
        await asyncio.Event().wait()

    for i in range(31):
        cleaner.submit(fc.Call(ok, i))
    cleaner.submit(fc.Call(boom))
    cleaner.submit(fc.Call(hang))
    for i in range(31, 62):
        cleaner.submit(fc.Call(ok, i))
    assert await cleaner.drain(timeout=10)

    assert sorted(done) == list(range(62))
    assert cleaner._tally.failed_by == {("call", "error"): 1, ("call", "timeout"): 1}
    assert cleaner._tally.batch_size.counts[6] == 1  # all 64 went to one batch (bucket le=64)
    stats = cleaner.stats()
    assert (stats.completed, stats.failed) == (62, 2)
    assert_conserved(stats)
    await cleaner.shutdown()


def use_file_path(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Send file jobs to the lane (``"lane"``) or to the pure-Python twin (``"pure"``)."""
    if path == "lane" and not _unlink.COMPILED:
        pytest.skip("the compiled module is not built")
    if path == "pure":  # a replaced os.unlink sends file jobs to the pure-Python twin
        real_unlink = os.unlink

        def unlink(p: str, *, dir_fd: int | None = None) -> None:
            real_unlink(p, dir_fd=dir_fd)

        monkeypatch.setattr(os, "unlink", unlink)
    assert _unlink.use_compiled() is (path == "lane")


def failure_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The messages logged on ``fastcleanup`` (or below it), exceptions included."""
    return [
        record.getMessage() + (f" {record.exc_info[1]!r}" if record.exc_info else "")
        for record in caplog.records
        if record.name == "fastcleanup" or record.name.startswith("fastcleanup.")
        if record.levelno >= logging.WARNING
    ]


async def test_a_raise_and_a_timeout_are_logged(
    make_cleaner: MakeCleaner, caplog: pytest.LogCaptureFixture
) -> None:
    """Each failure leaves one warning naming the task, its reason and, if any, the error."""
    cleaner = make_cleaner(task_timeout=0.2)
    cleaner.init_worker()

    async def boom_cleanup() -> None:
        raise OSError("disk on fire")

    async def hung_cleanup() -> None:
        await asyncio.Event().wait()

    async def fine_cleanup() -> None:
        pass

    with caplog.at_level(logging.WARNING, logger="fastcleanup"):
        for fn in (boom_cleanup, hung_cleanup, fine_cleanup):
            cleaner.submit(fc.Call(fn))
        assert await cleaner.drain(timeout=10)
    await cleaner.shutdown()

    assert cleaner._tally.failed_by == {("call", "error"): 1, ("call", "timeout"): 1}
    logs = failure_logs(caplog)
    assert len(logs) == 2, logs  # the cleanup that completed logs nothing
    # Whole words: the test's own name, in each function's qualname, holds "timeout".
    (error,) = [m for m in logs if "boom_cleanup" in m]
    assert re.search(r"\bcall\b.*\berror\b", error) and "disk on fire" in error, error
    (timeout,) = [m for m in logs if "hung_cleanup" in m]
    assert re.search(r"\bcall\b.*\btimeout\b", timeout), timeout


@pytest.mark.parametrize("path", ["lane", "pure"])
async def test_a_file_that_cannot_be_removed_is_logged(
    path: str,
    scratch: Path,
    make_cleaner: MakeCleaner,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failed unlink, whichever job ran it, is logged with its path and the OS error."""
    use_file_path(path, monkeypatch)
    (kept,) = make_files(scratch, 1)
    directory = scratch / "a-directory"  # unlink(2) of a directory fails: EISDIR
    directory.mkdir()
    cleaner = make_cleaner()
    cleaner.init_worker()
    assert (cleaner._lane is not None) is _unlink.COMPILED
    with caplog.at_level(logging.WARNING, logger="fastcleanup"):
        cleaner.submit(fc.RemoveFile(kept))
        cleaner.submit(fc.RemoveFile(directory))
        assert await cleaner.drain(timeout=10)
    await cleaner.shutdown()

    assert os.listdir(scratch) == [directory.name]  # the file went, the directory stayed
    assert cleaner._tally.failed_by == {("remove_file", "error"): 1}
    (logged,) = failure_logs(caplog)
    assert "remove_file" in logged and str(directory) in logged
    assert os.strerror(errno.EISDIR) in logged


async def test_one_hung_unlink_does_not_hold_up_the_rest(
    scratch: Path,
    make_cleaner: MakeCleaner,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """File removals share one executor job, yet a hung file times out alone, and is logged."""
    paths = make_files(scratch, 64)
    stuck = threading.Event()
    real_unlink = os.unlink

    def unlink(path: str, *, dir_fd: int | None = None) -> None:
        if path == paths[10]:
            stuck.wait(5)  # a dead NFS mount, say
        real_unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", unlink)
    cleaner = make_cleaner(task_timeout=0.3)
    cleaner.init_worker()
    with caplog.at_level(logging.WARNING, logger="fastcleanup"):
        for p in paths:
            cleaner.submit(fc.RemoveFile(p))
        assert await cleaner.drain(timeout=10)
    stuck.set()

    assert sorted(os.listdir(scratch)) in ([], [os.path.basename(paths[10])])
    assert cleaner._tally.failed_by == {("remove_file", "timeout"): 1}
    assert cleaner.stats().completed == 63
    # The file job's timeout is counted apart from a task's; it is logged all the same.
    (logged,) = failure_logs(caplog)
    assert re.search(r"\bremove_file\b.*\btimeout\b", logged) and repr(paths[10]) in logged, logged
    await cleaner.shutdown()


class RecordingExecutor(ThreadPoolExecutor):
    """A default executor that notes every job handed to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.jobs: list[object] = []

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        self.jobs.append(fn)
        return super().submit(fn, *args, **kwargs)


@pytest.mark.parametrize("files_on", ["lane", "executor"])
async def test_removals_run_on_the_cleaner_s_own_daemon_threads(
    files_on: str, scratch: Path, make_cleaner: MakeCleaner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """File and tree removals, and the check of a path task with a run() of
    its own, never touch the loop's default executor (the host's, for
    getaddrinfo and to_thread); the threads that do them are daemons."""
    if files_on == "lane" and not _unlink.COMPILED:
        pytest.skip("the compiled module is not built")
    default = RecordingExecutor()
    asyncio.get_running_loop().set_default_executor(default)
    ran_on: defaultdict[str, set[threading.Thread]] = defaultdict(set)
    real_unlink, real_walker, real_check = os.unlink, _tree._walker, Roots.check

    def walker() -> Callable[..., Any]:  # the tree walk (in C, or its twin) starts here
        ran_on["tree"].add(threading.current_thread())
        return real_walker()

    def check(self: Roots, path: str | bytes) -> None:
        ran_on["check"].add(threading.current_thread())
        real_check(self, path)

    def unlink(path: Any, *, dir_fd: int | None = None) -> None:
        ran_on["file"].add(threading.current_thread())
        real_unlink(path, dir_fd=dir_fd)

    lane_jobs: list[int] = []
    real_start = _lane.FileLane.start

    def start(lane: _lane.FileLane, job: _lane.LaneJob, fut: Any) -> None:
        lane_jobs.append(len(job.paths))
        real_start(lane, job, fut)

    monkeypatch.setattr(_tree, "_walker", walker)
    monkeypatch.setattr(Roots, "check", check)
    monkeypatch.setattr(_lane.FileLane, "start", start)
    if files_on == "lane":
        from fastcleanup._cbulk import Pool

        class ServedPool:
            """The lane's pool, noting the threads that serve it: they alone run its jobs, in C."""

            def __init__(self) -> None:
                self._pool = Pool()

            def serve(self) -> None:
                ran_on["file"].add(threading.current_thread())
                self._pool.serve()

            def __getattr__(self, name: str) -> Any:
                return getattr(self._pool, name)

        monkeypatch.setattr(_lane, "Pool", ServedPool)
    else:  # a replaced os.unlink turns the lane off: the pure-Python job on the executor
        monkeypatch.setattr(os, "unlink", unlink)

    class Audited(fc.RemoveFile):  # a run() of its own: checked first, then the built-in one
        async def run(self) -> None:
            await super().run()

    class AuditedTree(fc.RemoveTree):  # the same for a tree: the built-in run() on our threads
        async def run(self) -> None:
            await super().run()

    files = make_files(scratch / "files", 100)
    trees = [scratch / f"tree{i}" for i in range(3)]
    for tree in trees:
        (tree / "sub").mkdir(parents=True)
        (tree / "sub" / "leaf").touch()
    (scratch / "audited").touch()
    (scratch / "audited-tree" / "leaf").mkdir(parents=True)
    cleaner = make_cleaner(allowed_roots=[scratch])
    cleaner.init_worker()
    for p in files:
        cleaner.submit(fc.RemoveFile(p))
    for tree in trees:
        cleaner.submit(fc.RemoveTree(tree))
    cleaner.submit(Audited(scratch / "audited"))
    cleaner.submit(AuditedTree(scratch / "audited-tree"))
    assert await cleaner.drain(timeout=30)
    stats = cleaner.stats()
    await cleaner.shutdown()

    assert (stats.completed, stats.failed) == (105, 0), stats
    assert os.listdir(scratch) == ["files"] and os.listdir(scratch / "files") == []
    assert default.jobs == []
    assert bool(lane_jobs) == (files_on == "lane"), lane_jobs
    assert set(ran_on) == {"file", "tree", "check"}, ran_on
    threads = set().union(*ran_on.values())
    assert threading.current_thread() not in threads  # never on the loop's thread either
    assert all(t.daemon for t in threads), [t.name for t in threads if not t.daemon]
    assert all(t.name.startswith(f"fastcleanup-{cleaner.name}-") for t in threads), threads


async def until_idle(cleaner: fc.Cleaner) -> None:
    """Let the loop run until the dispatcher sleeps, waiting for a wakeup."""
    for _ in range(1000):
        if cleaner._hot[IDLE]:
            return
        await asyncio.sleep(0)
    raise AssertionError("the dispatcher never went to sleep")


async def test_a_burst_wakes_the_sleeping_dispatcher_once(
    make_cleaner: MakeCleaner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One wakeup per idle->busy: a burst from another thread, submitted
    while the loop thread is blocked, wakes the loop once; submits while the
    dispatcher is awake (waiting for a free batch slot) wake nothing; the
    next submit after it went back to sleep wakes it once more."""
    cleaner = make_cleaner(batch_size=64, max_batches=1)
    cleaner.init_worker()
    loop = asyncio.get_running_loop()
    await until_idle(cleaner)
    wakeups = 0
    real_call_soon_threadsafe = loop.call_soon_threadsafe

    def call_soon_threadsafe(callback: Callable[..., object], *args: Any, **kw: Any) -> Any:
        nonlocal wakeups
        if callback == cleaner._on_wake:  # only the cleaner's wakeups, not other threads' news
            wakeups += 1
        return real_call_soon_threadsafe(callback, *args, **kw)

    monkeypatch.setattr(loop, "call_soon_threadsafe", call_soon_threadsafe)

    async def nothing() -> None:
        pass

    def burst_from_another_thread(n: int) -> None:
        def produce() -> None:
            for _ in range(n):
                cleaner.submit(fc.Call(nothing))

        # The loop thread waits in join() without yielding to the loop: the
        # dispatcher cannot run, let alone take anything, until all n are queued.
        producer = threading.Thread(target=produce)
        producer.start()
        producer.join(30)
        assert not producer.is_alive()

    burst_from_another_thread(1000)
    assert wakeups == 1
    assert await cleaner.drain(timeout=30)
    assert cleaner.stats().completed == 1000
    await until_idle(cleaner)
    assert wakeups == 1  # running the burst woke nothing

    gate = asyncio.Event()
    started = 0

    async def held() -> None:
        nonlocal started
        started += 1
        await gate.wait()

    for _ in range(128):  # two batches: the first takes the only slot, and is held
        cleaner.submit(fc.Call(held))
    assert wakeups == 2
    for _ in range(1000):
        if started == 64:
            break
        await asyncio.sleep(0)
    # The dispatcher is awake, waiting for the slot, with the second batch queued.
    assert (started, cleaner.stats().queued) == (64, 64)
    burst_from_another_thread(100)
    assert wakeups == 2
    gate.set()
    assert await cleaner.drain(timeout=30)
    assert cleaner.stats().completed == 1228

    await until_idle(cleaner)
    burst_from_another_thread(1)
    assert wakeups == 3
    assert await cleaner.drain(timeout=30)
    assert cleaner.stats().completed == 1229
    await cleaner.shutdown()


class Party:
    """A resource whose ``aclose()`` waits on a barrier with the others."""

    def __init__(self, barrier: asyncio.Barrier, passed: list[int], i: int) -> None:
        self.barrier, self.passed, self.i = barrier, passed, i

    async def aclose(self) -> None:
        await self.barrier.wait()
        self.passed.append(self.i)


@pytest.mark.parametrize("kind", ["call", "aclose"])
async def test_tasks_of_a_batch_run_concurrently(make_cleaner: MakeCleaner, kind: str) -> None:
    """64 parties on one barrier can only all pass if the batch runs them at once:
    cleanups, and resources closed (README: "closes resources concurrently")."""
    cleaner = make_cleaner(batch_size=64, task_timeout=5)
    cleaner.init_worker()
    barrier = asyncio.Barrier(64)
    passed: list[int] = []

    for i in range(64):
        party = Party(barrier, passed, i)
        cleaner.submit(fc.Call(party.aclose) if kind == "call" else fc.AClose(party))
    assert await cleaner.drain(timeout=10)
    assert len(passed) == 64
    assert cleaner.stats().failed == 0
    await cleaner.shutdown()


async def test_serial_batches_cannot_pass_the_barrier(make_cleaner: MakeCleaner) -> None:
    """The barrier test can fail: split across batches of 32, the parties time out."""
    cleaner = make_cleaner(batch_size=32, task_timeout=0.3, max_batches=1)
    cleaner.init_worker()
    barrier = asyncio.Barrier(64)

    async def party() -> None:
        await barrier.wait()

    for _ in range(64):
        cleaner.submit(fc.Call(party))
    assert await cleaner.drain(timeout=10)
    assert cleaner._tally.failed_by[("call", "timeout")] >= 32
    await cleaner.shutdown()


@pytest.mark.timeout(180)
async def test_a_million_submits_never_exceed_the_task_cap(make_cleaner: MakeCleaner) -> None:
    max_batches, batch_size = 4, 64
    cleaner = make_cleaner(batch_size=batch_size, max_batches=max_batches)
    cleaner.init_worker()
    peak = 0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, len(asyncio.all_tasks()))
            await asyncio.sleep(0.001)

    async def nothing() -> None:
        pass

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)
    call = fc.Call(nothing)  # one task object, submitted a million times: the queue holds refs
    for _ in range(1_000_000):
        cleaner.submit(call)
    assert cleaner.stats().queued == 1_000_000  # nothing ran yet: no task per submit
    assert await cleaner.drain(timeout=170)
    stop.set()
    await watcher
    # this test + the watcher + the dispatcher + per batch: its worker and its children
    cap = 3 + max_batches * (1 + batch_size)
    assert 3 < peak <= cap
    assert cleaner.stats().completed == 1_000_000
    await cleaner.shutdown()


async def test_drain_waits_for_tasks_accepted_before_it(make_cleaner: MakeCleaner) -> None:
    """Not 'as many tasks finished': the slow early task must be among them."""
    cleaner = make_cleaner()
    cleaner.init_worker()
    release = asyncio.Event()
    finished: list[str] = []

    async def slow() -> None:
        await release.wait()
        finished.append("slow")

    all_fast_done = asyncio.Event()

    async def fast() -> None:
        finished.append("fast")
        if len(finished) == 200:
            all_fast_done.set()

    cleaner.submit(fc.Call(slow))
    drainer = asyncio.create_task(cleaner.drain())
    await asyncio.sleep(0.01)
    for _ in range(200):
        cleaner.submit(fc.Call(fast))
    await asyncio.wait_for(all_fast_done.wait(), 5)
    assert not drainer.done()
    release.set()
    assert await asyncio.wait_for(drainer, 5) is True
    assert "slow" in finished
    await cleaner.shutdown()


async def test_drain_times_out(make_cleaner: MakeCleaner) -> None:
    cleaner = make_cleaner()
    cleaner.init_worker()
    cleaner.submit(fc.Call(asyncio.sleep, 1))
    assert await cleaner.drain(timeout=0.05) is False
    assert await cleaner.drain(timeout=5) is True
    await cleaner.shutdown()


async def test_bad_objects_are_counted_invalid(make_cleaner: MakeCleaner) -> None:
    cleaner = make_cleaner()
    cleaner.init_worker()

    class NoRun:
        kind = "no_run"

    class Hostile:
        def __getattr__(self, name: str) -> object:
            raise RuntimeError("no attributes for you")

    ran: list[str] = []

    class ClaimsInvalid:
        kind = "invalid"  # the label of objects that are no task: reserved

        async def run(self) -> None:
            ran.append(self.kind)

    for bad in (None, 42, "rm -rf /", object(), NoRun(), Hostile(), ClaimsInvalid()):
        cleaner.submit(bad)  # type: ignore[arg-type]
    assert await cleaner.drain(timeout=5)
    stats = cleaner.stats()
    assert (stats.submitted, stats.failed) == (7, 7)
    assert cleaner._tally.failed_by == {("invalid", "invalid"): 7}
    assert ran == []  # never run
    await cleaner.shutdown()


async def test_custom_task_kind_is_counted(make_cleaner: MakeCleaner) -> None:
    ran: list[str] = []

    class ClosePage:
        kind = "close_page"

        def __init__(self, page: str) -> None:
            self.page = page

        async def run(self) -> None:
            ran.append(self.page)

    cleaner = make_cleaner()
    cleaner.init_worker()
    assert isinstance(ClosePage("a"), fc.CleanupTask)
    for page in "abc":
        cleaner.submit(ClosePage(page))
    assert await cleaner.drain(timeout=5)
    assert ran == ["a", "b", "c"]
    assert cleaner._tally.completed_by == {"close_page": 3}
    assert cleaner._tally.taken_by == {"close_page": 3}
    await cleaner.shutdown()


async def test_aclose_closes(make_cleaner: MakeCleaner) -> None:
    closed: Counter[str] = Counter()

    class Resource:
        async def aclose(self) -> None:
            closed["aclose"] += 1

    class OldStyle:
        async def close(self) -> None:
            closed["close"] += 1

    class SyncClose:
        def close(self) -> None:
            closed["sync"] += 1

    cleaner = make_cleaner()
    cleaner.init_worker()
    for r in (Resource(), OldStyle(), SyncClose()):
        cleaner.submit(fc.AClose(r))
    assert await cleaner.drain(timeout=5)
    assert closed == {"aclose": 1, "close": 1, "sync": 1}
    # A sync close() is called, but the task fails: AClose promised an awaitable.
    assert cleaner._tally.failed_by == {("aclose", "error"): 1}
    await cleaner.shutdown()


async def test_before_init_tasks_are_dropped_forever(
    scratch: Path, make_cleaner: MakeCleaner
) -> None:
    cleaner = make_cleaner()
    paths = make_files(scratch, 10)
    for p in paths:
        cleaner.submit(fc.RemoveFile(p))
    cleaner.submit(None)  # type: ignore[arg-type]
    assert not cleaner.worker_inited()
    stats = cleaner.stats()
    assert (stats.dropped_before_init, stats.submitted, stats.queued) == (11, 0, 0)
    cleaner.init_worker()
    assert cleaner.worker_inited()
    assert await cleaner.drain(timeout=5)
    await asyncio.sleep(0.05)
    assert sorted(os.listdir(scratch)) == sorted(os.path.basename(p) for p in paths)
    assert cleaner._tally.dropped_before_init_by.keys() == {"remove_file", "invalid"}
    await cleaner.shutdown()


async def test_shutdown_then_submit_drops_and_reinit_restarts(
    scratch: Path, make_cleaner: MakeCleaner
) -> None:
    cleaner = make_cleaner()
    async with cleaner:
        assert cleaner.worker_inited()
    assert not cleaner.worker_inited()
    (kept,) = make_files(scratch, 1, "kept")
    cleaner.submit(fc.RemoveFile(kept))
    assert cleaner.stats().dropped_before_init == 1
    cleaner.init_worker()
    (gone,) = make_files(scratch, 1, "gone")
    cleaner.submit(fc.RemoveFile(gone))
    assert await cleaner.drain(timeout=5)
    assert os.listdir(scratch) == ["kept0"]
    await cleaner.shutdown()


async def test_init_worker_is_idempotent(make_cleaner: MakeCleaner) -> None:
    cleaner = make_cleaner()
    assert cleaner.init_worker() is cleaner
    dispatcher = cleaner._dispatcher
    for _ in range(1000):
        cleaner.init_worker()
    assert cleaner._dispatcher is dispatcher
    await cleaner.shutdown()


def test_init_worker_needs_a_running_loop(make_cleaner: MakeCleaner) -> None:
    with pytest.raises(RuntimeError, match="needs a running event loop"):
        make_cleaner().init_worker()


def test_drain_without_dispatcher_says_what_to_do(
    loop_kind: str, make_cleaner: MakeCleaner, scratch: Path
) -> None:
    from tests.conftest import loop_factory

    cleaner = make_cleaner()

    async def first() -> None:
        assert await cleaner.drain() is True  # nothing pending: nothing to wait for
        cleaner.init_worker()

    async def then() -> None:
        cleaner.submit(fc.RemoveFile(scratch / "x"))  # queued: the cleaner's loop is dead
        with pytest.raises(RuntimeError, match=r"call init_worker\(\) first"):
            await cleaner.drain()
        cleaner.init_worker()
        assert await cleaner.drain(timeout=5)
        await cleaner.shutdown()

    for step in (first, then):
        with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
            runner.run(step())


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"batch_size": 0}, ValueError),
        ({"batch_size": 1.5}, TypeError),
        ({"batch_size": True}, TypeError),
        ({"task_timeout": 0}, ValueError),
        ({"task_timeout": float("nan")}, ValueError),
        ({"task_timeout": "60"}, TypeError),
        ({"max_batches": 0}, ValueError),
        ({"io_threads": 0}, ValueError),
        ({"exit_timeout": -1}, ValueError),
        ({"allowed_roots": []}, ValueError),
        ({"allowed_roots": ["/definitely/not/here"]}, ValueError),
        ({"allowed_roots": [42]}, TypeError),
        ({"registry": "global"}, TypeError),
        ({"name": ""}, TypeError),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error, match=r"\w"):
        fc.Cleaner(**kwargs)  # type: ignore[arg-type]


def test_repr_shows_state(make_cleaner: MakeCleaner) -> None:
    cleaner = make_cleaner(name="reprs")
    assert repr(cleaner) == "<Cleaner reprs stopped queued=0 in_flight=0>"


class PathRaises(fc.RemoveFile):
    """A file task whose path cannot be read."""

    @property
    def path(self) -> str:
        raise RuntimeError("no path here")

    @path.setter
    def path(self, value: str) -> None:  # the pure build's __init__ sets it
        pass


@pytest.mark.parametrize("broken", ["path property raises", "made without __init__"])
async def test_a_file_task_without_a_readable_path_fails_alone(
    scratch: Path, make_cleaner: MakeCleaner, caplog: pytest.LogCaptureFixture, broken: str
) -> None:
    # Before, reading the batch's paths raised out of the worker: the batch
    # went back to the queue, ran again, and drain() never returned.
    bad = PathRaises("/x") if broken.startswith("path") else fc.RemoveFile.__new__(fc.RemoveFile)
    files = make_files(scratch, 3000)
    cleaner = make_cleaner(batch_size=64)
    cleaner.init_worker()
    for i, p in enumerate(files):  # a burst: large file jobs, the bad one inside one
        cleaner.submit(fc.RemoveFile(p))
        if i == 1500:
            cleaner.submit(bad)
    assert await cleaner.drain(timeout=30)
    assert os.listdir(scratch) == []
    stats = cleaner.stats()
    assert (stats.completed, stats.failed) == (3000, 1)
    assert_conserved(stats)
    assert "has no readable path" in caplog.text
    await cleaner.shutdown()


def test_stats_is_a_frozen_snapshot(make_cleaner: MakeCleaner) -> None:
    """``stats()`` hands out a frozen ``fc.Stats``: no caller can change the
    counters through it, and later work does not change a snapshot taken."""
    cleaner = make_cleaner()
    cleaner.submit(None)  # type: ignore[arg-type]  # not started: dropped, counted
    snapshot = cleaner.stats()
    assert type(snapshot) is fc.Stats and type(fc.stats()) is fc.Stats
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.submitted = 5  # type: ignore[misc]
    cleaner.submit(None)  # type: ignore[arg-type]
    assert (snapshot.submitted, snapshot.dropped_before_init) == (0, 1)
    assert cleaner.stats().dropped_before_init == 2


async def test_a_hung_cleanup_does_not_stall_the_dispatcher(make_cleaner: MakeCleaner) -> None:
    """The dispatcher never awaits cleanup work: while one cleanup hangs (far
    from its timeout), the tasks submitted after it are taken and finish."""
    cleaner = make_cleaner(batch_size=1, max_batches=2, task_timeout=60)
    cleaner.init_worker()
    hanging, gate = asyncio.Event(), asyncio.Event()
    done: list[int] = []
    all_done = asyncio.Event()

    async def hang() -> None:
        hanging.set()
        await gate.wait()

    async def quick(i: int) -> None:
        done.append(i)
        if len(done) == 100:
            all_done.set()

    cleaner.submit(fc.Call(hang))
    await asyncio.wait_for(hanging.wait(), 10)
    for i in range(100):
        cleaner.submit(fc.Call(quick, i))
    await asyncio.wait_for(all_done.wait(), 10)
    stats = cleaner.stats()
    assert sorted(done) == list(range(100))
    assert (stats.completed, stats.in_flight, stats.queued) == (100, 1, 0), stats
    gate.set()
    assert await cleaner.drain(timeout=10)
    assert cleaner.stats().completed == 101
    await cleaner.shutdown()


async def test_aclose_prefers_aclose_over_close(make_cleaner: MakeCleaner) -> None:
    """``AClose`` awaits ``aclose()`` when there is one; ``close()`` only otherwise."""
    called: list[str] = []

    class Both:
        async def aclose(self) -> None:
            called.append("aclose")

        async def close(self) -> None:
            called.append("close")

    cleaner = make_cleaner()
    cleaner.init_worker()
    cleaner.submit(fc.AClose(Both()))
    assert await cleaner.drain(timeout=5)
    assert called == ["aclose"]
    assert (cleaner.stats().completed, cleaner.stats().failed) == (1, 0)
    await cleaner.shutdown()


@pytest.mark.parametrize("path", ["lane", "pure"])
async def test_a_file_already_gone_counts_as_completed(
    path: str, scratch: Path, make_cleaner: MakeCleaner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``RemoveFile`` of a path that no longer exists is a success, whichever
    job removes it, alone or among files that do exist."""
    use_file_path(path, monkeypatch)
    present = make_files(scratch, 3)
    cleaner = make_cleaner()
    cleaner.init_worker()
    cleaner.submit(fc.RemoveFile(scratch / "never-there"))  # alone: a batch of one
    assert await cleaner.drain(timeout=10)
    for p in present:
        cleaner.submit(fc.RemoveFile(p))
        cleaner.submit(fc.RemoveFile(p + "-gone"))
    assert await cleaner.drain(timeout=10)
    assert os.listdir(scratch) == []
    stats = cleaner.stats()
    assert (stats.completed, stats.failed) == (7, 0), stats
    assert cleaner._tally.completed_by == {"remove_file": 7}
    await cleaner.shutdown()


async def test_io_threads_sets_the_cleaner_s_own_threads(make_cleaner: MakeCleaner) -> None:
    """``io_threads=N``: N executor threads, and N lane threads with the C module; all daemons."""
    name = f"three-{os.urandom(4).hex()}"  # a fresh name: no earlier test's threads match
    cleaner = make_cleaner(name=name, io_threads=3)
    cleaner.init_worker()
    mine = [t for t in threading.enumerate() if t.name.startswith(f"fastcleanup-{name}-")]
    lane = sorted(t.name for t in mine if "-lane-" in t.name)
    executor = sorted(t.name for t in mine if "-lane-" not in t.name)
    assert executor == [f"fastcleanup-{name}-{i}" for i in range(3)], executor
    expected_lane = [f"fastcleanup-{name}-lane-{i}" for i in range(3)]
    assert lane == (expected_lane if _unlink.COMPILED else []), lane
    assert all(t.daemon for t in mine)
    await cleaner.shutdown()
