"""The demo's Chromium: a site's pages loaded by a real browser through ``fastcleanup.playwright``.

Used when Playwright and a Chromium are installed (``--browser``, default
``auto``); the stand-in of :mod:`.crawl` otherwise. Each site gets a
persistent context of its own: a profile on disk, like a crawler that keeps
cookies per site. Closing it hands the profile's removal to the cleaner,
which waits until the browser has exited.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

from playwright.async_api import BrowserContext, Page
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeout

import fastcleanup as fc
from fastcleanup.playwright import Browsers

from .crawl import PageBroken

__all__ = ["ChromiumSite", "chromium", "describe"]


def describe() -> str | None:
    """``chromium 156 (playwright 1.65)``, or None where Playwright or a Chromium is missing."""
    if importlib.util.find_spec("playwright") is None:
        return None
    from fastcleanup.playwright import chromium_path

    exe = chromium_path()
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = out.stdout.split()  # "Chromium 156.0.8078.129 built on Debian ..."
    version = next((w for w in words if w[:1].isdigit()), "")
    if out.returncode != 0 or not version:
        return None
    pw = importlib.metadata.version("playwright").split(".")
    return f"chromium {version.split('.')[0]} (playwright {'.'.join(pw[:2])})"


@contextlib.asynccontextmanager
async def chromium(base: Path, cleaner: fc.Cleaner) -> AsyncIterator[Browsers]:
    """Playwright and its browsers, every file of theirs in a ScratchDir under ``base``.

    At the end every browser is closed and the ScratchDir released, both
    through ``cleaner``; a killed demo's is swept by the next one's start.
    """
    scratch = fc.ScratchDir(base, cleaner=cleaner)
    try:
        async with Browsers(scratch, cleaner=cleaner) as browsers:
            yield browsers
        # The browsers' own removals first: the release below takes the
        # whole directory, and a removal that found its parent gone would fail.
        await cleaner.drain(60)
    finally:
        scratch.close()


class ChromiumSite:
    """One site's browser: a persistent context and the tab that loads its pages."""

    __slots__ = ("_context", "_page", "directory")

    def __init__(self, context: BrowserContext, page: Page, directory: Path) -> None:
        self._context, self._page, self.directory = context, page, directory

    @classmethod
    async def open(cls, browsers: Browsers) -> ChromiumSite:
        context = await browsers.launch_persistent_context()
        return cls(context, await context.new_page(), browsers.directory(context))

    async def body(self, url: str, number: int) -> AsyncIterator[bytes]:
        """The page as Chromium received it (one piece: a browser does not stream it to us)."""
        try:
            resp = await self._page.goto(url)
            if resp is None or not resp.ok:
                raise PageBroken(f"{url}: {resp.status if resp else 'no response'}")
            yield await resp.body()
        except PlaywrightTimeout as exc:
            raise TimeoutError(str(exc)) from None
        except PlaywrightError as exc:
            raise PageBroken(str(exc)) from None

    async def close(self) -> None:
        await self._context.close()
