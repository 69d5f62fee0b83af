"""Loops that die, interpreters that exit, processes that fork: nothing is lost or run twice."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import textwrap
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import fastcleanup as fc
from tests.conftest import loop_factory
from tests.helpers import assert_conserved, make_files

MakeCleaner = Callable[..., fc.Cleaner]


def run_on(kind: str, coro: object) -> object:
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_loop_death_requeues_and_next_loop_adopts(
    loop_kind: str, make_cleaner: MakeCleaner
) -> None:
    """asyncio.run returns without shutdown() mid-burst; the next run finishes every task once."""
    cleaner = make_cleaner(max_batches=4, batch_size=64)
    runs: Counter[int] = Counter()

    ran = asyncio.Event()

    async def slow(i: int) -> None:
        await asyncio.sleep(0.05)
        runs[i] += 1
        ran.set()

    async def first() -> None:
        cleaner.init_worker()
        for i in range(1000):
            cleaner.submit(fc.Call(slow, i))
        # Then some batches are done, some in flight, most queued.
        await asyncio.wait_for(ran.wait(), timeout=10)

    run_on(loop_kind, first())
    mid = cleaner.stats()
    assert 0 < sum(runs.values()) < 1000
    assert mid.in_flight == 0  # cancelled batches went back to the queue
    assert mid.queued == 1000 - sum(runs.values())
    assert cleaner.worker_inited()  # the loop is dead, the cleaner still accepts
    assert_conserved(mid)

    async def second() -> None:
        cleaner.init_worker()
        assert await cleaner.drain(timeout=30)
        await cleaner.shutdown()

    run_on(loop_kind, second())
    assert sorted(runs) == list(range(1000))
    assert set(runs.values()) == {1}
    stats = cleaner.stats()
    assert (stats.submitted, stats.completed) == (1000, 1000)
    assert cleaner._tally.taken_by == {"call": 1000}  # requeued tasks are not counted twice
    assert_conserved(stats)


def test_closed_loop_without_cancellation_is_adopted(
    loop_kind: str, make_cleaner: MakeCleaner
) -> None:
    """A loop closed with tasks still pending (no asyncio.run): its batches are taken back."""
    cleaner = make_cleaner()
    runs: Counter[int] = Counter()
    gate = asyncio.Event()

    async def wait_then_count(i: int) -> None:
        await gate.wait()
        runs[i] += 1

    loop = loop_factory(loop_kind)()
    try:

        async def start() -> None:
            cleaner.init_worker()
            for i in range(10):
                cleaner.submit(fc.Call(wait_then_count, i))
            await asyncio.sleep(0.05)

        loop.run_until_complete(start())
        assert cleaner.stats().in_flight == 10
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its pending tasks are abandoned on purpose
            loop.close()

    async def again() -> None:
        nonlocal gate
        gate = asyncio.Event()
        gate.set()
        cleaner.init_worker()
        assert await cleaner.drain(timeout=5)
        await cleaner.shutdown()

    run_on(loop_kind, again())
    assert runs == Counter(range(10))
    assert cleaner._tally.taken_by == {"call": 10}


def _move_lines() -> list[Any]:
    """Each line of the dispatcher's move of tasks from the queue to a batch."""
    lines, start = inspect.getsourcelines(fc.Cleaner._dispatch)
    first = next(i for i, text in enumerate(lines) if "before = (self._taken" in text)
    last = next(i for i, text in enumerate(lines) if "batch.worker = loop.create_task" in text)
    return [
        pytest.param(start + i, id=lines[i].strip()[:32])
        for i in range(first, last + 1)
        if lines[i].strip() and not lines[i].strip().startswith("#")
    ]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("line", _move_lines())
def test_an_exception_anywhere_in_a_move_loses_no_task(
    loop_kind: str, scratch: Path, line: int
) -> None:
    """SystemExit from a signal.signal() handler can land before any line of
    the move from queue to batch; a tracer raises it there, in the third move.
    The tasks in hand go back to the queue, counted once, and a later loop
    removes every file."""
    # In a child process: on CPython 3.11, an exception raised by a trace
    # function inside a coroutine that asyncio's C Task steps leaks the
    # interpreter's recursion depth, and later compiles in the same process
    # fail ("AST constructor recursion depth mismatch").
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from tests.test_lifecycle import raise_in_a_move as r; r(*sys.argv[1:])",
            loop_kind,
            str(line),
            str(scratch),
        ],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.endswith("every file removed\n"), proc.stderr


