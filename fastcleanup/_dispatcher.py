"""Step 2 of a task's path: the dispatcher moves tasks from the queue into batches.

It runs on the loop as one task and only moves tasks: it never awaits
cleanup work, so a hung cleanup cannot stall it, and it keeps at most
``max_batches`` batches in flight, so a million submits never become a
million asyncio tasks; the queue absorbs the rest.
"""

from __future__ import annotations

import asyncio
import time
from itertools import repeat, starmap
from typing import Any

from ._batch import Batch, window
from ._intake import IDLE
from ._tasks import RemoveFile
from ._worker import BatchWorker

__all__ = ["Dispatcher"]


class Dispatcher(BatchWorker):
    """The loop's side of the queue: ``_dispatch`` is the dispatcher task."""

    __slots__ = ("_dispatcher", "_dispatcher_loop")

    _dispatcher: asyncio.Task[None] | None
    _batch_size: int
    _io_threads: int
    _max_batches: int

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        queue, take, hot = self._queue, self._queue.popleft, self._hot
        # The tasks being moved from the queue to a batch, until the batch is
        # registered; with the counters as they were before the move.
        moving: list[Any] | None = None
        before = (0, 0)
        try:
            while True:
                if not queue:
                    hot[IDLE] = True
                    # Re-check after publishing that we sleep: a producer that
                    # appended before seeing it did not wake us (lost wakeup).
                    if not queue:
                        self._waiter = loop.create_future()
                        await self._waiter
                    hot[IDLE] = False
                    continue
                self._sight(len(queue), time.monotonic())
                if len(self._batches) >= self._max_batches:
                    self._capacity = loop.create_future()
                    await self._capacity
                    continue
                n, kind = min(len(queue), self._batch_size), None
                if len(queue) > n:
                    n, kind = self._burst(n)
                # A signal.signal() handler may raise (SystemExit) between any
                # two bytecodes of this thread. The pops are one C call, so
                # they happen whole or not at all; from there until the batch
                # is registered, `moving` tells the finally below to put them
                # back. The list is the worker's to keep: a Python list frees
                # its storage on clear(), so a reused buffer would not save a copy.
                before = (self._taken, self.in_flight)
                moving = []
                self._seq += 1
                # starmap over empty argument tuples: popleft() n times, in C.
                # (iter(take, sentinel) would compare each task to the sentinel
                # with ==, which a task of the user's may override, or raise.)
                moving.extend(starmap(take, repeat((), n)))
                self._taken += n
                self._seq += 1
                first = before[0] + 1
                batch = Batch(moving, first, self._seen_at(first), loop, kind)
                self.in_flight += n
                self._batches.add(batch)
                moving = None
                self._tally.batch_size.observe(n)
                batch.worker = loop.create_task(self._work(batch))
        finally:
            if moving is not None and not any(b.tasks is moving for b in self._batches):
                self._put_back(moving, *before)  # caught between the queue and its batch
            hot[IDLE] = False
            if self._dispatcher_loop is loop:
                self._dispatcher_loop = None
            # A worker cancelled before its first step (asyncio.run cancels
            # every task at once) never runs its own requeue: do it for it.
            for batch in [b for b in self._batches if b.loop is loop and not b.counted]:
                self._requeue(batch)

    def _burst(self, n: int) -> tuple[int, str | None]:
        """How many tasks to take from a burst, and their kind when all are plain files.

        A trickle gets batches of ``batch_size`` at most, for latency. In a
        burst, the files go to file jobs of up to ``FILE_BATCH`` (spread
        over the cleaner's threads), so the loop's work per batch, and the
        GIL it holds, is spread over many files. A batch still starts an
        asyncio task for each of its other tasks, so it takes no more than
        ``n`` (``batch_size``) of those: the cap on live tasks holds, and a
        burst that mixes in some other cleanups (a page closed per few
        files) still removes its files in large jobs.
        """
        queue = self._queue
        want = min(len(queue) // self._io_threads, FILE_BATCH)
        if want <= n:
            return n, None
        try:
            # One C loop over the deque when compiled (no Python code runs
            # inside it, so no finalizer can submit meanwhile). Reading by
            # index would cost four times as much: a tuple per item.
            taken, others = window(queue, RemoveFile, want, n)
        except Exception:  # a deque mutated while it was read
            return n, None
        if others == 0:  # all plain RemoveFile: the worker need not look again
            return taken, RemoveFile.kind
        return taken, None  # n tasks never hold more than n others: taken >= n


FILE_BATCH = 1024  # files in one job at most: a second of unlinks on slow storage
