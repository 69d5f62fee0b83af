"""File-system side of cleanup: confinement to allowed roots, and the bulk unlink job.

Everything here runs on the cleaner's executor threads, never on the loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterable

from ._tasks import remove_tree_sync

_PathArg = str | bytes | os.PathLike[str] | os.PathLike[bytes]
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


class Refused(PermissionError):
    """The path lies outside every allowed root, or is a root itself."""


class Roots:
    """Directories a cleaner may delete inside of.

    A path is inside when its resolved parent lies within a root: the parent
    is resolved with ``realpath`` (``..`` and symlinks), then opened again
    from the root one component at a time with ``O_NOFOLLOW``, so a symlink
    swapped in after the check fails the walk instead of escaping the root.
    """

    __slots__ = ("_roots",)

    def __init__(self, roots: _PathArg | Iterable[_PathArg]) -> None:
        if isinstance(roots, str | bytes | os.PathLike):
            roots = [roots]  # one root given bare: accept it rather than iterate its characters
        resolved = []
        for r in roots:
            if not isinstance(r, str | bytes | os.PathLike):
                raise TypeError(f"allowed_roots entries must be paths, got {type(r).__name__}")
            if not os.fspath(r):  # realpath("") is the working directory, wherever that is
                raise ValueError("an allowed root is an empty path; name the directory")
            real = os.path.realpath(os.fsdecode(r))
            if not os.path.isdir(real):
                raise ValueError(f"allowed root {r!r} is not an existing directory")
            resolved.append(real)
        if not resolved:
            raise ValueError("allowed_roots is empty: nothing could ever be removed")
        self._roots = tuple(resolved)

    def __repr__(self) -> str:
        return f"Roots({list(self._roots)!r})"

    def check(self, path: str | bytes) -> None:
        """Raise ``Refused`` unless ``path`` lies inside a root."""
        fd, _ = self.open_parent(path)
        os.close(fd)

    def open_parent(self, path: str | bytes) -> tuple[int, str]:
        """Return ``(dir_fd, name)`` for ``path``; the caller closes ``dir_fd``."""
        # No lexical normalisation (abspath): "link/../x" must resolve the
        # link first and then "..", as the kernel does.
        p = os.fsdecode(path)
        parent, name = os.path.split(p)
        if name in ("", ".", ".."):
            parent, name = os.path.split(os.path.realpath(p))
        parent = os.path.realpath(parent or ".")
        for root in self._roots:
            if parent == root or parent.startswith(root.rstrip(os.sep) + os.sep):
                break
        else:
            raise Refused(f"{p!r} is outside the allowed roots {list(self._roots)}")
        fd = os.open(root, _DIR_FLAGS)
        try:
            for part in os.path.relpath(parent, root).split(os.sep):
                if part in ("", "."):
                    continue
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd, name


def remove_tree_confined(path: str | bytes, roots: Roots | None) -> None:
    if roots is None:
        remove_tree_sync(path)
        return
    fd, name = roots.open_parent(path)
    try:
        remove_tree_sync(name, dir_fd=fd)
    finally:
        os.close(fd)


class UnlinkJob:
    """Unlink many paths in one executor job: one hop per batch, not per file.

    ``done`` counts the paths finished (the loop's watchdog reads it as
    progress), ``errors`` lists ``(index, error)`` for those that failed; a
    path already gone is a success. Setting ``stop`` ends the job before its
    next path. When the job ends it resolves ``fut`` on ``loop`` with False
    (not hung).
    """

    __slots__ = (
        "done", "errors", "finished", "fut", "hung_at", "loop", "paths", "roots", "running",
        "stop", "watchdog",
    )  # fmt: skip

    def __init__(
        self,
        paths: list[str | bytes],
        roots: Roots | None,
        loop: asyncio.AbstractEventLoop | None = None,
        fut: asyncio.Future[bool] | None = None,
    ) -> None:
        self.paths = paths
        self.roots = roots
        self.loop = loop
        self.fut = fut
        self.done = 0
        self.errors: list[tuple[int, OSError]] = []
        self.running = False
        self.stop = False
        self.hung_at = -1  # set by the loop's watchdog: the file it timed out
        self.finished = threading.Event()
        self.watchdog: asyncio.TimerHandle | None = None

    def __call__(self) -> None:
        self.running = True
        try:
            if self.roots is None:
                self._plain()
            else:
                self._confined(self.roots)
        finally:
            self.finished.set()
            if self.loop is not None:
                try:
                    self.loop.call_soon_threadsafe(_resolve, self.fut, False)
                except RuntimeError:
                    pass  # the loop is closed: the next init_worker() takes the batch back

    def _plain(self) -> None:
        unlink = os.unlink
        for k, p in enumerate(self.paths):
            if self.stop:
                return
            try:
                unlink(p)
            except FileNotFoundError:
                pass  # already gone: the goal is met
            except OSError as exc:
                self.errors.append((k, exc))
            self.done = k + 1

    def _confined(self, roots: Roots) -> None:
        for k, p in enumerate(self.paths):
            if self.stop:
                return
            try:
                fd, name = roots.open_parent(p)
                try:
                    os.unlink(name, dir_fd=fd)
                finally:
                    os.close(fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                self.errors.append((k, exc))
            self.done = k + 1


def _resolve(fut: asyncio.Future[bool] | None, hung: bool) -> None:
    if fut is not None and not fut.done():
        fut.set_result(hung)