def raise_in_a_move(loop_kind: str, lineno: str, scratch: str) -> None:
    """The child of the test above: raise SystemExit at ``lineno`` in the third move."""
    line = int(lineno)
    cleaner = fc.Cleaner(batch_size=16, max_batches=64, registry=None)
    files = make_files(Path(scratch), 200)
    code = fc.Cleaner._dispatch.__code__
    hits = 0

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code is not code:
            return None
        return local

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal hits
        if event == "line" and frame.f_lineno == line:
            hits += 1
            if hits == 3:
                sys.settrace(None)
                raise SystemExit("from a signal handler")
        return local

    async def run() -> None:
        cleaner.init_worker()
        for p in files:
            cleaner.submit(fc.RemoveFile(p))
        sys.settrace(tracer)
        try:
            await asyncio.sleep(1)  # the dispatcher dies long before this ends
        finally:
            sys.settrace(None)

    try:
        run_on(loop_kind, run())
    except SystemExit:
        pass
    else:
        raise AssertionError("no SystemExit")
    assert hits == 3, f"the tracer never reached line {line}"
    mid = cleaner.stats()
    assert (mid.submitted, mid.in_flight, mid.failed) == (200, 0, 0), mid
    assert_conserved(mid)

    async def again() -> None:
        cleaner.init_worker()
        assert await cleaner.drain(timeout=10)
        await cleaner.shutdown()

    run_on(loop_kind, again())
    left = [p for p in files if os.path.exists(p)]
    assert left == [], left
    stats = cleaner.stats()
    assert (stats.submitted, stats.completed) == (200, 200), stats
    assert cleaner._tally.taken_by == {"remove_file": 200}, cleaner._tally.taken_by
    print("every file removed")


def test_submit_never_raises_on_a_closed_loop(loop_kind: str, make_cleaner: MakeCleaner) -> None:
    cleaner = make_cleaner()

    async def start() -> None:
        cleaner.init_worker()

    run_on(loop_kind, start())  # the loop is closed now
    for bad in (None, 42, fc.RemoveFile("/nonexistent/x"), object()):
        cleaner.submit(bad)  # type: ignore[arg-type]
    assert cleaner.stats().queued == 4


