"""Playwright crawlers that leave no profile, download or browser temp file behind.

Everything a browser writes goes below one :class:`fastcleanup.ScratchDir`:
the profile, the downloads, Playwright's artifacts, and ``TMPDIR`` of the
browser and of Playwright's driver (where it puts the profiles of
``launch()``). A context or browser that closes is retired through the
cleaner: once no process of its browser is left, its directory is removed.
What is still open when :class:`Browsers` closes is closed then; and after a
SIGKILL of the crawler the next start's sweep removes the lot.

>>> import fastcleanup as fc
>>> from fastcleanup.playwright import Browsers
>>> async def crawl(url: str) -> None:
...     fc.init_worker()
...     async with Browsers(fc.ScratchDir("/var/tmp/crawler")) as browsers:
...         context = await browsers.launch_persistent_context()
...         page = await context.new_page()
...         await page.goto(url)
...         await context.close()        # its directory goes once its browser has exited
...     await fc.shutdown()              # waits for the removals
>>> fc.run(crawl("http://127.0.0.1:8000/"))

Needs the extra: ``pip install 'fastcleanup[playwright]'``. The library
itself never imports this module.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import signal
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

try:
    from playwright.async_api import Browser, BrowserContext, Playwright, async_playwright
except ModuleNotFoundError as exc:
    if exc.name is None or exc.name.split(".")[0] != "playwright":
        raise
    raise ModuleNotFoundError(
        "fastcleanup.playwright needs Playwright: pip install 'fastcleanup[playwright]' "
        "(and a Chromium: apt-get install chromium)",
        name=exc.name,
    ) from exc

import fastcleanup as fc

from ._default import default_cleaner
from ._tasks import current_executor

__all__ = [
    "DEFAULT_ARGS",
    "Browsers",
    "browser_processes",
    "chromium_path",
    "launch_args",
]

logger = logging.getLogger("fastcleanup")

#: Flags for a headless Chromium in a crawler: no GPU, and none of the
#: background traffic (component updates, sync, field trials) that a closed
#: network refuses and that a crawler never wants. ``launch_args()`` adds
#: ``--no-sandbox`` when running as root, where Chromium refuses to start without it.
DEFAULT_ARGS: tuple[str, ...] = (
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
)

# Names inside the scratch directory stay short: Chromium's SingletonSocket
# lies in $TMPDIR/org.chromium.Chromium.XXXXXX/ and a unix socket's path may
# have at most 107 bytes.
_DRIVER_TMP = "d"
_PROFILE, _DOWNLOADS, _ARTIFACTS, _TMP = "u", "dl", "a", "t"
_SOCKET_IN_TMP = b"/org.chromium.Chromium.XXXXXX/SingletonSocket"
_SOCKET_MAX = 107  # sun_path holds 108 bytes, the last one a NUL

_env_lock = threading.Lock()  # os.environ is swapped while a driver starts


def chromium_path() -> str | None:
    """The Chromium to launch: ``$FASTCLEANUP_CHROMIUM``, else the first on ``PATH``.

    ``None`` means none was found; Playwright then uses its own download
    (``playwright install``), if there is one.
    """
    named = os.environ.get("FASTCLEANUP_CHROMIUM")
    if named:
        return named
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found is not None:
            return found
    return None


def launch_args(extra: Iterable[str] = ()) -> list[str]:
    """``DEFAULT_ARGS``, ``--no-sandbox`` as root, then ``extra``.

    >>> await pw.chromium.launch(args=launch_args(["--lang=de"]))
    """
    args = list(DEFAULT_ARGS)
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    args.extend(extra)
    return args


def browser_processes(path: str | os.PathLike[str]) -> list[int]:
    """Pids of other processes whose command line or ``TMPDIR`` names ``path`` or below.

    Every process of a browser launched by :class:`Browsers` matches its
    directory: the browser names its profile on its command line and its
    helpers inherit its ``TMPDIR``. Reads ``/proc``: empty where there is none.

    >>> assert browser_processes(scratch.path) == []   # no browser of ours is left
    """
    root = os.path.realpath(os.fspath(path))
    below = os.fsencode(root + os.sep)
    tmp_at, tmp_below = os.fsencode("TMPDIR=" + root), os.fsencode("TMPDIR=" + root + os.sep)
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    me = os.getpid()
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        # A zombie has an empty command line: it is dead, and not counted.
        if below in cmdline or any(
            v == tmp_at or v.startswith(tmp_below) for v in environ.split(b"\0")
        ):
            found.append(int(name))
    return sorted(found)


_KILL_GRACE = 5.0  # seconds for a SIGKILLed process to be gone


async def _exited(path: str, timeout: float) -> None:
    """Return once no process uses ``path``; SIGKILL what is left after ``timeout`` s.

    A directory is removed only once its browser is gone: one still writing
    would refill it. So a browser (or a helper of it) that outlives its
    close by ``timeout`` is killed, and the wait fails (a ``call`` failure in
    the metrics) to say so; the removal runs after it all the same.
    """
    try:
        async with asyncio.timeout(timeout):
            await _all_exited(path)
        return
    except TimeoutError:
        pass
    killed = []
    for pid in browser_processes(path):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except OSError:  # gone meanwhile
            pass
    async with asyncio.timeout(_KILL_GRACE):
        await _all_exited(path)
    raise TimeoutError(f"{path}: processes {killed} outlived their close by {timeout} s: killed")


async def _all_exited(path: str) -> None:
    loop = asyncio.get_running_loop()
    # A scan reads two files per process: on the cleaner's executor, not the loop.
    while pids := await loop.run_in_executor(current_executor.get(), browser_processes, path):
        await asyncio.gather(*(_process_exit(loop, pid) for pid in pids))


async def _process_exit(loop: asyncio.AbstractEventLoop, pid: int) -> None:
    """Return when ``pid`` has exited: its pidfd turns readable, no polling needed."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd here (an old kernel): look again a little later
        await asyncio.sleep(0.05)
        return
    exited = loop.create_future()
    loop.add_reader(fd, _settle, exited)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Browsers:
    """Launches Chromium through Playwright with all its files in a ScratchDir.

    Use it as ``async with``, or ``await start()`` then ``await close()``.
    Each ``launch_persistent_context()`` and ``launch()`` gets a directory
    of its own below ``scratch``; when its context or browser closes (by
    your ``close()``, a crash, or at :meth:`close`), the directory is
    removed through ``cleaner`` once no process of that browser is left.
    Contexts you drop without closing stay registered here (Playwright's
    objects live in reference cycles, so a finalizer could fire late or
    never) and are closed by :meth:`close`.

    ``executable_path`` defaults to :func:`chromium_path`; ``args`` are added
    to :func:`launch_args`; other keyword arguments of the ``launch*`` calls
    pass through to Playwright. A browser still running ``exit_timeout``
    seconds after its close is killed before its directory goes; keep it
    below the cleaner's ``task_timeout``, which bounds the whole wait.
    """

    __slots__ = (
        "_args",
        "_browsers",
        "_cleaner",
        "_contexts",
        "_driver_tmp",
        "_executable",
        "_exit_timeout",
        "_numbers",
        "_playwright",
        "_scratch",
    )

    def __init__(
        self,
        scratch: fc.ScratchDir,
        *,
        executable_path: str | os.PathLike[str] | None = None,
        args: Sequence[str] = (),
        cleaner: fc.Cleaner | None = None,
        exit_timeout: float = 10.0,
    ) -> None:
        if not isinstance(scratch, fc.ScratchDir):
            raise TypeError(f"scratch must be a fastcleanup.ScratchDir, got {scratch!r}")
        if isinstance(args, str):
            raise TypeError("args must be a sequence of flags, not one string")
        if not exit_timeout > 0:
            raise ValueError(f"exit_timeout must be positive, got {exit_timeout!r}")
        self._scratch = scratch
        self._executable = os.fspath(executable_path) if executable_path else chromium_path()
        self._args = launch_args(args)
        self._cleaner = cleaner if cleaner is not None else default_cleaner
        self._exit_timeout = exit_timeout
        self._numbers = itertools.count(1)
        self._playwright: Playwright | None = None
        self._driver_tmp: Path | None = None
        # What is open, and the directory each one owns (None: a context of a launch()).
        self._contexts: dict[BrowserContext, Path | None] = {}
        self._browsers: dict[Browser, Path] = {}

    @property
    def playwright(self) -> Playwright:
        """The running Playwright (after :meth:`start`)."""
        if self._playwright is None:
            raise RuntimeError(f"{self!r} is not started: use `async with` or await start()")
        return self._playwright

    @property
    def live(self) -> int:
        """How many contexts and browsers made here are still open."""
        return len(self._contexts) + len(self._browsers)

    def directory(self, target: BrowserContext | Browser) -> Path:
        """The directory of an open persistent context or browser made here.

        It holds the profile (``u``), downloads (``dl``), Playwright's
        artifacts (``a``) and the browser's ``TMPDIR`` (``t``).
        """
        path = self._contexts.get(target) if isinstance(target, BrowserContext) else None
        if path is None and isinstance(target, Browser):
            path = self._browsers.get(target)
        if path is None:
            raise KeyError(f"{target!r} is no open persistent context or browser of {self!r}")
        return path

    async def start(self) -> Browsers:
        """Start Playwright's driver, its ``TMPDIR`` in the scratch directory."""
        if self._playwright is not None:
            return self
        tmp = self._driver_tmp = self._scratch.path / f"{_DRIVER_TMP}{next(self._numbers)}"
        await asyncio.to_thread(tmp.mkdir)
        # The driver copies os.environ when it is spawned and offers no other
        # way to set its TMPDIR: swap it in for the start, then put it back.
        with _env_lock:
            saved = os.environ.get("TMPDIR")
            os.environ["TMPDIR"] = str(tmp)
            try:
                self._playwright = await async_playwright().start()
            finally:
                if saved is None:
                    del os.environ["TMPDIR"]
                else:
                    os.environ["TMPDIR"] = saved
        return self

    def _layout(self, prefix: str) -> tuple[Path, dict[str, Any]]:
        """A fresh directory for one browser, and the launch options that put its files there."""
        path = self._scratch.path / f"{prefix}{next(self._numbers)}"
        socket = len(os.fsencode(path / _TMP)) + len(_SOCKET_IN_TMP)
        if socket > _SOCKET_MAX:
            # Chromium would abort at launch with "Socket path too long".
            raise ValueError(
                f"the scratch directory {self._scratch.path} is {socket - _SOCKET_MAX} bytes "
                f"too long for Chromium's socket ({socket} > {_SOCKET_MAX}): use a shorter base"
            )
        for sub in (_DOWNLOADS, _ARTIFACTS, _TMP):
            (path / sub).mkdir(parents=True)
        options: dict[str, Any] = {
            "executable_path": self._executable,
            "args": self._args,
            "downloads_path": path / _DOWNLOADS,
            "artifacts_dir": path / _ARTIFACTS,
            "env": {**os.environ, "TMPDIR": str(path / _TMP)},
        }
        return path, options

    async def launch_persistent_context(self, **kwargs: Any) -> BrowserContext:
        """A browser with a profile of its own (``launch_persistent_context``).

        Closing the context ends its browser; then its directory is removed.
        """
        path, options = await asyncio.to_thread(self._layout, "p")
        options.update(kwargs)
        try:
            context = await self.playwright.chromium.launch_persistent_context(
                path / _PROFILE, **options
            )
        except BaseException:
            self._retire(path)
            raise
        self._contexts[context] = path
        # Playwright marks each handler with an attribute: a plain function, not a method.
        context.on("close", lambda c: self._on_context_close(c))
        return context

    async def launch(self, **kwargs: Any) -> Browser:
        """A browser for :meth:`new_context` calls (``chromium.launch``)."""
        path, options = await asyncio.to_thread(self._layout, "b")
        options.update(kwargs)
        try:
            browser = await self.playwright.chromium.launch(**options)
        except BaseException:
            self._retire(path)
            raise
        self._browsers[browser] = path
        browser.on("disconnected", lambda b: self._on_disconnected(b))
        return browser

    async def new_context(self, browser: Browser, **kwargs: Any) -> BrowserContext:
        """``browser.new_context(**kwargs)``, closed by :meth:`close` if you do not."""
        context = await browser.new_context(**kwargs)
        self._contexts[context] = None
        # Playwright marks each handler with an attribute: a plain function, not a method.
        context.on("close", lambda c: self._on_context_close(c))
        return context

    def _on_context_close(self, context: BrowserContext) -> None:
        path = self._contexts.pop(context, None)
        if path is not None:
            self._retire(path)

    def _on_disconnected(self, browser: Browser) -> None:
        for context in browser.contexts:
            self._contexts.pop(context, None)
        path = self._browsers.pop(browser, None)
        if path is not None:
            self._retire(path)

    def _retire(self, path: Path) -> None:
        # Each path comes here once: the registries hand it over as they drop it.
        waited = fc.Call(_exited, str(path), self._exit_timeout)
        self._cleaner.submit(fc.InOrder(waited, fc.RemoveTree(path)))

    async def close(self) -> None:
        """Close every context and browser still open, then stop the driver (idempotent)."""
        for context in list(self._contexts):
            await self._close_one(context)
        for browser in list(self._browsers):
            await self._close_one(browser)
        playwright, self._playwright = self._playwright, None
        if playwright is not None:
            await playwright.stop()  # ends any browser a failed close left
        if self._driver_tmp is not None:
            self._retire(self._driver_tmp)
            self._driver_tmp = None
        # Whatever the events did not report (the driver gone first) is retired now.
        for context in list(self._contexts):
            self._on_context_close(context)
        for browser in list(self._browsers):
            self._on_disconnected(browser)

    async def _close_one(self, target: BrowserContext | Browser) -> None:
        try:
            async with asyncio.timeout(self._exit_timeout):
                await target.close()
        except Exception as exc:  # a crashed browser, a dead driver: stop() ends it
            logger.warning("fastcleanup: closing %r failed: %r", target, exc)

    async def __aenter__(self) -> Browsers:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "started" if self._playwright is not None else "stopped"
        return f"<Browsers {state} {self._scratch.path} live={self.live}>"
