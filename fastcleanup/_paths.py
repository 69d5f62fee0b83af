"""File-system side of cleanup: confinement to allowed roots, and the bulk unlink job.

Everything here runs on the cleaner's executor threads, never on the loop.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from array import array
from collections.abc import Iterable
from typing import Any, Protocol

from ._unlink import SKIP, pure_unlinkat_many, unlinkat_many, use_compiled

_PathArg = str | bytes | os.PathLike[str] | os.PathLike[bytes]
# O_PATH (Linux): a walk through a directory and an unlink in it then need
# search permission only, as os.unlink by path does; O_RDONLY would refuse a
# directory that is writable and searchable but not readable.
_DIR_FLAGS = (
    getattr(os, "O_PATH", os.O_RDONLY)
    | os.O_DIRECTORY
    | os.O_CLOEXEC
    | getattr(os, "O_NOFOLLOW", 0)
)


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

    @property
    def paths(self) -> tuple[str, ...]:
        """The resolved roots."""
        return self._roots

    def check(self, path: str | bytes) -> None:
        """Raise ``Refused`` unless ``path`` lies inside a root."""
        fd, _ = self.open_parent(path)
        os.close(fd)

    def open_parent(self, path: str | bytes) -> tuple[int, str]:
        """Return ``(dir_fd, name)`` for ``path``; the caller closes ``dir_fd``."""
        parent, name = split(path)
        return self.open_dir(parent), name

    def open_dir(self, parent: str, held: dict[str, int] | None = None) -> int:
        """Open directory ``parent`` (as ``split`` gave it) if it lies inside a root.

        Raises ``Refused`` for a directory outside every root; the caller
        closes the returned descriptor. ``held`` keeps the directories the
        walks went through open between calls (one job's), the roots' own
        included; its owner closes them.
        """
        lexical = self._lexical(parent)
        if lexical is not None:
            # A plain absolute path under a root: the O_NOFOLLOW walk alone
            # proves it is inside (it follows no symlink and meets no ".."),
            # with no realpath to pay. A symlink on the way fails the walk,
            # and the resolving path below decides.
            try:
                return _walk(*lexical, held)
            except OSError:
                pass
        real = os.path.realpath(parent or ".")
        for root in self._roots:
            if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
                return _walk(root, os.path.relpath(real, root).split(os.sep), held)
        raise Refused(f"{parent!r} is outside the allowed roots {list(self._roots)}")

    def _lexical(self, parent: str) -> tuple[str, list[str]] | None:
        """``(root, components)`` when ``parent`` is spelled plainly inside a root."""
        if not parent.startswith(os.sep) or "/." in parent or "//" in parent:
            return None  # relative, ".", "..", a hidden name or a doubled slash: resolve it
        for root in self._roots:
            prefix = root.rstrip(os.sep) + os.sep
            if parent == root:
                return root, []
            if parent.startswith(prefix):
                return root, parent[len(prefix) :].split(os.sep)
        return None


def _walk(root: str, parts: list[str], held: dict[str, int] | None = None) -> int:
    """Open ``root``, then each of ``parts`` below it, never following a symlink.

    With ``held`` (one job's), the walk starts from the deepest directory on
    the way that an earlier walk of the job opened, and keeps each one it
    opens there, the root's own included: a job opens each directory below
    a root once, however many parents share it. The last part's descriptor
    is the caller's to close.
    """
    if held is None:  # a walk of its own: what it passes through is closed after it
        own: dict[str, int] = {}
        try:
            return _walk(root, parts, own)
        finally:
            for fd in own.values():
                os.close(fd)
    parts = [part for part in parts if part not in ("", ".")]
    if len(held) > _MAX_OPEN:  # no walk is under way: none of them is in use
        for fd in held.values():
            os.close(fd)
        held.clear()
    # Keys are the directories' paths as walked: root, root/a, root/a/b, ...
    keys = [root]
    for part in parts:
        keys.append(os.path.join(keys[-1], part))
    i = len(keys) - 1  # the deepest directory on the way that is held
    while i >= 0 and keys[i] not in held:
        i -= 1
    if i < 0:
        fd = held[root] = os.open(root, _DIR_FLAGS)
        i = 0
    else:
        fd = held[keys[i]]
    if i == len(keys) - 1:
        return os.dup(fd)  # the root itself, or a directory held already
    for j in range(i + 1, len(keys) - 1):
        fd = held[keys[j]] = os.open(parts[j - 1], _DIR_FLAGS, dir_fd=fd)
    return os.open(parts[-1], _DIR_FLAGS, dir_fd=fd)


def split(path: str | bytes) -> tuple[str, str]:
    """``(parent, name)`` of ``path``, its parent still unresolved.

    No lexical normalisation (abspath): "link/../x" must resolve the link
    first and then "..", as the kernel does; a path that ends in "..", "."
    or a slash names its resolved self.
    """
    p = path if type(path) is str else os.fsdecode(path)
    parent, sep, name = p.rpartition("/")
    # The common shape "dir/name" in one C call; os.path.split costs three times as much.
    if not parent or not sep or parent[-1] == "/" or name in ("", ".", ".."):
        parent, name = os.path.split(p)
        if name in ("", ".", ".."):
            parent, name = os.path.split(os.path.realpath(p))
    return parent, name


class FileJob(Protocol):
    """What the loop sees of a file job: ``UnlinkJob``, or its compiled twin ``LaneJob``."""

    paths: list[str | bytes]
    hung_at: int  # set by the loop's watchdog: the file it timed out
    watchdog: asyncio.TimerHandle | None

    @property
    def done(self) -> int: ...  # paths finished, in order
    @property
    def stop(self) -> bool: ...  # set: end before the next path
    @stop.setter
    def stop(self, value: bool) -> None: ...
    @property
    def attempted(self) -> int: ...  # paths begun: done + 1 while path done is under way
    @property
    def running(self) -> bool: ...  # a thread has started it
    @property
    def errors(self) -> list[tuple[int, OSError]]: ...  # (index, error), among the done
    @property
    def fallback_at(self) -> int: ...  # where the Python resolver must take over, or -1
    def wait(self, timeout: float | None) -> bool: ...


class UnlinkJob:
    """Unlink many paths in one executor job: one hop per batch, not per file.

    ``done`` counts the paths finished (the loop's watchdog reads it as
    progress), ``errors`` lists ``(index, error)`` for those that failed; a
    path already gone is a success. Setting ``stop`` ends the job before its
    next path; ``wait(timeout)`` waits for its end. When the job ends it
    resolves ``fut`` on ``loop`` with False (not hung). ``_lane.LaneJob`` is
    its compiled twin, with the same interface.

    Both counters live in one ``array`` that the compiled bulk unlink reads
    and writes with the GIL released (see ``_unlink``). Under ``roots``
    each parent directory is resolved and opened once per job, however many
    of its files the job removes, and every file is unlinked relative to
    that descriptor.
    """

    __slots__ = (
        "errors", "finished", "fut", "hung_at", "loop", "paths", "roots", "running", "state",
        "watchdog",
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
        self.state = array("q", (0, 0, 0))  # files done, stop requested, files begun
        self.errors: list[tuple[int, OSError]] = []
        self.running = False
        self.hung_at = -1  # set by the loop's watchdog: the file it timed out
        self.finished = threading.Event()
        self.watchdog: asyncio.TimerHandle | None = None

    @property
    def done(self) -> int:
        return self.state[0]

    @property
    def attempted(self) -> int:
        return self.state[2]

    @property
    def stop(self) -> bool:
        return bool(self.state[1])

    @stop.setter
    def stop(self, value: bool) -> None:
        self.state[1] = int(value)

    fallback_at = -1  # the compiled twin's hand-over point; this job decides every path

    def wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for the job to end; True once it has."""
        return self.finished.wait(timeout)

    def __call__(self) -> None:
        self.running = True
        try:
            if self.roots is None:
                self._unlink(None, self.paths, 0, len(self.paths))
            else:
                self._confined(self.roots)
        finally:
            self.finished.set()
            if self.loop is not None:
                try:
                    self.loop.call_soon_threadsafe(resolve, self.fut, False)
                except RuntimeError:
                    pass  # the loop is closed: the next init_worker() takes the batch back

    def _unlink(self, fds: int | list[int] | None, names: list[Any], start: int, stop: int) -> None:
        run = unlinkat_many if use_compiled() else pure_unlinkat_many
        for k, err in run(fds, names, self.state, start, stop):
            self.errors.append((k, failure(err, self.paths[k])))

    def _confined(self, roots: Roots) -> None:
        """Unlink relative to each parent's descriptor, opened once per job.

        Parents are resolved a chunk at a time, so that a parent on hung
        storage holds up its own chunk only and the progress count stays
        true; at most ``_MAX_OPEN`` descriptors are kept between chunks.
        """
        paths, n = self.paths, len(self.paths)
        names: list[Any] = [""] * n
        fds = [SKIP] * n
        opened: dict[str, int | OSError] = {}
        held: dict[str, int] = {}  # the roots and ancestors walked through, for this job
        try:
            for start in range(0, n, _CHUNK):
                if self.stop:
                    return
                # Resolving the chunk's parents (hung storage may block it)
                # is the first path's work: it is under way from here.
                self.state[2] = start + 1
                stop = min(start + _CHUNK, n)
                for k in range(start, stop):
                    try:
                        parent, names[k] = split(paths[k])
                    except (OSError, TypeError, ValueError) as exc:
                        self.errors.append((k, _as_oserror(exc, paths[k])))
                        continue
                    fd = opened.get(parent)
                    if fd is None:
                        fd = opened[parent] = _open_dir(roots, parent, held)
                    if isinstance(fd, int):
                        fds[k] = fd
                    elif not isinstance(fd, FileNotFoundError):  # a parent gone: so is its file
                        self.errors.append((k, _refusal(fd, paths[k])))
                if self.stop:
                    return
                self._unlink(fds, names, start, stop)
                if self.state[0] < stop:
                    return  # stopped inside the chunk
                if len(opened) > _MAX_OPEN:
                    _close_all(opened)
        finally:
            _close_all(opened)
            for fd in held.values():
                os.close(fd)
            self.errors.sort(key=_first)


_CHUNK = 256  # paths resolved before each call of the bulk unlink
_MAX_OPEN = 128  # parent descriptors kept open from one chunk to the next


def failure(err: int, path: object) -> OSError:
    """The error of a path whose unlink failed with ``err``."""
    return OSError(err, os.strerror(err), _shown(path))


def _first(item: tuple[int, OSError]) -> int:
    return item[0]


def _open_dir(roots: Roots, parent: str, held: dict[str, int]) -> int | OSError:
    try:
        return roots.open_dir(parent, held)
    except OSError as exc:
        return exc


def _refusal(exc: OSError, path: str | bytes) -> OSError:
    """The error of one file under a parent that could not be opened."""
    if isinstance(exc, Refused):
        return refused(path)
    return OSError(exc.errno, exc.strerror, _shown(path))


def refused(path: object) -> Refused:
    """The error of a file whose parent lies outside every root."""
    return Refused(errno.EPERM, "outside the allowed roots", _shown(path))


def _as_oserror(exc: Exception, path: object) -> OSError:
    if isinstance(exc, OSError):
        return exc
    return OSError(errno.EINVAL, f"not a valid path ({exc})", _shown(path))


def _shown(path: object) -> str:
    """The path for an error message; never raises, whatever a task's path was set to.

    An error that cannot be built loses its whole batch's count, so a path
    whose ``__repr__`` raises (or recurses) is shown by its type alone.
    """
    try:
        return os.fsdecode(path)  # type: ignore[arg-type]
    except Exception:
        pass
    try:
        return repr(path)
    except Exception:  # RecursionError included: t.path = t
        return f"<{type(path).__name__} object; its repr() raised>"


def _close_all(opened: dict[str, int | OSError]) -> None:
    for fd in opened.values():
        if type(fd) is int:
            os.close(fd)
    opened.clear()


def resolve(fut: asyncio.Future[bool] | None, hung: bool) -> None:
    if fut is not None and not fut.done():
        fut.set_result(hung)
