"""Tree removal: the walk, its retries while a writer refills the tree, and its errors.

``walk_trees(items, stop=None)`` removes each ``(dir_fd, name)`` tree like
``rm -r`` and returns, per tree, ``(failed, named, refilled, stopped)``:
how many entries could not be removed, the first few of them as
``(path relative to the tree, errno)`` (``""`` is the tree itself), whether
a directory held entries that came after the walk read it (a live writer),
and whether a nonzero ``stop[0]`` ended the walk early. The walk is
iterative, by descriptor (``openat`` with ``O_NOFOLLOW | O_DIRECTORY``,
``unlinkat``), follows no symlink (one swapped in for a directory is
unlinked), enters no other file system (a mount point inside is named,
``EBUSY``), goes on past what it cannot remove, and holds at most ``HELD``
directories open. The C build (``_ctree.c``) runs without the GIL;
``pure_walk_trees`` below is its twin, step for step.

Callers use the two ends: ``remove_tree(path, roots, busy_timeout)``
synchronously (exit, sweeps), and ``TreeLane.remove(path)`` from the loop,
which puts the trees of one loop turn into few jobs on the cleaner's
threads and retries a refilled tree with backoff:

>>> lane = TreeLane(executor, roots=None, busy_timeout=3.0, threads=2)
>>> await lane.remove("/var/crawl/profile-17")   # raises Busy, or the OSError of the walk
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import time
from array import array
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from . import _unlink

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "Busy",
    "TreeLane",
    "pure_walk_trees",
    "remove_tree",
    "walk_trees",
]

HELD: Final = 64  # directories of one walk open at once
NAMED: Final = 5  # failures named by path; the rest are counted
JOB_TREES: Final = 16  # trees per job at most
DEFAULT_BUSY_TIMEOUT: Final = 3.0  # seconds a refilled tree is retried before Busy
_FIRST_BACKOFF, _MAX_BACKOFF = 0.01, 0.25
_OPEN: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
AT_FDCWD: Final = -100  # Linux: the working directory, as dir_fd

Result = tuple[int, list[tuple[str, int]], bool, bool]
_GONE: Final[Result] = (0, [], False, False)  # nothing failed, nothing refilled


class Busy(OSError):
    """The tree was still there after its walks: something kept writing into it."""


class _Frame:
    __slots__ = ("dev", "entries", "failed", "fd", "ino", "name")

    def __init__(self, fd: int, st: os.stat_result, name: str | bytes) -> None:
        self.fd: int | None = fd
        self.entries: Any = os.scandir(fd)
        self.dev, self.ino = st.st_dev, st.st_ino
        self.name = name
        self.failed = False

    def close(self) -> None:
        if self.fd is not None:
            self.entries.close()
            os.close(self.fd)
            self.fd = None


class _Walk:
    """One tree's walk in Python: ``_ctree.c``'s ``walk_one``, in the same order."""

    def __init__(self, dir_fd: int | None, name: str | bytes, stop: Any) -> None:
        self.dir_fd, self.name, self.stop = dir_fd, name, stop
        self.frames: list[_Frame] = []
        self.skip: set[int] = set()
        self.failed = 0
        self.named: list[tuple[str, int]] = []
        self.refilled = self.stopped = False

    def note(self, name: str | bytes | None, err: int) -> None:
        if len(self.named) < NAMED:
            parts = [os.fsdecode(f.name) for f in self.frames[1:]]
            if name is not None:
                parts.append(os.fsdecode(name))
            self.named.append(("/".join(parts), err))
        self.failed += 1

    def push(self, fd: int, name: str | bytes) -> int:
        try:
            st = os.fstat(fd)
            if self.frames and st.st_dev != self.frames[0].dev:
                os.close(fd)
                return errno.EXDEV  # a mount point: the caller's rmdir says EBUSY
            frame = _Frame(fd, st, name)
        except OSError as exc:
            os.close(fd)
            return exc.errno or errno.EIO
        self.frames.append(frame)
        if len(self.frames) > HELD:
            old = self.frames[len(self.frames) - HELD]
            if len(self.frames) - HELD > 0:
                old.close()
        return 0

    def reopen(self, d: int) -> int:
        """Reopen frame ``d``, closed: through ``..`` of frame ``d + 1`` while that is
        open, else (or if it leads elsewhere) down from the nearest open ancestor."""
        frame, fd = self.frames[d], None
        if d + 1 < len(self.frames) and self.frames[d + 1].fd is not None:
            fd = _open_same("..", self.frames[d + 1].fd, frame)
        if fd is None:  # the child was moved: come down from the top instead
            top = d
            while self.frames[top].fd is None:
                top -= 1  # frames[0] is never closed
            fd = os.dup(self.frames[top].fd)  # type: ignore[arg-type]
            for k in range(top + 1, d + 1):
                prev, fd = fd, _open_same(self.frames[k].name, fd, self.frames[k])
                os.close(prev)
                if fd is None:
                    return errno.ESTALE  # no longer where the walk left it
        frame.fd = fd
        frame.entries = os.scandir(fd)
        return 0

    def enter(self, name: str | bytes, ino: int) -> None:
        parent = self.frames[-1].fd
        err = 0
        try:
            fd = os.open(name, _OPEN, dir_fd=parent)
        except OSError as exc:
            err = exc.errno or errno.EIO
            if err == errno.ENOENT:
                return
            if err in (errno.ENOTDIR, errno.ELOOP):
                # Swapped for a file or a symlink since it was read: unlink that.
                err = _unlink_err(name, parent)
                if err == 0:
                    return
        else:
            err = self.push(fd, name)
            if err == 0:
                return
        # Not to be entered (no permission, a mount point, no descriptor
        # left): it may still be an empty directory.
        rm = _rmdir_err(name, parent)
        if rm == 0:
            return
        if rm == errno.EBUSY or err == errno.EXDEV:
            err = rm
        self.note(name, err)
        self.frames[-1].failed = True
        self.skip.add(ino)

    def leave(self) -> None:
        frames = self.frames
        f = frames[-1]
        if len(frames) == 1:
            f.close()
            err = _rmdir_err(self.name, self.dir_fd)
        else:
            up = frames[-2]
            if up.fd is None:
                err = self.reopen(len(frames) - 2)
                if err:
                    # The way back is gone: what is below now lies elsewhere.
                    f.close()
                    frames.pop()
                    self.note(None, err)
                    up.failed = True
                    return
            f.close()
            err = _rmdir_err(f.name, up.fd)
            if err == errno.ENOTDIR and _unlink_err(f.name, up.fd) == 0:
                err = 0  # swapped for a symlink or a file while the walk was inside
            if err or f.failed:
                up.failed = True
                self.skip.add(f.ino)
        frames.pop()
        if err == errno.ENOTEMPTY and not f.failed:
            self.refilled = True  # entries came after they were read: a live writer
        elif err and not (err == errno.ENOTEMPTY and f.failed):
            self.note(f.name, err)

    def run(self) -> Result:
        dir_fd, name = self.dir_fd, self.name
        try:
            fd = os.open(name, _OPEN, dir_fd=dir_fd)
        except OSError as exc:
            self._top_failed(exc.errno or errno.EIO)
            return self.failed, self.named, False, False
        err = self.push(fd, "")
        if err:
            self.note(None, err)
            return self.failed, self.named, False, False
        try:
            self._loop()
        finally:
            for frame in self.frames:  # stopped, or an unexpected error
                frame.close()
        if not self.stopped and not self.failed and _exists(name, dir_fd):
            self.refilled = True  # gone means gone now: a writer may have made it again
        return self.failed, self.named, self.refilled, self.stopped

    def _loop(self) -> None:
        frames, skip, stop = self.frames, self.skip, self.stop
        unlink = os.unlink
        while frames:
            f = frames[-1]
            if f.fd is None and self.reopen(len(frames) - 1):
                # Lost (leave() could not come back to it, and named it): what
                # is left of it lies out of the walk's reach now.
                frames.pop()
                frames[-1].failed = True
                continue
            try:
                entry = next(f.entries, None)
            except OSError as exc:
                self.note(None, exc.errno or errno.EIO)
                f.failed = True
                entry = None
            if entry is None:
                self.leave()
                continue
            ino = entry.inode()
            if skip and ino in skip:
                continue
            if stop is not None and stop[0]:
                self.stopped = True
                return
            name = entry.name
            if entry.is_dir(follow_symlinks=False):
                self.enter(name, ino)
                continue
            try:
                unlink(name, dir_fd=f.fd)
                continue
            except FileNotFoundError:
                continue
            except OSError as exc:
                err = exc.errno or errno.EIO
            if err in (errno.EISDIR, errno.EPERM) and _is_dir(name, f.fd):
                # A directory after all (no d_type here, or swapped in).
                self.enter(name, ino)
                continue
            self.note(name, err)
            f.failed = True
            skip.add(ino)

    def _top_failed(self, err: int) -> None:
        name, dir_fd = self.name, self.dir_fd
        if err == errno.ENOENT:
            return
        if err in (errno.ENOTDIR, errno.ELOOP):
            try:
                st = os.lstat(name, dir_fd=dir_fd)
            except FileNotFoundError:
                return
            except OSError:
                err = errno.ENOTDIR
            else:  # the tree's own name as a symlink loses the link only
                err = _unlink_err(name, dir_fd) if stat.S_ISLNK(st.st_mode) else errno.ENOTDIR
        elif _rmdir_err(name, dir_fd) == 0:
            return  # an empty directory it may not read
        if err:
            self.note(None, err)


def _open_same(name: str | bytes, dir_fd: int | None, frame: _Frame) -> int | None:
    """Open directory ``name`` if it is still ``frame``'s (same device and inode)."""
    try:
        fd = os.open(name, _OPEN, dir_fd=dir_fd)
    except OSError:
        return None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (frame.dev, frame.ino):
        os.close(fd)
        return None
    return fd


