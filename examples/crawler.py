"""A small crawler service that embeds fastcleanup the way a real one would.

    python examples/crawler.py --out pages/ https://example.org/ https://example.com/
    python examples/crawler.py --self-test          # crawls a test site it serves itself

What to look for:

1. ``fc.init_worker()`` once at startup, inside the running loop.
2. Every download streams into ``fc.StagingFile``: renamed into place when it
   arrives whole; a broken body, a timeout or a cancellation leaves nothing
   behind (the partial file is removed in the background).
3. ``/metrics`` on the service's own aiohttp app, beside its other routes.
4. SIGTERM (or Ctrl-C) stops the crawl; ``fc.shutdown()`` drains the cleanups
   still queued, then the process exits 0.
5. ``fc.run(main())``: asyncio on uvloop.

Needs aiohttp (``pip install 'fastcleanup[demo]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
import sys
import tempfile
from pathlib import Path

import aiohttp
from aiohttp import web

import fastcleanup as fc


def say(*parts: object) -> None:
    print(*parts, flush=True)


# -- the crawler -------------------------------------------------------------------


async def fetch(session: aiohttp.ClientSession, url: str, out_dir: Path) -> int:
    """Download ``url`` into ``out_dir``; returns the bytes kept (0 if it failed)."""
    dest = out_dir / (hashlib.sha256(url.encode()).hexdigest()[:16] + ".html")
    try:
        async with session.get(url) as resp:
            resp.raise_for_status()
            async with fc.StagingFile(dest) as part:  # 2. all of the page, or nothing
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    await part.write(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        say(f"failed {url}: {type(exc).__name__}")
        return 0
    say(f"ok     {url} -> {dest.name} ({part.bytes_written} bytes)")
    return part.bytes_written


async def crawl(urls: list[str], out_dir: Path, concurrency: int, kept: list[int]) -> None:
    """Download ``urls``, ``concurrency`` at a time; ``kept`` gets each result as it comes."""
    slots = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=30)

    async def one(url: str) -> None:
        async with slots:
            kept.append(await fetch(session, url, out_dir))

    async with aiohttp.ClientSession(timeout=timeout) as session, asyncio.TaskGroup() as tg:
        for url in urls:
            tg.create_task(one(url))


# -- the self-test site: pages that trickle in; every fifth breaks off mid-body -------

PAGE_SIZE = 32 * 1024


async def test_page(request: web.Request) -> web.StreamResponse:
    n = int(request.match_info["n"])
    resp = web.StreamResponse(headers={"Content-Type": "text/html"})
    resp.content_length = PAGE_SIZE
    await resp.prepare(request)
    body = ((b"<p>self-test page %d</p>\n" % n) * PAGE_SIZE)[:PAGE_SIZE]
    try:
        for i in range(4):
            if n % 5 == 3 and i == 2 and request.transport is not None:
                request.transport.abort()  # the body stops halfway: a broken download
                return resp
            await resp.write(body[i * PAGE_SIZE // 4 : (i + 1) * PAGE_SIZE // 4])
            await asyncio.sleep(0.05)
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the crawler stopped reading (SIGTERM)
    return resp


def self_check(out_dir: Path) -> list[str]:
    """What the self-test found wrong: leftovers, short pages, counters that do not add up."""
    problems = [f"partial file left behind: {p.name}" for p in out_dir.glob(".*.part")]
    problems += [
        f"{p.name} is {p.stat().st_size} bytes"
        for p in out_dir.glob("*.html")
        if p.stat().st_size != PAGE_SIZE
    ]
    s = fc.stats()
    if s.queued or s.in_flight or s.submitted != s.completed + s.failed + s.dropped_at_exit:
        problems.append(f"cleanup counters do not add up: {s}")
    if s.failed:
        problems.append(f"{s.failed} cleanups failed")
    return problems


# -- the service -------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    fc.init_worker()  # 1. the cleaner starts with the service

    app = web.Application()
    app.router.add_get("/metrics", fc.metrics.aiohttp_handler())  # 3. beside the app's routes
    if args.self_test:
        app.router.add_get("/test/{n:\\d+}", test_page)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)  # 4. a signal only sets a flag

    urls = args.urls or [f"{base}/test/{n}" for n in range(args.pages)]
    say(f"crawling {len(urls)} pages into {args.out}; metrics at {base}/metrics")
    kept: list[int] = []
    try:
        crawling = asyncio.create_task(crawl(urls, args.out, args.concurrency, kept))
        stop = asyncio.create_task(stopping.wait())
        await asyncio.wait((crawling, stop), return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not crawling.done():
            say("signal received: stopping the crawl")
            crawling.cancel()  # downloads in progress leave their partial files to the cleaner
        await asyncio.wait((crawling,))
    finally:
        drained = await fc.shutdown(timeout=10)  # 4. drain queued cleanups, then stop
        await runner.cleanup()
    s = fc.stats()
    say(
        f"done: {sum(1 for k in kept if k)} pages kept, {sum(kept)} bytes; cleanup "
        f"submitted={s.submitted} completed={s.completed} failed={s.failed} drained={drained}"
    )
    if args.self_test:
        problems = self_check(args.out)
        say("self-test ok" if not problems else "self-test FAILED:\n  " + "\n  ".join(problems))
        return 1 if problems else 0
    return 0 if drained else 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    ap.add_argument("urls", nargs="*", help="pages to download")
    ap.add_argument("--self-test", action="store_true", help="crawl a test site served here")
    ap.add_argument("--pages", type=int, default=24, help="pages of the self-test site")
    ap.add_argument("--out", type=Path, help="directory for the pages (self-test: a temp dir)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--port", type=int, default=0, help="port of the app and /metrics")
    args = ap.parse_args(argv)
    if not args.urls and not args.self_test:
        ap.error("give some URLs, or --self-test")
    if args.urls and args.out is None:
        ap.error("where should the pages go? give --out DIR")
    return args


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="crawler-") as tmp:
        args.out = args.out or Path(tmp)
        args.out.mkdir(parents=True, exist_ok=True)
        sys.exit(fc.run(main(args)))  # 5. asyncio.run on uvloop
