"""Mistakes a new user makes, each answered at once with what to do instead."""

from __future__ import annotations

import functools
import inspect
import logging
import re
import subprocess
import sys
import threading
import types
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import fastcleanup as fc
from fastcleanup import _dropwarning, _tasks

CALL_BUILDS = sorted({fc.Call, _tasks.PurePythonCall}, key=lambda c: c.__module__ + repr(c))
both_call_builds = pytest.mark.parametrize(
    "call", CALL_BUILDS, ids=lambda c: "pure" if c is _tasks.PurePythonCall else "compiled"
)


class Records(logging.Handler):
    """Collects the ``fastcleanup`` logger's records; ``arrived`` is set by the first."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.arrived = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.arrived.set()


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("fastcleanup")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def inline_threads(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Run the warning's thread inline, so that every warning claimed is logged on return."""
    started: list[object] = []

    def start_new_thread(fn: Callable[[], None], args: tuple[()]) -> int:
        started.append(fn)
        fn(*args)
        return 0

    monkeypatch.setattr(
        _dropwarning, "_thread", types.SimpleNamespace(start_new_thread=start_new_thread)
    )
    return started


def test_the_first_drop_before_init_warns_once_and_the_counter_keeps_counting(
    records: Records, inline_threads: list[object]
) -> None:
    cleaner = fc.Cleaner(registry=None, name="early")
    for _ in range(100):
        cleaner.submit(fc.RemoveFile("/nonexistent/fastcleanup-footgun"))
    cleaner.submit(None)  # type: ignore[arg-type]  # another kind: still quiet

    assert len(inline_threads) == 1
    [record] = records.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "'early'" in message and "'remove_file'" in message
    assert "Call init_worker() inside the running event loop" in message
    assert cleaner.stats().dropped_before_init == 101


async def test_drops_after_shutdown_stay_quiet(
    records: Records, inline_threads: list[object]
) -> None:
    # A service that stops while finalizers still submit: expected, counted, not warned.
    cleaner = fc.Cleaner(registry=None)
    cleaner.init_worker()
    await cleaner.shutdown()
    cleaner.submit(fc.RemoveFile("/nonexistent/fastcleanup-footgun"))
    assert (inline_threads, records.records) == ([], [])
    assert cleaner.stats().dropped_before_init == 1


def test_the_warning_is_logged_off_the_submitting_thread(records: Records) -> None:
    cleaner = fc.Cleaner(registry=None, name="off-thread")
    cleaner.submit(fc.RemoveFile("/nonexistent/fastcleanup-footgun"))
    assert records.arrived.wait(30)
    [record] = records.records
    assert record.thread != threading.get_ident()
    assert "init_worker()" in record.getMessage()


