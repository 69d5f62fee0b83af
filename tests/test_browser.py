"""``fastcleanup.playwright`` with a real Chromium: nothing a browser wrote outlives it.

These tests drive Debian's (or any) Chromium through Playwright. They skip,
saying why, where Playwright or a Chromium is missing, except under
``CI=true``, where a missing browser fails them.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import fastcleanup as fc
from tests.helpers import PROJECT_ROOT, assert_conserved


def _missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "Playwright is not installed (pip install 'fastcleanup[playwright]')"
    from fastcleanup.playwright import chromium_path

    if chromium_path() is None:
        return "no Chromium on PATH (apt-get install chromium) nor $FASTCLEANUP_CHROMIUM"
    return None


_why = _missing()
if _why is not None:
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI must run the browser tests: {_why}")
    pytest.skip(_why, allow_module_level=True)

from examples.browser_crawler import crawl, page_urls  # noqa: E402
from examples.demo.site import serving  # noqa: E402
from fastcleanup.playwright import Browsers, browser_processes, launch_args  # noqa: E402


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The demo's test site in a child process; yields its base URL."""
    with serving() as url:
        yield url


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A base with a short name: Chromium's socket path must fit in 107 bytes."""
    shm = Path("/dev/shm")
    path = Path(tempfile.mkdtemp(prefix="fc", dir=shm if os.access(shm, os.W_OK) else None))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def entries(path: Path) -> list[str]:
    """Everything below ``path``, relative, but the ScratchDir's lock file."""
    return sorted(
        str(p.relative_to(path)) for p in path.rglob("*") if p.name != ".fastcleanup.lock"
    )


def running(cleaner: fc.Cleaner, base: Path) -> tuple[fc.Cleaner, fc.ScratchDir]:
    """``cleaner`` started, and a ScratchDir of its own under ``base``."""
    cleaner.init_worker()
    return cleaner, fc.ScratchDir(base, cleaner=cleaner)


def test_launch_args_carry_what_this_machine_needs() -> None:
    args = launch_args(["--lang=de"])
    for flag in ("--disable-gpu", "--disable-background-networking", "--no-first-run"):
        assert flag in args
    assert ("--no-sandbox" in args) == (os.geteuid() == 0)
    assert args[-1] == "--lang=de"


async def test_a_crawl_of_100_pages_leaves_nothing(
    site: str, scratch: Path, make_cleaner: Callable[..., fc.Cleaner]
) -> None:
    cleaner, scratch_dir = running(make_cleaner(name="crawl"), scratch)
    seen: list[list[str]] = []
    async with Browsers(scratch_dir, cleaner=cleaner) as browsers:
        count = await crawl(browsers, page_urls(site, 100), per_profile=50)
        # Mid-way the files were there: a test that could not see them proves nothing.
        browser = await browsers.launch()
        context = await browsers.new_context(browser)
        await (await context.new_page()).goto(page_urls(site, 1)[0])
        seen.append(entries(scratch_dir.path))
        assert browser_processes(scratch_dir.path)
    assert await cleaner.drain(30)  # one drain: the removals wait for their browsers

    assert (count.pages, count.profiles, count.downloads) == (100, 2, 2)
    assert any("playwright_chromiumdev_profile-" in e for e in seen[0])  # launch()'s profile
    assert entries(scratch_dir.path) == []  # no profile, download or temp file
    assert browser_processes(scratch_dir.path) == []
    s = cleaner.stats()
    assert s.failed == 0
    assert_conserved(s)
    scratch_dir.close()


async def test_contexts_dropped_without_close_are_closed_without_a_gc(
    site: str, scratch: Path, make_cleaner: Callable[..., fc.Cleaner]
) -> None:
    cleaner, scratch_dir = running(make_cleaner(name="dropped"), scratch)
    gc.disable()  # Playwright's objects live in cycles: only the registry may close them
    try:
        async with Browsers(scratch_dir, cleaner=cleaner) as browsers:
            page = await (await browsers.launch_persistent_context()).new_page()
            await page.goto(page_urls(site, 1)[0])
            await browsers.new_context(await browsers.launch())
            del page
            assert browsers.live == 3
            assert browser_processes(scratch_dir.path)
        assert browsers.live == 0
        assert await cleaner.drain(30)  # one drain: the removals wait for their browsers
    finally:
        gc.enable()
    assert entries(scratch_dir.path) == []
    assert browser_processes(scratch_dir.path) == []
    scratch_dir.close()


