"""Shared machinery of the torture tests (tests/test_torture_*.py).

Sizes: the default run is sized for CI (all torture tests together finish in
a few minutes on a 2-core machine); ``FASTCLEANUP_LARGE=1`` runs the stress
tests (those that size themselves with ``scale``) at the sizes quoted in
docs/reliability.md. A test of one exact scenario has one size. Under
``CI=true`` hypothesis is derandomized and keeps no example database, so a
CI run is reproducible.

Set ``FASTCLEANUP_TORTURE_REPORT=/path/report.jsonl`` to have each test
append the figures it reached (operations, faults injected, files lost,
deadlocks) as one JSON line; docs/reliability.md's figures come from such a report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from prometheus_client import CollectorRegistry

import fastcleanup as fc

LARGE = os.environ.get("FASTCLEANUP_LARGE", "") == "1"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def scale(ci: int, large: int) -> int:
    """``ci`` normally, ``large`` under ``FASTCLEANUP_LARGE=1``."""
    return large if LARGE else ci


def hypothesis_settings(ci_examples: int, large_examples: int, **kw: Any) -> settings:
    """Settings for a torture property: no deadline (the machine is noisy),
    scaled example counts, reproducible under CI."""
    options: dict[str, Any] = {
        "max_examples": scale(ci_examples, large_examples),
        "deadline": None,
        "suppress_health_check": [
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    }
    if CI:
        options["derandomize"] = True
        options["database"] = None
    options.update(kw)
    return settings(**options)


def report(test: str, **figures: int | float | str) -> None:
    """Append this test's figures to ``$FASTCLEANUP_TORTURE_REPORT`` (if set)."""
    target = os.environ.get("FASTCLEANUP_TORTURE_REPORT")
    if not target:
        return
    line = json.dumps({"test": test, "large": LARGE, **figures}, sort_keys=True)
    with open(target, "a", encoding="utf-8") as f:
        f.write(line + "\n")


# -- files -------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_dir(prefix: str = "fc-torture-") -> Iterator[Path]:
    """A fresh directory, on tmpfs when there is one (as conftest's ``scratch``),
    for hypothesis tests, which cannot take function-scoped fixtures."""
    shm = Path("/dev/shm")
    parent = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def touch_all(paths: Iterable[str | bytes]) -> None:
    for p in paths:
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o600))


def make_tree(top: Path, width: int, depth: int, prefix: str) -> int:
    """A directory tree of ``width`` files and ``width`` subdirectories per level,
    every name starting with ``prefix``; returns how many entries it holds."""
    top.mkdir(parents=True)
    count = 0
    for i in range(width):
        (top / f"{prefix}f{i}").write_bytes(b"x")
        count += 1
        if depth > 1:
            count += 1 + make_tree(top / f"{prefix}d{i}", width, depth - 1, f"{prefix}{i}.")
    return count


def existing(paths: Iterable[str | bytes]) -> list[str | bytes]:
    return [p for p in paths if os.path.lexists(p)]


# -- counters ----------------------------------------------------------------------


def conserved(s: fc.Stats) -> bool:
    return s.submitted == s.completed + s.failed + s.dropped_at_exit + s.queued + s.in_flight


def quiet(s: fc.Stats) -> bool:
    return s.queued == 0 and s.in_flight == 0


def assert_monotone(before: fc.Stats, after: fc.Stats) -> None:
    for name in ("submitted", "dropped_before_init", "completed", "failed", "dropped_at_exit"):
        assert getattr(after, name) >= getattr(before, name), (name, before, after)


Sample = tuple[str, tuple[tuple[str, str], ...]]


