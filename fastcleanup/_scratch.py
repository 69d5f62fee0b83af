"""Scratch directories that outlive SIGKILL: each process owns one, and the next start sweeps.

A process killed by SIGKILL, the OOM killer or a reboot runs no exit code,
so whatever it had queued or guarded stays on disk. :class:`ScratchDir`
gives each process a directory of its own under a shared ``base``, owned
through an ``flock`` on a lock file inside it: the kernel releases that lock
when the process dies, whatever the cause. A cleaner's ``init_worker()`` (or
:func:`sweep`) then removes, through the cleaner, every directory under
``base`` whose lock nobody holds.

How the directories are named, locked and claimed is ``_sweep``'s part.
"""

from __future__ import annotations

import asyncio
import atexit
import enum
import errno
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from . import _lifecycle
from ._batch import EXIT_RUNNERS
from ._paths import Roots
from ._sweep import Counter, close_fds, create, key_of, sweep_sync
from ._tasks import current_executor
from ._tree import remove_tree

if TYPE_CHECKING:
    from ._cleaner import Cleaner
    from ._guards import TempFile

__all__ = ["ScratchDir", "sweep"]

logger = logging.getLogger("fastcleanup")

# -- per-cleaner state: bases to sweep and what was swept ------------------------

# Kept here rather than on the Cleaner: a cleaner knows nothing of scratch
# directories beyond the one call in its init_worker().
_bases: weakref.WeakKeyDictionary[Cleaner, set[str]] = weakref.WeakKeyDictionary()
_bases_lock = threading.Lock()  # ScratchDir() and sweep() in any thread; never a hot path
# Sweep jobs of one cleaner may run on two of its threads at once; the
# counters' only other users are scrapes, which only read.
_count_lock = threading.Lock()


def _resolve(cleaner: Cleaner | None) -> Cleaner:
    from ._cleaner import Cleaner

    if cleaner is None:
        from ._default import default_cleaner

        return default_cleaner
    if not isinstance(cleaner, Cleaner):
        raise TypeError(f"cleaner must be a fastcleanup.Cleaner or None, got {cleaner!r}")
    return cleaner


def _check_base(base: object, what: str) -> str:
    if not isinstance(base, str | os.PathLike) or not isinstance(os.fspath(base), str):
        raise TypeError(f"{what} base must be a str path or os.PathLike, got {base!r}")
    raw = os.fspath(base)
    if not raw or "\0" in raw:
        raise ValueError(f"{what} base must name a directory, got {raw!r}")
    return raw


def _counter(cleaner: Cleaner) -> Counter:
    def count(name: str, files: int) -> None:
        with _count_lock:
            by = cleaner._tally.swept_by
            by["directory"] = by.get("directory", 0) + 1
            by["file"] = by.get("file", 0) + files

    return count


class _Sweep:
    """The cleanup task that sweeps one base; runs on the cleaner's executor.

    Completed when every dead owner's directory is gone; failed (reason
    ``error``) if one could not be removed, after trying all of them.
    """

    __slots__ = ("base", "cleaner")
    kind = "sweep"

    def __init__(self, base: str, cleaner: Cleaner) -> None:
        self.base, self.cleaner = base, cleaner

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        errors = await loop.run_in_executor(
            current_executor.get(), sweep_sync, self.base, _counter(self.cleaner), _own_tokens()
        )
        if errors:
            raise OSError(
                f"{len(errors)} leftover(s) under {self.base!r} could not be removed; "
                f"first: {errors[0]}"
            )

    def __repr__(self) -> str:
        return f"<sweep {self.base!r}>"


def _watch(base: str, cleaner: Cleaner) -> None:
    """Sweep ``base`` at every start of ``cleaner``, and now if it runs."""
    with _bases_lock:
        _bases.setdefault(cleaner, set()).add(base)
    if cleaner.worker_inited():
        cleaner.submit(_Sweep(base, cleaner))


def on_init(cleaner: Cleaner) -> None:
    """At the end of every ``Cleaner.init_worker()``: sweep the bases registered with it."""
    try:
        with _bases_lock:
            bases = sorted(_bases.get(cleaner, ()))
        for base in bases:
            cleaner.submit(_Sweep(base, cleaner))
    except Exception:  # a sweep is never worth a failed start
        logger.exception("fastcleanup: could not submit the sweeps of %r", cleaner)


_lifecycle.on_start(on_init)


