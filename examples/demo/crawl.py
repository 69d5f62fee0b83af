"""The demo's crawler: what a crawler embedding fastcleanup does per site and per page.

Per site it opens a real Chromium profile (:mod:`.browser`, through
``fastcleanup.playwright``) and closes it when the site is done, or, without
Chromium, makes a stand-in :class:`BrowserProfile` (a temp directory and an
HTTP session) and drops it. Per page it writes the body into a
:class:`fastcleanup.StagingFile`, and for a page that arrived whole it
writes a text-extraction scratch file that it drops as well. The crawler
never removes anything itself: guards, and ``fastcleanup.playwright`` for
Chromium's files, hand every removal to the cleaner.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

import fastcleanup as fc

from .site import MAX_SIZE, PageSpec

if TYPE_CHECKING:
    from fastcleanup.playwright import Browsers

    from .browser import ChromiumSite

__all__ = ["BrowserProfile", "Crawl", "PageBroken", "plan"]

PAGES_PER_SITE = 10
_CHUNK = 64 * 1024
_TAG = re.compile(rb"<[^>]*>")


def plan(pages: int, fail_rate: float, slow_rate: float, seed: int) -> list[list[PageSpec]]:
    """Pages grouped by site; the same seed gives the same crawl."""
    rng = random.Random(seed)
    sites: list[list[PageSpec]] = []
    for n in range(pages):
        r = rng.random()
        if r < fail_rate:
            kind, delay = "fail", rng.uniform(0.005, 0.04)
        elif r < fail_rate + slow_rate:
            kind, delay = "slow", rng.uniform(0.2, 1.6)
        else:
            kind, delay = "ok", rng.uniform(0.005, 0.04)
        size = rng.randint(4096, min(96 * 1024, MAX_SIZE))
        spec = PageSpec(
            n // PAGES_PER_SITE, n, kind, size, round(delay, 3), round(rng.uniform(0.2, 0.8), 2)
        )
        if spec.site == len(sites):
            sites.append([])
        sites[-1].append(spec)
    return sites


class BrowserProfile:
    """Stand-in for a headless browser's per-site profile: a directory and a session.

    Nobody closes it. Once the crawler drops it, its two guards hand the
    directory's removal and the session's close to the cleaner.
    """

    __slots__ = ("__weakref__", "cache", "files", "path", "session")

    FILES = 2  # Preferences and Cookies; the cache adds one file per response

    def __init__(self, path: Path, cleaner: fc.Cleaner) -> None:
        self.path = path
        self.cache = path / "Cache"
        self.session = aiohttp.ClientSession()
        self.files = self.FILES  # and one per cached response
        # The tasks hold the path and the session, never the profile itself,
        # or the profile could never be collected.
        fc.on_collect(self, fc.RemoveTree(path), cleaner=cleaner)
        fc.on_collect(self, fc.AClose(self.session), cleaner=cleaner)

    @classmethod
    async def create(cls, root: Path, cleaner: fc.Cleaner) -> BrowserProfile:
        # File system work goes to a thread: on a busy disk even a mkdir can
        # hold the loop for milliseconds, and the demo measures the loop.
        return cls(await asyncio.to_thread(_lay_out_profile, root), cleaner)

    async def remember(self, number: int, resp: aiohttp.ClientResponse) -> None:
        """Cache the response headers, as a browser would."""
        lines = "".join(f"{k}: {v}\n" for k, v in resp.headers.items())
        await asyncio.to_thread((self.cache / f"{number}.headers").write_text, lines)
        self.files += 1

    async def body(self, url: str, number: int) -> AsyncIterator[bytes]:
        """The page's body as it streams in; its headers go to the cache first."""
        async with self.session.get(url) as resp:
            resp.raise_for_status()
            await self.remember(number, resp)
            async for chunk in resp.content.iter_chunked(_CHUNK):
                yield chunk


class PageBroken(Exception):
    """A page the browser could not load (its connection dropped, an error status)."""


def _lay_out_profile(root: Path) -> Path:
    path = Path(tempfile.mkdtemp(prefix="profile-", dir=root))
    (path / "Cache").mkdir()
    (path / "Preferences").write_bytes(b'{"profile": {"exit_type": "Normal"}}\n')
    (path / "Cookies").write_bytes(b"")
    return path


def _extract_text(head: bytes, tmp_dir: Path, cleaner: fc.Cleaner, keep: bool) -> None:
    """Strip the tags into a scratch file, as a parser would; runs in a worker thread."""
    scratch = fc.TempFile(suffix=".txt", dir=tmp_dir, cleaner=cleaner)
    scratch.path.write_bytes(_TAG.sub(b"", head))
    if keep:  # --leak: a file nobody removes, to show the leak check bite
        scratch.keep()
    # No close(): `scratch` falls out of scope as this returns, and its
    # guard's finalizer submits the removal from this worker thread.


