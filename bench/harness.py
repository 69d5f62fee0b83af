"""The measuring side of ``python -m bench``: fresh files, probes, one timed burst.

A burst runs on an event loop that also carries two probes a host
application cares about:

* a 1 ms ticker (a coroutine that sleeps 1 ms and records how late it woke):
  the loop's stall, p99 and max;
* a host call ``loop.run_in_executor(None, ...)`` repeated through the burst:
  its latency says whether the loop's default executor, which the host needs
  for ``getaddrinfo`` and ``to_thread``, was starved.

Peak memory is the process's resident high-water mark during the burst above
its resident size at the start (Linux resets the mark on request: writing
``5`` to ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import importlib.util
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Generic, Self, TypeVar

__all__ = [
    "LOOPS",
    "BenchError",
    "BurstSession",
    "Competitor",
    "FileSet",
    "Measurement",
    "creation_rate",
    "default_dir",
    "default_loop",
    "loop_factory",
    "make_files",
    "percentile",
    "run_files",
    "summarize",
    "tmpfs_among",
]

W = TypeVar("W")

LOOPS = ("uvloop", "asyncio")
TICK = 0.001  # the ticker's period, seconds
HOST_PERIOD = 0.001  # pause between two host executor calls, seconds
_MIB = 1024 * 1024


class BenchError(RuntimeError):
    """A competitor did not do its job (files left behind, tasks not run)."""


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop factory for ``"uvloop"`` or ``"asyncio"``."""
    if name == "asyncio":
        return asyncio.new_event_loop
    if name == "uvloop":
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    raise ValueError(f"unknown event loop {name!r}: choose one of {', '.join(LOOPS)}")


