"""The dispatcher's batches: small for a trickle, large file jobs in a burst, capped otherwise."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import fastcleanup as fc
from fastcleanup._dispatcher import FILE_BATCH
from fastcleanup._tally import BATCH_BUCKETS
from tests.helpers import assert_conserved, make_files

MakeCleaner = Callable[..., fc.Cleaner]


def batches_above(cleaner: fc.Cleaner, size: int) -> int:
    """How many batches had more than ``size`` tasks (``size`` must be a bucket bound)."""
    counts = cleaner._tally.batch_size.counts
    return sum(counts[BATCH_BUCKETS.index(float(size)) + 1 :])


async def test_a_burst_of_files_goes_to_large_jobs(
    scratch: Path, make_cleaner: MakeCleaner
) -> None:
    assert FILE_BATCH == 1024  # what README promises: a burst goes in jobs of up to 1,024 files
    cleaner = make_cleaner(batch_size=64)
    files = make_files(scratch, 6000)
    cleaner.init_worker()
    for p in files:  # all queued before the dispatcher first runs: a burst
        cleaner.submit(fc.RemoveFile(p))
    assert await cleaner.drain(timeout=30)

    assert os.listdir(scratch) == []
    assert batches_above(cleaner, 64) > 0, cleaner._tally.batch_size.counts
    assert batches_above(cleaner, FILE_BATCH) == 0
    stats = cleaner.stats()
    assert (stats.submitted, stats.completed) == (6000, 6000)
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