def scrape(registry: CollectorRegistry) -> dict[Sample, float]:
    """Every counter sample of ``registry``: ``(name, sorted labels) -> value``."""
    out: dict[Sample, float] = {}
    for metric in registry.collect():
        if metric.type != "counter":
            continue
        for s in metric.samples:
            if s.name.endswith("_total"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def assert_scrape_monotone(before: dict[Sample, float], after: dict[Sample, float]) -> None:
    """No counter series went down or vanished between two scrapes."""
    for key, value in before.items():
        assert key in after, f"series {key} vanished"
        assert after[key] >= value, f"{key} went from {value} to {after[key]}"


def total(samples: dict[Sample, float], name: str, **labels: str) -> float:
    """Sum of the series of counter ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def failures_by_reason(samples: dict[Sample, float]) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for (n, ls), v in samples.items():
        if n == "fastcleanup_failed_total" and v:
            d = dict(ls)
            out[(d["task"], d["reason"])] += int(v)
    return out


# -- fault injection and spies -----------------------------------------------------


class UnlinkSpy:
    """Wraps ``os.unlink`` process-wide: records the base name of every unlink
    of a name that starts with ``marker`` (so names must be unique), and can
    delay or block chosen names.

    fastcleanup removes by absolute path, or by name relative to a directory
    fd when confined to allowed roots; the base name identifies the file in
    both cases.
    """

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.calls: list[str] = []  # every attempt; list.append is atomic: no lock needed
        self.removed: list[str] = []  # the attempts that removed something
        self.returned: list[str] = []  # attempts over (successful or not)
        self.delays: dict[str, float] = {}
        self.gates: dict[str, threading.Event] = {}
        self.entered: dict[str, threading.Event] = {}
        self._real = os.unlink

    def _unlink(self, path: Any, *, dir_fd: int | None = None) -> None:
        name = os.path.basename(os.fsdecode(path))
        if name.startswith(self.marker):
            self.calls.append(name)
            entered = self.entered.get(name)
            if entered is not None:
                entered.set()
            delay = self.delays.get(name)
            gate = self.gates.get(name)
            try:
                self._real(path, dir_fd=dir_fd)  # remove first, then hang in the call
                self.removed.append(name)
                if delay is not None:
                    time.sleep(delay)
                if gate is not None:
                    gate.wait(30)
            finally:
                self.returned.append(name)
            return
        self._real(path, dir_fd=dir_fd)

    def settle(self, quiet_for: float = 0.003, timeout: float = 5.0) -> bool:
        """Wait until no spied unlink has been in progress for ``quiet_for`` seconds:
        the unlink threads have finished what they were given."""
        deadline = time.monotonic() + timeout
        seen, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now = len(self.calls)
            if now != seen or len(self.returned) != now:
                seen, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_for:
                return True
            time.sleep(0.001)
        return False

    def twice(self) -> list[str]:
        return sorted(n for n, k in Counter(self.calls).items() if k > 1)

    @contextlib.contextmanager
    def installed(self) -> Iterator[UnlinkSpy]:
        os.unlink = self._unlink
        try:
            yield self
        finally:
            os.unlink = self._real
            for gate in self.gates.values():
                gate.set()


class LoopErrors:
    """Collects what reaches an event loop's exception handler
    ("Task exception was never retrieved", errors in callbacks)."""

    def __init__(self) -> None:
        self.contexts: list[dict[str, Any]] = []

    def attach(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        (loop or asyncio.get_running_loop()).set_exception_handler(self._handle)

    def _handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.contexts.append(context)

    def messages(self) -> list[str]:
        return [f"{c.get('message')}: {c.get('exception')!r}" for c in self.contexts]


class ErrorLogs(logging.Handler):
    """Records ERROR and worse from the fastcleanup and asyncio loggers."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @contextlib.contextmanager
    def installed(self) -> Iterator[ErrorLogs]:
        loggers = [logging.getLogger("fastcleanup"), logging.getLogger("asyncio")]
        for lg in loggers:
            lg.addHandler(self)
        try:
            yield self
        finally:
            for lg in loggers:
                lg.removeHandler(self)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


def forget(cleaner: fc.Cleaner) -> None:
    """Stop ``cleaner`` for good: close its threads, drop whatever it still holds
    so that nothing of a test runs at the session's exit (as conftest does)."""

    async def stop() -> None:
        await cleaner.shutdown(timeout=0.5)

    with contextlib.suppress(Exception):
        asyncio.run(stop())
    cleaner._reset()


class LoopThread:
    """An event loop running in a thread of its own, for tests whose main
    thread must stay free (signals, fork)."""

    def __init__(self, factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self.loop = factory()
        self.errors = LoopErrors()
        self.errors.attach(self.loop)
        self._thread = threading.Thread(target=self._run, name="torture-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
        """Run ``fn()`` (sync, or returning a coroutine) on the loop; return its result."""

        async def wrapper() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    def close(self) -> None:
        """Cancel what runs on the loop (as ``asyncio.run`` does), then close it."""

        async def cancel_all() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.call(cancel_all, timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the loop thread did not stop"
        self.loop.close()