def default_loop() -> str:
    """uvloop when it is installed, else asyncio."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


# -- fresh files --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileSet:
    """``len(paths)`` empty files, alone in the directories ``dirs`` (siblings)."""

    dirs: tuple[str, ...]
    paths: list[str]
    made: tuple[str, ...] = ()  # what dispose() removes; ``dirs`` when empty

    @property
    def root(self) -> str:
        """The directory holding the files, or for several, the one holding those."""
        return self.dirs[0] if len(self.dirs) == 1 else os.path.commonpath(self.dirs)

    def leftovers(self) -> int:
        """How many entries are still in ``dirs``."""
        left = 0
        for d in self.dirs:
            try:
                left += len(os.listdir(d))
            except FileNotFoundError:
                pass
        return left

    def dispose(self) -> None:
        """Remove ``dirs`` (and the directories made above them) with whatever is left."""
        for d in self.made or self.dirs:
            shutil.rmtree(d, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.dispose()


def make_files(n: int, parent: str | None = None, dirs: int = 1, depth: int = 1) -> FileSet:
    """Create ``n`` empty files in ``dirs`` fresh directories under ``parent``, then sync.

    With several directories the files go round-robin, so any slice of the
    paths spreads over all of them. The directories are siblings ``depth``
    levels below ``parent``: directly under it by default, so that a
    cleaner confined to ``allowed_roots=[parent]`` walks one component per
    parent whatever ``dirs`` is; deeper, below one fresh directory and
    ``depth - 2`` more levels, so that the walks share their ancestors.

    Creating files right after a mass delete can be slow on ext4, so callers
    create their files before the timed part; the sync keeps writeback of the
    new inodes out of the timed part too.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if dirs < 1:
        raise ValueError(f"dirs must be >= 1, got {dirs}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    made: list[str] = []
    leaves: list[str] = []
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    opener, closer = os.open, os.close
    try:
        first = tempfile.mkdtemp(prefix="fastcleanup-bench-", dir=parent)
        made.append(first)
        if depth == 1:
            made.extend(
                tempfile.mkdtemp(prefix=f"{os.path.basename(first)}-{k:03d}-", dir=parent)
                for k in range(1, dirs)
            )
            leaves = made
        else:
            above = os.path.join(first, *(f"l{level}" for level in range(2, depth)))
            leaves = [os.path.join(above, f"d{k:04d}") for k in range(dirs)]
            for d in leaves:
                os.makedirs(d)
        paths = [os.path.join(leaves[i % dirs], f"{i:07d}") for i in range(n)]
        for p in paths:
            closer(opener(p, flags, 0o600))
    except BaseException:
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
        raise
    os.sync()
    return FileSet(tuple(leaves), paths, tuple(made))


def tmpfs_among(candidates: Sequence[str], mounts: str) -> str | None:
    """The first of ``candidates`` that ``mounts`` lists as a writable tmpfs mount.

    ``mounts`` is the text of ``/proc/self/mounts``.

    >>> tmpfs_among(["/tmp", "/dev/shm"], "tmpfs /dev/shm tmpfs rw,nosuid 0 0\\n")
    '/dev/shm'
    """
    writable = set()
    for line in mounts.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[2] == "tmpfs" and "ro" not in cols[3].split(","):
            writable.add(cols[1])
    return next((c for c in candidates if c in writable), None)


def default_dir() -> str | None:
    """Where a run creates its files unless told: a tmpfs, if the system has one we may use.

    Creating fresh files on a disk costs more than removing them and a
    journal adds its noise, so on a tmpfs the bursts can be large and the
    run still short. None means the temp dir.
    """
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            mounts = f.read()
    except OSError:  # not Linux
        return None
    found = tmpfs_among([tempfile.gettempdir(), "/dev/shm"], mounts)
    if found is None or not os.access(found, os.W_OK | os.X_OK):
        return None
    return found


def creation_rate(parent: str | None = None, n: int = 2000) -> float:
    """Files per second that ``make_files`` creates under ``parent`` right now."""
    clock = time.perf_counter
    start = clock()
    with make_files(n, parent):
        seconds = clock() - start
    return n / max(seconds, 1e-9)


# -- results -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measurement:
    """One burst of ``items`` work items by one competitor."""

    competitor: str
    loop: str
    items: int
    seconds: float  # first hand-off to the last item done
    stall_p99_ms: float  # 1 ms ticker lateness during the burst
    stall_max_ms: float
    host_p99_ms: float  # latency of the host's run_in_executor(None, ...) calls
    peak_mib: float  # resident high-water mark above the start (nan where unknown)

    @property
    def rate(self) -> float:
        """Items per second."""
        return self.items / self.seconds if self.seconds > 0 else math.inf


def summarize(results: Sequence[Measurement]) -> Measurement:
    """The median of every measured field (the items and seconds medians pair up)."""
    if not results:
        raise ValueError("no measurements to summarize")
    first = results[0]
    for m in results:
        if (m.competitor, m.loop, m.items) != (first.competitor, first.loop, first.items):
            raise ValueError(f"cannot summarize {m} with {first}")
    values = {
        f.name: statistics.median(getattr(m, f.name) for m in results)
        for f in fields(Measurement)
        if f.name not in ("competitor", "loop", "items")
    }
    return Measurement(first.competitor, first.loop, first.items, **values)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# -- competitors and sessions ---------------------------------------------------------


Burst = Callable[[W], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Competitor(Generic[W]):
    """A way to do a burst of work.

    ``open()`` is an async context manager entered on the loop before any
    timing (start workers, warm thread pools) that yields the burst: an
    async callable that does all the work and returns when it is done.
    """

    name: str
    about: str
    open: Callable[[], contextlib.AbstractAsyncContextManager[Burst[W]]]
    loop: str | None = None  # None: the loop of the run
    needs: str | None = None  # an optional module the competitor imports

    def available(self) -> bool:
        """Whether the optional module it needs (if any) is installed."""
        return self.needs is None or importlib.util.find_spec(self.needs) is not None


class _Probes:
    """The 1 ms ticker and the host's default-executor calls."""

    __slots__ = ("_host", "_prober", "_stopping", "_ticker", "lateness")

    def __init__(self) -> None:
        self.lateness: list[float] = []
        self._host: list[float] = []
        self._stopping = False
        self._ticker: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ticker = loop.create_task(self._tick())
        self._prober = loop.create_task(self._probe_host(loop))
        await asyncio.sleep(0)  # both are now waiting on their first timer / job

    async def _tick(self) -> None:
        clock, sleep, record = time.perf_counter, asyncio.sleep, self.lateness.append
        while True:
            start = clock()
            await sleep(TICK)
            record(clock() - start - TICK)

    async def _probe_host(self, loop: asyncio.AbstractEventLoop) -> None:
        clock, record = time.perf_counter, self._host.append
        while not self._stopping:
            start = clock()
            await loop.run_in_executor(None, _host_job)
            record(clock() - start)
            await asyncio.sleep(HOST_PERIOD)

    async def stop(self) -> tuple[float, float, float]:
        """Stop both; (stall p99, stall max, host p99) in milliseconds."""
        self._stopping = True
        assert self._ticker is not None
        assert self._prober is not None
        self._ticker.cancel()  # its interval in progress is cut short: not a sample
        with contextlib.suppress(asyncio.CancelledError):
            await self._ticker
        # A host call still waiting for the executor finishes and counts: under a
        # starved executor that last call is the slowest of all.
        await self._prober
        late = [max(0.0, x) * 1e3 for x in self.lateness]
        host = [x * 1e3 for x in self._host]
        return percentile(late, 99), max(late, default=math.nan), percentile(host, 99)


def _host_job() -> None:
    return None


class _PeakRss:
    """The resident high-water mark of this process, resettable on Linux."""

    def __init__(self) -> None:
        self._base = 0
        self._ok = False

    def reset(self) -> None:
        _release_free_memory()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._base = _status_kib("VmRSS")
            self._ok = self._base > 0
        except OSError:
            self._ok = False

    def peak_mib(self) -> float:
        if not self._ok:
            return math.nan
        try:
            return max(0, _status_kib("VmHWM") - self._base) / 1024
        except OSError:
            return math.nan


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


_libc: ctypes.CDLL | None = None


def _release_free_memory() -> None:
    """Collect garbage and hand free heap pages back, so the next peak starts low."""
    global _libc
    gc.collect()
    if _libc is None:
        name = ctypes.util.find_library("c")
        if name is None:
            return
        _libc = ctypes.CDLL(name)
    trim = getattr(_libc, "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)


async def _warm_default_executor() -> None:
    # Start every thread of the default pool before timing, as a host that
    # has been up for a while would have.
    loop = asyncio.get_running_loop()
    workers = min(32, (os.cpu_count() or 1) + 4)
    await asyncio.gather(*(loop.run_in_executor(None, time.sleep, 0.002) for _ in range(workers)))


class BurstSession(Generic[W]):
    """One competitor, open on its own loop, ready for several timed bursts.

    >>> with BurstSession(FILE_COMPETITORS["fastcleanup-uvloop"]) as session:
    ...     with make_files(1000) as files:
    ...         print(run_files(session, files).rate)
    """

    def __init__(self, competitor: Competitor[W], loop: str | None = None) -> None:
        self.competitor = competitor
        self.loop = competitor.loop or loop or default_loop()
        self._runner = asyncio.Runner(loop_factory=loop_factory(self.loop))
        self._stack = contextlib.AsyncExitStack()
        self._burst: Burst[W] | None = None
        self._memory = _PeakRss()
        self._prepared = False

    def __repr__(self) -> str:
        state = "open" if self._burst is not None else "closed"
        return f"<BurstSession {self.competitor.name} on {self.loop} {state}>"

    def __enter__(self) -> Self:
        self._runner.__enter__()
        try:
            self._burst = self._runner.run(self._open())
        except BaseException:
            self._runner.close()
            raise
        return self

    async def _open(self) -> Burst[W]:
        await _warm_default_executor()
        return await self._stack.enter_async_context(self.competitor.open())

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._burst is None:
            return
        self._burst = None
        try:
            self._runner.run(self._stack.aclose())
        finally:
            self._runner.close()

    def prepare(self) -> None:
        """Settle the machine before a burst: sync the disk, collect, reset the peak.

        :meth:`run` does this itself unless it was done since the last run; a
        round-based runner calls it in its untimed setup.
        """
        os.sync()
        self._memory.reset()
        self._prepared = True

    def run(self, work: W) -> Measurement:
        """One timed burst over ``work`` (paths, or a count of calls)."""
        if self._burst is None:
            raise RuntimeError(f"{self!r} is closed: use it inside a with block")
        items = len(work) if isinstance(work, Sequence) else int(work)  # type: ignore[call-overload]
        if not self._prepared:
            self.prepare()
        self._prepared = False
        return self._runner.run(self._timed(self._burst, work, items))

    async def _timed(self, burst: Burst[W], work: W, items: int) -> Measurement:
        probes = _Probes()
        await probes.start()
        clock = time.perf_counter
        start = clock()
        try:
            await burst(work)
        finally:
            seconds = clock() - start
            stall_p99, stall_max, host_p99 = await probes.stop()
        return Measurement(
            self.competitor.name,
            self.loop,
            items,
            seconds,
            stall_p99,
            stall_max,
            host_p99,
            self._memory.peak_mib(),
        )


def run_files(session: BurstSession[Sequence[str]], files: FileSet) -> Measurement:
    """Time one burst over ``files``, check that every file is gone, dispose of them."""
    try:
        result = session.run(files.paths)
        left = files.leftovers()
        if left:
            raise BenchError(
                f"{session.competitor.name} left {left} of {len(files.paths)} files in {files.root}"
            )
        return result
    finally:
        files.dispose()