async def test_a_launch_that_fails_leaves_no_directory(
    scratch: Path, make_cleaner: Callable[..., fc.Cleaner]
) -> None:
    cleaner, scratch_dir = running(make_cleaner(name="failed"), scratch)
    async with Browsers(scratch_dir, cleaner=cleaner, executable_path="/nonexistent") as browsers:
        with pytest.raises(Exception, match="nonexistent"):
            await browsers.launch_persistent_context()
        assert any(e.startswith("p") for e in entries(scratch_dir.path))
    assert await cleaner.drain(30)  # one drain: the removals wait for their browsers
    assert entries(scratch_dir.path) == []
    scratch_dir.close()


def _start_crawler(base: Path, site: str) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.browser_crawler", str(base), site, "--pages", "100000"],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("scratch "), first
    for line in proc.stdout:  # mid-crawl: a profile and a download are on disk
        if line.strip() == "page 20":
            break
    return proc, Path(first.split()[1])


def _wait_gone(path: Path, timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := browser_processes(path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


async def test_a_crawler_killed_mid_crawl_is_swept_by_the_next_start(
    site: str, scratch: Path, make_cleaner: Callable[..., fc.Cleaner]
) -> None:
    proc, dead = await asyncio.to_thread(_start_crawler, scratch, site)
    proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(proc.wait)
    assert proc.stdout is not None
    proc.stdout.close()
    left_behind = entries(dead)
    assert any(re.fullmatch(r"p\d+/u/Default", e) for e in left_behind)  # a profile
    assert any(re.fullmatch(r"p\d+/dl/.+", e) for e in left_behind)  # its download
    # Playwright's driver ends the browser once its crawler's pipe closes.
    assert await asyncio.to_thread(_wait_gone, dead) == []

    cleaner = make_cleaner(name="next")
    fc.sweep(scratch, cleaner=cleaner)
    cleaner.init_worker()
    assert await cleaner.drain(30)
    assert not dead.exists()
    assert os.listdir(scratch) == []
    assert browser_processes(scratch) == []
    assert cleaner.stats().failed == 0


def sample(cleaner: fc.Cleaner, registry: CollectorRegistry, name: str, **labels: str) -> float:
    """One counter of ``cleaner`` as ``/metrics`` shows it."""
    value = registry.get_sample_value(name, {"cleaner": cleaner.name, **labels})
    return value or 0.0


async def test_a_profile_removed_while_its_browser_lives_is_never_completed_while_there(
    site: str, scratch: Path, make_cleaner: Callable[..., fc.Cleaner], registry: CollectorRegistry
) -> None:
    cleaner, scratch_dir = running(make_cleaner(name="live", busy_timeout=0.5), scratch)
    seen: list[int | None] = []  # the profile's inode just after the removal, if any
    async with Browsers(scratch_dir, cleaner=cleaner) as browsers:
        context = await browsers.launch_persistent_context()
        page = await context.new_page()
        profile = browsers.directory(context) / "u"

        async def look() -> None:  # runs right after the removal, in the same worker
            try:
                seen.append(profile.stat().st_ino)
            except FileNotFoundError:
                seen.append(None)

        async def browse() -> None:  # the browser writes its profile meanwhile
            for url in page_urls(site, 40):
                await page.goto(url)
                await page.evaluate("localStorage.setItem(location.href, 'x'.repeat(4096))")

        writer = asyncio.create_task(browse())
        await asyncio.sleep(0.5)
        first = profile.stat().st_ino
        cleaner.submit(fc.InOrder(fc.RemoveTree(profile), fc.Call(look)))
        assert await cleaner.drain(30)
        await writer
    assert await cleaner.drain(30)

    completed = sample(cleaner, registry, "fastcleanup_completed_total", task="remove_tree")
    busy = sample(cleaner, registry, "fastcleanup_failed_total", task="remove_tree", reason="busy")
    # The profile's own removal, the browser's directory and the driver's
    # temp dir complete after the browser exited; ours is the one in question.
    assert completed - 2 + busy == 1
    # Completed: the profile was gone at that moment. The browser may make it
    # again before ``look`` runs, but then as a new directory: ``scratch`` is
    # on tmpfs, which never hands a freed inode number out again. Busy: the
    # browser kept refilling the profile it had.
    assert len(seen) == 1
    if busy:
        assert seen == [first]
    else:
        assert seen[0] != first
    assert entries(scratch_dir.path) == []
    scratch_dir.close()


async def test_a_browser_that_outlives_its_close_is_killed_before_its_directory_goes(
    scratch: Path, make_cleaner: Callable[..., fc.Cleaner], registry: CollectorRegistry
) -> None:
    cleaner, scratch_dir = running(make_cleaner(name="outlived"), scratch)
    async with Browsers(scratch_dir, cleaner=cleaner, exit_timeout=1.0) as browsers:
        context = await browsers.launch_persistent_context()
        directory = browsers.directory(context)
        # A helper of the browser that survives its close, still writing to its TMPDIR.
        helper = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import os, time\nwhile True: open(os.environ['TMPDIR'] + '/x', 'w'); time.sleep(0.05)",
            env={**os.environ, "TMPDIR": str(directory / "t")},
        )
        await context.close()
    assert await cleaner.drain(30)

    assert await helper.wait() == -signal.SIGKILL
    assert not directory.exists()
    assert browser_processes(scratch_dir.path) == []
    # The wait says it had to kill; the removal after it completed.
    assert sample(cleaner, registry, "fastcleanup_failed_total", task="call", reason="error") == 1
    assert cleaner.stats().failed == 1
    scratch_dir.close()


async def test_a_base_too_long_for_chromiums_socket_is_refused_before_launch(
    tmp_path: Path, make_cleaner: Callable[..., fc.Cleaner]
) -> None:
    long_base = tmp_path / ("x" * 60)
    cleaner, scratch_dir = running(make_cleaner(name="long"), long_base)
    async with Browsers(scratch_dir, cleaner=cleaner) as browsers:
        with pytest.raises(ValueError, match=r"too long for Chromium's socket \(\d+ > 107\)"):
            await browsers.launch_persistent_context()
    assert await cleaner.drain(30)
    assert browser_processes(scratch_dir.path) == []  # none was started
    assert entries(scratch_dir.path) == []
    scratch_dir.close()


async def test_a_browser_killed_under_its_context_has_its_directory_removed(
    site: str, scratch: Path, make_cleaner: Callable[..., fc.Cleaner]
) -> None:
    cleaner, scratch_dir = running(make_cleaner(name="crashed"), scratch)
    async with Browsers(scratch_dir, cleaner=cleaner) as browsers:
        context = await browsers.launch_persistent_context()
        await (await context.new_page()).goto(page_urls(site, 1)[0])
        directory = browsers.directory(context)
        closed = asyncio.Event()
        context.on("close", lambda _: closed.set())
        for pid in browser_processes(directory):  # a crash, as the OOM killer makes one
            os.kill(pid, signal.SIGKILL)
        async with asyncio.timeout(20):
            await closed.wait()
        assert browsers.live == 0
        assert await cleaner.drain(30)  # while Playwright still runs: the event did it
        assert not directory.exists()
    scratch_dir.close()


def test_the_browser_bench_runs_both_competitors_and_leaves_nothing(site: str) -> None:
    from bench.browser import COMPETITORS, measure

    # measure() raises if a run leaves a file or a browser behind; a second
    # fastcleanup run, as --repeat makes, must start as cleanly as the first.
    held: list[float] = []
    for name in (*COMPETITORS, "fastcleanup"):
        m = measure(name, site, profiles=2, pages=2, loop="asyncio", held=held)
        assert (m.competitor, m.items) == (name, 4)
        assert m.seconds > 0 and m.stall_max_ms >= m.stall_p99_ms
    assert len(held) == 2 and min(held) > 0  # each of the baseline's two removals, timed


# A crawler whose Chromium runs in a session of its own, so it lives on after
# the crawler's death, still writing to the crawler's scratch directory.
_ORPHANING_CRAWLER = """
import subprocess, sys, time
import fastcleanup as fc
from fastcleanup.playwright import chromium_path, launch_args
scratch = fc.ScratchDir(sys.argv[1])
browser = subprocess.Popen(
    [chromium_path(), "--headless", *launch_args(),
     f"--user-data-dir={scratch.path / 'p1' / 'u'}", sys.argv[2]],
    start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
print(scratch.path, browser.pid, flush=True)
time.sleep(600)
"""
_WRITER = (
    "<script>let n = 0; setInterval(() => "
    "localStorage.setItem('k' + (n++ % 50), 'x'.repeat(100000)), 20)</script>"
)


def _wait_for(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not (done := check()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return done


async def _sweep_once(cleaner: fc.Cleaner, base: Path) -> fc.Stats:
    fc.sweep(base, cleaner=cleaner)
    cleaner.init_worker()
    assert await cleaner.drain(30)
    return cleaner.stats()


def _start_orphaning_crawler(base: Path, page: str) -> tuple[subprocess.Popen[str], Path, int]:
    crawler = subprocess.Popen(
        [sys.executable, "-c", _ORPHANING_CRAWLER, str(base), page],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert crawler.stdout is not None
    path, pid = crawler.stdout.readline().split()
    crawler.stdout.close()
    return crawler, Path(path), int(pid)


async def test_an_orphaned_browser_that_keeps_writing_is_swept_after_it_dies(
    scratch: Path,
    tmp_path: Path,
    make_cleaner: Callable[..., fc.Cleaner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    page = tmp_path / "writer.html"
    page.write_text(_WRITER)
    crawler, dead, orphan = await asyncio.to_thread(
        _start_orphaning_crawler, scratch, page.as_uri()
    )
    try:
        assert await asyncio.to_thread(_wait_for, (dead / "p1/u/Default").exists)
        crawler.kill()
        await asyncio.to_thread(crawler.wait)

        # The next start, while the crawler's browser lives on and writes:
        # the dead crawler's directory is in use, and stays.
        monkeypatch.setattr(fc._sweep, "GRACE", 0.0)  # no waiting for a quiet minute
        stats = await _sweep_once(make_cleaner(name="first"), scratch)
        assert stats.swept == 0
        assert await asyncio.to_thread(_census, dead)  # the sweep left it to the browser
    finally:
        os.kill(orphan, signal.SIGKILL)
    assert await asyncio.to_thread(_wait_gone, dead) == []

    # Once the browser is dead, the next start removes all of it.
    stats = await _sweep_once(make_cleaner(name="next"), scratch)
    assert stats.swept == 1
    assert os.listdir(scratch) == []


def _census(path: Path) -> list[str]:
    return entries(path) if path.exists() else []


async def test_a_base_of_40_bytes_fits_chromiums_socket(
    scratch: Path, make_cleaner: Callable[..., fc.Cleaner]
) -> None:
    base = scratch / ("b" * (40 - len(str(scratch)) - 1))
    assert len(os.fsencode(base)) == 40
    cleaner, scratch_dir = running(make_cleaner(name="forty"), base)
    async with Browsers(scratch_dir, cleaner=cleaner) as browsers:
        context = await browsers.launch_persistent_context()  # Chromium aborts if it does not fit
        await (await context.new_page()).goto("data:text/html,<title>ok</title>")
        await context.close()
    assert await cleaner.drain(30)
    assert entries(scratch_dir.path) == []
    scratch_dir.close()
