"""The dispatcher's batches: small for a trickle, large file jobs in a burst, capped otherwise."""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import fastcleanup as fc
from fastcleanup import _batch, _tasks, _unlink, _worker
from fastcleanup._dispatcher import FILE_BATCH
from fastcleanup._tally import BATCH_BUCKETS
from tests.helpers import assert_conserved, make_files

if _unlink.COMPILED:
    from fastcleanup import _cbulk

MakeCleaner = Callable[..., fc.Cleaner]


def batches_above(cleaner: fc.Cleaner, size: int) -> int:
    """How many batches had more than ``size`` tasks (``size`` must be a bucket bound)."""
    counts = cleaner._tally.batch_size.counts
    return sum(counts[BATCH_BUCKETS.index(float(size)) + 1 :])


async def test_a_burst_of_files_goes_to_large_jobs(
    scratch: Path, make_cleaner: MakeCleaner, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert FILE_BATCH == 1024  # docs/how/safety.md: a burst goes in jobs of up to 1,024 files
    classified: list[int] = []

    def counting(tasks: list[Any]) -> tuple[Any, str | None]:
        classified.append(len(tasks))
        return _batch.classify(tasks)

    monkeypatch.setattr(_worker, "classify", counting)
    cleaner = make_cleaner(batch_size=64)
    files = make_files(scratch, 6000)
    cleaner.init_worker()
    for p in files:  # all queued before the dispatcher first runs: a burst
        cleaner.submit(fc.RemoveFile(p))
    assert await cleaner.drain(timeout=30)

    assert os.listdir(scratch) == []
    assert batches_above(cleaner, 64) > 0, cleaner._tally.batch_size.counts
    assert batches_above(cleaner, FILE_BATCH) == 0
    # The dispatcher checked the large ones: the worker does not scan them again.
    assert all(n <= 64 for n in classified), classified
    stats = cleaner.stats()
    assert (stats.submitted, stats.completed) == (6000, 6000)
    assert cleaner._tally.taken_by["remove_file"] == 6000
    assert_conserved(stats)
    await cleaner.shutdown()


async def test_a_trickle_gets_batches_of_one(scratch: Path, make_cleaner: MakeCleaner) -> None:
    cleaner = make_cleaner(batch_size=64)
    files = make_files(scratch, 20)
    cleaner.init_worker()
    for p in files:
        cleaner.submit(fc.RemoveFile(p))
        assert await cleaner.drain(timeout=10)
    assert os.listdir(scratch) == []
    assert cleaner._tally.batch_size.counts[0] == 20  # every batch in bucket le=1
    await cleaner.shutdown()


async def test_a_mixed_burst_takes_its_files_in_large_jobs_and_caps_the_rest(
    scratch: Path, make_cleaner: MakeCleaner
) -> None:
    """One other task among every 50 files, then a burst with no file at all.

    The files still go in batches far above ``batch_size``, while no batch
    ever runs more than ``batch_size`` other tasks (one batch at a time
    here, so that is how many run at once)."""
    cleaner = make_cleaner(batch_size=32, max_batches=1)
    files = make_files(scratch, 3000)
    ran: list[int] = []
    running = [0, 0]  # now, most at once

    async def note(i: int) -> None:
        running[0] += 1
        running[1] = max(running)
        await asyncio.sleep(0)  # so that the batch's other children start meanwhile
        running[0] -= 1
        ran.append(i)

    class Sub(fc.RemoveFile):  # a plain file removal too, though not of the exact type
        pass

    cleaner.init_worker()
    for i, p in enumerate(files):
        cleaner.submit(Sub(p) if i % 700 == 0 else fc.RemoveFile(p))
        if i % 50 == 0:
            cleaner.submit(fc.Call(note, i))
    for i in range(3000):
        cleaner.submit(fc.Call(note, i))
    assert await cleaner.drain(timeout=30)

    assert os.listdir(scratch) == []
    assert sorted(ran) == sorted([*range(0, 3000, 50), *range(3000)])
    assert running[1] == 32
    assert batches_above(cleaner, 256) > 0, cleaner._tally.batch_size.counts
    stats = cleaner.stats()
    assert (stats.completed, stats.failed) == (6060, 0)
    assert cleaner._tally.taken_by == {"remove_file": 3000, "call": 3060}
    assert_conserved(stats)
    await cleaner.shutdown()


WINDOW = [_batch.pure_window] + ([_cbulk.window] if _unlink.COMPILED else [])
SPLIT = [_batch.pure_split] + ([_cbulk.split] if _unlink.COMPILED else [])
PATHS_OF = [_batch.pure_paths_of] + ([_cbulk.paths_of] if _unlink.COMPILED else [])


def build_id(fn: object) -> str:
    return "pure" if getattr(fn, "__module__", None) == _batch.__name__ else "compiled"


@pytest.mark.parametrize("window", WINDOW, ids=build_id)
def test_window_takes_up_to_so_many_others(window: Callable[..., tuple[int, int]]) -> None:
    class Sub(fc.RemoveFile):
        pass

    f, s, c = fc.RemoveFile("/a"), Sub("/b"), fc.Call(_noop)
    queue = deque([f, f, f, s, f, c, f, f])
    assert window(queue, fc.RemoveFile, 10, 0) == (3, 0)  # a subclass is another type
    assert window(queue, fc.RemoveFile, 10, 1) == (5, 1)
    assert window(queue, fc.RemoveFile, 10, 2) == (8, 2)
    assert window(queue, fc.RemoveFile, 6, 5) == (6, 2)  # the limit first
    assert window(queue, fc.RemoveFile, 2, 0) == (2, 0)
    assert window(queue, fc.RemoveFile, 0, 3) == (0, 0)
    assert window(deque(), fc.RemoveFile, 5, 1) == (0, 0)
    assert window([c, f], fc.RemoveFile, 5, 0) == (0, 0)
    assert window(iter([s, s, f, s]), Sub, 5, 0) == (2, 0)


class _Raising(type):
    def __eq__(cls, other: object) -> bool:
        raise RuntimeError("a metaclass __eq__ ran")

    __hash__ = type.__hash__


@pytest.mark.parametrize("window", WINDOW, ids=build_id)
def test_window_compares_types_by_identity_only(window: Callable[..., tuple[int, int]]) -> None:
    hostile = _Raising("Hostile", (), {})()
    assert window([fc.RemoveFile("/a"), hostile], fc.RemoveFile, 5, 0) == (1, 0)
    assert window([hostile, hostile], type(hostile), 5, 0) == (2, 0)


@pytest.mark.parametrize("split", SPLIT, ids=build_id)
def test_split_parts_the_slots_by_exact_type(split: Callable[..., Any]) -> None:
    class Sub(fc.RemoveFile):
        pass

    f, s, c = fc.RemoveFile("/a"), Sub("/b"), fc.Call(_noop)
    hostile = _Raising("Hostile", (), {})()
    assert split([f, c, s, f, hostile, None], fc.RemoveFile) == ([0, 3], [1, 2, 4, 5])
    assert split([], fc.RemoveFile) == ([], [])
    assert split([c, c], fc.Call) == ([0, 1], [])


@pytest.mark.parametrize("paths_of", PATHS_OF, ids=build_id)
def test_paths_of_reads_each_tasks_path_from_start(paths_of: Callable[..., list[Any]]) -> None:
    class Renamed(fc.RemoveFile):
        @property
        def path(self) -> str:
            return "/from-the-property"

        @path.setter
        def path(self, value: str) -> None:  # the pure build's __init__ sets it
            pass

    tasks: list[Any] = [fc.RemoveFile("/a"), fc.RemoveFile(b"/b"), Renamed("/c")]
    tasks.append(_tasks.PurePythonRemoveFile("/d"))
    assert paths_of(tasks, 0) == ["/a", b"/b", "/from-the-property", "/d"]
    assert paths_of(tasks, 2) == ["/from-the-property", "/d"]
    assert paths_of(tasks, 4) == []
    assert paths_of(tasks, 9) == []
    moved = fc.RemoveFile("/old")
    moved.path = "/new"  # the slot is writable: what counts is its value now
    assert paths_of([moved], 0) == ["/new"]
    with pytest.raises(AttributeError):
        paths_of([fc.RemoveFile("/a"), object()], 0)


@pytest.mark.parametrize("paths_of", PATHS_OF, ids=build_id)
def test_paths_of_reads_a_snapshot_of_the_list(paths_of: Callable[..., list[Any]]) -> None:
    tasks: list[Any] = []

    class Shrinking(fc.RemoveFile):
        @property
        def path(self) -> str:
            tasks.clear()  # a property of the user's that changes the batch
            return "/s"

        @path.setter
        def path(self, value: str) -> None:  # the pure build's __init__ sets it
            pass

    tasks.extend([Shrinking("/x"), fc.RemoveFile("/a"), fc.RemoveFile("/b")])
    assert paths_of(tasks, 0) == ["/s", "/a", "/b"]


async def _noop() -> None:
    pass