def run_script(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("use_uvloop", ["0", "1"], ids=["asyncio", "uvloop"])
def test_exit_without_shutdown_removes_queued_files(scratch: Path, use_uvloop: str) -> None:
    paths = make_files(scratch, 10_000)
    proc = run_script(
        """
        import asyncio, atexit, os, sys

        def report():  # registered first, so it runs after fastcleanup's exit work
            s = fc.stats()
            print(s.completed, s.dropped_at_exit, fc._default.default_cleaner._tally.taken_by)

        atexit.register(report)
        import fastcleanup as fc

        async def main():
            fc.init_worker()
            for name in os.listdir(sys.argv[1]):
                fc.submit(fc.RemoveFile(os.path.join(sys.argv[1], name)))
            # return at once: most of it is still queued or in flight

        fc.run(main(), use_uvloop=sys.argv[2] == "1")
        s = fc.stats()
        print(s.submitted, s.queued + s.in_flight)
        """,
        str(scratch),
        use_uvloop,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    first, last = proc.stdout.splitlines()
    submitted, pending = map(int, first.split())
    assert submitted == len(paths)
    assert pending > 0  # or the test proves nothing about the exit path
    assert os.listdir(scratch) == []
    assert last == f"{len(paths)} 0 {{'remove_file': {len(paths)}}}"


@pytest.mark.timeout(120)
def test_at_exit_a_task_whose_path_raises_fails_alone(scratch: Path) -> None:
    # The exit handler caught only OSError: any other exception ended it,
    # and every task queued behind that one was neither run nor counted.
    paths = make_files(scratch, 2000)
    proc = run_script(
        """
        import asyncio, atexit, os, sys

        def report():  # registered first, so it runs after fastcleanup's exit work
            s = fc.stats()
            print(s.completed, s.failed, s.dropped_at_exit, s.queued + s.in_flight)

        atexit.register(report)
        import fastcleanup as fc

        class PathRaises(fc.RemoveFile):
            @property
            def path(self):
                raise RuntimeError("no path here")

            @path.setter
            def path(self, value):
                pass

        async def start():
            fc.init_worker()

        loop = asyncio.new_event_loop()
        loop.run_until_complete(start())
        # The loop never runs again: all of this waits for the exit handler.
        names = sorted(os.listdir(sys.argv[1]))
        for name in names[:1000]:
            fc.submit(fc.RemoveFile(os.path.join(sys.argv[1], name)))
        fc.submit(PathRaises("/x"))  # behind a thousand, ahead of a thousand
        for name in names[1000:]:
            fc.submit(fc.RemoveFile(os.path.join(sys.argv[1], name)))
        """,
        str(scratch),
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    # Logged by the exit handler (the loop's workers word it otherwise).
    assert "failed (error): RuntimeError('no path here')" in proc.stderr, proc.stderr
    assert os.listdir(scratch) == []
    assert proc.stdout.split() == [str(len(paths)), "1", "0", "0"]


def test_submit_never_raises_at_interpreter_exit(scratch: Path) -> None:
    """Submits from __del__ during teardown, from atexit, after shutdown: never an error."""
    proc = run_script(
        """
        import atexit, sys
        import fastcleanup as fc

        class Guard:
            # Bind what __del__ needs: module globals may be None by then.
            def __del__(self, submit=fc.submit, task=fc.RemoveFile(sys.argv[1] + "/late")):
                submit(task)
                submit(None)

        async def main():
            fc.init_worker()
            await fc.shutdown()
            fc.submit(fc.RemoveFile(sys.argv[1] + "/after-shutdown"))  # dropped, counted

        fc.run(main())
        atexit.register(lambda: fc.submit(42))
        atexit.register(lambda: fc.submit(fc.RemoveFile(sys.argv[1] + "/atexit")))
        keep = Guard()  # a module global: collected while the interpreter tears down
        keep.cycle = keep
        print(fc.stats().dropped_before_init)
        """,
        str(scratch),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.strip() == "1"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_starts_clean(
    loop_kind: str, scratch: Path, make_cleaner: MakeCleaner
) -> None:
    cleaner = make_cleaner()
    paths = make_files(scratch, 50)

    async def start() -> None:
        cleaner.init_worker()

    loop = loop_factory(loop_kind)()
    loop.run_until_complete(start())
    for p in paths:  # the loop is not running: all 50 stay queued
        cleaner.submit(fc.RemoveFile(p))
    assert cleaner.stats().queued == 50

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads: on purpose
        pid = os.fork()
    if pid == 0:  # the child: must run none of the parent's tasks
        code = 1
        try:
            ok = not cleaner.worker_inited() and cleaner.stats() == fc.Stats(0, 0, 0, 0, 0, 0, 0)

            async def child() -> bool:
                cleaner.init_worker()
                drained = await cleaner.drain(timeout=5)
                await cleaner.shutdown()
                return drained

            ok = ok and asyncio.run(child()) and len(os.listdir(scratch)) == 50
            code = 0 if ok else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(os.listdir(scratch)) == 50

    async def finish() -> None:
        assert await cleaner.drain(timeout=10)
        await cleaner.shutdown()

    loop.run_until_complete(finish())
    loop.close()
    assert os.listdir(scratch) == []  # the parent still owned them and ran them


@pytest.mark.timeout(60)
def test_exit_waits_for_the_cleanups_a_live_loop_in_another_thread_runs(scratch: Path) -> None:
    """In flight on a loop that outlives the main thread: finished and counted before the end."""
    tree = scratch / "profile"
    tree.mkdir()
    make_files(tree, 500)
    proc = run_script(
        LIVE_LOOP
        + textwrap.dedent(
            """
            async def settle():  # a browser's exit, say: the removal waits for it
                await asyncio.sleep(0.5)

            fc.submit(fc.InOrder(fc.Call(settle), fc.RemoveTree(sys.argv[1])))
            while fc.stats().in_flight == 0:
                time.sleep(0.001)
            """
        ),
        str(tree),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:4] == ["2", "0", "0", "0"]  # completed, failed, dropped, in flight
    assert not tree.exists()


@pytest.mark.timeout(60)
def test_exit_waits_for_a_live_loop_in_another_thread_no_longer_than_exit_timeout() -> None:
    """Past exit_timeout what that loop still runs is cancelled, handed back and dropped."""
    proc = run_script(
        LIVE_LOOP
        + textwrap.dedent(
            """
            async def hang():
                await asyncio.Event().wait()

            fc.submit(fc.Call(hang))
            while fc.stats().in_flight == 0:
                time.sleep(0.001)
            atexit.register(lambda: print(time.monotonic(), end=" "))  # runs before fastcleanup's
            """
        ),
        "exit_timeout=0.5",
    )
    assert proc.returncode == 0, proc.stderr
    began, completed, failed, dropped, in_flight, ended = map(float, proc.stdout.split())
    assert (completed, failed, dropped, in_flight) == (0, 0, 1, 0)  # handed back, dropped
    assert 0.4 < ended - began < 5  # waited for it, then gave up at exit_timeout
    assert "dropped 1 queued task(s) at exit, unrun: call 1" in proc.stderr, proc.stderr


@pytest.mark.timeout(60)
def test_exit_names_what_it_leaves_on_a_live_loop_that_does_not_respond() -> None:
    """A loop stuck in a blocking call cannot take its batches back: they are named."""
    proc = run_script(
        LIVE_LOOP
        + textwrap.dedent(
            """
            async def stick():  # blocks its loop's thread, holding its batch in flight
                await asyncio.sleep(0.05)
                time.sleep(30)

            fc.submit(fc.Call(stick))
            while fc.stats().in_flight == 0:
                time.sleep(0.001)
            """
        ),
        "exit_timeout=0.3",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:4] == ["0", "0", "0", "1"]  # completed, failed, dropped, in flight
    assert "left 1 task(s) in flight at exit on a loop in another thread" in proc.stderr


# A loop serving in a daemon thread, as when the main thread ends first; the
# last line of the output is the default cleaner's stats after its exit work.
LIVE_LOOP = textwrap.dedent(
    """
    import asyncio, atexit, os, sys, threading, time

    def report():  # registered first, so it runs after fastcleanup's exit work
        s = fc.stats()
        print(s.completed, s.failed, s.dropped_at_exit, s.in_flight, time.monotonic())

    atexit.register(report)
    import fastcleanup as fc

    if sys.argv[1].startswith("exit_timeout="):
        fc.configure(exit_timeout=float(sys.argv[1].partition("=")[2]), task_timeout=60)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def serve():
        fc.init_worker()
        started.set()
        await asyncio.Event().wait()

    threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True).start()
    started.wait(10)
    """
)


@pytest.mark.timeout(60)
def test_exit_with_a_loop_alive_in_a_daemon_thread(scratch: Path) -> None:
    """The loop still runs in a background thread at exit: it is stopped, the queue is run."""
    make_files(scratch, 2_000)
    proc = run_script(
        LIVE_LOOP
        + textwrap.dedent(
            """
            gate = threading.Event()
            # Make the loop thread busy so the queue is still full when main exits.
            loop.call_soon_threadsafe(gate.wait, 0.5)
            for name in os.listdir(sys.argv[1]):
                fc.submit(fc.RemoveFile(os.path.join(sys.argv[1], name)))
            print(fc.stats().queued)
            """
        ),
        str(scratch),
    )
    assert proc.returncode == 0, proc.stderr
    queued, *counts, _ = proc.stdout.split()
    assert int(queued) > 0
    assert counts == ["2000", "0", "0", "0"]  # completed, failed, dropped, in flight
    assert os.listdir(scratch) == []


@pytest.mark.timeout(60)
def test_exit_takes_back_what_a_loop_alive_in_a_daemon_thread_has_in_flight(
    scratch: Path,
) -> None:
    """As from a dying loop: its files are removed, and an async cleanup it was
    running is counted as dropped at exit and named, none left in flight."""
    make_files(scratch, 2_000)
    proc = run_script(
        """
        import asyncio, atexit, os, sys, threading, time

        atexit.register(lambda: print(fc.stats()))  # runs after fastcleanup's exit work
        import fastcleanup as fc

        fc.configure(exit_timeout=1.0)  # how long exit waits for hang() before taking it back

        loop = asyncio.new_event_loop()
        started = threading.Event()

        async def hang():
            await asyncio.Event().wait()

        async def serve():
            fc.init_worker()
            fc.submit(fc.Call(hang))
            for name in os.listdir(sys.argv[1]):
                fc.submit(fc.RemoveFile(os.path.join(sys.argv[1], name)))
            started.set()
            await asyncio.Event().wait()

        threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True).start()
        started.wait(10)
        while not fc.stats().in_flight:  # the loop's batches have started
            time.sleep(0.001)
        """,
        str(scratch),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "Stats(submitted=2001, dropped_before_init=0, completed=2000, failed=0, "
        "dropped_at_exit=1, queued=0, in_flight=0, swept=0)"
    )
    assert "dropped 1 queued task(s) at exit, unrun: call 1" in proc.stderr, proc.stderr
    assert os.listdir(scratch) == []


def test_shutdown_must_run_on_the_cleaners_loop(loop_kind: str, make_cleaner: MakeCleaner) -> None:
    import threading

    cleaner = make_cleaner()
    other = loop_factory(loop_kind)()
    started, release = threading.Event(), threading.Event()

    async def owner() -> None:
        cleaner.init_worker()
        started.set()
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        await cleaner.shutdown()

    thread = threading.Thread(target=other.run_until_complete, args=(owner(),))
    thread.start()
    try:
        assert started.wait(5)

        async def intruder() -> None:
            with pytest.raises(RuntimeError, match="await shutdown"):
                await cleaner.shutdown()
            with pytest.raises(RuntimeError, match="another loop"):
                cleaner.init_worker()

        run_on(loop_kind, intruder())
        assert cleaner.worker_inited()  # the refused shutdown changed nothing
    finally:
        release.set()
        thread.join()
        other.close()
    assert not cleaner.worker_inited()
