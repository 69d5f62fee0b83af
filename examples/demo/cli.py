"""``python -m examples.demo``: crawl a local test site and show fastcleanup at work.

A child process serves pages that load, break off mid-body, or trickle in
(:mod:`.site`); a crawler on uvloop fetches them site by site in Chromium
when Playwright and a Chromium are installed, else with a stand-in
(:mod:`.crawl`), leaving every removal to the cleaner; a 1 ms ticker
measures how late the loop runs; ``/metrics`` is served on 127.0.0.1
throughout. The demo ends with ``shutdown()``, a conservation check of
``stats()``, a leak check of its scratch directory and of browser
processes, and a table (:mod:`.report`); it exits 1 if anything leaked.
``--kill`` shows a crawler SIGKILLed mid-crawl instead (:mod:`.kill`).

The demo runs its own ``Cleaner(name="demo")`` on a fresh registry rather
than the default cleaner: its counters then start at zero and count only
the demo (so conservation and the leak check can be exact even when
``main()`` runs inside another program, a test runner say, or twice in one
process), the ``/metrics`` it serves shows just its own series, and it can
be confined to the scratch directory with ``allowed_roots``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastcleanup as fc

if TYPE_CHECKING:
    from fastcleanup.playwright import Browsers

    from .crawl import Crawl

__all__ = ["main"]

_DRAIN_TIMEOUT = 30.0
_IDLE_BASELINE = 0.3  # seconds of ticking before the crawl
_PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the test site runs from there


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m examples.demo",
        description="Crawl a local test site and show fastcleanup at work: every temp file, "
        "partial download and browser profile is removed in the background by guards.",
    )
    ap.add_argument("--pages", type=int, help="pages to crawl (default 500; 100 with Chromium)")
    ap.add_argument(
        "--concurrency", type=int, help="sites crawled at once (default 8; 2 with Chromium)"
    )
    ap.add_argument(
        "--browser",
        choices=["auto", "chromium", "stand-in"],
        default="auto",
        help="load pages in Chromium through fastcleanup.playwright, or in the stand-in "
        "(a profile directory and an HTTP session); default: Chromium when Playwright "
        "and a Chromium are installed",
    )
    ap.add_argument(
        "--fail-rate",
        type=float,
        default=0.1,
        help="share of pages whose connection drops mid-body (default 0.1)",
    )
    ap.add_argument(
        "--slow-rate",
        type=float,
        default=0.1,
        help="share of pages trickling in over 0.2-1.6 s (default 0.1)",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=1.0,
        help="seconds before the crawler gives up on a page (default 1.0)",
    )
    ap.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="port of /metrics on 127.0.0.1 (default 0: a free port)",
    )
    ap.add_argument(
        "--scratch",
        type=Path,
        help="an empty or new directory for the crawl (default: a fresh temp directory)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory at the end")
    ap.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="write the summary and the /metrics scrape taken before shutdown to FILE",
    )
    ap.add_argument("--seed", type=int, default=1, help="seed of the page plan (default 1)")
    ap.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default=None,
        help="event loop (default: uvloop when installed)",
    )
    ap.add_argument(
        "--kill",
        action="store_true",
        help="instead of the crawl: SIGKILL a Chromium crawler mid-crawl, then show the "
        "next start sweeping what it and its browser left (needs Chromium)",
    )
    # Keeps the guards of N scratch files detached, so they are never removed:
    # shows (and tests) that the leak check catches what nobody cleans up.
    ap.add_argument("--leak", type=int, default=0, help=argparse.SUPPRESS)
    return ap


def _check(args: argparse.Namespace) -> str | None:
    if args.kill and args.browser_label in (None, "stand-in"):
        return "--kill needs Playwright and a Chromium: pip install playwright"
    if args.browser == "chromium" and args.browser_label is None:
        return "--browser chromium needs Playwright and a Chromium: pip install playwright"
    if not 1 <= args.pages <= 100_000:
        return "--pages must be between 1 and 100000"
    if not 1 <= args.concurrency <= 256:
        return "--concurrency must be between 1 and 256"
    for name in ("fail_rate", "slow_rate"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            return f"--{name.replace('_', '-')} must be between 0 and 1"
    if args.fail_rate + args.slow_rate > 1.0:
        return "--fail-rate and --slow-rate add up to more than 1"
    if not 0.0 < args.timeout < 3600.0:
        return "--timeout must be a positive number of seconds"
    if not 0 <= args.metrics_port <= 65535:
        return "--metrics-port must be between 0 and 65535"
    scratch = args.scratch
    if (
        scratch is not None
        and scratch.exists()
        and (not scratch.is_dir() or any(scratch.iterdir()))
    ):
        return f"--scratch {args.scratch} must be an empty directory or not exist yet"
    if args.leak < 0:
        return "--leak must not be negative"
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 if all went well, 1 if anything leaked, 2 on bad usage."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    from .browser_choice import choose

    choose(args)
    problem = _check(args)
    if problem is not None:
        parser.print_usage(sys.stderr)
        print(f"demo: {problem}", file=sys.stderr)
        return 2
    if importlib.util.find_spec("aiohttp") is None:
        print("demo: needs aiohttp: pip install 'fastcleanup[demo]'", file=sys.stderr)
        return 2
    use_uvloop = None if args.loop is None else args.loop == "uvloop"
    if use_uvloop and importlib.util.find_spec("uvloop") is None:
        print("demo: --loop uvloop, but uvloop is not installed", file=sys.stderr)
        return 2

    from .report import render_table

    made_scratch = args.scratch is None or not args.scratch.exists()
    if args.scratch is None:
        # A short name: Chromium's socket lies below it and a socket path
        # has at most 107 bytes.
        scratch = Path(tempfile.mkdtemp(prefix="fcd"))
    else:
        scratch = args.scratch.resolve()
        scratch.mkdir(parents=True, exist_ok=True)
    try:
        if args.kill:
            return fc.run(_kill(scratch), use_uvloop=use_uvloop)
        summary = _summary(args, scratch, fc.run(_demo(args, scratch), use_uvloop=use_uvloop))
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    except _CannotStart as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            if made_scratch:
                shutil.rmtree(scratch, ignore_errors=True)
            else:
                for sub in ("pages", "tmp", "profiles", "b"):
                    shutil.rmtree(scratch / sub, ignore_errors=True)
    print(render_table(summary), end="", flush=True)
    if args.keep:
        print(f"  (scratch kept: {scratch})")
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    code: int = summary["exit_code"]
    return code


class _CannotStart(Exception):
    """The demo could not set up (a port taken, the test site dead); the message says why."""


@contextlib.asynccontextmanager
async def _local_site() -> AsyncIterator[str]:
    """Start the test site in a child process; yields its base URL."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.demo.site",
        cwd=_PROJECT_ROOT,  # where ``examples`` is a package, wherever the demo was started
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        try:
            async with asyncio.timeout(30):
                line = await proc.stdout.readline()
        except TimeoutError:
            raise _CannotStart("the test site did not start within 30 s") from None
        if not line.startswith(b"port "):
            raise _CannotStart("the test site did not start (its error is above)")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.stdin.close()  # the site exits when its stdin closes
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _kill(scratch: Path) -> int:
    from .kill import kill_and_sweep

    async with _local_site() as site:
        print(f"demo --kill: a Chromium crawler of {site}, killed mid-crawl\n  scratch  {scratch}")
        return await kill_and_sweep(scratch, site)


