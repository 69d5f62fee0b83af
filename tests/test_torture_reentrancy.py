"""Re-entrancy: submit() from ``__del__`` during forced GC, and from a signal
handler that fires about a thousand times a second.

Both interrupt arbitrary Python code, submit() itself included, in the very
thread that runs it: a lock taken on the submit path would deadlock here
(prometheus_client #1076). Every test has a hard timeout, so a deadlock
fails instead of hanging the run.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import fastcleanup as fc
from tests.conftest import loop_factory
from tests.torture_helpers import (
    LoopErrors,
    LoopThread,
    assert_monotone,
    assert_scrape_monotone,
    conserved,
    existing,
    forget,
    report,
    scale,
    scrape,
    touch_all,
)


class Doomed:
    """Garbage in a reference cycle whose ``__del__`` hands its file over.

    Only the cycle collector frees it, so its ``__del__`` runs wherever a
    collection happens to start: inside submit(), inside the dispatcher,
    inside another object's ``__del__``.
    """

    def __init__(self, cleaner: fc.Cleaner, path: str) -> None:
        self.cleaner = cleaner
        self.path = path
        self.me = self

    def __del__(self) -> None:
        self.cleaner.submit(fc.RemoveFile(self.path))


class Anchor:
    """Cyclic garbage watched by on_collect(): the library's own guard."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def aggressive_gc() -> Iterator[None]:
    """Collect after every 10 allocations, so collections start everywhere."""
    old = gc.get_threshold()
    gc.set_threshold(10, 2, 2)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.collect()