def test_the_refusal_never_waits_for_a_lock_that_logging_holds(records: Records) -> None:
    # A handler whose lock the submitting thread already holds: what a __del__
    # or signal handler sees when it interrupts a log call. Logging inline
    # would deadlock here; the refusal must return at once.
    held = threading.Lock()

    class Locked(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            with held:
                records.emit(record)

    logger = logging.getLogger("fastcleanup")
    locked = Locked()
    logger.removeHandler(records)
    logger.addHandler(locked)
    cleaner = fc.Cleaner(registry=None, name="locked")
    try:
        with held:
            done = threading.Event()

            def submit() -> None:
                cleaner.submit(fc.RemoveFile("/nonexistent/fastcleanup-footgun"))
                done.set()

            threading.Thread(target=submit).start()
            assert done.wait(30), "submit waited for the logging lock"
            assert records.records == []
        assert records.arrived.wait(30)  # logged once the lock is free
    finally:
        logger.removeHandler(locked)
    assert cleaner.stats().dropped_before_init == 1


def test_a_script_that_only_drops_still_shows_the_warning() -> None:
    # No logging configuration at all, and the interpreter exits at once.
    script = "import fastcleanup as fc; fc.submit(fc.RemoveFile('/nonexistent/x'))"
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stderr.count("dropped a 'remove_file' task") == 1, proc.stderr
    assert "Call init_worker() inside the running event loop" in proc.stderr


async def test_no_warning_once_the_worker_runs(
    records: Records, inline_threads: list[object]
) -> None:
    cleaner = fc.Cleaner(registry=None)
    cleaner.init_worker()
    try:
        cleaner.submit(fc.Call(asyncio_noop))
        assert await cleaner.drain(30)
    finally:
        await cleaner.shutdown()
    assert (inline_threads, records.records) == ([], [])
    assert cleaner.stats().completed == 1


async def asyncio_noop() -> None:
    pass


@pytest.mark.parametrize("init", [fc.init_worker, fc.Cleaner(registry=None).init_worker])
def test_init_worker_outside_a_loop_says_where_to_call_it(init: Callable[[], object]) -> None:
    with pytest.raises(RuntimeError, match=r"needs a running event loop; call it inside a") as e:
        init()
    assert "fc.run(main())" in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__


async def coro_fn(box: list[int]) -> None:
    box.append(1)


def plain(box: list[int]) -> None:
    box.append(1)


def returns_awaitable(box: list[int]) -> Awaitable[None]:
    return coro_fn(box)


class Page:
    def close(self, box: list[int]) -> None:
        box.append(1)

    async def aclose(self, box: list[int]) -> None:
        box.append(1)


class AsyncCallable:
    async def __call__(self, box: list[int]) -> None:
        box.append(1)


def decorated(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    @functools.wraps(fn)
    def wrapper(*args: Any) -> Awaitable[None]:
        return fn(*args)

    return wrapper


REFUSED = [
    pytest.param(plain, id="def"),
    pytest.param(returns_awaitable, id="def-returning-an-awaitable"),
    pytest.param(lambda box: coro_fn(box), id="lambda-returning-an-awaitable"),
    pytest.param(functools.partial(plain), id="partial-of-a-def"),
    pytest.param(Page().close, id="method"),
    pytest.param(print, id="builtin"),
    pytest.param(functools.partial(print, "x"), id="partial-of-a-builtin"),
]
ACCEPTED = [
    pytest.param(coro_fn, id="async-def"),
    pytest.param(functools.partial(coro_fn), id="partial-of-an-async-def"),
    pytest.param(Page().aclose, id="async-method"),
    pytest.param(AsyncCallable(), id="object-with-async-call"),
    pytest.param(decorated(coro_fn), id="wraps-decorated-async-def"),
]
if sys.version_info >= (3, 12):
    # markcoroutinefunction marks the function it is given, in place: a copy of
    # returns_awaitable, or the refused case above would be accepted too.
    def marked(box: list[int]) -> Awaitable[None]:
        return coro_fn(box)

    ACCEPTED.append(pytest.param(inspect.markcoroutinefunction(marked), id="markcoroutinefunction"))


@both_call_builds
@pytest.mark.parametrize("fn", REFUSED)
def test_call_refuses_a_synchronous_function_at_construction(call: type[fc.Call], fn: Any) -> None:
    with pytest.raises(TypeError, match=r"is synchronous\. Write the work as an async def"):
        call(fn, [])


@both_call_builds
@pytest.mark.parametrize("fn", ACCEPTED)
async def test_call_accepts_what_is_async_and_runs_it(call: type[fc.Call], fn: Any) -> None:
    box: list[int] = []
    await call(fn, box).run()
    assert box == [1]


def readme_messages() -> list[str]:
    """The messages quoted in README's "When it goes wrong" table, in its order."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table = readme.split("\n## When it goes wrong\n", 1)[1].split("\n## ", 1)[0]
    seen = [row.split(" | ", 1)[0] for row in table.splitlines() if row.startswith("| ")]
    quotes = [quote for cell in seen for quote in re.findall(r"`([^`]*)`", cell)]
    return [quote for quote in quotes if " " in quote]  # messages, not names


def assert_says(quoted: str, exc: BaseException) -> None:
    """``exc`` is what ``quoted`` shows: its type, then its message ("..." for a prefix)."""
    name, _, message = quoted.partition(": ")
    assert type(exc).__name__ == name
    if message.startswith("... "):
        assert message.removeprefix("... ") in str(exc), (quoted, str(exc))
    else:
        assert str(exc).startswith(message), (quoted, str(exc))


def test_the_messages_readme_quotes_are_the_ones_emitted(
    records: Records, inline_threads: list[object]
) -> None:
    dropped, no_loop, sync_call = readme_messages()
    fc.Cleaner(registry=None, name="quoted").submit(fc.RemoveFile("/nonexistent/fastcleanup"))
    [record] = records.records
    assert dropped in record.getMessage(), (dropped, record.getMessage())
    with pytest.raises(RuntimeError) as refused:
        fc.Cleaner(registry=None).init_worker()
    assert_says(no_loop, refused.value)
    for call in CALL_BUILDS:
        with pytest.raises(TypeError) as synchronous:
            call(plain, [])  # type: ignore[arg-type]
        assert_says(sync_call, synchronous.value)
