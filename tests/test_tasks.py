"""Task constructors check their arguments at once, in the caller's thread."""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import re
import weakref
from pathlib import Path
from typing import Any

import pytest

import fastcleanup as fc
from fastcleanup import _tasks, _unlink

# The public class, and the pure-Python one when the public class is built in C.
BUILDS = sorted({fc.RemoveFile, _tasks.PurePythonRemoveFile}, key=lambda c: c.__module__ + repr(c))
both_builds = pytest.mark.parametrize(
    "remove_file", BUILDS, ids=lambda c: "pure" if c is _tasks.PurePythonRemoveFile else "compiled"
)


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
        (lambda: fc.RemoveTree("/"), ValueError, "refuses to remove the root directory '/'"),
        (lambda: fc.RemoveTree("//"), ValueError, "the root directory"),
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


@both_builds
@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        (None, TypeError, "RemoveFile expects a str, bytes or os.PathLike path, got NoneType"),
        (42, TypeError, "got int"),
        ("", ValueError, "RemoveFile got an empty path"),
        (b"", ValueError, "empty path"),
        ("a\0b", ValueError, "RemoveFile got a path with a NUL byte: 'a\\x00b'"),
        (b"a\0b", ValueError, "NUL byte"),
    ],
)
def test_both_builds_check_a_path_alike(
    remove_file: type[fc.RemoveFile], path: object, error: type, message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        remove_file(path)  # type: ignore[arg-type]


@both_builds
def test_both_builds_take_every_spelling_of_a_path(
    remove_file: type[fc.RemoveFile], tmp_path: Path
) -> None:
    class Spelled:  # any os.PathLike, not only pathlib's
        def __fspath__(self) -> bytes:
            return b"/tmp/spelled"

    assert remove_file("/tmp/x").path == "/tmp/x"
    assert remove_file(path="/tmp/kw").path == "/tmp/kw"
    assert remove_file(tmp_path / "p").path == str(tmp_path / "p")
    assert remove_file(Spelled()).path == b"/tmp/spelled"
    assert type(remove_file(b"/tmp/b").path) is bytes
    assert remove_file("/tmp/x").kind == "remove_file"
    assert repr(remove_file("/tmp/x")) == "RemoveFile('/tmp/x')"
    with pytest.raises(TypeError):
        remove_file()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        remove_file("/a", "/b")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        remove_file(paths="/a")  # type: ignore[call-arg]


@both_builds
def test_both_builds_copy_pickle_and_subclass(remove_file: type[fc.RemoveFile]) -> None:
    import copy
    import pickle

    class Tagged(remove_file):  # type: ignore[valid-type,misc]
        def __init__(self, path: str, tag: str) -> None:
            super().__init__(path)
            self.tag = tag

    task = remove_file("/tmp/x")
    assert copy.copy(task).path == copy.deepcopy(task).path == "/tmp/x"
    if remove_file is fc.RemoveFile:  # pickle finds a class by its public name
        assert pickle.loads(pickle.dumps(task)).path == "/tmp/x"
    tagged = Tagged("/tmp/t", "mine")
    assert (tagged.path, tagged.tag, tagged.kind) == ("/tmp/t", "mine", "remove_file")
    with pytest.raises(ValueError, match="empty path"):
        Tagged("", "mine")
    task.path = "/tmp/moved"  # a plain attribute, as on the Python class
    assert task.path == "/tmp/moved"


@pytest.mark.skipif(not _unlink.COMPILED, reason="the compiled module is not built")
def test_a_burst_of_remove_file_gives_the_collector_nothing_to_do() -> None:
    """Made and queued by the hundred thousand, they neither count as
    allocations of the collector's youngest generation (which would start a
    collection every 700) nor sit in its lists for a full pass to scan; a
    subclass (which may hold anything) is tracked as usual."""

    class Mine(fc.RemoveFile):
        pass

    paths = [f"/tmp/f{i}" for i in range(5000)]
    gc.disable()  # the count below is the allocations, not what a collection left
    try:
        before = gc.get_count()[0]
        compiled = [fc.RemoveFile(p) for p in paths]
        after_compiled = gc.get_count()[0]
        pure = [_tasks.PurePythonRemoveFile(p) for p in paths]
        after_pure = gc.get_count()[0]
    finally:
        gc.enable()
    assert after_compiled - before <= 1  # the list itself
    assert after_pure - after_compiled >= len(paths)  # the class statement's instances count
    assert not any(map(gc.is_tracked, compiled))
    assert not gc.is_tracked(fc.RemoveFile(b"/tmp/x"))
    assert gc.is_tracked(Mine("/tmp/x"))
    assert all(map(gc.is_tracked, pure))


CALL_BUILDS = sorted({fc.Call, _tasks.PurePythonCall}, key=lambda c: c.__module__ + repr(c))
both_call_builds = pytest.mark.parametrize(
    "call", CALL_BUILDS, ids=lambda c: "pure" if c is _tasks.PurePythonCall else "compiled"
)


async def add_to(box: list[int], n: int = 1, *, times: int = 1) -> None:
    box[0] += n * times


@both_call_builds
def test_both_call_builds_refuse_what_is_no_async_function(call: type[fc.Call]) -> None:
    async def fn() -> None:
        pass

    coro = fn()
    for bad, message in [
        (42, "Call needs a callable, got int"),
        (print, "is synchronous"),
        (coro, r"write Call\(fn, x\), not Call\(fn\(x\)\)"),
    ]:
        with pytest.raises(TypeError, match=message):
            call(bad)  # type: ignore[arg-type]
    assert coro.cr_frame is None  # type: ignore[attr-defined]  # closed: no "never awaited"
    with pytest.raises(TypeError):
        call()  # type: ignore[call-arg]


@both_call_builds
async def test_both_call_builds_hold_and_run_their_arguments(call: type[fc.Call]) -> None:
    box = [0]
    task = call(add_to, box, 2, times=3)
    assert (task.fn, task.args, task.kwargs) == (add_to, (box, 2), {"times": 3})
    assert (task.kind, repr(task)) == ("call", f"Call({add_to!r}, ...)")
    await task.run()
    assert box == [6]
    await call(add_to, box).run()
    assert box == [7]
    await call(functools.partial(add_to, box, 10)).run()  # any callable returning an awaitable
    assert box == [17]
    with pytest.raises(TypeError, match="not an awaitable"):
        await call(int).run()  # type: ignore[arg-type]  # a class: its result is checked


@both_call_builds
async def test_both_call_builds_copy_pickle_and_subclass(call: type[fc.Call]) -> None:
    import copy
    import pickle

    box = [0]
    task = call(add_to, box, 2, times=3)
    twin = copy.copy(task)
    assert (twin.fn, twin.args, twin.kwargs) == (add_to, (box, 2), {"times": 3})
    if call is fc.Call:  # pickle finds a class by its public name
        back = pickle.loads(pickle.dumps(call(add_to, [5], times=2)))
        assert (back.fn, back.args, back.kwargs) == (add_to, ([5],), {"times": 2})

    class Logged(call):  # type: ignore[valid-type,misc]
        pass

    await Logged(add_to, box).run()
    assert box == [1]


@both_call_builds
def test_a_stored_call_on_its_own_object_is_still_collected(call: type[fc.Call]) -> None:
    """``self.cleanup = Call(self.close)`` is a reference cycle: the collector
    must see through the Call to free the object."""

    class Page:
        def __init__(self) -> None:
            self.cleanup = call(self.close)

        async def close(self) -> None:
            pass

    page = Page()
    ref = weakref.ref(page)
    del page
    gc.collect()
    assert ref() is None


@pytest.mark.skipif(not _unlink.COMPILED, reason="the compiled module is not built")
def test_a_compiled_call_is_one_object_for_the_collector() -> None:
    """The Python class costs three objects per task (itself, the args tuple,
    the kwargs dict), two of them counted by the collector; the C build one."""
    box = [0]
    gc.disable()
    try:
        before = gc.get_count()[0]
        compiled = [fc.Call(add_to, box) for _ in range(1000)]
        after_compiled = gc.get_count()[0]
        pure = [_tasks.PurePythonCall(add_to, box) for _ in range(1000)]
        after_pure = gc.get_count()[0]
    finally:
        gc.enable()
    assert after_compiled - before <= 1001  # the Calls, and the list
    assert after_pure - after_compiled >= 1900
    assert all(map(gc.is_tracked, compiled)) and all(map(gc.is_tracked, pure))


@pytest.mark.skipif(not _unlink.COMPILED, reason="the compiled module is not built")
@pytest.mark.parametrize(
    ("compiled", "pure"),
    [(fc.RemoveFile, _tasks.PurePythonRemoveFile), (fc.Call, _tasks.PurePythonCall)],
    ids=["RemoveFile", "Call"],
)
def test_a_c_type_is_documented_and_run_by_its_python_class(compiled: Any, pure: Any) -> None:
    """help(fc.RemoveFile) and what a task does are the Python class's, written once."""
    assert compiled is not pure and compiled.__module__ == pure.__module__
    assert pure.__doc__ and compiled.__doc__ == pure.__doc__
    assert compiled.run is pure.run
    assert compiled.kind == pure.kind
