"""A Playwright crawler on fastcleanup: ``python -m examples.browser_crawler BASE URL``.

Crawls ``URL/site-N/page-M`` pages (the demo's test site serves them) with
Chromium through :mod:`fastcleanup.playwright`: a persistent context (its
own profile) per ``--per-profile`` pages, several tabs each, and one
download per profile. Every profile, download and browser temp file lives in
a ``ScratchDir`` under ``BASE``; the process prints ``scratch <dir>`` first
and ``page <n>`` as it goes, so that it can be killed mid-crawl to show the
next start sweeping what it left.

:func:`crawl` is the crawl itself, for the demo and the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from playwright.async_api import BrowserContext, Page, Route

import fastcleanup as fc
from fastcleanup.playwright import Browsers

__all__ = ["CrawlCount", "crawl", "main", "page_urls"]

_DOWNLOAD = b"\x00fake archive\x00" * 4096


@dataclass(slots=True)
class CrawlCount:
    """What a crawl did, for its summary."""

    pages: int = 0
    bytes: int = 0
    profiles: int = 0
    downloads: int = 0


def page_urls(base_url: str, pages: int, per_site: int = 10) -> list[str]:
    """URLs of ``pages`` quick pages of the demo's test site."""
    return [
        f"{base_url}/site-{n // per_site}/page-{n}?kind=ok&size=8192&delay=0.002"
        for n in range(pages)
    ]


async def _serve_download(route: Route) -> None:
    await route.fulfill(
        body=_DOWNLOAD,
        headers={"Content-Disposition": 'attachment; filename="data.bin"'},
    )


async def _download(context: BrowserContext, page: Page, base_url: str) -> None:
    """Fetch one file as a download: it lands in the context's downloads directory."""
    await context.route(f"{base_url}/dl/*", _serve_download)
    await page.set_content(f'<a href="{base_url}/dl/data.bin">data</a>')
    async with page.expect_download() as info:
        await page.click("a")
    download = await info.value
    await download.path()  # waits until it is complete on disk


async def crawl(
    browsers: Browsers,
    urls: list[str],
    *,
    per_profile: int = 50,
    tabs: int = 4,
    on_page: Callable[[int], None] | None = None,
) -> CrawlCount:
    """Load ``urls`` in Chromium, a fresh profile per ``per_profile`` of them.

    Each profile's context is closed when its share is done: ``browsers``
    then removes its directory through the cleaner.
    """
    count = CrawlCount()
    base_url = urls[0].split("/site-")[0] if urls else ""
    for start in range(0, len(urls), per_profile):
        share = iter(urls[start : start + per_profile])
        context = await browsers.launch_persistent_context()
        count.profiles += 1
        page = await context.new_page()
        await _download(context, page, base_url)
        count.downloads += 1

        async def tab(page: Page, share: Iterator[str]) -> None:
            # The tabs share one iterator: each URL goes to exactly one tab.
            for url in share:
                await page.goto(url, wait_until="domcontentloaded")
                count.bytes += len(await page.content())
                count.pages += 1
                if on_page is not None:
                    on_page(count.pages)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(tab(page, share))
            for _ in range(tabs - 1):
                tg.create_task(tab(await context.new_page(), share))
        await context.close()
    return count


async def _main(args: argparse.Namespace) -> None:
    fc.init_worker()
    scratch = fc.ScratchDir(args.base)
    print(f"scratch {scratch.path}", flush=True)
    async with Browsers(scratch) as browsers:
        await crawl(
            browsers,
            page_urls(args.url, args.pages),
            per_profile=args.per_profile,
            on_page=lambda n: print(f"page {n}", flush=True),
        )
    await fc.shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m examples.browser_crawler")
    ap.add_argument("base", help="the scratch base (swept at start)")
    ap.add_argument("url", help="the test site, e.g. http://127.0.0.1:8000")
    ap.add_argument("--pages", type=int, default=100)
    ap.add_argument("--per-profile", type=int, default=50)
    args = ap.parse_args(argv)
    fc.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
