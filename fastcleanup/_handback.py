"""Work whose loop is gone: adopted by the next loop, or run at interpreter exit.

A loop that dies under the dispatcher (``asyncio.run`` returning without
``shutdown()``) leaves its batches listed; ``init_worker()`` on a new loop
takes them back. At interpreter exit the queued file and tree removals run
synchronously within ``exit_timeout``, and the rest is counted as dropped.
"""

from __future__ import annotations

import asyncio
import time

from ._accounts import logger
from ._batch import EXIT_RUNNERS, Batch, Requeued, sync_at_exit
from ._dispatcher import Dispatcher
from ._intake import PUT, State
from ._log import FAILURES
from ._order import flatten_at_exit, is_ordered
from ._paths import Refused, UnlinkJob
from ._tasks import INVALID, RemoveTree, kind_or_invalid
from ._tree import Busy, remove_tree
from ._worker import reason_of

__all__ = ["Handback"]


class Handback(Dispatcher):
    """Adoption by a new loop, and the exit handler's share of the queue."""

    __slots__ = ()

    _name: str
    _busy_timeout: float

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take back the unfinished tasks of batches whose loop is gone."""
        for batch in [b for b in self._batches if b.loop is not loop]:
            self._requeue(batch)

    def _stop_live_dispatcher(self, deadline: float) -> bool:
        """Stop a dispatcher still running in another thread; True once none runs.

        Only one consumer may pop the queue at a time: the dispatcher takes a
        batch by popping in C, and a second consumer could empty the queue
        between its length check and its pops.
        """
        loop, task = self._dispatcher_loop, self._dispatcher
        if loop is None or task is None or loop.is_closed() or not loop.is_running():
            return True
        try:
            loop.call_soon_threadsafe(task.cancel)
        except RuntimeError:
            return True  # closed meanwhile
        until = min(deadline, time.monotonic() + 1.0)
        while self._dispatcher_loop is loop and time.monotonic() < until:
            time.sleep(0.001)
        return self._dispatcher_loop is not loop

    def _await_live_batches(self, deadline: float) -> bool:
        """Let a loop alive in another thread finish its batches; True if one ran past ``deadline``.

        That loop (a daemon thread's: the interpreter joined the others) goes
        on with what it has in flight, its dispatcher alone stopped; leaving
        at once would let the process end under it, its files left on disk
        and its tasks never counted. Past the deadline its batches are
        cancelled as a dying loop's are, and hand back what they did not finish.
        """
        live = self._left_of([b for b in list(self._batches) if b.loop.is_running()], deadline)
        if not live:
            return False
        for loop in {b.loop for b in live}:
            try:
                loop.call_soon_threadsafe(self._cancel_batches_of, loop)
            except RuntimeError:
                pass  # closed meanwhile
        live = self._left_of(live, time.monotonic() + 1.0)
        if live:  # that loop is stuck in something else: its batches stay where they are
            logger.warning(
                "fastcleanup: cleaner %s left %d task(s) in flight at exit on a loop in "
                "another thread that did not respond",
                self._name,
                sum(len(b.unfinished()) for b in live),
            )
        return True

    def _left_of(self, batches: list[Batch], until: float) -> list[Batch]:
        """Those of ``batches`` still running at ``until``, or as soon as none is."""
        while batches and time.monotonic() < until:
            time.sleep(0.001)
            batches = [b for b in batches if b in self._batches]
        return batches

    def _cancel_batches_of(self, loop: asyncio.AbstractEventLoop) -> None:
        for batch in list(self._batches):
            if batch.loop is loop and batch.worker is not None:
                batch.worker.cancel()

    def _run_at_exit(self, deadline: float) -> None:
        """Run queued file and tree removals synchronously; count the rest as dropped.

        Scratch directories closed while the cleaner ran are among them.
        """
        self._state = State.EXITED
        self._hot[PUT] = self._refuse
        if not self._stop_live_dispatcher(deadline):
            return  # a loop in another thread still owns the queue: leave it be
        for batch in list(self._batches):
            if not batch.loop.is_running():
                self._requeue(batch)
        dropped: dict[str, int] = {}
        self._run_queue(deadline, dropped)
        if self._await_live_batches(deadline):
            self._run_queue(deadline, dropped)  # what they handed back, past the deadline
        FAILURES.flush()  # no loop will end the interval: say now what was left out
        if dropped:
            # Once per cleaner, not per task: at exit this line may be the only
            # trace, as no scrape may come before the process is gone.
            logger.warning(
                "fastcleanup: cleaner %s dropped %d queued task(s) at exit, unrun: %s",
                self._name,
                sum(dropped.values()),
                ", ".join(f"{kind} {n}" for kind, n in sorted(dropped.items())),
            )

    def _run_queue(self, deadline: float, dropped: dict[str, int]) -> None:
        """Run the queued removals until ``deadline``; count the rest in ``dropped`` by kind."""
        tally, take = self._tally, self._queue.popleft
        while self._queue:
            self._seq += 1
            try:
                task = take()
                self._taken += 1
            except IndexError:
                break
            finally:
                self._seq += 1
            counted = type(task) is Requeued
            if counted:
                task = task.task
            if is_ordered(type(task)):  # its tasks go to the head of the queue, in order
                flatten_at_exit(self, task)
                continue
            kind = kind_or_invalid(task)
            if not counted:
                tally.take(kind)
            if kind == INVALID:
                self._fail(kind, task, "invalid", None)
            elif (base := sync_at_exit(task)) is not None and time.monotonic() < deadline:
                try:
                    if base in EXIT_RUNNERS:
                        EXIT_RUNNERS[base](task, max(0.0, deadline - time.monotonic()))
                    elif base is RemoveTree:
                        busy = min(self._busy_timeout, max(0.0, deadline - time.monotonic()))
                        remove_tree(task.path, self._roots, busy)
                    else:
                        job = UnlinkJob([task.path], self._roots)
                        job()
                        if job.errors:
                            raise job.errors[0][1]
                except (Refused, Busy) as exc:
                    self._fail(kind, task, reason_of(exc), exc)
                except Exception as exc:  # OSError, or a subclass's path property that raised
                    self._fail(kind, task, "error", exc)
                else:
                    tally.complete(kind)
            else:
                tally.drop_at_exit(kind)
                dropped[kind] = dropped.get(kind, 0) + 1
