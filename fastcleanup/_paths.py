"""File-system side of cleanup: confinement to allowed roots, and the bulk unlink job.

Everything here runs on the cleaner's executor threads, never on the loop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from ._tasks import remove_tree_sync

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

    def __init__(
        self, roots: Iterable[str | bytes | os.PathLike[str] | os.PathLike[bytes]]
    ) -> None:
        if isinstance(roots, str | bytes | os.PathLike):
            roots = [roots]  # one root given bare: accept it rather than iterate its characters
        resolved = []
        for r in roots:
            if not isinstance(r, str | bytes | os.PathLike):
                raise TypeError(f"allowed_roots entries must be paths, got {type(r).__name__}")
            real = os.path.realpath(os.fsdecode(r))
            if not os.path.isdir(real):
                raise ValueError(f"allowed root {r!r} is not an existing directory")
            resolved.append(real)
        if not resolved:
            raise ValueError("allowed_roots is empty: nothing could ever be removed")
        self._roots = tuple(resolved)

    def __repr__(self) -> str:
        return f"Roots({list(self._roots)!r})"

    def open_parent(self, path: str | bytes) -> tuple[int, str]:
        """Return ``(dir_fd, name)`` for ``path``; the caller closes ``dir_fd``."""
        p = os.path.abspath(os.fsdecode(path))
        parent, name = os.path.split(p)
        if name in ("", ".", ".."):
            parent, name = os.path.split(os.path.realpath(p))
        parent = os.path.realpath(parent)
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

    ``results`` grows by one entry per path (``None`` or the error), so the
    loop can see progress; ``started`` is when the current path began, for
    the per-file timeout; setting ``stop`` ends the job before its next path.
    """

    __slots__ = ("paths", "results", "roots", "started", "stop")

    def __init__(self, paths: list[str | bytes], roots: Roots | None) -> None:
        self.paths = paths
        self.roots = roots
        self.results: list[OSError | None] = []
        self.started = 0.0
        self.stop = False

    def __call__(self) -> None:
        if self.roots is None:
            self._plain()
        else:
            self._confined(self.roots)

    def _plain(self) -> None:
        unlink, append, clock = os.unlink, self.results.append, time.monotonic
        for p in self.paths:
            if self.stop:
                return
            self.started = clock()
            try:
                unlink(p)
            except FileNotFoundError:
                append(None)  # already gone: the goal is met
            except OSError as exc:
                append(exc)
            else:
                append(None)

    def _confined(self, roots: Roots) -> None:
        append, clock = self.results.append, time.monotonic
        for p in self.paths:
            if self.stop:
                return
            self.started = clock()
            try:
                fd, name = roots.open_parent(p)
            except FileNotFoundError:
                append(None)
                continue
            except OSError as exc:
                append(exc)
                continue
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                append(None)
            except OSError as exc:
                append(exc)
            else:
                append(None)
            finally:
                os.close(fd)
