"""``python -m bench --browser``: Chromium profiles removed through fastcleanup or on the loop.

Both competitors crawl the same pages of the demo's local site with real
Chromium persistent contexts, two at a time, a fresh profile per
``pages`` pages; they differ only in how a closed context's directory
(profile, downloads, ``TMPDIR``) goes:

* ``rmtree-on-loop``: ``shutil.rmtree`` right after ``await context.close()``,
  on the event loop (what a crawler without a cleanup worker does);
* ``fastcleanup``: :class:`fastcleanup.playwright.Browsers` hands it to the
  cleaner, which removes it once the browser has exited; the run ends when
  ``drain()`` says every profile is gone.

Figures: pages/s (the whole run, removals included), and the loop's stall
(a 1 ms ticker's lateness) with the baseline in the same run. Slow (Chromium
launches per profile), so not part of the default run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from playwright.async_api import BrowserContext, async_playwright
from prometheus_client import CollectorRegistry

import fastcleanup as fc
from examples.demo.site import serving
from fastcleanup.playwright import Browsers, browser_processes, chromium_path, launch_args

from .harness import Measurement, _Probes, loop_factory, summarize

__all__ = ["BASELINE", "measure", "run_browser"]

BASELINE = "rmtree-on-loop"
COMPETITORS = (BASELINE, "fastcleanup")
_SHM = "/dev/shm"  # a short base on tmpfs: Chromium's socket path must fit in 107 bytes

# A context factory and what to do with one that is closed.
Open = Callable[[], Awaitable[BrowserContext]]
Done = Callable[[BrowserContext], Awaitable[None]]


async def _crawl(urls: list[str], pages: int, open_context: Open, done: Done) -> None:
    """Two workers; each takes ``pages`` URLs at a time into a fresh profile."""
    shares = iter([urls[i : i + pages] for i in range(0, len(urls), pages)])

    async def worker() -> None:
        for share in shares:
            context = await open_context()
            page = await context.new_page()
            for url in share:
                await page.goto(url)
            await done(context)

    async with asyncio.TaskGroup() as tg:
        for _ in range(2):
            tg.create_task(worker())


async def _with_rmtree(scratch: Path, urls: list[str], pages: int, held: list[float]) -> None:
    paths: dict[BrowserContext, Path] = {}
    async with async_playwright() as pw:
        numbers = iter(range(1, 1 << 30))

        async def open_context() -> BrowserContext:
            path = scratch / f"p{next(numbers)}"
            (path / "t").mkdir(parents=True)
            context = await pw.chromium.launch_persistent_context(
                path / "u",
                executable_path=chromium_path(),
                args=launch_args(),
                downloads_path=path / "dl",
                env={**os.environ, "TMPDIR": str(path / "t")},
            )
            paths[context] = path
            return context

        async def done(context: BrowserContext) -> None:
            await context.close()
            t0 = time.perf_counter()
            shutil.rmtree(paths.pop(context))  # on the loop: the stall is the point
            held.append(time.perf_counter() - t0)

        await _crawl(urls, pages, open_context, done)


async def _with_fastcleanup(scratch: Path, urls: list[str], pages: int) -> None:
    # A registry per run: runs repeat, and a name may be registered once per registry.
    cleaner = fc.Cleaner(name="bench-browser", registry=CollectorRegistry())
    cleaner.init_worker()
    scratch_dir = fc.ScratchDir(scratch, cleaner=cleaner)
    try:
        async with Browsers(scratch_dir, cleaner=cleaner) as browsers:

            async def done(context: BrowserContext) -> None:
                await context.close()  # the directory goes through the cleaner

            await _crawl(urls, pages, browsers.launch_persistent_context, done)
        if not await cleaner.drain(60):
            raise RuntimeError("fastcleanup did not remove the profiles within 60 s")
    finally:
        scratch_dir.close()
        await cleaner.shutdown()


async def _one(name: str, base: str, profiles: int, pages: int, held: list[float]) -> Measurement:
    urls = [
        f"{base}/site-{n // pages}/page-{n}?kind=ok&size=20000&delay=0.002"
        for n in range(profiles * pages)
    ]
    scratch = Path(tempfile.mkdtemp(prefix="fcb", dir=_SHM if os.access(_SHM, os.W_OK) else None))
    probes = _Probes()
    try:
        await probes.start()
        t0 = time.perf_counter()
        if name == BASELINE:
            await _with_rmtree(scratch, urls, pages, held)
        else:
            await _with_fastcleanup(scratch, urls, pages)
        seconds = time.perf_counter() - t0
        p99, worst, host = await probes.stop()
        left = await asyncio.to_thread(_leftovers, scratch)
        if left:
            raise RuntimeError(f"{name} left {left[:3]} behind ({len(left)} in all)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
    return Measurement(name, loop, len(urls), seconds, p99, worst, host, float("nan"))


def _leftovers(scratch: Path) -> list[str]:
    """What a run left: entries (but a ScratchDir's lock file) and browser processes."""
    left = [str(p) for p in scratch.rglob("*") if p.name != ".fastcleanup.lock"]
    return left + [f"pid {pid}" for pid in browser_processes(scratch)]


def measure(
    name: str,
    base: str,
    *,
    profiles: int,
    pages: int,
    loop: str,
    held: list[float] | None = None,
) -> Measurement:
    """One run of competitor ``name`` against the site at ``base``.

    ``held`` gets how long each of the baseline's removals held the loop (seconds).
    """
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(_one(name, base, profiles, pages, [] if held is None else held))


def run_browser(*, repeat: int, quick: bool, loop: str) -> int:
    """Print the browser scenario's table; 2 if Playwright or Chromium is missing."""
    if chromium_path() is None:
        print("bench: --browser needs a Chromium (apt-get install chromium)", file=sys.stderr)
        return 2
    profiles, pages = (4, 5) if quick else (8, 10)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"bench --browser: loop {loop}, load average {load}; {profiles} Chromium profiles "
        f"x {pages} pages, 2 at a time; median of {repeat}",
        flush=True,
    )
    runs: dict[str, list[Measurement]] = {n: [] for n in COMPETITORS}
    held: list[float] = []
    with serving() as base:
        for r in range(repeat):
            # Alternate the order: a drift in the machine's load hits both alike.
            for name in COMPETITORS if r % 2 == 0 else COMPETITORS[::-1]:
                m = measure(name, base, profiles=profiles, pages=pages, loop=loop, held=held)
                runs[name].append(m)
                print(
                    f"  {name:<16} {m.items} pages in {m.seconds:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
    rows = {n: summarize(ms) for n, ms in runs.items()}
    base_rate = rows[BASELINE].rate
    print(f"  {'competitor':<16} {'pages/s':>8} {'x base':>7} {'stall p99':>10} {'stall max':>10}")
    for name, m in rows.items():
        print(
            f"  {name:<16} {m.rate:8.1f} {m.rate / base_rate:7.2f} "
            f"{m.stall_p99_ms:8.1f} ms {m.stall_max_ms:8.1f} ms"
        )
    print(
        f"  {BASELINE} held the loop {statistics.median(held) * 1e3:.1f} ms per profile "
        f"(median; max {max(held) * 1e3:.1f} ms, {len(held)} profiles); fastcleanup's "
        "removals ran on the cleaner's threads"
    )
    return 0
