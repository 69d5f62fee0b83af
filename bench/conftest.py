"""Sizes, rounds and round runners of the burst benchmarks.

Quick unless FASTCLEANUP_BENCH_FULL=1: 1,000 files, 1,000 calls, one round
each, so that the project's test command (and CI) proves the suite works;
the 10,000 and 100,000 sizes and three rounds run only in a full run. FASTCLEANUP_BENCH_ROUNDS,
FASTCLEANUP_BENCH_LOOP (uvloop or asyncio, for the competitors not tied to
a loop) and FASTCLEANUP_BENCH_DIR (where files are created) override the
defaults. See README.md beside this file.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

import fastcleanup as fc
from bench.cli import SCENARIOS, Scenario
from bench.competitors import (
    CALL_COMPETITORS,
    FILE_COMPETITORS,
    busy_loop,
    file_competitor,
    trivial,
)
from bench.harness import (
    BenchError,
    BurstSession,
    Competitor,
    FileSet,
    Measurement,
    default_loop,
    make_files,
    summarize,
)
from bench.micro import SubmitHost, bytes_per_queued_remove_file

QUICK = os.environ.get("FASTCLEANUP_BENCH_FULL", "") in ("", "0")
SIZES = (1_000,) if QUICK else (1_000, 10_000, 100_000)
CALL_COUNTS = (1_000,) if QUICK else (100_000,)
SUBMIT_CALLS = 10_000 if QUICK else 100_000
QUEUED = 50_000 if QUICK else 1_000_000
ROUNDS = int(os.environ.get("FASTCLEANUP_BENCH_ROUNDS", "1" if QUICK else "3"))
LOOP = os.environ.get("FASTCLEANUP_BENCH_LOOP") or default_loop()
DIR = os.environ.get("FASTCLEANUP_BENCH_DIR") or None

_T = TypeVar("_T")
_Put = Callable[[Any], object]


def _short(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def pytest_report_header() -> str:
    mode = "quick" if QUICK else "full"
    return (
        f"bench: {mode}, files {', '.join(map(_short, SIZES))}, "
        f"calls {', '.join(map(_short, CALL_COUNTS))}, {ROUNDS} round(s), loop {LOOP}"
    )


def _competitors(registry: Mapping[str, Competitor[Any]]) -> list[object]:
    return [
        pytest.param(
            name,
            marks=pytest.mark.skipif(not c.available(), reason=f"{c.needs} is not installed"),
        )
        for name, c in registry.items()
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A full round of 100,000 files spends most of its time creating them, and
    # creating files right after a mass delete can crawl on ext4: the project's
    # 300 s per-test timeout is for tests, not for these measurements.
    if not QUICK and config.pluginmanager.hasplugin("timeout"):
        for item in items:
            item.add_marker(pytest.mark.timeout(3600))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "scenario_competitor" in metafunc.fixturenames:
        # The scenarios beyond one directory, with the competitors the command runs in them.
        metafunc.parametrize(
            ("scenario", "scenario_competitor"),
            [
                pytest.param(
                    sc.key,
                    name,
                    id=f"{sc.key}-{name}",
                    marks=pytest.mark.skipif(
                        not FILE_COMPETITORS[name].available(), reason="a module is missing"
                    ),
                )
                for sc in SCENARIOS
                if sc.dirs > 1 or sc.busy or sc.depth > 1
                for name in sc.names
            ],
        )
    if "file_competitor" in metafunc.fixturenames:
        metafunc.parametrize("file_competitor", _competitors(FILE_COMPETITORS))
    if "call_competitor" in metafunc.fixturenames:
        metafunc.parametrize("call_competitor", _competitors(CALL_COMPETITORS))
    if "burst_size" in metafunc.fixturenames:
        metafunc.parametrize("burst_size", SIZES, ids=_short)
    if "call_count" in metafunc.fixturenames:
        metafunc.parametrize("call_count", CALL_COUNTS, ids=_short)


@pytest.fixture
def submit_calls() -> int:
    return SUBMIT_CALLS


@pytest.fixture
def queued() -> int:
    return QUEUED


@pytest.fixture
def bench_loop() -> str:
    return LOOP


def _pedantic(benchmark: BenchmarkFixture, target: Callable[..., _T], **kw: Any) -> _T:
    # pytest-benchmark leaves pedantic() unannotated; this is the one typed door.
    result: _T = benchmark.pedantic(target, **kw)  # type: ignore[no-untyped-call]
    return result


def _record(benchmark: BenchmarkFixture, results: Sequence[Measurement]) -> Measurement:
    m = summarize(results)
    benchmark.extra_info.update(
        items=m.items,
        loop=m.loop,
        median_seconds=m.seconds,
        items_per_s=m.rate,
        stall_p99_ms=m.stall_p99_ms,
        stall_max_ms=m.stall_max_ms,
        host_executor_p99_ms=m.host_p99_ms,
        peak_mib=m.peak_mib,
    )
    return m


@pytest.fixture
def run_file_bursts(benchmark: BenchmarkFixture) -> Callable[..., Measurement]:
    """Run ``rounds`` bursts of one file competitor on fresh files; the median.

    ``scenario`` is a key of the command's ``SCENARIOS`` (one directory, 100
    directories, 1,000 deeper ones, a busy loop). Each round's files are created (and synced) in
    the untimed setup; the teardown checks they are all gone.
    """

    def run(name: str, size: int, scenario: str = "one-dir") -> Measurement:
        sc = next(s for s in SCENARIOS if s.key == scenario)
        benchmark.group = f"{sc.key}: burst of {size:,} RemoveFile"
        # Every round's directories in one of our own: the root of the
        # allowed_roots competitor.
        base = tempfile.mkdtemp(prefix="fastcleanup-bench-", dir=DIR)
        try:
            return _file_rounds(benchmark, name, size, sc, base)
        finally:
            shutil.rmtree(base, ignore_errors=True)

    return run


def _file_rounds(
    benchmark: BenchmarkFixture, name: str, size: int, sc: Scenario, base: str
) -> Measurement:
    """The rounds of one file competitor; files go in directories under ``base``."""
    results: list[Measurement] = []
    unchecked: list[FileSet] = []

    def check(files: FileSet) -> None:
        unchecked.remove(files)
        try:
            left = files.leftovers()
            if left:
                raise BenchError(f"{name} left {left} of {size} files in {files.root}")
        finally:
            files.dispose()

    competitor = file_competitor(name, base)
    with BurstSession(busy_loop(competitor) if sc.busy else competitor, LOOP) as session:

        def setup() -> tuple[tuple[FileSet], dict[str, object]]:
            files = make_files(size, base, sc.dirs, sc.depth)
            unchecked.append(files)
            session.prepare()
            return (files,), {}

        def burst(files: FileSet) -> None:
            results.append(session.run(files.paths))

        try:
            _pedantic(benchmark, burst, setup=setup, teardown=check, rounds=ROUNDS)
            while unchecked:  # --benchmark-disable runs no teardown
                check(unchecked[0])
        finally:
            for files in unchecked:
                files.dispose()
    return _record(benchmark, results)


@pytest.fixture
def run_call_bursts(benchmark: BenchmarkFixture) -> Callable[[str, int], Measurement]:
    """Run ``rounds`` bursts of trivial Call tasks by one call competitor; the median."""

    def run(name: str, count: int) -> Measurement:
        benchmark.group = f"{count:,} trivial Call tasks"
        results: list[Measurement] = []
        with BurstSession(CALL_COMPETITORS[name], LOOP) as session:

            def burst() -> None:
                results.append(session.run(count))

            _pedantic(benchmark, burst, setup=session.prepare, rounds=ROUNDS)
        return _record(benchmark, results)

    return run


@pytest.fixture
def run_hand_offs(benchmark: BenchmarkFixture) -> Callable[[str, int], list[float]]:
    """Time rounds of ``calls`` hand-offs of one variant from this (foreign) thread.

    Returns ns per call of each round. The setup parks the variant's loop
    thread; the teardown releases it and waits until every item arrived.
    """

    def run(variant: str, calls: int) -> list[float]:
        benchmark.group = f"hand-off from a foreign thread, {calls:,} calls"
        box = [0]
        items = [fc.Call(trivial, box) for _ in range(calls)]
        per_call: list[float] = []

        with SubmitHost(variant) as host:

            def setup() -> tuple[tuple[_Put, list[fc.Call]], dict[str, object]]:
                return (host.block(), items), {}

            def hand_over(put: _Put, items: list[fc.Call]) -> None:
                clock = time.perf_counter_ns
                start = clock()
                for item in items:
                    put(item)
                per_call.append((clock() - start) / len(items))

            def release(put: _Put, items: list[fc.Call]) -> None:
                host.release(len(items))

            _pedantic(benchmark, hand_over, setup=setup, teardown=release, rounds=max(ROUNDS, 5))
        benchmark.extra_info["ns_per_call"] = statistics.median(per_call)
        benchmark.extra_info["ns_per_call_best"] = min(per_call)
        return per_call

    return run


@pytest.fixture
def measure_queue_memory(benchmark: BenchmarkFixture) -> Callable[[int], float]:
    """Bytes per queued RemoveFile with ``queued`` tasks queued, into extra_info."""

    def run(queued: int) -> float:
        benchmark.group = "memory"
        per_task = _pedantic(benchmark, bytes_per_queued_remove_file, args=(queued, LOOP))
        benchmark.extra_info["bytes_per_task"] = per_task
        benchmark.extra_info["queued"] = queued
        return per_task

    return run
