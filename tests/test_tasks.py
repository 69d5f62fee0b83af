"""Task constructors check their arguments at once, in the caller's thread."""

from __future__ import annotations

import asyncio
import gc
import os
from pathlib import Path

import pytest

import fastcleanup as fc
from fastcleanup import _unlink


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: fc.RemoveFile(None), TypeError, "str, bytes or os.PathLike"),  # type: ignore[arg-type]
        (lambda: fc.RemoveFile(42), TypeError, "got int"),  # type: ignore[arg-type]
        (lambda: fc.RemoveFile(""), ValueError, "empty path"),
        (lambda: fc.RemoveFile("a\0b"), ValueError, "NUL byte"),
        (lambda: fc.RemoveFile(b"a\0b"), ValueError, "NUL byte"),
        (lambda: fc.RemoveTree(["/tmp"]), TypeError, "got list"),  # type: ignore[arg-type]
        (lambda: fc.RemoveTree(Path("")), ValueError, "refuses"),  # Path("") is "."
        (lambda: fc.RemoveTree("/"), ValueError, "refuses"),
        (lambda: fc.RemoveTree("/tmp/x/.."), ValueError, "refuses"),
        (lambda: fc.AClose(object()), TypeError, "aclose"),
        (lambda: fc.Call(42), TypeError, "callable"),  # type: ignore[arg-type]
        (lambda: fc.Call(os.remove, "/tmp/x"), TypeError, "synchronous"),  # type: ignore[arg-type]
    ],
)
def test_constructors_reject_bad_arguments(make: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        make()  # type: ignore[operator]


def test_call_refuses_a_coroutine_without_leaking_it() -> None:
    """Call(fn()) instead of Call(fn): refused, and the coroutine is closed (no warning)."""

    async def fn() -> None:
        pass

    coro = fn()
    with pytest.raises(TypeError, match=r"Call\(fn, x\)"):
        fc.Call(coro)  # type: ignore[arg-type]
    assert coro.cr_frame is None  # type: ignore[attr-defined]  # closed, so no "never awaited" RuntimeWarning


def test_paths_keep_their_type() -> None:
    assert fc.RemoveFile(Path("/tmp/x")).path == "/tmp/x"
    assert fc.RemoveFile(b"/tmp/\xff").path == b"/tmp/\xff"  # non-UTF-8 names stay bytes
    assert fc.RemoveTree("/tmp/y").kind == "remove_tree"
    assert repr(fc.RemoveFile("/tmp/x")) == "RemoveFile('/tmp/x')"


def test_builtin_tasks_satisfy_the_protocol() -> None:
    class R:
        async def aclose(self) -> None:
            pass

    async def fn() -> None:
        pass

    for task in (fc.RemoveFile("/x"), fc.RemoveTree("/x"), fc.AClose(R()), fc.Call(fn)):
        assert isinstance(task, fc.CleanupTask)
        assert isinstance(task.kind, str)


async def test_tasks_run_on_their_own_too(scratch: Path) -> None:
    """run() works outside a cleaner (on the loop's default executor)."""
    (scratch / "f").write_text("x")
    (scratch / "d" / "e").mkdir(parents=True)
    await fc.RemoveFile(scratch / "f").run()
    await fc.RemoveFile(scratch / "f").run()  # already gone: fine
    await fc.RemoveTree(scratch / "d").run()
    assert os.listdir(scratch) == []
    got: list[int] = []

    async def add(x: int, *, y: int) -> None:
        await asyncio.sleep(0)
        got.append(x + y)

    await fc.Call(add, 1, y=2).run()
    assert got == [3]


@pytest.mark.skipif(not _unlink.COMPILED, reason="the compiled module is not built")
def test_remove_file_is_not_tracked_by_the_gc() -> None:
    """A queued burst of removals gives the garbage collector nothing to scan;
    a subclass (which may hold anything) stays tracked."""

    class Mine(fc.RemoveFile):
        pass

    assert not gc.is_tracked(fc.RemoveFile("/tmp/x"))
    assert not gc.is_tracked(fc.RemoveFile(b"/tmp/x"))
    assert gc.is_tracked(Mine("/tmp/x"))
