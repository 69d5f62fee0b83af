"""The dispatcher's batches: small for a trickle, large file jobs in a burst, capped otherwise."""

from __future__ import annotations

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
    assert FILE_BATCH == 1024  # what README promises: a burst goes in jobs of up to 1,024 files
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


async def test_bursts_that_are_not_all_files_keep_batch_size(
    scratch: Path, make_cleaner: MakeCleaner
) -> None:
    cleaner = make_cleaner(batch_size=32)
    files = make_files(scratch, 3000)
    ran: list[int] = []

    async def note(i: int) -> None:
        ran.append(i)

    cleaner.init_worker()
    for i, p in enumerate(files):
        cleaner.submit(fc.RemoveFile(p))
        if i % 50 == 0:  # one other task among every 50 files
            cleaner.submit(fc.Call(note, i))
    for i in range(3000):  # then a burst with no file at all
        cleaner.submit(fc.Call(note, i))
    assert await cleaner.drain(timeout=30)

    assert os.listdir(scratch) == []
    assert len(ran) == 60 + 3000
    assert batches_above(cleaner, 32) == 0, cleaner._tally.batch_size.counts
    assert_conserved(cleaner.stats())
    await cleaner.shutdown()


LEADING = [_batch.pure_leading] + ([_cbulk.leading] if _unlink.COMPILED else [])
PATHS_OF = [_batch.pure_paths_of] + ([_cbulk.paths_of] if _unlink.COMPILED else [])


def build_id(fn: object) -> str:
    return "pure" if getattr(fn, "__module__", None) == _batch.__name__ else "compiled"


@pytest.mark.parametrize("leading", LEADING, ids=build_id)
def test_leading_counts_the_run_of_one_exact_type(leading: Callable[..., int]) -> None:
    class Sub(fc.RemoveFile):
        pass

    f, s, c = fc.RemoveFile("/a"), Sub("/b"), fc.Call(_noop)
    queue = deque([f, f, f, s, f, c])
    assert leading(queue, fc.RemoveFile, 10) == 3  # a subclass ends the run
    assert leading(queue, fc.RemoveFile, 2) == 2
    assert leading(queue, fc.RemoveFile, 0) == 0
    assert leading(deque(), fc.RemoveFile, 5) == 0
    assert leading([c, f], fc.RemoveFile, 5) == 0
    assert leading(iter([s, s, f]), Sub, 5) == 2


class _Raising(type):
    def __eq__(cls, other: object) -> bool:
        raise RuntimeError("a metaclass __eq__ ran")

    __hash__ = type.__hash__


@pytest.mark.parametrize("leading", LEADING, ids=build_id)
def test_leading_compares_types_by_identity_only(leading: Callable[..., int]) -> None:
    hostile = _Raising("Hostile", (), {})()
    assert leading([fc.RemoveFile("/a"), hostile], fc.RemoveFile, 5) == 1
    assert leading([hostile, hostile], type(hostile), 5) == 2


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
