"""Guards: cleanup that happens when an object goes away (Python's Drop).

* :func:`on_collect` submits a task when an object is garbage-collected.
* :class:`TempFile` owns a temp file and removes it in the background.
* :class:`StagingFile` streams a download to a hidden file beside its
  destination, renames it into place on success and removes it in the
  background on error, cancellation or garbage collection.

Finalizers of these guards still pending at interpreter exit fire before the
cleaners run their exit work, so their files are removed too.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
import weakref
from collections.abc import Callable
from concurrent.futures import Executor
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiofiles
import aiofiles.os

from . import _lifecycle
from ._tasks import CleanupTask, RemoveFile

if TYPE_CHECKING:
    from ._cleaner import Cleaner

__all__ = ["StagingFile", "TempFile", "on_collect"]

_keys = itertools.count()
_pending: dict[int, weakref.finalize[Any, Any]] = {}


def _fire(key: int, submit: Callable[[CleanupTask], None], task: CleanupTask) -> None:
    _pending.pop(key, None)
    submit(task)


def fire_pending() -> None:
    """Run every guard finalizer still pending (interpreter exit).

    Calling a ``weakref.finalize`` does nothing once weakref's own exit hook
    has run (it may have registered after ours, and so run before it), so
    each is detached and its callback called directly.
    """
    for fin in list(_pending.values()):
        info = fin.detach()
        if info is not None:
            _, func, args, kwargs = info
            func(*args, **(kwargs or {}))


_lifecycle.before_exit(fire_pending)


def _submitter(cleaner: Cleaner | None) -> Callable[[CleanupTask], None]:
    from ._cleaner import Cleaner

    if cleaner is None:
        from ._default import default_cleaner

        cleaner = default_cleaner
    elif not isinstance(cleaner, Cleaner):
        raise TypeError(f"cleaner must be a fastcleanup.Cleaner or None, got {cleaner!r}")
    return cleaner.submit


def _check_task(task: object) -> None:
    if not (isinstance(getattr(task, "kind", None), str) and callable(getattr(task, "run", None))):
        raise TypeError(
            f"expected a cleanup task (RemoveFile, RemoveTree, AClose, Call or a "
            f"CleanupTask of yours), got {task!r}"
        )


def on_collect(
    obj: object, task: CleanupTask, *, cleaner: Cleaner | None = None
) -> weakref.finalize[Any, Any]:
    """Submit ``task`` when ``obj`` is garbage-collected.

    Returns the ``weakref.finalize``; call ``.detach()`` to cancel. ``task``
    must not refer to ``obj``, or ``obj`` is never collected. An object held
    in a reference cycle (an exception's traceback keeps the frame that
    raised it alive, for one) goes only when the cycle collector runs.

    >>> fc.on_collect(page, fc.RemoveTree(page.profile_dir))
    """
    _check_task(task)
    key = next(_keys)
    fin = weakref.finalize(obj, _fire, key, _submitter(cleaner), task)
    fin.atexit = False  # our own exit hook fires it, before the cleaners' exit work
    _pending[key] = fin
    return fin


class TempFile:
    """A temp file removed in the background when closed or collected.

    >>> tmp = fc.TempFile(suffix=".html", dir=scratch)
    >>> tmp.path.write_bytes(body)
    >>> tmp.close()                   # or just drop it; keep() keeps the file
    """

    __slots__ = ("__weakref__", "_finalizer", "path")

    def __init__(
        self,
        suffix: str = "",
        prefix: str = "fc-",
        dir: str | os.PathLike[str] | None = None,
        *,
        cleaner: Cleaner | None = None,
    ) -> None:
        # Check everything before there is a file to leak. mkstemp itself
        # accepts bytes throughout, but a guard's path is a str path.
        _submitter(cleaner)
        for what, value in (("suffix", suffix), ("prefix", prefix)):
            if not isinstance(value, str):
                raise TypeError(f"TempFile {what} must be a str, got {type(value).__name__}")
        if dir is not None and not isinstance(os.fspath(dir), str):
            raise TypeError(f"TempFile dir must be a str path, got {dir!r}")
        fd, name = tempfile.mkstemp(suffix=suffix, prefix=prefix, dir=dir)
        os.close(fd)
        from pathlib import Path

        self.path = Path(name)
        self._finalizer = on_collect(self, RemoveFile(name), cleaner=cleaner)

    def close(self) -> None:
        """Submit the removal now (idempotent)."""
        self._finalizer()

    def keep(self) -> None:
        """Keep the file: the guard will not remove it."""
        self._finalizer.detach()

    def __enter__(self) -> TempFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "pending" if self._finalizer.alive else "released"
        return f"<TempFile {str(self.path)!r} {state}>"


class StagingFile:
    """Stream a download into place: all of it, or nothing left behind.

    >>> async with fc.StagingFile(dest) as out:
    ...     async for chunk in response.content.iter_chunked(65536):
    ...         await out.write(chunk)
    # normal exit: renamed onto dest; an exception or cancellation: the
    # partial file is removed in the background, and so it is if the
    # guard is garbage-collected without commit().

    Writes go through aiofiles on ``executor`` (default: the loop's).
    ``dir`` stages the partial file there instead of beside ``dest`` (a
    :class:`ScratchDir`, so that a SIGKILL mid-download leaves it where the
    next start sweeps); the rename onto ``dest`` needs both on one file
    system, so another one is refused at once with ValueError.
    """

    __slots__ = (
        "__weakref__",
        "_executor",
        "_file",
        "_finalizer",
        "_submit",
        "bytes_written",
        "committed",
        "dest",
        "part",
    )

    def __init__(
        self,
        dest: str | os.PathLike[str],
        *,
        cleaner: Cleaner | None = None,
        executor: Executor | None = None,
        dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(dest, str | os.PathLike):
            raise TypeError(
                f"StagingFile needs a str or os.PathLike destination, got {type(dest).__name__}"
            )
        self.dest = os.fspath(dest)
        if not self.dest or os.path.basename(self.dest) in ("", ".", ".."):
            raise ValueError(f"StagingFile destination must name a file, got {self.dest!r}")
        head, tail = os.path.split(self.dest)
        if dir is not None:
            head = _staging_dir(dir, head)
        self.part = os.path.join(head, f".{tail}.{os.urandom(6).hex()}.part")
        self._executor = executor
        self._file: Any = None
        self._submit = _submitter(cleaner)
        self._finalizer = on_collect(self, RemoveFile(self.part), cleaner=cleaner)
        self.bytes_written = 0
        self.committed = False

    async def open(self) -> StagingFile:
        # "x": never clobber a file of the same name (the random part makes a clash a bug).
        self._file = await aiofiles.open(self.part, "xb", executor=self._executor)
        return self

    async def write(self, data: bytes) -> None:
        if self._file is None:
            raise RuntimeError("StagingFile is not open: use 'async with' or await open()")
        await self._file.write(data)
        self.bytes_written += len(data)

    async def commit(self) -> None:
        """Flush, close and rename onto ``dest`` (atomic on one file system)."""
        if self._file is None:
            raise RuntimeError("StagingFile is not open")
        await self._file.close()
        self._file = None
        rename = asyncio.ensure_future(
            aiofiles.os.replace(self.part, self.dest, executor=self._executor)
        )
        try:
            await asyncio.shield(rename)
        except asyncio.CancelledError:
            # The rename runs on in its thread whatever happens here: learn its
            # outcome before passing the cancellation on, so that ``committed``
            # tells the truth and abort() never races a finished rename.
            await _wait_out(rename)
            if rename.exception() is None:
                self._committed()
            raise
        self._committed()

    def _committed(self) -> None:
        self._finalizer.detach()
        self.committed = True

    async def abort(self) -> None:
        """Close the partial file and submit its removal (nothing once committed)."""
        if self.committed:
            return
        file, self._file = self._file, None
        try:
            if file is not None:
                await file.close()
        finally:
            self._finalizer()

    async def __aenter__(self) -> StagingFile:
        return await self.open()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is None and not self.committed:
            try:
                await self.commit()
            except BaseException:
                await self.abort()
                raise
        elif not self.committed:
            await self.abort()

    def __repr__(self) -> str:
        state = "committed" if self.committed else ("open" if self._file else "closed")
        return f"<StagingFile {self.dest!r} {state} {self.bytes_written} bytes>"


def _staging_dir(dir: str | os.PathLike[str], dest_dir: str) -> str:
    """``dir`` as a str, if a rename from it can reach ``dest_dir``."""
    if not isinstance(dir, str | os.PathLike) or not isinstance(os.fspath(dir), str):
        raise TypeError(f"StagingFile dir must be a str path or a ScratchDir, got {dir!r}")
    path = os.fspath(dir)
    try:
        here, there = os.stat(path), os.stat(dest_dir or ".")
    except OSError as exc:
        raise ValueError(f"StagingFile needs existing directories: {exc}") from None
    if here.st_dev != there.st_dev:
        raise ValueError(
            f"StagingFile dir {path!r} is on another file system than the destination's "
            f"directory {dest_dir or '.'!r}, so the finished file could not be renamed into "
            "place: use a ScratchDir whose base is on that file system, or no dir (stage "
            "beside dest)"
        )
    return path


async def _wait_out(fut: asyncio.Future[Any]) -> None:
    """Wait for ``fut`` even through further cancellations; they are re-raised after."""
    cancelled = False
    while not fut.done():
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            cancelled = True
        except BaseException:
            break
    if cancelled:
        raise asyncio.CancelledError