def sweep(base: str | os.PathLike[str], *, cleaner: Cleaner | None = None) -> None:
    """Remove what dead processes left under ``base``, through ``cleaner``.

    Sweeps now if the cleaner runs, else at its ``init_worker()``, and again
    at every later start. Only scratch directories whose owner is dead are
    removed (see :class:`ScratchDir`), once no other process uses them, and
    so are those a dead owner's orphan (its browser, say) made again;
    anything else under ``base`` stays.

    >>> fc.sweep("/var/tmp/crawler")
    >>> fc.init_worker()          # the sweep runs as a cleanup task, kind "sweep"
    """
    raw = _check_base(base, "sweep")
    c = _resolve(cleaner)
    real = os.path.realpath(raw)
    if not os.path.isdir(real):
        raise ValueError(f"sweep base {raw!r} is not an existing directory")
    _watch(real, c)


# -- ScratchDir --------------------------------------------------------------------


class _State(enum.Enum):
    HELD = "held"  # this process owns its directory and holds the lock
    UNMADE = "unmade"  # a fork child that has not used it yet: made on first use
    CLOSED = "closed"


# Held strongly: a directory is the process's until close() or the exit, not until
# its ScratchDir is dropped (temp files may still be in it).
_live: set[ScratchDir] = set()


def _own_tokens() -> frozenset[str]:
    return frozenset(s._token for s in list(_live) if s._token is not None)