class Crawl:
    """Crawls a plan, ``concurrency`` sites at a time, their pages one by one.

    Its counters feed the progress line and the summary; ``committed`` maps
    each page kept to the size the site sent, for the leak check.
    """

    def __init__(
        self,
        base_url: str,
        scratch: Path,
        cleaner: fc.Cleaner,
        *,
        concurrency: int,
        timeout: float,
        leak: int = 0,
    ) -> None:
        self.pages_dir = scratch / "pages"
        self.tmp_dir = scratch / "tmp"
        self.profiles_dir = scratch / "profiles"
        self.browsers_dir = scratch / "b"  # Chromium's ScratchDir base: a short name, see below
        for d in (self.pages_dir, self.tmp_dir, self.profiles_dir, self.browsers_dir):
            d.mkdir(exist_ok=True)
        self._base = base_url
        self._cleaner = cleaner
        self._concurrency = concurrency
        self._timeout = timeout
        self._leak = leak
        self._browsers: Browsers | None = None
        self.chromium_profiles: list[Path] = []  # each Chromium profile's directory
        self.ok = self.broken = self.timed_out = 0
        self.staged = self.temp_files = self.profiles = self.profile_files = 0
        self.bytes_kept = 0
        self.committed: dict[Path, int] = {}

    @property
    def done(self) -> int:
        return self.ok + self.broken + self.timed_out

    async def run(self, sites: list[list[PageSpec]], browsers: Browsers | None = None) -> None:
        """Crawl ``sites``: in Chromium through ``browsers`` if given, else with the stand-in."""
        self._browsers = browsers
        await asyncio.to_thread(self._make_site_dirs, sites)
        todo = iter(sites)

        async def worker() -> None:
            # The workers share one iterator: each next() runs between awaits,
            # so every site goes to exactly one worker.
            for pages in todo:
                await self._crawl_site(pages)

        async with asyncio.TaskGroup() as tg:
            for _ in range(min(self._concurrency, len(sites))):
                tg.create_task(worker())

    def _make_site_dirs(self, sites: list[list[PageSpec]]) -> None:
        for pages in sites:
            (self.pages_dir / f"site-{pages[0].site}").mkdir(exist_ok=True)

    async def _crawl_site(self, pages: list[PageSpec]) -> None:
        if self._browsers is not None:
            await self._crawl_site_in_chromium(pages, self._browsers)
            return
        profile = await BrowserProfile.create(self.profiles_dir, self._cleaner)
        self.profiles += 1
        for page in pages:
            await self._fetch(page, profile)
        self.profile_files += profile.files
        # `profile` falls out of scope as this returns: its guards submit
        # RemoveTree and AClose from the finalizer.

    async def _crawl_site_in_chromium(self, pages: list[PageSpec], browsers: Browsers) -> None:
        from .browser import ChromiumSite

        site = await ChromiumSite.open(browsers)
        self.profiles += 1
        self.chromium_profiles.append(site.directory)
        try:
            for page in pages:
                await self._fetch(page, site)
        finally:
            # Closing ends its browser; fastcleanup.playwright then removes its
            # profile, downloads and temp files through the cleaner.
            await site.close()

    async def _fetch(self, page: PageSpec, profile: BrowserProfile | ChromiumSite) -> None:
        dest = self.pages_dir / f"site-{page.site}" / f"page-{page.number}.html"
        head = b""
        try:
            # Committed on a clean exit; after a broken body or the deadline's
            # cancellation the partial file is removed in the background.
            async with fc.StagingFile(dest, cleaner=self._cleaner) as out:
                self.staged += 1
                # The deadline covers the download, not commit(): a
                # cancellation landing while commit() renames would leave the
                # whole page in place with `committed` still False.
                async with asyncio.timeout(self._timeout):
                    async for chunk in profile.body(self._base + page.path, page.number):
                        head = head or chunk
                        await out.write(chunk)
        except TimeoutError:
            self.timed_out += 1
            return
        except (aiohttp.ClientError, PageBroken):
            self.broken += 1
            return
        self.ok += 1
        self.committed[dest] = page.size  # what the site sent: a shorter file is damaged
        self.bytes_kept += out.bytes_written
        keep = self._leak > 0
        self._leak -= keep
        self.temp_files += 1
        await asyncio.to_thread(_extract_text, head[:4096], self.tmp_dir, self._cleaner, keep)

    def leftovers(self) -> tuple[list[str], list[str]]:
        """Files and directories that should not be there, and damaged pages.

        What may remain: the three top directories, a directory per site
        under ``pages/``, and the committed pages, each at its full size.
        """
        scratch = self.pages_dir.parent
        allowed_dirs = {self.pages_dir, self.tmp_dir, self.profiles_dir, self.browsers_dir}
        stray: list[str] = []
        for root, dirs, files in os.walk(scratch):
            here = Path(root)
            for d in dirs:
                p = here / d
                if p not in allowed_dirs and here != self.pages_dir:
                    stray.append(f"{p}{os.sep}")
            stray.extend(str(here / f) for f in files if here / f not in self.committed)
        damaged = []
        for path, size in self.committed.items():
            try:
                actual = path.stat().st_size
            except FileNotFoundError:
                actual = -1
            if actual != size:
                damaged.append(f"{path} ({actual} bytes, expected {size})")
        return sorted(stray), damaged
