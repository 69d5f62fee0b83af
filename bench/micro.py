"""Untimed-burst measurements of ``python -m bench``: hand-off cost and queue memory.

Submit cost: the calling thread is a *foreign* thread; the consumer's loop
runs in a thread of its own and is held blocked (in a ``threading.Event``
wait, which releases the GIL) while the foreign thread makes its calls, so
the figure is the caller's cost of the hand-off alone, including any
syscall it makes, not GIL contention with a busy consumer. Then the loop is
released and must receive every item, which checks that nothing was lost.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import tempfile
import threading
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import fastcleanup as fc

from .competitors import trivial
from .harness import BenchError, loop_factory

__all__ = [
    "SUBMIT_VARIANTS",
    "SubmitCost",
    "SubmitHost",
    "bytes_per_queued_remove_file",
    "submit_cost",
    "submit_costs",
]

SUBMIT_VARIANTS: Final = (
    "deque.append",
    "fastcleanup.submit",
    "call_soon_threadsafe-asyncio",
    "call_soon_threadsafe-uvloop",
    "janus-asyncio",
    "janus-uvloop",
)
_WAIT: Final = 120.0


@dataclass(frozen=True, slots=True)
class SubmitCost:
    """Nanoseconds per hand-off from a foreign thread."""

    variant: str
    ns_median: float
    ns_best: float
    calls: int
    repeat: int


class SubmitHost:
    """A loop thread with one consumer, blocked while a foreign thread hands items over.

    >>> with SubmitHost("fastcleanup.submit") as host:
    ...     put = host.block()          # the loop now waits; put is the hand-off
    ...     for item in items: put(item)
    ...     host.release(len(items))    # the loop runs and must receive them all
    """

    def __init__(self, variant: str) -> None:
        if variant not in SUBMIT_VARIANTS:
            raise ValueError(f"unknown variant {variant!r}: one of {', '.join(SUBMIT_VARIANTS)}")
        self.variant = variant
        self._ready = threading.Event()
        self._blocked = threading.Event()
        self._gate = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._put: Callable[[Any], object] | None = None
        self._error: BaseException | None = None
        self._commands: asyncio.Queue[int | None] | None = None
        self._finished = threading.Event()
        self._thread = threading.Thread(
            target=self._main, name=f"bench-host-{variant}", daemon=True
        )

    def __enter__(self) -> SubmitHost:
        self._thread.start()
        self._ready.wait(_WAIT)
        self._raise_error()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        loop, commands = self._loop, self._commands
        self._gate.set()
        if loop is not None and commands is not None and self._thread.is_alive():
            try:
                loop.call_soon_threadsafe(commands.put_nowait, None)
            except RuntimeError:  # the loop is already closed
                pass
        self._thread.join(_WAIT)
        self._raise_error()

    def block(self) -> Callable[[Any], object]:
        """Park the loop thread; return the hand-off callable."""
        assert self._loop is not None
        assert self._put is not None
        self._blocked.clear()
        self._gate.clear()
        self._loop.call_soon_threadsafe(self._park)
        if not self._blocked.wait(_WAIT):
            raise BenchError(f"{self.variant}: the loop thread did not block")
        return self._put

    def release(self, expected: int) -> None:
        """Let the loop run; wait until its consumer has received ``expected`` items."""
        assert self._loop is not None
        assert self._commands is not None
        self._finished.clear()
        self._gate.set()
        self._loop.call_soon_threadsafe(self._commands.put_nowait, expected)
        deadline = time.monotonic() + _WAIT
        while not self._finished.wait(0.05):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                break
        self._raise_error()
        if not self._finished.is_set():
            raise BenchError(f"{self.variant}: the consumer did not finish")

    def _park(self) -> None:
        self._blocked.set()
        self._gate.wait(_WAIT)  # releases the GIL: the foreign thread runs alone

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise BenchError(f"{self.variant}: the loop thread failed: {error!r}") from error

    def _main(self) -> None:
        loop_name = "uvloop" if self.variant.endswith("uvloop") else "asyncio"
        if self.variant == "fastcleanup.submit":
            loop_name = "uvloop"
        try:
            with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
                runner.run(self._serve())
        except BaseException as exc:  # reported to the foreign thread
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._commands = asyncio.Queue()
        kind = self.variant.split("-")[0]
        if kind == "deque.append":
            sink: deque[object] = deque()
            self._put = sink.append
            await self._loop_commands(lambda n: _counted(sink, n))
        elif kind == "call_soon_threadsafe":
            received: deque[object] = deque()
            # typeshed types the callback's arguments with a TypeVarTuple, which
            # partial() cannot bind; the call is checked by running it.
            self._put = partial(loop.call_soon_threadsafe, received.append)  # type: ignore[arg-type]
            await self._loop_commands(lambda n: _counted(received, n))
        elif kind == "janus":
            await self._serve_janus()
        else:
            async with fc.Cleaner(registry=None) as cleaner:
                self._put = cleaner.submit
                await _settle()  # the dispatcher is idle: the first submit wakes it

                async def finished(n: int) -> None:
                    if not await cleaner.drain(timeout=_WAIT):
                        raise BenchError(f"{cleaner!r} did not drain")
                    stats = cleaner.stats()
                    if stats.completed != stats.submitted or stats.failed:
                        raise BenchError(f"{cleaner!r} after {n} submits: {stats}")

                await self._loop_commands(finished)

    async def _serve_janus(self) -> None:
        import janus

        queue: janus.Queue[object] = janus.Queue()
        got, wanted = [0], [0]
        reached = asyncio.Event()

        async def consume() -> None:
            get = queue.async_q.get
            while True:
                await get()
                got[0] += 1
                if got[0] == wanted[0]:
                    reached.set()

        consumer = asyncio.get_running_loop().create_task(consume())
        await _settle()  # the consumer waits in get(): every put notifies the loop
        self._put = queue.sync_q.put

        async def finished(n: int) -> None:
            wanted[0] = n
            if got[0] < n:
                try:
                    await asyncio.wait_for(reached.wait(), _WAIT)
                except TimeoutError:
                    raise BenchError(f"janus: {n} put, {got[0]} received") from None
            got[0] = 0
            reached.clear()

        try:
            await self._loop_commands(finished)
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
            queue.close()
            await queue.wait_closed()

    async def _loop_commands(self, finished: Callable[[int], Any]) -> None:
        assert self._commands is not None
        self._ready.set()
        while (n := await self._commands.get()) is not None:
            result = finished(n)
            if asyncio.iscoroutine(result):
                await result
            self._finished.set()


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def _counted(sink: deque[object], n: int) -> None:
    if len(sink) != n:
        raise BenchError(f"{n} handed over, {len(sink)} received")
    sink.clear()


def _items(n: int) -> list[fc.Call]:
    # One kind of item for every variant; a Call fastcleanup can run.
    box = [0]
    return [fc.Call(trivial, box) for _ in range(n)]


def _time_calls(put: Callable[[Any], object], items: Sequence[object]) -> float:
    clock = time.perf_counter_ns
    start = clock()
    for item in items:
        put(item)
    return (clock() - start) / len(items)


def submit_cost(variant: str, calls: int = 100_000, repeat: int = 5) -> SubmitCost:
    """Hand ``calls`` items over from this thread, ``repeat`` times; ns per call."""
    return submit_costs(calls, repeat, (variant,))[0]


def submit_costs(
    calls: int = 100_000, repeat: int = 5, variants: Sequence[str] = SUBMIT_VARIANTS
) -> list[SubmitCost]:
    """:func:`submit_cost` for each variant, the repeats interleaved across variants.

    Interleaving spreads a noisy neighbour's bursts over every variant
    instead of one. Variants whose optional module (janus, uvloop) is
    missing are left out.
    """
    if calls < 1 or repeat < 1:
        raise ValueError("calls and repeat must be >= 1")
    items = _items(calls)
    hosts: list[SubmitHost] = []
    try:
        for variant in variants:
            host = SubmitHost(variant)
            try:
                host.__enter__()
            except BenchError as exc:
                if isinstance(exc.__cause__, ImportError):
                    continue
                raise
            hosts.append(host)
        samples: dict[str, list[float]] = {h.variant: [] for h in hosts}
        for _ in range(repeat):
            for host in hosts:
                put = host.block()
                samples[host.variant].append(_time_calls(put, items))
                host.release(calls)
    finally:
        for host in hosts:
            host.close()
    return [
        SubmitCost(v, statistics.median(ns), min(ns), calls, repeat) for v, ns in samples.items()
    ]


def bytes_per_queued_remove_file(queued: int = 1_000_000, loop: str = "uvloop") -> float:
    """Heap bytes per queued ``RemoveFile``, path string not counted.

    ``queued`` tasks are submitted after ``init_worker()`` and before the
    dispatcher first runs, with ``tracemalloc`` counting what they add: the
    task objects and the queue's own blocks. The paths (in an empty
    directory, so the removals that follow touch nothing) exist beforehand.
    """
    if queued < 1:
        raise ValueError("queued must be >= 1")
    root = tempfile.mkdtemp(prefix="fastcleanup-bench-mem-")
    paths = [os.path.join(root, f"{i:07d}") for i in range(queued)]

    async def measure() -> float:
        async with fc.Cleaner(registry=None) as cleaner:
            submit, remove_file = cleaner.submit, fc.RemoveFile
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for p in paths:
                    submit(remove_file(p))
                used = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            stats = cleaner.stats()
            if stats.queued != queued:
                raise BenchError(f"{queued} submitted before the worker ran, stats: {stats}")
            if not await cleaner.drain(timeout=_WAIT):
                raise BenchError(f"{cleaner!r} did not drain")
        return used / queued

    try:
        with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
            return runner.run(measure())
    finally:
        os.rmdir(root)
