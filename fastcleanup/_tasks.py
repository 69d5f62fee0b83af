"""Cleanup tasks: what can be handed to a cleaner.

Every task has a ``kind`` (the ``task`` label of the metrics) and an
``async def run()``. The built-in path tasks are also recognised by the
cleaner's batch worker, which removes a whole batch of files in one
executor job instead of one hop per file.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from contextvars import ContextVar
from inspect import CO_COROUTINE
from types import FunctionType, MethodType
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, runtime_checkable

import aiofiles.os

from . import _tree, _unlink

__all__ = [
    "INVALID",
    "KINDS",
    "AClose",
    "Call",
    "CleanupTask",
    "RemoveFile",
    "RemoveTree",
    "kind_or_invalid",
]

T = TypeVar("T")

# The batch worker sets this so that tasks run outside the loop's default
# executor, which the host application needs for getaddrinfo and to_thread.
current_executor: ContextVar[Executor | None] = ContextVar("fastcleanup_executor", default=None)


@runtime_checkable
class CleanupTask(Protocol):
    """What :func:`submit` accepts: a ``kind`` and an ``async def run()``.

    ``kind`` is a non-empty str, the metrics' ``task`` label. ``"invalid"``
    is the label of objects that are no task: a task of that kind is
    failed as one of them, with reason ``invalid``, and never run.
    Write your own kind against it::

        class ClosePage:
            kind = "close_page"
            def __init__(self, page): self.page = page
            async def run(self) -> None: await self.page.close()
    """

    kind: str

    async def run(self) -> None: ...


def _fspath(path: object, what: str) -> str | bytes:
    if type(path) is not str:  # str is the common case: skip the generic checks
        if not isinstance(path, str | bytes | os.PathLike):
            raise TypeError(
                f"{what} expects a str, bytes or os.PathLike path, got {type(path).__name__}"
            )
        path = os.fspath(path)
    if not path:
        raise ValueError(f"{what} got an empty path")
    if ("\0" if isinstance(path, str) else b"\0") in path:
        raise ValueError(f"{what} got a path with a NUL byte: {path!r}")
    return path


class RemoveFile:
    """Remove one file; a file that is already gone counts as completed.

    >>> fc.submit(fc.RemoveFile("/tmp/crawl/page-17.html"))
    """

    __slots__ = ("path",)
    kind = "remove_file"

    def __init__(self, path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> None:
        # A plain str is the burst case: one test, no call.
        if type(path) is str and path and "\0" not in path:
            self.path: str | bytes = path
        else:
            self.path = _fspath(path, "RemoveFile")

    async def run(self) -> None:
        try:
            await aiofiles.os.remove(self.path, executor=current_executor.get())
        except FileNotFoundError:
            pass

    def __repr__(self) -> str:
        return f"RemoveFile({self.path!r})"


def _compiled(py: type[T], c: type[T], names: tuple[str, ...]) -> type[T]:
    """``c``, the C build of class ``py``, completed with ``py``'s ``names``.

    The C types (``_ctask.c``) only make and hold a task, and do it cheaper
    than a class statement: no Python frame per construction, and fewer
    objects for the garbage collector to count, which in a burst of
    100,000 is the difference between no collection and some 140 of them,
    a full one (about 10 ms) among them. What a task does (``run``), its
    ``kind`` and its repr stay written once, in ``py``, which is also the
    fallback when the C module is not built.
    """
    for name in names:
        setattr(c, name, py.__dict__[name])
    c.__module__ = py.__module__
    return c


PurePythonRemoveFile: Final = RemoveFile  # the fallback; the tests hold both builds to one spec
if _unlink.COMPILED and not TYPE_CHECKING:
    from ._cbulk import RemoveFile as _CRemoveFile

    # No collector header at all (it holds a str or bytes), and 73 ns to make
    # instead of 257; __slots__ lets copy and pickle save its path.
    RemoveFile = _compiled(
        RemoveFile, _CRemoveFile, ("__doc__", "__slots__", "kind", "run", "__repr__")
    )


class RemoveTree:
    """Remove a directory tree without ever following a symlink out of it.

    A path that is itself a symlink loses the link only; a tree already gone
    counts as completed; a path that is a file fails with NotADirectoryError.
    The walk goes on past entries it cannot remove and then fails naming
    them; a tree still there after it (a live writer) is walked again for
    up to the cleaner's ``busy_timeout``, then fails as ``Busy``.

    >>> fc.submit(fc.RemoveTree(profile_dir))
    """

    __slots__ = ("path",)
    kind = "remove_tree"

    def __init__(self, path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> None:
        self.path = _fspath(path, "RemoveTree")
        # Path("") is ".", and rmtree(".") empties the working directory: refuse
        # the spellings that are always a mistake.
        raw = os.fsdecode(self.path)
        last = os.path.basename(raw.rstrip(os.sep))
        norm = os.path.normpath(raw)
        if norm in (os.sep, "//"):
            raise ValueError(
                f"RemoveTree refuses to remove the root directory {self.path!r}: "
                "name the directory to remove"
            )
        if norm in (".", "..") or last in ("..", "."):
            raise ValueError(
                f"RemoveTree refuses {self.path!r}: it names the working directory or a "
                "parent; name the directory itself"
            )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(current_executor.get(), remove_tree_sync, self.path)

    def __repr__(self) -> str:
        return f"RemoveTree({self.path!r})"


def remove_tree_sync(path: str | bytes) -> None:
    """Remove the tree at ``path`` in this thread (``RemoveTree.run``'s work), unconfined."""
    _tree.remove_tree(path, None, _tree.DEFAULT_BUSY_TIMEOUT)


class AClose:
    """Close an async resource: ``await r.aclose()``, else an awaitable ``r.close()``.

    >>> fc.submit(fc.AClose(page))   # a browser page, a client session, ...
    """

    __slots__ = ("resource",)
    kind = "aclose"

    def __init__(self, resource: object) -> None:
        if not callable(getattr(resource, "aclose", None)) and not callable(
            getattr(resource, "close", None)
        ):
            raise TypeError(
                f"AClose needs an object with aclose() or an awaitable close(); "
                f"{type(resource).__name__} has neither"
            )
        self.resource = resource

    async def run(self) -> None:
        aclose = getattr(self.resource, "aclose", None)
        result = aclose() if callable(aclose) else self.resource.close()  # type: ignore[attr-defined]
        if inspect.isawaitable(result):
            await result
        elif not callable(aclose):
            raise TypeError(f"{type(self.resource).__name__}.close() returned no awaitable")

    def __repr__(self) -> str:
        return f"AClose({self.resource!r})"


def _is_async_def(fn: object) -> bool:
    """True for an ``async def`` function or a method bound to one, cheaply."""
    if type(fn) is MethodType:
        fn = fn.__func__
    return type(fn) is FunctionType and bool(fn.__code__.co_flags & CO_COROUTINE)


def _check_callable(fn: object) -> None:
    """Refuse at once what ``Call`` could only fail on later, on the loop.

    Accepted: an ``async def`` function, or a method, ``functools.partial``
    or ``functools.wraps`` decorator of one; a function marked with
    ``inspect.markcoroutinefunction``; any other callable object (a class,
    an object with ``__call__``), whose result must then be awaitable.
    Refused: a coroutine, a builtin, and a plain ``def`` or ``lambda``,
    even one that returns an awaitable: nothing tells it from a function
    that does the work synchronously, on the loop thread, until it runs.
    """
    if inspect.iscoroutine(fn):
        fn.close()  # no "never awaited" warning for a refused coroutine
        raise TypeError(
            "Call takes an async function and its arguments, not a coroutine: "
            "write Call(fn, x), not Call(fn(x))"
        )
    if not callable(fn):
        raise TypeError(f"Call needs a callable, got {type(fn).__name__}")
    if _is_sync(fn):
        raise TypeError(
            f"Call needs an async function; {fn!r} is synchronous. Write the work as an "
            "async def (a plain def or lambda is refused even if it returns an awaitable); "
            "remove files with RemoveFile, close resources with AClose"
        )


def _is_sync(fn: object) -> bool:
    """True for a builtin, a plain ``def`` or ``lambda``, or a partial or method of one."""
    try:
        if inspect.iscoroutinefunction(fn):  # also marked and partial-wrapped async functions
            return False
        while True:  # what is called in the end, through partials and bound methods
            if isinstance(fn, functools.partial):
                fn = fn.func
            elif type(fn) is MethodType:
                fn = fn.__func__
            else:
                break
        if inspect.isbuiltin(fn):
            return True
        # A decorator's plain wrapper around an async def (functools.wraps) is fine.
        return type(fn) is FunctionType and not inspect.iscoroutinefunction(inspect.unwrap(fn))
    except Exception:
        return False  # an odd callable: accepted, and its result is checked when it runs


class Call:
    """Await ``async_fn(*args, **kwargs)``.

    >>> fc.submit(fc.Call(session.delete, f"/scratch/{job_id}"))
    """

    __slots__ = ("args", "fn", "kwargs")
    kind = "call"

    def __init__(
        self, async_fn: Callable[..., Awaitable[object]], /, *args: Any, **kwargs: Any
    ) -> None:
        if not _is_async_def(async_fn):  # the full checks cost ~1 µs: only when needed
            _check_callable(async_fn)
        self.fn = async_fn
        self.args = args
        self.kwargs = kwargs

    async def run(self) -> None:
        result = self._call()
        if not inspect.isawaitable(result):
            raise TypeError(f"Call: {self.fn!r} returned {type(result).__name__}, not an awaitable")
        await result

    def _call(self) -> Any:
        """``fn(*args, **kwargs)``, not awaited: the batch worker's way in."""
        return self.fn(*self.args, **self.kwargs)

    def __getnewargs_ex__(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        # How copy and pickle rebuild a Call of either build.
        return (self.fn, *self.args), self.kwargs

    def __repr__(self) -> str:
        return f"Call({self.fn!r}, ...)"


PurePythonCall: Final = Call  # the fallback, as PurePythonRemoveFile
if _unlink.COMPILED and not TYPE_CHECKING:
    from ._cbulk import Call as _CCall

    # One collected object instead of three, and about a fifth of the time to make.
    Call = _compiled(Call, _CCall, ("__doc__", "kind", "run", "__getnewargs_ex__", "__repr__"))
    Call._check_callable = staticmethod(_check_callable)  # the checks C leaves to Python


INVALID: Final = "invalid"  # the kind of anything that is no cleanup task

KINDS: Final[dict[type, str]] = {
    RemoveFile: RemoveFile.kind,
    RemoveTree: RemoveTree.kind,
    AClose: AClose.kind,
    Call: Call.kind,
}


def kind_or_invalid(task: object) -> str:
    """The ``task`` label of ``task``: its ``kind``, or ``"invalid"`` if it is no task."""
    kind = KINDS.get(type(task))
    if kind is not None:
        return kind
    try:
        kind = getattr(task, "kind", None)
        run = getattr(task, "run", None)
    except Exception:
        return INVALID
    if type(kind) is not str or not kind or not callable(run):
        return INVALID
    return kind
