"""submit(): its compiled and pure-Python builds held to one spec."""

from __future__ import annotations

import gc
import inspect
import weakref
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar, copy_context
from typing import Any

import pytest

import fastcleanup as fc
from fastcleanup import _intake, _unlink

Build = Callable[[list[Any]], Callable[..., None]]
BUILDS: list[Build] = [_intake.pure_submitter]
if _unlink.COMPILED:
    from fastcleanup._cbulk import submitter as compiled_submitter

    BUILDS.append(compiled_submitter)


def hot_list(put: Any, idle: bool, wake: Any, follow: Any = None) -> list[Any]:
    """A cleaner's ``hot``: [put, idle, wake, parent, follow], with a parent variable never set."""
    return [put, idle, wake, ContextVar("parent"), follow or put]


both_builds = pytest.mark.parametrize(
    "build", BUILDS, ids=lambda b: "pure" if b is _intake.pure_submitter else "compiled"
)


def test_the_cleaner_uses_the_compiled_build_when_there_is_one() -> None:
    submit = fc.Cleaner(registry=None).submit
    assert inspect.isbuiltin(submit) is _unlink.COMPILED
    assert inspect.isbuiltin(fc.submit) is _unlink.COMPILED


@both_builds
def test_both_builds_read_alike_to_help(build: Build) -> None:
    submit = build(hot_list([].append, False, lambda: None))
    assert inspect.getdoc(submit) == inspect.getdoc(_intake.pure_submitter(hot_list(1, False, 3)))
    assert "Never raises and never blocks" in (inspect.getdoc(submit) or "")
    assert list(inspect.signature(submit).parameters) == ["task"]


@both_builds
def test_submit_puts_the_task_and_wakes_only_a_sleeping_dispatcher(build: Build) -> None:
    queue: deque[object] = deque()
    wakes: list[int] = []
    hot: list[Any] = hot_list(queue.append, False, lambda: wakes.append(len(queue)))
    submit = build(hot)
    task = fc.RemoveFile("/a")
    submit(task)
    assert list(queue) == [task] and wakes == []
    hot[1] = True  # the dispatcher sleeps: the next submit wakes it, after the append
    submit(task)
    assert wakes == [2]
    refused: list[object] = []
    hot[:] = hot_list(refused.append, False, hot[2])  # what the cleaner does on shutdown
    submit(task)
    assert (len(queue), refused) == (2, [task])


@both_builds
def test_submit_swallows_an_exception_from_either_step(build: Build) -> None:
    def put(task: object) -> None:
        raise MemoryError

    def wake() -> None:
        raise RuntimeError("the loop is closed")

    calls: list[object] = []
    submit = build(hot_list(put, False, wake))
    submit(calls)
    submit = build(hot_list(calls.append, True, wake))
    submit("t")
    assert calls == ["t"]


@both_builds
@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_submit_lets_an_interrupt_through(build: Build, interrupt: type[BaseException]) -> None:
    # A signal handler's KeyboardInterrupt raised inside a step must reach
    # the program, as it would from any other call.
    def put(task: object) -> None:
        raise interrupt

    def wake() -> None:
        raise interrupt

    with pytest.raises(interrupt):
        build(hot_list(put, False, wake))("t")
    seen: list[object] = []
    with pytest.raises(interrupt):
        build(hot_list(seen.append, True, wake))("t")
    assert seen == ["t"]


@both_builds
def test_submit_takes_exactly_one_task(build: Build) -> None:
    submit = build(hot_list([].append, False, lambda: None))
    with pytest.raises(TypeError):
        submit()
    with pytest.raises(TypeError):
        submit(1, 2)
    with pytest.raises(TypeError):
        submit(job=1)
    with pytest.raises(TypeError):
        submit(1, task=1)
    submit(task="by name")  # the closure's parameter is called task


@pytest.mark.skipif(not _unlink.COMPILED, reason="the compiled module is not built")
def test_the_compiled_build_checks_its_list() -> None:
    with pytest.raises(TypeError):
        compiled_submitter((1, 2, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="5 items"):
        compiled_submitter([1, 2, 3])
    hot: list[Any] = hot_list([].append, False, lambda: None)
    submit = compiled_submitter(hot)
    hot.clear()  # only other hands do this; submit then does nothing
    submit("t")
    assert hot == []


def test_a_dropped_cleaner_is_collected_with_its_submit() -> None:
    # cleaner -> submit -> hot -> bound methods -> cleaner is a cycle.
    cleaner = fc.Cleaner(registry=None)
    cleaner.submit(fc.RemoveFile("/a"))  # before init: refused and counted
    ref = weakref.ref(cleaner)
    del cleaner
    gc.collect()
    assert ref() is None


@both_builds
def test_a_submit_from_a_cleanup_goes_to_follow_and_wakes_alike(build: Build) -> None:
    queue: list[object] = []
    followed: list[object] = []
    wakes: list[int] = []
    hot = hot_list(queue.append, True, lambda: wakes.append(1), followed.append)
    submit = build(hot)
    submit("app")
    copy_context().run(lambda: (hot[3].set("batch"), submit("cleanup")))
    submit("app again")  # the variable is set only in that context
    assert (queue, followed, wakes) == (["app", "app again"], ["cleanup"], [1, 1, 1])
    var, hot[3] = hot[3], None  # no cleanup runs: submit does not ask
    copy_context().run(lambda: (var.set("batch"), submit("no cleanup runs")))
    assert queue[-1] == "no cleanup runs" and followed == ["cleanup"]
