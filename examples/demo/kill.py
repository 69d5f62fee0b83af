"""``python -m examples.demo --kill``: a crawler SIGKILLed mid-crawl, and the next start sweeping.

A child crawler (:mod:`examples.browser_crawler`) loads pages in Chromium
with its profiles, downloads and temp files in a ScratchDir; the demo kills
it with SIGKILL, so no exit code of it runs. Its browser ends once
Playwright's driver sees the crawler's pipe close; what both left stays on
disk until the next start: here a fresh cleaner whose ``init_worker()``
sweeps the base.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import fastcleanup as fc
from fastcleanup.playwright import browser_processes

__all__ = ["kill_and_sweep"]

_KILL_AT = 20  # pages crawled before the kill: a profile and a download are on disk
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _census(path: Path) -> tuple[int, int]:
    """Directories and files below ``path``."""
    dirs = files = 0
    for _, d, f in os.walk(path):
        dirs, files = dirs + len(d), files + len(f)
    return dirs, files


async def _crawl_until_killed(base: Path, site: str) -> Path:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.browser_crawler",
        str(base),
        site,
        "--pages",
        "100000",
        cwd=_PROJECT_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(120):
            first = (await proc.stdout.readline()).decode()
            if not first.startswith("scratch "):
                raise RuntimeError("the crawler did not start (its error is above)")
            while (
                line := await proc.stdout.readline()
            ) and line.strip() != f"page {_KILL_AT}".encode():
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    print(f"  crawler  pid {proc.pid} SIGKILLed at page {_KILL_AT}", flush=True)
    return Path(first.split()[1])


async def kill_and_sweep(scratch: Path, site: str) -> int:
    """Run the scene; 0 if the next start left nothing, 1 otherwise."""
    base = scratch / "b"
    dead = await _crawl_until_killed(base, site)
    dirs, files = await asyncio.to_thread(_census, dead)
    procs = await asyncio.to_thread(browser_processes, dead)
    print(f"  left     {dirs} directories, {files} files in {dead}; {len(procs)} browser processes")
    t0 = time.monotonic()
    while procs and time.monotonic() - t0 < 30:
        await asyncio.sleep(0.1)
        procs = await asyncio.to_thread(browser_processes, dead)
    print(f"  browser  {len(procs)} processes after {time.monotonic() - t0:.1f} s "
          "(Playwright's driver ends them when its crawler's pipe closes)")  # fmt: skip

    cleaner = fc.Cleaner(name="demo-next", allowed_roots=[scratch])
    fc.sweep(base, cleaner=cleaner)
    cleaner.init_worker()  # the next start: sweeps the base
    drained = await cleaner.drain(60)
    await cleaner.shutdown()
    s = cleaner.stats()
    left = await asyncio.to_thread(_census, base)
    procs = await asyncio.to_thread(browser_processes, base)
    print(f"  swept    {s.swept} scratch directories of dead processes "
          f"({s.completed} cleanups, {s.failed} failed)\n"
          f"  after    {left[0]} directories, {left[1]} files under {base}; "
          f"browser processes left: {len(procs)}")  # fmt: skip
    ok = drained and left == (0, 0) and not procs and s.failed == 0 and not dead.exists()
    print(f"  leftovers {'0: ok' if ok else 'LEAK'}")
    return 0 if ok else 1
