"""Step 3 of a task's path: a batch worker runs one batch, each task isolated.

One worker per batch, in an ``asyncio.TaskGroup``. Each child catches its
own failure, so one cleanup that raises never cancels its siblings; one
deadline timer per batch bounds them all. The batch's plain file removals
skip the TaskGroup: they go to one job on the cleaner's own threads (the
compiled lane when built), which reports back once per job, with a timeout
per file watched through the job's progress count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from typing import Any, Final

from ._accounts import Accounts, logger, safe_repr
from ._batch import DONE, Batch, InProgress, classify, paths_of, plain_removal, split
from ._executor import DaemonExecutor
from ._lane import FileLane, LaneJob
from ._order import is_ordered, run_ordered
from ._paths import FileJob, Refused, UnlinkJob
from ._tasks import INVALID, KINDS, Call, RemoveFile, RemoveTree, current_executor, kind_or_invalid
from ._tree import Busy, TreeLane
from ._unlink import use_compiled

__all__ = ["BatchWorker"]


class BatchWorker(Accounts):
    """Runs batches: ``_work`` is the worker task of one batch."""

    __slots__ = ()

    _executor: DaemonExecutor | None
    _lane: FileLane | None  # the compiled file lane, when the C module is built
    _trees: TreeLane | None  # the tree walks, from init_worker() on

    async def _work(self, batch: Batch) -> None:
        if batch.abandoned:  # taken back before this worker got to start
            return
        loop, tasks = batch.loop, batch.tasks
        children: list[asyncio.Task[None]] = []
        timer = None
        current_executor.set(self._executor)
        self._running(batch)  # what its cleanups submit, drain() waits for with them
        try:
            async with asyncio.TaskGroup() as tg:
                retaken, kind = ((), batch.kind) if batch.kind else classify(tasks)
                if kind is not None:
                    # One built-in kind, the burst case: classified in C.
                    taken = self._tally.taken_by
                    taken[kind] = taken.get(kind, 0) + len(tasks) - len(retaken)
                    if kind == "remove_file":  # nothing to spawn: one job removes them
                        batch.files.extend(range(len(tasks)))
                    else:
                        run = self._run_one
                        children = [
                            tg.create_task(run(batch, i, t, kind)) for i, t in enumerate(tasks)
                        ]
                else:
                    self._spawn(batch, tg, children, retaken)
                batch.counted = True
                if children:
                    timer = loop.call_at(loop.time() + self._task_timeout, expire, batch, children)
                if batch.files:
                    await self._remove_files(batch)
            if batch.expired:
                self._count_unstarted(batch)
        except BaseException:
            # The loop is dying, shutdown() gave up, or Ctrl-C / SystemExit hit
            # a cleanup: what did not finish goes back to the queue.
            self._requeue(batch)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self._batch_done(batch)

    def _spawn(
        self,
        batch: Batch,
        tg: asyncio.TaskGroup,
        children: list[asyncio.Task[None]],
        retaken: Collection[int],
    ) -> None:
        """Start a child per task; note the files (one job runs them all) and the invalid.

        Each task is counted by kind here, once: ``retaken`` are slots of
        tasks a dead loop handed back, counted when first taken.
        """
        taken, tasks = self._tally.taken_by, batch.tasks
        # The plain files by type, in C: a burst's mixed batch holds up to
        # FILE_BATCH of them beside at most batch_size other tasks.
        files, others = split(tasks, RemoveFile)
        exact = len(files)
        if files:
            batch.files = files
            fresh = len(files) - sum(type(tasks[i]) is RemoveFile for i in retaken)
            taken[RemoveFile.kind] = taken.get(RemoveFile.kind, 0) + fresh
        for i in others:
            task = tasks[i]
            cls = type(task)
            if is_ordered(cls):  # counted as its tasks, each with its own timeout
                tg.create_task(run_ordered(self, batch, i, task))
                continue
            try:
                kind = KINDS.get(cls) or kind_or_invalid(task)
                is_file = plain_removal(cls) is RemoveFile
            except Exception:  # a type whose metaclass raises from __hash__, say
                kind, is_file = INVALID, False
            if i not in retaken and cls is not InProgress:
                taken[kind] = taken.get(kind, 0) + 1
            if is_file:
                batch.files.append(i)  # one job removes them all, confined like the rest
                continue
            if kind == INVALID:
                self._finish(batch, i, kind, "invalid", None)
            else:
                children.append(tg.create_task(self._run_one(batch, i, task, kind)))
        if len(batch.files) > exact:
            # Subclasses joined the exact type's files: back to slot order, the
            # one order in which the job takes their paths and every count
            # after it (_account, _requeue, Batch.unfinished) reads them.
            batch.files.sort()

    def _count_unstarted(self, batch: Batch) -> None:
        """Count as timeouts the children that the deadline cancelled before their first step.

        Such a child never enters ``_run_one``, so it cannot count itself.
        uvloop runs due timers before the callbacks already queued: a loop
        stopped or stalled past ``task_timeout`` just after a worker spawned
        its children cancels them unstarted.
        """
        files = set(batch.files)
        for i, task in enumerate(batch.tasks):
            if task is not DONE and i not in files:
                try:
                    kind = kind_or_invalid(task)
                except Exception:  # a type whose metaclass raises from __hash__
                    kind = INVALID
                self._finish(batch, i, kind, "timeout", None)

    async def _run_one(self, batch: Batch, i: int, task: Any, kind: str) -> None:
        try:
            cls = type(task)
            if cls is Call:  # skip one coroutine frame on the commonest custom cleanup
                await task._call()
            elif plain_removal(cls) is RemoveTree:
                await self._trees.remove(task.path)  # type: ignore[union-attr]
            else:
                if self._roots is not None and issubclass(cls, RemoveFile | RemoveTree):
                    # A path task with a run() of its own: still confined.
                    await batch.loop.run_in_executor(self._executor, self._roots.check, task.path)
                await task.run()
        except asyncio.CancelledError:
            if not batch.expired:
                raise
            self._finish(batch, i, kind, "timeout", None)
        except (KeyboardInterrupt, SystemExit) as exc:
            # Raised inside this cleanup: it ran and failed. The interrupt goes
            # on (the TaskGroup cancels the siblings, which are requeued).
            self._finish(batch, i, kind, "error", exc)
            raise
        except Exception as exc:
            me = asyncio.current_task()
            timed_out = batch.expired and me is not None and me.cancelling() > 0
            self._finish(batch, i, kind, "timeout" if timed_out else reason_of(exc), exc)
        else:
            if batch.abandoned:
                return
            # _finish() inlined: this is the path every successful cleanup takes.
            batch.tasks[i] = DONE
            self.in_flight -= 1
            tally = self._tally
            tally.completed_by[kind] = tally.completed_by.get(kind, 0) + 1
            tally.completed += 1
            tally.latency.observe(time.monotonic() - batch.seen_at)

    async def _remove_files(self, batch: Batch) -> None:
        """Unlink the batch's files in one job, with a timeout per file.

        The job goes to the compiled lane, whose threads need no GIL (see
        ``_lane``), or else to the executor as an ``UnlinkJob``. The loop
        does no work per removed file, only per job. A file that hangs past
        ``task_timeout`` is counted as a timeout and the files after it go
        to a fresh job, so one stuck path costs the others nothing but the
        wait. A path only the Python resolver decides sends the rest of the
        batch to the executor.
        """
        loop, tasks, slots = batch.loop, batch.tasks, batch.files
        lane = self._lane if use_compiled() else None
        while batch.files_done < len(slots):
            first = batch.files_done
            fut: asyncio.Future[bool] = loop.create_future()
            try:
                if len(slots) == len(tasks):  # every slot is a file: map in C
                    paths = paths_of(tasks, first)
                else:  # a mixed batch: its files' tasks first, still without a Python loop
                    paths = paths_of(list(map(tasks.__getitem__, slots[first:])), 0)
            except Exception:  # a subclass's path property raised, say
                paths = [path_or_none(tasks[i]) for i in slots[first:]]
            job: FileJob
            if lane is not None:
                job = batch.job = LaneJob(paths, self._roots)
                lane.start(job, fut)
            else:
                job = batch.job = UnlinkJob(paths, self._roots, loop, fut)
                self._executor.run(job)  # type: ignore[union-attr]
            job.watchdog = loop.call_later(
                self._task_timeout / 4, self._watch, job, fut, 0, time.monotonic()
            )
            try:
                hung = await fut
            finally:
                job.watchdog.cancel()  # the current one: _watch may have re-armed it
            # A hung job may still finish its file (and count it) after the
            # watchdog gave up on it: what counts is what the watchdog saw.
            if batch.abandoned:
                return
            self._account(batch, job, job.hung_at if hung else job.done)
            if hung:  # the file in progress ran past the timeout: count it, go on
                self._finish(batch, slots[batch.files_done], "remove_file", "timeout", None)
                batch.files_done += 1
            elif job.fallback_at >= 0:
                lane = None  # a path only the Python resolver decides: it takes the rest
        batch.job = None

    def _watch(self, job: FileJob, fut: asyncio.Future[bool], done: int, since: float) -> None:
        """Time out the file in progress once the job made no progress for ``task_timeout``.

        Progress is the job's count of finished files, checked four times per
        timeout: no clock is read per file on the unlink threads.
        """
        if fut.done():
            return
        now = time.monotonic()
        # Read before done: attempted > done then means file ``done`` was
        # begun and is not finished. A thread between two files (it may wait
        # for a CPU there) has attempted == done and is no hang.
        attempted = job.attempted
        if job.done != done or not job.running:  # progress, or still queued behind others
            done, since = job.done, now
        elif attempted > done and now - since >= self._task_timeout and not job.wait(0):
            # The thread checks ``stop`` before it begins each file, so once
            # this is set none after the one in progress starts.
            job.hung_at = done
            job.stop = True
            fut.set_result(True)
            return
        elif attempted <= done:
            since = now  # nothing under way: the wait for a CPU is not a file's time
        loop = fut.get_loop()
        job.watchdog = loop.call_later(self._task_timeout / 4, self._watch, job, fut, done, since)


def path_or_none(task: Any) -> Any:
    """``task.path``, or None (which the job fails with EINVAL) when reading it raises.

    One file task without a readable path fails alone, counted once, by the
    job; its siblings in the batch are removed as usual.
    """
    try:
        return task.path
    except Exception as exc:
        logger.warning(
            "fastcleanup: remove_file %s has no readable path: %s", safe_repr(task), safe_repr(exc)
        )
        return None


def expire(batch: Batch, children: list[asyncio.Task[None]]) -> None:
    # One timer per batch rather than one per task: every task of a batch
    # starts together, so they share one deadline.
    batch.expired = True
    for child in children:
        if not child.done():
            child.cancel()


# The reason label of fastcleanup_failed_total: the metrics' HELP, the dashboard
# and the alert rules explain each one.
REASONS: Final = ("error", "timeout", "invalid", "refused", "busy")


def reason_of(exc: BaseException) -> str:
    """The ``reason`` label of a cleanup that raised ``exc``."""
    if isinstance(exc, Refused):
        return "refused"
    return "busy" if isinstance(exc, Busy) else "error"