@pytest.mark.timeout(300)
async def test_submit_from_del_during_forced_gc_in_8_threads(
    scratch: Path, aggressive_gc: None, loop_kind: str
) -> None:
    per_thread = scale(1_500, 6_000)
    threads = 8
    registry = CollectorRegistry()
    cleaner = fc.Cleaner(registry=registry, name="gc")
    errors = LoopErrors()
    errors.attach()
    # Each thread owns its files; a third go through Doomed.__del__, a third
    # through on_collect() guards, a third through TempFile guards.
    paths = [[str(scratch / f"g{t}-{i}") for i in range(per_thread)] for t in range(threads)]
    for ps in paths:
        touch_all(ps)
    temps: list[list[str]] = [[] for _ in range(threads)]
    failures: list[BaseException] = []

    def churn(t: int) -> None:
        try:
            for i, p in enumerate(paths[t]):
                if i % 3 == 0:
                    Doomed(cleaner, p)
                elif i % 3 == 1:
                    fc.on_collect(Anchor(), fc.RemoveFile(p), cleaner=cleaner)
                else:
                    os.unlink(p)  # this one is replaced by a TempFile
                    box = Anchor()  # a cycle: only the collector frees it, and the TempFile
                    box.tmp = fc.TempFile(dir=scratch, cleaner=cleaner)  # type: ignore[attr-defined]
                    temps[t].append(str(box.tmp.path))  # type: ignore[attr-defined]
                    del box
                if i % 64 == 0:
                    gc.collect()  # forced, from eight threads at once
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)

    scrapes = [scrape(registry)]
    started = time.monotonic()
    async with cleaner:
        workers = [threading.Thread(target=churn, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        # The loop thread makes cyclic garbage of its own meanwhile, so
        # collections also start inside the dispatcher and the workers.
        while any(w.is_alive() for w in workers):
            for _ in range(20):
                Anchor()
            await asyncio.sleep(0.002)
            scrapes.append(scrape(registry))
        for w in workers:
            w.join()
        gc.collect()
        assert await cleaner.drain(timeout=120), cleaner.stats()
        s = cleaner.stats()
    elapsed = time.monotonic() - started

    assert failures == []
    n = threads * per_thread
    assert (s.submitted, s.completed, s.failed, s.dropped_before_init) == (n, n, 0, 0), s
    assert conserved(s)
    gone = [p for ps in paths for p in ps] + [p for ts in temps for p in ts]
    assert existing(gone) == []
    scrapes.append(scrape(registry))
    for before, after in itertools.pairwise(scrapes):
        assert_scrape_monotone(before, after)
    assert errors.messages() == []
    report(
        "gc_del",
        loop=loop_kind,
        operations=n,
        threads=threads,
        files_lost=len(existing(gone)),
        deadlocks=0,
        seconds=round(elapsed, 2),
    )


needs_itimer = pytest.mark.skipif(
    not hasattr(signal, "setitimer") or sys.platform == "win32", reason="needs setitimer"
)


class Ticker:
    """A SIGALRM handler that submits one removal per tick."""

    def __init__(self, cleaner: fc.Cleaner, paths: list[str]) -> None:
        self.cleaner = cleaner
        self.paths = paths
        self.next = itertools.count()
        self.fired = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        i = next(self.next)
        if i < len(self.paths):
            self.cleaner.submit(fc.RemoveFile(self.paths[i]))
            self.fired += 1


@needs_itimer
@pytest.mark.timeout(300, method="thread")  # SIGALRM is ours in this test
@pytest.mark.parametrize("where", ["loop_in_main_thread", "loop_in_other_thread"])
def test_signal_handler_submits_at_1khz(scratch: Path, loop_kind: str, where: str) -> None:
    """setitimer fires SIGALRM every millisecond; its handler submits, while the
    main thread submits its own removals and scrapes /metrics in a loop."""
    seconds = scale(2, 10)
    main_paths = [str(scratch / f"m{i}") for i in range(scale(20_000, 100_000))]
    tick_paths = [str(scratch / f"s{i}") for i in range(seconds * 1_500)]
    touch_all(main_paths)
    touch_all(tick_paths)
    registry = CollectorRegistry()
    cleaner = fc.Cleaner(registry=registry, name="sig")
    ticker = Ticker(cleaner, tick_paths)
    submitted_by_main = 0
    scrapes = 0
    last = cleaner.stats()
    last_scrape = scrape(registry)
    final: list[fc.Stats] = []

    def scrape_and_check() -> None:
        nonlocal scrapes, last, last_scrape
        generate_latest(registry)  # the text exposition, as /metrics serves it
        now, now_scrape = cleaner.stats(), scrape(registry)
        assert_monotone(last, now)
        assert_scrape_monotone(last_scrape, now_scrape)
        last, last_scrape = now, now_scrape
        scrapes += 1

    def main_thread_work(deadline: float) -> Iterator[None]:
        """Submit in chunks and scrape between them; yields where it may pause."""
        nonlocal submitted_by_main
        i = 0
        while time.monotonic() < deadline or i == 0:
            for p in main_paths[i : i + 200]:
                cleaner.submit(fc.RemoveFile(p))
            submitted_by_main += len(main_paths[i : i + 200])
            i = min(i + 200, len(main_paths))
            scrape_and_check()
            yield

    old = signal.signal(signal.SIGALRM, ticker)
    try:
        if where == "loop_in_main_thread":
            errors = LoopErrors()

            async def run() -> None:
                errors.attach()
                cleaner.init_worker()
                signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
                for _ in main_thread_work(time.monotonic() + seconds):
                    await asyncio.sleep(0.001)
                signal.setitimer(signal.ITIMER_REAL, 0)
                assert await cleaner.drain(timeout=120), cleaner.stats()
                final.append(cleaner.stats())
                await cleaner.shutdown()

            with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
                runner.run(run())
            loop_errors = errors.messages()
        else:
            lt = LoopThread(loop_factory(loop_kind))
            try:
                lt.call(cleaner.init_worker)
                signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
                for _ in main_thread_work(time.monotonic() + seconds):
                    time.sleep(0.001)
                signal.setitimer(signal.ITIMER_REAL, 0)
                assert lt.call(lambda: cleaner.drain(timeout=120)), cleaner.stats()
                final.append(cleaner.stats())
                lt.call(cleaner.shutdown)
            finally:
                lt.close()
            loop_errors = lt.errors.messages()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        forget(cleaner)

    (s,) = final
    n = submitted_by_main + ticker.fired
    assert ticker.fired >= seconds * 100, "the timer hardly fired: the test proves little"
    assert (s.submitted, s.completed, s.failed, s.dropped_before_init) == (n, n, 0, 0), s
    assert conserved(s)
    gone = main_paths[:submitted_by_main] + tick_paths[: ticker.fired]
    assert existing(gone) == []
    assert existing(tick_paths[ticker.fired :]) == tick_paths[ticker.fired :]
    assert loop_errors == []
    report(
        "signal_1khz",
        loop=loop_kind,
        where=where,
        operations=n,
        signals=ticker.fired,
        scrapes=scrapes,
        files_lost=len(existing(gone)),
        deadlocks=0,
    )


@needs_itimer
@pytest.mark.timeout(60, method="thread")  # SIGALRM is ours in this test
def test_guard_released_inside_a_signal_handler(scratch: Path) -> None:
    """A guard whose object dies inside a signal handler (the handler drops the
    last reference): the finalizer submits from within the handler."""
    paths = [str(scratch / f"w{i}") for i in range(200)]
    touch_all(paths)
    cleaner = fc.Cleaner(registry=None)
    holders: list[Anchor] = []
    refs: list[weakref.ref[Anchor]] = []
    for p in paths:
        a = Anchor()
        del a.me  # plain refcounting frees it: the finalizer runs in the handler
        fc.on_collect(a, fc.RemoveFile(p), cleaner=cleaner)
        holders.append(a)
        refs.append(weakref.ref(a))
        del a

    async def run() -> None:
        cleaner.init_worker()
        loop = asyncio.get_running_loop()
        emptied = asyncio.Event()

        def drop_one(signum: int, frame: FrameType | None) -> None:
            if holders:
                holders.pop()  # the guard's object dies here, in the handler
                if not holders:
                    loop.call_soon_threadsafe(emptied.set)

        old = signal.signal(signal.SIGALRM, drop_one)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
            await asyncio.wait_for(emptied.wait(), 30)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        assert await cleaner.drain(timeout=30)
        await cleaner.shutdown()

    with asyncio.Runner() as runner:
        runner.run(run())
    assert all(r() is None for r in refs)
    s = cleaner.stats()
    assert (s.submitted, s.completed) == (200, 200), s
    assert existing(paths) == []