def _scrape(url: str) -> str:
    # No proxy: an http_proxy in the environment must not capture a loopback scrape.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as resp:
        text: str = resp.read().decode()
    return text


@dataclass(frozen=True, slots=True)
class _Run:
    """What one demo run saw, before it is turned into the summary."""

    loop: str
    elapsed: float
    crawl: Crawl
    drained: bool
    released_by_gc: int
    at_scrape: fc.Stats  # right after the scrape, with the cleaner still running
    final: fc.Stats  # after shutdown()
    scrape: str
    url: str
    stall: dict[str, Any]  # the ticker's summary, and "idle": the same before the crawl
    processes_left: int  # browser processes still running after shutdown()


async def _demo(args: argparse.Namespace, scratch: Path) -> _Run:
    from prometheus_client import CollectorRegistry

    from .browser_choice import STAND_IN
    from .crawl import Crawl, plan
    from .report import Progress, StallTicker

    in_chromium = args.browser_label != STAND_IN

    loop_name = type(asyncio.get_running_loop()).__module__.partition(".")[0]
    registry = CollectorRegistry()
    cleaner = fc.Cleaner(name="demo", registry=registry, allowed_roots=[scratch])
    sites = plan(args.pages, args.fail_rate, args.slow_rate, args.seed)
    ticker = StallTicker()
    async with contextlib.AsyncExitStack() as stack:
        try:
            server = fc.metrics.serve(port=args.metrics_port, registry=registry)
        except OSError as exc:
            raise _CannotStart(f"cannot serve /metrics on port {args.metrics_port}: {exc}") from exc
        # close() waits out the server thread's poll interval (up to 0.5 s): not on the loop.
        stack.push_async_callback(asyncio.to_thread, server.close)
        base = await stack.enter_async_context(_local_site())
        crawl = Crawl(
            base,
            scratch,
            cleaner,
            concurrency=args.concurrency,
            timeout=args.timeout,
            leak=args.leak,
        )
        print(
            f"demo: {args.pages} pages of {len(sites)} sites at {base}, "
            f"{args.concurrency} sites at a time, on {loop_name}\n"
            f"  metrics  {server.url}  (while the demo runs)\n"
            f"  scratch  {scratch}\n"
            f"browser: {args.browser_label}",
            flush=True,
        )
        idle = StallTicker()  # the machine's own noise, for comparison
        idle.start()
        await asyncio.sleep(_IDLE_BASELINE)
        await idle.stop()
        t0 = time.monotonic()
        progress = Progress(lambda: _progress_line(crawl, cleaner, args.pages, t0), sys.stderr)
        cleaner.init_worker()
        try:
            ticker.start()
            progress.start()
            try:
                async with _browsers(in_chromium, crawl.browsers_dir, cleaner) as browsers:
                    await crawl.run(sites, browsers)
                # A guard held in a reference cycle (a traceback keeping a
                # frame alive, say) waits for the cycle collector: run it now
                # rather than some time after the demo. The ticker sits this
                # one out: a full collection is the demo's doing.
                await ticker.stop()
                released_by_gc = _collect(cleaner)
                ticker.start()
                drained = await cleaner.drain(_DRAIN_TIMEOUT)
            finally:
                await progress.stop()
                await ticker.stop()
            elapsed = time.monotonic() - t0
            scrape = await asyncio.to_thread(_scrape, server.url)
            at_scrape = cleaner.stats()
        except BaseException:
            # Interrupted (Ctrl-C) or failed: the guards the crawl dropped
            # still hand their cleanups over, and shutdown() runs them, so no
            # session is left open and no file behind.
            _collect(cleaner)
            await cleaner.shutdown()
            raise
        await cleaner.shutdown()
    processes_left = 0
    if in_chromium:
        from fastcleanup.playwright import browser_processes

        processes_left = len(browser_processes(scratch))
    return _Run(
        loop=loop_name,
        elapsed=elapsed,
        crawl=crawl,
        drained=drained,
        released_by_gc=released_by_gc,
        at_scrape=at_scrape,
        final=cleaner.stats(),
        scrape=scrape,
        url=server.url,
        stall={**ticker.summary(), "idle": idle.summary()},
        processes_left=processes_left,
    )


