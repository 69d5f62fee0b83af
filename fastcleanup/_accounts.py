"""Step 4 of a task's path: a finished task is counted, and drain() learns of it.

Everything here runs on the loop thread of the dispatcher (or in the exit
handler once that loop is dead), so plain ints suffice; readers in other
threads only read. A batch whose loop died is taken back here too: what it
did not finish returns to the head of the queue, counted once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable

from ._batch import DONE, Batch, InProgress, Requeued
from ._intake import FILES, PARENT, Intake
from ._log import FAILURES
from ._order import requeue_ordered
from ._paths import FileJob, Refused, Roots

__all__ = ["Accounts", "Waiter", "logger", "safe_repr"]

logger = logging.getLogger("fastcleanup")


class Accounts(Intake):
    """Counting finished tasks, the latency marks, and drain()."""

    __slots__ = ("_batches", "_capacity", "_drain_waiters", "_marks")

    _batches: set[Batch]
    _capacity: asyncio.Future[None] | None  # the dispatcher waits on it for a free slot
    _drain_waiters: list[Waiter]
    _marks: deque[tuple[int, float]]
    _dispatcher_loop: asyncio.AbstractEventLoop | None
    _refill_at: int
    _roots: Roots | None
    _task_timeout: float

    def _finish(
        self, batch: Batch, i: int, kind: str, reason: str | None, exc: BaseException | None
    ) -> None:
        if batch.abandoned:
            return
        task = batch.tasks[i]
        batch.tasks[i] = DONE
        self.in_flight -= 1
        tally = self._tally
        if reason is None:
            tally.complete(kind)
        else:
            self._fail(kind, task, reason, exc)
        tally.latency.observe(time.monotonic() - batch.seen_at)

    def _fail(self, kind: str, task: object, reason: str, exc: BaseException | None) -> None:
        """Count a failed cleanup and log it (bounded: see ``_log``)."""
        self._tally.fail(kind, reason)
        # No "fastcleanup:" prefix: the logger's name says it.
        FAILURES.warning("%s %s failed (%s): %s", kind, safe_repr(task), reason, shown_error(exc))

    def _account(self, batch: Batch, job: FileJob, n: int) -> None:
        """Count the first ``n`` files of ``job`` as finished (completed or failed)."""
        tally = self._tally
        errors = [err for k, err in job.errors if k < n]
        for err in errors:
            tally.fail("remove_file", "refused" if isinstance(err, Refused) else "error")
            FAILURES.warning("remove_file %r failed: %s", err.filename, err)
        tally.complete("remove_file", n - len(errors))
        tally.latency.observe(time.monotonic() - batch.seen_at, n)
        self.in_flight -= n
        batch.files_done += n

    def _batch_done(self, batch: Batch) -> None:
        self._batches.discard(batch)
        if batch.kind != FILES and all(b.kind == FILES for b in self._batches):
            self._hot[PARENT] = None  # no cleanup of ours runs: submit need not ask
        cap = self._capacity
        # Wake the dispatcher once half the slots are free, not on every
        # batch: it then hands out several batches in one turn.
        if cap is not None and not cap.done() and len(self._batches) <= self._refill_at:
            cap.set_result(None)
        if self._drain_waiters:
            for waiter in self._drain_waiters:
                if not waiter.fut.done() and self._drained(waiter.target, waiter.owed):
                    waiter.fut.set_result(None)

    def _requeue(self, batch: Batch) -> None:
        """Take back what ``batch`` did not finish: to the head of the queue, counted once."""
        if batch.abandoned:
            return
        job = batch.job
        if job is not None:
            job.stop = True
            # Let the file in progress finish (an unlink takes microseconds;
            # hung storage gets a tenth of a second), then count what the job
            # did rather than run it again.
            if job.running:
                job.wait(0.1)
            self._account(batch, job, job.done)
            if job.running and not job.wait(0) and job.done < len(job.paths):
                # Still inside that unlink: running it again would be a second
                # run. The job's thread decides its outcome (see InProgress).
                slot = batch.files[batch.files_done]
                batch.tasks[slot] = InProgress(
                    batch.tasks[slot], job, job.done, self._roots, self._task_timeout
                )
        batch.abandoned = True
        rest = batch.unfinished()
        # An InOrder cut short goes back as one item standing for the tasks it has left.
        extra = requeue_ordered(rest)
        self._extra_queued += extra
        if batch.counted:  # mark them so submitted_total{task} never counts one twice
            rest = [t if type(t) is Requeued else Requeued(t) for t in rest]
        self._put_back(rest, self._taken - len(rest), self.in_flight - len(rest) - extra)
        self._batches.discard(batch)

    # -- the queue wait, measured per dispatcher turn rather than per submit ----------

    def _sight(self, queued: int, now: float) -> None:
        """Note that the first ``taken + queued`` tasks were in the queue at ``now``.

        Reading the clock per submit would cost as much as the rest of
        submit; marks per dispatcher turn give each task a "first seen
        queued" time instead.
        """
        upto = self._taken + queued
        if not self._marks or self._marks[-1][0] < upto:
            self._marks.append((upto, now))

    def _seen_at(self, seq: int) -> float:
        marks = self._marks
        while len(marks) > 1 and marks[0][0] < seq:
            marks.popleft()
        return marks[0][1]

    # -- drain -------------------------------------------------------------------------

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every task accepted before this call has finished, and its follow-ups.

        A follow-up is a task that one of those cleanups submitted to this
        cleaner while it ran (a ``Call`` that closes a browser, then submits
        the removal of its profile), and so on down. Tasks the application
        submits after the call are not waited for, unless one shares a batch
        (``batch_size`` tasks at most) with a task that is. Returns False if
        ``timeout`` seconds passed first.
        """
        target = self._items()
        if self._drained(target, ()):
            return True
        loop = asyncio.get_running_loop()
        if self._dispatcher_loop is not loop:
            raise RuntimeError(
                f"{self!r} has {target - self._taken + self.in_flight} tasks pending but no "
                "dispatcher on this loop: call init_worker() first"
            )
        waiter = Waiter(target, loop.create_future())
        self._drain_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter.fut
            return True
        except TimeoutError:
            return False
        finally:
            if waiter in self._drain_waiters:
                self._drain_waiters.remove(waiter)

    def _drained(self, target: int, owed: Iterable[tuple[int, int]]) -> bool:
        """True once every item up to the target, and every follow-up owed, is finished.

        Per batch: a batch holding one of them must have finished whole.
        """
        if self._taken < target or any(b.first_seq <= target for b in self._batches):
            return False
        return all(self._range_done(first, last) for first, last in owed)

    def _range_done(self, first: int, last: int) -> bool:
        return self._taken >= last and not any(
            b.first_seq <= last and first < b.first_seq + len(b.tasks) for b in self._batches
        )

    def _owe(self, parent: Batch, first: int, last: int) -> None:
        """A cleanup of ``parent`` submitted items ``first..last``: owed where ``parent`` is.

        Only while ``parent`` runs: a task that a cleanup spawned and left
        running keeps its context, but what it submits later is no follow-up.
        """
        if parent not in self._batches:
            return
        start, end = parent.first_seq, parent.first_seq + len(parent.tasks) - 1
        for waiter in list(self._drain_waiters):  # a copy: a finalizer may drain meanwhile
            if start <= waiter.target or any(
                f <= end and start <= last_ for f, last_ in waiter.owed
            ):
                waiter.owed.append((first, last))


class Waiter:
    """One drain() call: the items it waits for (up to ``target``) and the follow-ups it owes."""

    __slots__ = ("fut", "owed", "target")

    def __init__(self, target: int, fut: asyncio.Future[None]) -> None:
        self.target = target
        self.fut = fut
        self.owed: list[tuple[int, int]] = []  # (first, last) items, one submit each


def shown_error(exc: BaseException | None) -> str:
    """An error for a log line: an OSError's str names its errno and path, a repr would not."""
    if isinstance(exc, OSError):
        try:
            return f"{type(exc).__name__}: {exc}"
        except Exception:
            pass
    return safe_repr(exc)


def safe_repr(obj: object) -> str:
    """repr() for a log line: a task's own __repr__ may raise."""
    try:
        return repr(obj)
    except Exception:
        return f"<{type(obj).__name__} object; its repr() raised>"