def _unlink_err(name: str | bytes, dir_fd: int | None, directory: bool = False) -> int:
    """unlinkat(2), or with ``directory`` rmdir: 0 once the name is gone, else the errno."""
    try:
        (os.rmdir if directory else os.unlink)(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        return exc.errno or errno.EIO
    return 0


def _rmdir_err(name: str | bytes, dir_fd: int | None) -> int:
    return _unlink_err(name, dir_fd, directory=True)


def _is_dir(name: str | bytes, dir_fd: int | None) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def _exists(name: str | bytes, dir_fd: int | None) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except OSError:
        return False
    return True


def pure_walk_trees(
    items: Sequence[tuple[int, str | bytes]], stop: WriteableBuffer | None = None
) -> list[Result]:
    """The pure-Python twin of ``_cbulk.walk_trees``: same arguments, same effects."""
    flags = None if stop is None else memoryview(stop).cast("B").cast("q")
    out: list[Result] = []
    for dir_fd, name in items:
        if flags is not None and flags[0]:
            out.append((0, [], False, True))
            continue
        if (isinstance(name, str) and "\0" in name) or (isinstance(name, bytes) and b"\0" in name):
            raise ValueError("a tree's name holds a NUL byte")
        out.append(_Walk(None if dir_fd == AT_FDCWD else dir_fd, name, flags).run())
    return out


Walker = Callable[..., list[Result]]
walk_trees: Walker = pure_walk_trees
if _unlink.COMPILED:
    from ._cbulk import walk_trees as _compiled_walk

    walk_trees = _compiled_walk


def _walker() -> Walker:
    # A replaced os.unlink (fault injection) must see every unlink: the twin.
    return walk_trees if _unlink.use_compiled() else pure_walk_trees


# -- what a walk's result means for its task ------------------------------------------


def failure(path: str | bytes, result: Result) -> OSError | None:
    """The error of a walk that left entries behind, naming them; None if it did not."""
    failed, named, _, _ = result
    if not failed:
        return None
    shown = os.fsdecode(path)
    if failed == 1 and named and named[0] == ("", errno.ENOTDIR):
        return NotADirectoryError(errno.ENOTDIR, "RemoveTree: not a directory", shown)
    first = named[0][1] if named else errno.EIO
    where = "; ".join(
        f"{os.path.join(shown, rel) if rel else shown}: [Errno {err}] {os.strerror(err)}"
        for rel, err in named
    )
    more = f" (and {failed - len(named)} more)" if failed > len(named) else ""
    return OSError(first, f"{failed} entr{'y' if failed == 1 else 'ies'} left: {where}{more}")


def busy(path: str | bytes, tries: int, seconds: float) -> Busy:
    return Busy(
        errno.ENOTEMPTY,
        f"still written to after {tries} walks over {seconds:.1f}s (busy_timeout)",
        os.fsdecode(path),
    )


class _Roots(Protocol):
    def open_parent(self, path: str | bytes) -> tuple[int, str]: ...


def _open(path: str | bytes, roots: _Roots | None) -> tuple[int, str | bytes] | None:
    """``(dir_fd, name)`` of the tree, or None if it is gone with its parent.

    The caller closes ``dir_fd`` unless it is AT_FDCWD. A parent inside the
    roots that no longer exists means the tree is gone too: completed, as
    without roots (a path outside them is refused before it is looked for).
    """
    if roots is None:
        return AT_FDCWD, path
    try:
        return roots.open_parent(path)
    except FileNotFoundError:
        return None


def remove_tree(
    path: str | bytes, roots: _Roots | None, busy_timeout: float = 0.0, stop: Any = None
) -> None:
    """Remove the tree at ``path`` now, in this thread; raise what it left, or ``Busy``.

    A tree refilled during its walk is walked again with backoff for up to
    ``busy_timeout`` seconds (none: one check). ``roots`` confines it (see
    ``_paths.Roots``), raising ``Refused`` outside.
    """
    start, tries, pause = time.monotonic(), 0, _FIRST_BACKOFF
    while True:
        opened = _open(path, roots)
        if opened is None:
            return
        fd, name = opened
        try:
            result = _walker()([(fd, name)], stop)[0]
        finally:
            if fd != AT_FDCWD:
                os.close(fd)
        tries += 1
        err = failure(path, result)
        if err is not None:
            raise err
        if not result[2] or result[3]:
            return
        waited = time.monotonic() - start
        if waited + pause > busy_timeout:
            raise busy(path, tries, waited)
        time.sleep(pause)
        pause = min(pause * 2, _MAX_BACKOFF)


# -- the loop's side: trees of one loop turn in few jobs ------------------------------


class _Tree:
    __slots__ = ("fut", "job", "path", "pause", "started", "tries")

    def __init__(self, path: str | bytes, fut: asyncio.Future[None]) -> None:
        self.path, self.fut = path, fut
        self.started = time.monotonic()
        self.tries, self.pause = 0, _FIRST_BACKOFF
        self.job: _Job | None = None


class _Job:
    """Trees walked in one executor call; ``stop`` ends it once all its tasks gave up."""

    __slots__ = ("stop", "trees")

    def __init__(self, trees: list[_Tree]) -> None:
        self.trees = trees
        self.stop = array("q", [0])


class _Executor(Protocol):
    def run(self, fn: Callable[[], object]) -> None: ...


class TreeLane:
    """Removes trees for the loop's tasks on the cleaner's threads, several per job.

    Trees asked for in one loop turn (a batch's tasks start together) are
    split into jobs of at most ``JOB_TREES`` (and at least one job per
    thread), each a single ``walk_trees`` call that runs
    without the GIL where the C module is built, and reports back with one
    ``call_soon_threadsafe``. A tree that a writer refilled is walked again
    after a pause that doubles (10 ms to 250 ms), until ``busy_timeout``
    seconds from its first walk, then fails with ``Busy``.
    """

    __slots__ = ("_busy_timeout", "_executor", "_pending", "_roots", "_threads")

    def __init__(
        self, executor: _Executor, roots: _Roots | None, busy_timeout: float, threads: int
    ) -> None:
        self._executor, self._roots = executor, roots
        self._busy_timeout, self._threads = busy_timeout, threads
        self._pending: list[_Tree] = []

    async def remove(self, path: str | bytes) -> None:
        """Remove the tree at ``path``; raise what the walk left, or ``Busy``."""
        loop = asyncio.get_running_loop()
        tree = _Tree(path, loop.create_future())
        self._want(tree, loop)
        try:
            await tree.fut
        except asyncio.CancelledError:
            job = tree.job
            if job is not None and all(t.fut.done() for t in job.trees):
                job.stop[0] = 1  # none of its tasks waits any longer
            raise

    def _want(self, tree: _Tree, loop: asyncio.AbstractEventLoop) -> None:
        if not self._pending:
            loop.call_soon(self._flush, loop)
        self._pending.append(tree)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        trees, self._pending = self._pending, []
        trees = [t for t in trees if not t.fut.done()]
        # At least one job per thread, and none of more than JOB_TREES trees: a
        # thread that ends early takes the next job instead of idling.
        n = min(len(trees), max(self._threads, -(-len(trees) // JOB_TREES)))
        for k in range(n):
            job = _Job(trees[k::n])
            for t in job.trees:
                t.job = job
            try:
                self._executor.run(lambda job=job: self._run(job, loop))  # type: ignore[misc]
            except RuntimeError as exc:  # shut down meanwhile (a retry after shutdown())
                for t in job.trees:
                    if not t.fut.done():
                        t.fut.set_exception(exc)

    def _run(self, job: _Job, loop: asyncio.AbstractEventLoop) -> None:
        """On a cleaner's thread: open the parents (confined), walk, report once."""
        items: list[tuple[int, str | bytes]] = []
        fds: list[int] = []
        # Per tree: an exception, a result already known (gone with its
        # parent), or None for "the walk's next result".
        slots: list[Result | BaseException | None] = []
        try:
            for t in job.trees:
                try:
                    opened = _open(t.path, self._roots)
                except Exception as exc:  # Refused, or a parent that cannot be opened
                    slots.append(exc)
                    continue
                if opened is None:
                    slots.append(_GONE)
                    continue
                fd, name = opened
                if fd != AT_FDCWD:
                    fds.append(fd)
                items.append((fd, name))
                slots.append(None)
            outcome: list[Result | BaseException]
            try:
                results = iter(_walker()(items, job.stop))
                outcome = [next(results) if o is None else o for o in slots]
            except Exception as exc:
                outcome = [exc] * len(job.trees)
        finally:
            for fd in fds:
                os.close(fd)
        try:
            loop.call_soon_threadsafe(self._report, job, outcome, loop)
        except RuntimeError:
            pass  # the loop is closed: the next init_worker() takes the batch back

    def _report(
        self, job: _Job, outcome: list[Result | BaseException], loop: asyncio.AbstractEventLoop
    ) -> None:
        for tree, result in zip(job.trees, outcome, strict=True):
            fut = tree.fut
            if fut.done():
                continue
            tree.tries += 1
            if isinstance(result, BaseException):
                fut.set_exception(result)
            elif (err := failure(tree.path, result)) is not None:
                fut.set_exception(err)
            elif result[2] and not result[3]:
                waited = time.monotonic() - tree.started
                if waited + tree.pause > self._busy_timeout:
                    fut.set_exception(busy(tree.path, tree.tries, waited))
                else:
                    loop.call_later(tree.pause, self._want, tree, loop)
                    tree.pause = min(tree.pause * 2, _MAX_BACKOFF)
            else:
                fut.set_result(None)