def _browsers(
    in_chromium: bool, base: Path, cleaner: fc.Cleaner
) -> contextlib.AbstractAsyncContextManager[Browsers | None]:
    if not in_chromium:
        return contextlib.nullcontext()
    from .browser import chromium

    return chromium(base, cleaner)


def _collect(cleaner: fc.Cleaner) -> int:
    """Run the cycle collector; returns how many cleanups guards submitted meanwhile."""
    before = cleaner.stats().submitted
    gc.collect()
    return cleaner.stats().submitted - before


def _progress_line(crawl: Crawl, cleaner: fc.Cleaner, total: int, t0: float) -> str:
    s = cleaner.stats()
    done = crawl.done
    bar = "#" * round(20 * done / total)
    return (
        f"[{bar:.<20}] {done}/{total} pages  ok {crawl.ok}  broken {crawl.broken}  "
        f"timed out {crawl.timed_out} | cleanup: {s.completed} done, {s.queued} queued, "
        f"{s.in_flight} in flight | {time.monotonic() - t0:.1f} s"
    )


_COUNTERS = ("submitted", "completed", "failed", "dropped_at_exit", "queued", "in_flight")


def _summary(args: argparse.Namespace, scratch: Path, run: _Run) -> dict[str, Any]:
    """The JSON summary (``--json``); the closing table is drawn from it."""
    from .report import quantile_bound, read_metrics

    crawl, final, at_scrape = run.crawl, run.final, run.at_scrape
    stray, damaged = crawl.leftovers()
    seen = read_metrics(run.scrape, "demo")
    unsettled = final.queued + final.in_flight
    conserved = (
        run.drained
        and unsettled == 0
        and final == at_scrape  # nothing moved between the scrape and shutdown()
        and final.submitted == final.completed + final.failed + final.dropped_at_exit + unsettled
    )
    # The scrape counts a task under `submitted` once the dispatcher has
    # taken it from the queue; with nothing queued that is every task.
    agree = all(seen["totals"].get(n, 0.0) == getattr(at_scrape, n) for n in _COUNTERS)
    created = crawl.staged + crawl.temp_files + crawl.profile_files
    stray_files = [p for p in stray if not p.endswith(os.sep)]
    lat = seen["latency"]
    ok = conserved and agree and not stray and not damaged and run.processes_left == 0
    if crawl.chromium_profiles:
        profiles_removed = sum(not p.exists() for p in crawl.chromium_profiles)
    else:  # the stand-in's: a profile left over is a stray directory under profiles/
        left = sum(Path(p.rstrip(os.sep)).parent == crawl.profiles_dir for p in stray)
        profiles_removed = crawl.profiles - left
    return {
        "exit_code": 0 if ok else 1,
        "elapsed_s": round(run.elapsed, 3),
        "loop": run.loop,
        "scratch": str(scratch),
        "options": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "json"
        },
        "pages": {
            "total": args.pages,
            "ok": crawl.ok,
            "broken": crawl.broken,
            "timed_out": crawl.timed_out,
        },
        "files": {
            "created": created,
            "staging": crawl.staged,
            "temp": crawl.temp_files,
            "profile": crawl.profile_files,
            "profiles": crawl.profiles,
            "committed": len(crawl.committed),
            # Renamed into place is not removed; whatever is still there is not either.
            "removed": created - len(crawl.committed) - len(stray_files),
            "bytes_kept": crawl.bytes_kept,
        },
        "cleanup": {
            **dataclasses.asdict(final),
            "completed_by_kind": {k: int(v) for k, v in seen["by_kind"]["completed"].items()},
            "failed_by_kind": {k: int(v) for k, v in seen["by_kind"]["failed"].items()},
            "released_by_gc": run.released_by_gc,
            "drained": run.drained,
        },
        "latency": {
            "source": "fastcleanup_cleanup_latency_seconds in the /metrics scrape: the upper "
            "bounds of the buckets holding p50 and p99",
            "p50_s": quantile_bound(lat["buckets"], 0.5),
            "p99_s": quantile_bound(lat["buckets"], 0.99),
            "mean_s": lat["sum"] / lat["count"] if lat["count"] else 0.0,
            "count": int(lat["count"]),
        },
        "loop_stall": run.stall,
        "browser": {
            "name": args.browser_label,
            "profiles_made": crawl.profiles,
            "profiles_removed": profiles_removed,
            "processes_left": run.processes_left,
            "leftovers": len(stray) + len(damaged),
        },
        "conservation": {"ok": conserved},
        "leak_check": {"ok": not stray and not damaged, "leftovers": stray, "damaged": damaged},
        "metrics": {"url": run.url, "agree": agree, "scrape": run.scrape},
    }