class ScratchDir:
    """A directory of this process's own under ``base``, swept once the process is dead.

    Put temp files in it; after a SIGKILL, an OOM kill or a reboot, the next
    process whose cleaner sweeps ``base`` removes them. Creating one registers
    ``base`` with ``cleaner`` (default: the default cleaner), so its
    ``init_worker()`` sweeps it; made after the start, it sweeps at once.

    >>> scratch = fc.ScratchDir("/var/tmp/crawler")   # base made if missing; /var/tmp must exist
    >>> fc.init_worker()                              # removes dead processes' directories
    >>> tmp = scratch.temp_file(suffix=".html")       # a fc.TempFile inside it
    >>> out = fc.StagingFile(dest, dir=scratch)       # staged inside it, renamed onto dest

    Its name is short (``fc-<pid>-<token>``, 13 bytes at most) so that a
    browser's unix socket fits below it: with a 40-byte base, the path
    ``<base>/<scratch>/<context>/.org.chromium.Chromium.XXXXXX/SingletonSocket``
    leaves 6 bytes for ``<context>`` within the 107 a socket path may take.
    ``base`` itself is made if missing, but not its parent (FileNotFoundError):
    a mistyped path does not become a new tree.

    It is an ``os.PathLike``, so ``fc.TempFile(dir=scratch)`` and
    ``open(scratch.path / "x", "w")`` work too. After ``fork()`` the child
    gets a directory of its own on first use and does not keep the parent's
    alive. ``close()`` (or the end of the process) removes it.
    """

    __slots__ = (
        "__weakref__",
        "_base",
        "_cleaner",
        "_lock_fd",
        "_mutex",
        "_path",
        "_state",
        "_token",
    )

    def __init__(self, base: str | os.PathLike[str], *, cleaner: Cleaner | None = None) -> None:
        raw = _check_base(base, "ScratchDir")
        self._cleaner = _resolve(cleaner)
        # Only the last component is made: a mistyped base must not quietly
        # become a new tree wherever the typo points.
        try:
            os.mkdir(raw, 0o700)
        except FileExistsError:
            if not os.path.isdir(raw):
                raise ValueError(f"ScratchDir base {raw!r} exists and is no directory") from None
        except FileNotFoundError:
            raise FileNotFoundError(
                errno.ENOENT,
                "ScratchDir makes its base but not the base's parent, which does not exist: "
                "create it first",
                os.path.dirname(os.path.abspath(raw)),
            ) from None
        self._base = os.path.realpath(raw)
        self._mutex = threading.Lock()
        self._state = _State.UNMADE
        self._path: Path | None = None
        self._lock_fd: int | None = None
        self._token: str | None = None
        _live.add(self)
        self._make()  # at once: a base we cannot write to is the caller's error, now
        _watch(self._base, self._cleaner)

    @property
    def base(self) -> str:
        """The shared directory (resolved) that holds every process's scratch directory."""
        return self._base

    @property
    def path(self) -> Path:
        """This process's directory (a fork child's own, made on first use)."""
        path = self._path
        return path if path is not None else self._make()

    def __fspath__(self) -> str:
        return str(self.path)

    def _make(self) -> Path:
        with self._mutex:
            if self._state is _State.CLOSED:
                raise RuntimeError(f"{self!r} is closed")
            if self._path is None:
                base_fd = os.open(self._base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    name, self._lock_fd = create(base_fd, os.getpid())
                finally:
                    os.close(base_fd)
                self._token = key_of(name)
                self._path = Path(self._base, name)
                self._state = _State.HELD
            return self._path

    def temp_file(self, suffix: str = "", prefix: str = "fc-") -> TempFile:
        """A :class:`fastcleanup.TempFile` in this directory, removed through the same cleaner."""
        from ._guards import TempFile

        return TempFile(suffix, prefix, dir=self.path, cleaner=self._cleaner)

    def close(self) -> None:
        """Remove this process's directory and release it (idempotent).

        The removal goes through the cleaner when it runs (the lock is held
        until the tree is gone); otherwise it happens here, synchronously.
        """
        self._close(through_cleaner=True)

    def _close(self, through_cleaner: bool) -> None:
        with self._mutex:
            if self._state is _State.CLOSED:
                return
            path, fd = self._path, self._lock_fd
            self._state, self._path, self._lock_fd, self._token = _State.CLOSED, None, None, None
        _live.discard(self)
        if path is None or fd is None:
            return
        if through_cleaner and self._cleaner.worker_inited():
            self._cleaner.submit(_Release(str(path), self._base, fd))
        else:
            _release(str(path), self._base, fd)

    def __enter__(self) -> ScratchDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _forget_after_fork(self) -> None:
        # The child's copy of the lock descriptor shares the parent's open
        # file description: closing it leaves the parent's lock in place
        # (the parent's own descriptor still refers to it), and the child no
        # longer keeps the parent's directory alive once the parent dies.
        close_fds(self._lock_fd)
        self._mutex = threading.Lock()  # another thread may have held it at the fork
        if self._state is _State.HELD:
            self._state = _State.UNMADE
        self._path = self._lock_fd = self._token = None

    def __repr__(self) -> str:
        where = self._path if self._path is not None else self._base
        return f"<ScratchDir {str(where)!r} {self._state.value}>"


def _release(path: str, base: str, fd: int) -> None:
    """Remove ``path`` under ``base``, then close its lock ``fd`` (none if negative)."""
    try:
        if os.path.isdir(base):  # else it went, and our directory with it
            remove_tree(path, Roots([base]))
    finally:
        if fd >= 0:
            os.close(fd)


class _Release:
    """A closed ScratchDir's removal: the tree first, then the lock that keeps sweepers off.

    Also runs without a loop, at interpreter exit (``EXIT_RUNNERS``). A run
    cut short by a dying loop goes on in its thread while the next loop runs
    the task again: the mutex makes the second run wait, and the descriptor
    is closed once, never a second time under a number the process reused.
    """

    __slots__ = ("_mutex", "base", "fd", "path")
    kind = "remove_tree"

    def __init__(self, path: str, base: str, fd: int) -> None:
        self.path, self.base, self.fd = path, base, fd
        self._mutex = threading.Lock()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(current_executor.get(), self.run_sync)

    def run_sync(self, timeout: float = -1) -> None:
        # The exit handler passes its time left: the first run may be stuck
        # on a dead mount, and the exit must not wait for it past its bound.
        if not self._mutex.acquire(timeout=timeout):
            raise TimeoutError(f"{self!r}: an earlier run is still removing it")
        try:
            # A rerun finds the lock closed, and removes what is left of the tree.
            fd, self.fd = self.fd, -1
            _release(self.path, self.base, fd)
        finally:
            self._mutex.release()

    def __repr__(self) -> str:
        return f"<release {self.path!r}>"


EXIT_RUNNERS[_Release] = _Release.run_sync


def _at_exit() -> None:
    # A process that ends normally leaves nothing for the next start to
    # sweep: what is swept then is only what killed processes left. This
    # runs before the cleaners' exit work (registered later, so called
    # first); their removals of files in here then find them gone.
    for scratch in list(_live):
        try:
            scratch._close(through_cleaner=False)
        except OSError as exc:
            logger.warning("fastcleanup: %r left at exit: %s", scratch, exc)


def _after_fork_in_child() -> None:
    global _bases_lock, _count_lock
    _bases_lock, _count_lock = threading.Lock(), threading.Lock()
    for scratch in list(_live):
        scratch._forget_after_fork()


atexit.register(_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
