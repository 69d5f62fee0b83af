"""The competitors of ``python -m bench``: the usual ways to remove a burst of files.

Producers that hand work over one item at a time do it as an application
would: in slices of ``SLICE`` items with a yield to the loop between slices
(a crawler's pages drop their temp files over many loop iterations, not in
one blocking loop). Only the naive ``gather`` builds everything at once: that
is what makes it naive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from functools import partial
from typing import Any, Final

import aiofiles.os

import fastcleanup as fc

from .harness import BenchError, Burst, Competitor

__all__ = [
    "BUSY_SHARE",
    "CALL_COMPETITORS",
    "CHUNK",
    "CHUNKED",
    "CONFINED",
    "FILE_COMPETITORS",
    "IDLE",
    "MIXED",
    "MIX_EVERY",
    "ONE_THREAD",
    "SLICE",
    "RustPort",
    "busy_loop",
    "confined_to",
    "file_competitor",
    "trivial",
]

SLICE: Final = 256  # items a producer hands over between two yields to the loop
CHUNK: Final = 1024  # files per chunk of the chunked C pair: fastcleanup's job size
CHUNKED: Final = "bulk-2-threads-chunks"  # that pair's name
BATCH: Final = 64  # the Rust reference's DISPATCH_BATCH, and the TaskGroup baseline's batch
_WAIT: Final = 600.0  # no burst of ours takes ten minutes: past that, something is stuck

logger = logging.getLogger("bench")

Paths = Sequence[str]


def _slices(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), SLICE):
        yield items[i : i + SLICE]


def _missing_path(where: str | None = None) -> str:
    # Warm-up target: a name in the temp dir (or a confined cleaner's root) that nothing creates.
    where = tempfile.gettempdir() if where is None else where
    return os.path.join(where, f"fastcleanup-bench-warmup-{os.getpid()}-missing")


# -- plain threads: the limits --------------------------------------------------------


async def _unlink_in_threads(
    paths: Paths, threads: int, bulk: bool = False, chunk: int | None = None
) -> None:
    """Unlink ``paths`` on ``threads`` plain threads: each its own contiguous share,
    or with ``chunk``, the next ``chunk`` files in turn (as the lane's threads take jobs).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    left = [threads]
    errors: list[BaseException] = []

    def one_finished() -> None:
        left[0] -= 1
        if left[0] == 0 and not done.done():
            done.set_result(None)

    def unlink(part: Paths) -> None:
        if bulk:
            from fastcleanup import _cbulk  # the competitor needs it (see its entry)

            job = _cbulk.Job(list(part))
            job.run()  # no GIL, no Python per file
            if job.failures():
                raise BenchError(f"bulk unlink failed: {job.failures()[:3]}")
        else:
            for p in part:
                os.unlink(p)

    def unlink_all(parts: deque[Paths]) -> None:
        try:
            while True:
                try:
                    # One C call: two threads never take the same part. (A test
                    # of `parts` first could see the last part another takes.)
                    part = parts.popleft()
                except IndexError:
                    break
                unlink(part)
        except BaseException as exc:  # handed to the awaiting loop below
            errors.append(exc)
        finally:
            loop.call_soon_threadsafe(one_finished)

    if chunk is None:
        size = -(-len(paths) // threads)
        queues = [deque([paths[i * size : (i + 1) * size]]) for i in range(threads)]
    else:
        shared = deque(paths[i : i + chunk] for i in range(0, len(paths), chunk))
        queues = [shared] * threads
    workers = [threading.Thread(target=unlink_all, args=(queue,), daemon=True) for queue in queues]
    for t in workers:
        t.start()
    await done
    for t in workers:
        t.join()
    if errors:
        raise errors[0]


@contextlib.asynccontextmanager
async def _one_thread() -> AsyncIterator[Burst[Paths]]:
    async def burst(paths: Paths) -> None:
        await _unlink_in_threads(paths, 1)

    yield burst


@contextlib.asynccontextmanager
async def _two_threads() -> AsyncIterator[Burst[Paths]]:
    async def burst(paths: Paths) -> None:
        await _unlink_in_threads(paths, 2)

    yield burst


@contextlib.asynccontextmanager
async def _bulk_two_threads(chunk: int | None = None) -> AsyncIterator[Burst[Paths]]:
    async def burst(paths: Paths) -> None:
        await _unlink_in_threads(paths, 2, bulk=True, chunk=chunk)

    yield burst


# -- the usual asyncio ways -------------------------------------------------------------


@contextlib.asynccontextmanager
async def _gather_aiofiles() -> AsyncIterator[Burst[Paths]]:
    async def burst(paths: Paths) -> None:
        await asyncio.gather(*(aiofiles.os.remove(p) for p in paths))

    yield burst


@contextlib.asynccontextmanager
async def _task_per_file() -> AsyncIterator[Burst[Paths]]:
    # The fire-and-forget pattern of the asyncio docs: keep a reference to
    # every task, drop it when done.
    async def burst(paths: Paths) -> None:
        loop = asyncio.get_running_loop()
        live: set[asyncio.Task[None]] = set()
        finished = loop.create_future()
        errors: list[BaseException] = []
        left = [len(paths)]

        def on_done(task: asyncio.Task[None]) -> None:
            live.discard(task)
            if not task.cancelled() and (exc := task.exception()) is not None:
                errors.append(exc)
            left[0] -= 1
            if left[0] == 0 and not finished.done():
                finished.set_result(None)

        if not paths:
            return
        create_task, remove = loop.create_task, aiofiles.os.remove
        for part in _slices(paths):
            for p in part:
                task = create_task(remove(p))
                live.add(task)
                task.add_done_callback(on_done)
            await asyncio.sleep(0)
        await finished
        if errors:
            raise errors[0]

    yield burst


@contextlib.asynccontextmanager
async def _executor_per_file() -> AsyncIterator[Burst[Paths]]:
    async def burst(paths: Paths) -> None:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        run, unlink = loop.run_in_executor, os.unlink
        for part in _slices(paths):
            futures.extend(run(None, unlink, p) for p in part)
            await asyncio.sleep(0)
        await asyncio.gather(*futures)

    yield burst


@contextlib.asynccontextmanager
async def _aiojobs_spawn() -> AsyncIterator[Burst[Paths]]:
    import aiojobs

    async def burst(paths: Paths) -> None:
        # aiojobs' defaults (100 jobs at once, 10,000 pending): as a user has it.
        scheduler = aiojobs.Scheduler(wait_timeout=_WAIT)
        spawn, remove = scheduler.spawn, aiofiles.os.remove
        try:
            for part in _slices(paths):
                for p in part:
                    await spawn(remove(p))
                await asyncio.sleep(0)
        finally:
            await scheduler.wait_and_close()

    yield burst


# -- the Rust reference, ported ---------------------------------------------------------


class RustPort:
    """bg_cleanup.rs, faithfully in Python.

    An unbounded queue; a dispatcher that waits for one path, takes up to 64
    that are ready (``recv_many``) and spawns one worker task per batch; the
    worker removes the batch's files concurrently, one ``aiofiles`` remove
    each (``asyncio.gather`` is the twin of ``FuturesUnordered``), and logs
    and swallows failures. Only ``finished``/``wait_finished`` are additions:
    the reference cannot tell when it is done, a benchmark must.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._workers: set[asyncio.Task[None]] = set()
        self._dispatcher = self._loop.create_task(self._dispatch())
        self.finished = 0
        self._waiter: tuple[int, asyncio.Future[None]] | None = None

    def submit(self, path: str) -> None:
        # An asyncio.Queue is not thread-safe: other threads go through the
        # loop, as a Python port of a Drop site must.
        if threading.get_ident() == self._thread:
            self._queue.put_nowait(path)
        else:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, path)

    async def _dispatch(self) -> None:
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            worker = self._loop.create_task(self._work(batch))
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)

    async def _work(self, batch: list[str]) -> None:
        results = await asyncio.gather(
            *(aiofiles.os.remove(p) for p in batch), return_exceptions=True
        )
        for path, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                logger.debug("remove_file(%s) failed: %s", path, result)
        self.finished += len(batch)
        waiter = self._waiter
        if waiter is not None and self.finished >= waiter[0] and not waiter[1].done():
            waiter[1].set_result(None)

    async def wait_finished(self, count: int) -> None:
        if self.finished >= count:
            return
        fut = self._loop.create_future()
        self._waiter = (count, fut)
        try:
            await fut
        finally:
            self._waiter = None

    async def close(self) -> None:
        tasks = [self._dispatcher, *self._workers]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def _rust_port() -> AsyncIterator[Burst[Paths]]:
    port = RustPort()

    async def burst(paths: Paths) -> None:
        target = port.finished + len(paths)
        submit = port.submit
        for part in _slices(paths):
            for p in part:
                submit(p)
            await asyncio.sleep(0)
        await port.wait_finished(target)

    try:
        port.submit(_missing_path())
        await port.wait_finished(1)
        yield burst
    finally:
        await port.close()


# -- fastcleanup ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _cleaner(
    allowed_roots: Sequence[str] | None = None, io_threads: int = 2
) -> AsyncIterator[fc.Cleaner]:
    cleaner = fc.Cleaner(registry=None, allowed_roots=allowed_roots, io_threads=io_threads)
    cleaner.init_worker()
    try:
        # Warm up: the cleaner's threads and the dispatcher's first wake.
        cleaner.submit(fc.RemoveFile(_missing_path(allowed_roots[0] if allowed_roots else None)))
        cleaner.submit(fc.Call(trivial, [0]))
        if not await cleaner.drain(timeout=_WAIT):
            raise BenchError(f"{cleaner!r} did not finish its warm-up")
        yield cleaner
    finally:
        await cleaner.shutdown()


def _check(cleaner: fc.Cleaner, before: fc.Stats, items: int) -> None:
    after = cleaner.stats()
    completed = after.completed - before.completed
    failed = after.failed - before.failed
    if completed != items or failed:
        raise BenchError(f"{cleaner!r}: {items} submitted, {completed} completed, {failed} failed")


@contextlib.asynccontextmanager
async def _fastcleanup_files(
    allowed_roots: Sequence[str] | None = None, io_threads: int = 2
) -> AsyncIterator[Burst[Paths]]:
    async with _cleaner(allowed_roots, io_threads) as cleaner:

        async def burst(paths: Paths) -> None:
            before = cleaner.stats()
            submit, remove_file = cleaner.submit, fc.RemoveFile
            for part in _slices(paths):
                for p in part:
                    submit(remove_file(p))
                await asyncio.sleep(0)
            if not await cleaner.drain(timeout=_WAIT):
                raise BenchError(f"{cleaner!r} did not drain within {_WAIT} s")
            _check(cleaner, before, len(paths))

        yield burst


MIXED: Final = "fastcleanup-mixed-uvloop"
MIX_EVERY: Final = 20  # a trivial Call submitted before every 20th file of a mixed burst


@contextlib.asynccontextmanager
async def _fastcleanup_mixed() -> AsyncIterator[Burst[Paths]]:
    """Files with a trivial Call among them, as a crawler closes a page every few files."""
    async with _cleaner() as cleaner:

        async def burst(paths: Paths) -> None:
            before, box, calls = cleaner.stats(), [0], 0
            submit, remove_file, call = cleaner.submit, fc.RemoveFile, fc.Call
            for part in _slices(paths):  # SLICE is a multiple of MIX_EVERY
                for k in range(0, len(part), MIX_EVERY):
                    submit(call(trivial, box))
                    for p in part[k : k + MIX_EVERY]:
                        submit(remove_file(p))
                calls += -(-len(part) // MIX_EVERY)
                await asyncio.sleep(0)
            if not await cleaner.drain(timeout=_WAIT):
                raise BenchError(f"{cleaner!r} did not drain within {_WAIT} s")
            _check(cleaner, before, len(paths) + calls)
            _check_ran(box, calls, MIXED)

        yield burst


CONFINED: Final = "fastcleanup-roots-uvloop"
ONE_THREAD: Final = "fastcleanup-1-thread-uvloop"


def confined_to(root: str) -> Competitor[Paths]:
    """fastcleanup on uvloop with ``allowed_roots=[root]``: ``root`` must hold the files' dirs."""
    return Competitor(
        CONFINED,
        "fastcleanup Cleaner(allowed_roots=[the files' parent's parent]) on uvloop",
        partial(_fastcleanup_files, [root]),
        loop="uvloop",
        needs="uvloop",
    )


# -- a busy host ------------------------------------------------------------------------

BUSY_SHARE: Final = 0.3  # of the loop thread's time the host spends in pure Python
_BUSY_SPIN: Final = 0.0003  # seconds of Python per turn, then a sleep of the rest of 1 ms


async def _busy_host() -> None:
    # A host that computes in short spells and yields between them, as a
    # parser or a scorer on the loop does. Never a spin without a yield: that
    # starves every other thread of the GIL, which no cleanup design survives.
    clock, sleep = time.perf_counter, asyncio.sleep
    rest = _BUSY_SPIN / BUSY_SHARE - _BUSY_SPIN
    while True:
        end = clock() + _BUSY_SPIN
        while clock() < end:
            pass
        await sleep(rest)


def busy_loop(competitor: Competitor[Paths]) -> Competitor[Paths]:
    """``competitor`` with the loop thread busy in Python ``BUSY_SHARE`` of each burst."""

    @contextlib.asynccontextmanager
    async def open_busy() -> AsyncIterator[Burst[Paths]]:
        async with competitor.open() as inner:

            async def burst(paths: Paths) -> None:
                host = asyncio.get_running_loop().create_task(_busy_host())
                try:
                    await inner(paths)
                finally:
                    host.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await host

            yield burst

    return Competitor(
        competitor.name,
        f"{competitor.about}, the loop {BUSY_SHARE:.0%} busy in Python",
        open_busy,
        loop=competitor.loop,
        needs=competitor.needs,
    )


# -- trivial Call tasks -----------------------------------------------------------------


async def trivial(box: list[int]) -> None:
    """The trivial cleanup of the Call benchmarks: count that it ran."""
    box[0] += 1


def _check_ran(box: list[int], count: int, who: str) -> None:
    if box[0] != count:
        raise BenchError(f"{who}: {count} calls submitted, {box[0]} ran")


@contextlib.asynccontextmanager
async def _taskgroup_batches() -> AsyncIterator[Burst[int]]:
    async def burst(count: int) -> None:
        box = [0]
        for start in range(0, count, BATCH):
            async with asyncio.TaskGroup() as tg:
                for _ in range(min(BATCH, count - start)):
                    tg.create_task(trivial(box))
        _check_ran(box, count, "taskgroup-64")

    yield burst


@contextlib.asynccontextmanager
async def _fastcleanup_calls() -> AsyncIterator[Burst[int]]:
    async with _cleaner() as cleaner:

        async def burst(count: int) -> None:
            box = [0]
            before = cleaner.stats()
            submit, call = cleaner.submit, fc.Call
            for start in range(0, count, SLICE):
                for _ in range(min(SLICE, count - start)):
                    submit(call(trivial, box))
                await asyncio.sleep(0)
            if not await cleaner.drain(timeout=_WAIT):
                raise BenchError(f"{cleaner!r} did not drain within {_WAIT} s")
            _check(cleaner, before, count)
            _check_ran(box, count, repr(cleaner))

        yield burst


# -- the floor -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _idle() -> AsyncIterator[Burst[int]]:
    async def burst(ms: int) -> None:
        await asyncio.sleep(ms / 1000)

    yield burst


# Not a competitor: the probes on a loop with nothing else to do, for ``ms``
# milliseconds. Its stall and host figures are the floor a busy, shared
# machine puts under every other row.
IDLE: Final[Competitor[int]] = Competitor("idle-loop", "the probes alone, no work", _idle)


# -- the registries ---------------------------------------------------------------------


def _registry(*competitors: Competitor[Any]) -> dict[str, Competitor[Any]]:
    return {c.name: c for c in competitors}


FILE_COMPETITORS: Final[dict[str, Competitor[Paths]]] = _registry(
    Competitor(
        "unlink-1-thread", "os.unlink loop in one thread: the single-thread limit", _one_thread
    ),
    Competitor("unlink-2-threads", "two threads, each os.unlink-ing half", _two_threads),
    Competitor(
        "bulk-2-threads",
        "two threads, each unlinking half in C without the GIL: the kernel's ceiling",
        _bulk_two_threads,
        needs="fastcleanup._cbulk",
    ),
    Competitor(
        CHUNKED,
        f"the same, the threads taking {CHUNK:,}-file chunks in turn as fastcleanup's do",
        partial(_bulk_two_threads, CHUNK),
        needs="fastcleanup._cbulk",
    ),
    Competitor(
        "gather-aiofiles", "asyncio.gather(aiofiles.os.remove(p) for every path)", _gather_aiofiles
    ),
    Competitor("task-per-file", "one create_task(aiofiles.os.remove(p)) per file", _task_per_file),
    Competitor(
        "executor-per-file",
        "one loop.run_in_executor(None, os.unlink, p) per file",
        _executor_per_file,
    ),
    Competitor(
        "aiojobs-spawn",
        "aiojobs Scheduler.spawn(aiofiles.os.remove(p)) per file",
        _aiojobs_spawn,
        needs="aiojobs",
    ),
    Competitor(
        "rust-port", "bg_cleanup.rs ported: queue, batches of 64, gather per batch", _rust_port
    ),
    Competitor(
        "fastcleanup-asyncio",
        "fastcleanup Cleaner.submit(RemoveFile(p)) on asyncio",
        _fastcleanup_files,
        loop="asyncio",
    ),
    Competitor(
        "fastcleanup-uvloop",
        "fastcleanup Cleaner.submit(RemoveFile(p)) on uvloop",
        _fastcleanup_files,
        loop="uvloop",
        needs="uvloop",
    ),
    Competitor(
        MIXED,
        f"the same with a trivial Call submitted before every {MIX_EVERY}th file",
        _fastcleanup_mixed,
        loop="uvloop",
        needs="uvloop",
    ),
    Competitor(
        ONE_THREAD,
        "the same with Cleaner(io_threads=1): one core left to the loop",
        partial(_fastcleanup_files, None, 1),
        loop="uvloop",
        needs="uvloop",
    ),
    # Confined to the temp dir, where make_files() puts its directories by default.
    confined_to(tempfile.gettempdir()),
)


def file_competitor(name: str, parent: str | None = None) -> Competitor[Paths]:
    """The file competitor ``name`` for files made by ``make_files(n, parent)``."""
    if name == CONFINED and parent is not None:
        return confined_to(parent)
    return FILE_COMPETITORS[name]


CALL_COMPETITORS: Final[dict[str, Competitor[int]]] = _registry(
    Competitor(
        "taskgroup-64-asyncio",
        "a bare TaskGroup per batch of 64 coroutines, asyncio",
        _taskgroup_batches,
        loop="asyncio",
    ),
    Competitor(
        "taskgroup-64-uvloop",
        "a bare TaskGroup per batch of 64 coroutines, uvloop",
        _taskgroup_batches,
        loop="uvloop",
        needs="uvloop",
    ),
    Competitor(
        "fastcleanup-asyncio",
        "fastcleanup Cleaner.submit(Call(fn)) on asyncio",
        _fastcleanup_calls,
        loop="asyncio",
    ),
    Competitor(
        "fastcleanup-uvloop",
        "fastcleanup Cleaner.submit(Call(fn)) on uvloop",
        _fastcleanup_calls,
        loop="uvloop",
        needs="uvloop",
    ),
)
