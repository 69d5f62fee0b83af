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
from ._batch import EXIT_RUNNERS, Requeued, sync_at_exit
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
        """Stop a dispatcher still running in another thread, and its batches;
        True once neither runs.

        Only one consumer may pop the queue at a time: the dispatcher takes a
        batch by popping in C, and a second consumer could empty the queue
        between its length check and its pops. The batches in flight are
        cancelled as a dying loop's are, and so hand back what they did not
        finish: a loop still running at exit is in a daemon thread (the
        interpreter joined the others first), which dies with the process,
        and what it held would be left in flight, neither run nor counted.
        """
        loop, task = self._dispatcher_loop, self._dispatcher
        if loop is None or task is None or loop.is_closed() or not loop.is_running():
            return True
        try:
            loop.call_soon_threadsafe(self._cancel_on, loop, task)
        except RuntimeError:
            return True  # closed meanwhile
        until = min(deadline, time.monotonic() + 1.0)
        while self._runs_on(loop) and time.monotonic() < until:
            time.sleep(0.001)
        return not self._runs_on(loop)

    def _cancel_on(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[None]) -> None:
        """On ``loop``'s thread: cancel the dispatcher and the workers of its batches."""
        task.cancel()
        for batch in list(self._batches):
            if batch.loop is loop and batch.worker is not None:
                batch.worker.cancel()

    def _runs_on(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether the dispatcher, or a batch, still runs on ``loop``."""
        return self._dispatcher_loop is loop or any(b.loop is loop for b in list(self._batches))

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
        tally, take = self._tally, self._queue.popleft
        dropped: dict[str, int] = {}
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
