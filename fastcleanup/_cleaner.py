"""The Cleaner: submit -> queue -> dispatcher -> batch worker -> task -> counters.

The whole path is in this file, in that order.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from itertools import repeat, starmap
from operator import attrgetter
from types import TracebackType
from typing import Any, Final

from . import _lifecycle
from ._executor import DaemonExecutor
from ._paths import Refused, Roots, UnlinkJob, remove_tree_confined
from ._tally import Stats, Tally, count_value
from ._tasks import AClose, Call, CleanupTask, RemoveFile, RemoveTree, current_executor

__all__ = ["Cleaner"]

logger = logging.getLogger("fastcleanup")

_PUT, _IDLE = 0, 1  # slots of Cleaner._hot (the submit closure spells them as literals)
_DONE: Final = object()  # marks a finished slot in a batch (a task itself may be None)
_INVALID: Final = "invalid"


def _submitter(hot: list[Any]) -> Callable[[CleanupTask], None]:
    def submit(task: CleanupTask, *, _hot: list[Any] = hot) -> None:
        """Hand ``task`` over; it runs on the cleaner's loop.

        Never raises and never blocks: safe in ``__del__``, ``weakref.finalize``
        callbacks, signal handlers and other threads. It is a plain function
        over one list (a method would cost a third more): one C-level append
        to the queue (re-entrant, no lock) and one flag test; only when the
        dispatcher sleeps, one wakeup. Before ``init_worker()`` and after
        ``shutdown()`` the task goes to the refusal counter instead.
        """
        try:
            _hot[0](task)
            if _hot[1]:
                _hot[2]()
        except Exception:  # submit must never raise; only MemoryError could get here
            pass

    return submit


class _State(enum.Enum):
    STOPPED = "stopped"  # before init_worker, after shutdown(): submit drops and counts
    RUNNING = "running"  # accepting; queued work runs while the loop lives
    EXITED = "exited"  # the interpreter is exiting: submit counts the task as dropped at exit


class _InProgress:
    """A file removal a dead loop's job was inside: that job's thread decides it.

    Requeued like any unfinished task; when it runs, it waits for the old
    job to end, takes the outcome the job reached, and removes the file
    itself only if the job never did.
    """

    __slots__ = ("index", "job", "roots", "task", "timeout")
    kind = "remove_file"

    def __init__(
        self, task: Any, job: UnlinkJob, index: int, roots: Roots | None, timeout: float
    ) -> None:
        self.task, self.job, self.index, self.roots = task, job, index, roots
        self.timeout = timeout  # never hold one of the cleaner's threads longer

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(current_executor.get(), self.settle, self.timeout)

    def settle(self, timeout: float | None) -> None:
        """Wait for the old job (up to ``timeout``); raise the file's error, if any."""
        self.job.finished.wait(timeout)
        if self.job.done > self.index:
            for k, err in self.job.errors:
                if k == self.index:
                    raise err
            return
        job = UnlinkJob([self.task.path], self.roots)
        job()
        if job.errors:
            raise job.errors[0][1]

    def __repr__(self) -> str:
        return f"{self.task!r} (in progress when its loop died)"


class _Requeued:
    """A task a dead loop handed back: already counted in submitted_total{task}."""

    __slots__ = ("task",)

    def __init__(self, task: object) -> None:
        self.task = task


def _safe_repr(obj: object) -> str:
    """repr() for a log line: a task's own __repr__ may raise."""
    try:
        return repr(obj)
    except Exception:
        return f"<{type(obj).__name__} object; its repr() raised>"


def _classify(tasks: list[Any]) -> tuple[Collection[int], str | None]:
    """Unwrap requeued tasks; return their slots, and the kind if all are one built-in kind.

    Done in C (map, count) for the burst case. Only types are compared, and
    a hostile metaclass that raises from comparing or hashing falls back to
    the per-task path.
    """
    try:
        types = list(map(type, tasks))
        retaken: Collection[int] = _unwrap(tasks) if _Requeued in types else ()
        if retaken:
            types = list(map(type, tasks))
        kind = _KINDS.get(types[0])
        if kind is not None and types.count(types[0]) == len(tasks):
            return retaken, kind
        return retaken, None
    except Exception:
        return _unwrap(tasks), None


def _unwrap(tasks: list[Any]) -> set[int]:
    """Unwrap requeued tasks in place; return their slots."""
    slots = set()
    for i, task in enumerate(tasks):
        if type(task) is _Requeued:
            tasks[i] = task.task
            slots.add(i)
    return slots


class _Batch:
    """Up to ``batch_size`` tasks handed to one worker; finished slots become ``_DONE``."""

    __slots__ = (
        "abandoned", "counted", "expired", "files", "files_done", "first_seq", "job", "loop",
        "seen_at",
        "tasks", "worker",
    )  # fmt: skip

    def __init__(
        self, tasks: list[Any], first_seq: int, seen_at: float, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.tasks = tasks
        self.first_seq = first_seq
        self.seen_at = seen_at
        self.loop = loop
        self.expired = False  # the batch deadline passed: cancelled children count as timeouts
        self.abandoned = False  # its tasks were taken back; the worker must not count them
        self.counted = False  # its tasks are in submitted_total{task}
        self.job: UnlinkJob | None = None
        self.worker: asyncio.Task[None] | None = None
        self.files: list[int] = []  # slots of the RemoveFile tasks, removed in this order
        self.files_done = 0  # files[:files_done] are finished (their slots are not marked)

    def unfinished(self) -> list[Any]:
        done = set(self.files[: self.files_done])
        return [t for i, t in enumerate(self.tasks) if t is not _DONE and i not in done]


class Cleaner:
    """Runs cleanup tasks handed over from anywhere on one asyncio loop.

    >>> async with fc.Cleaner(allowed_roots=["/var/crawl"]) as cleaner:
    ...     cleaner.submit(fc.RemoveFile("/var/crawl/tmp/page.html"))
    ...     await cleaner.drain()

    ``batch_size`` tasks at most go to one worker; ``task_timeout`` seconds
    bound each cleanup; at most ``max_batches`` batches run at once (the rest
    wait in the queue); file and tree removals run on ``io_threads`` daemon
    threads of the cleaner's own; ``exit_timeout`` bounds the removals run
    synchronously at interpreter exit. ``registry`` is the
    ``prometheus_client`` registry to export to (``None``: none).
    """

    __slots__ = (
        "__weakref__",
        "_batch_size",
        "_batches",
        "_capacity",
        "_dispatcher",
        "_dispatcher_loop",
        "_drain_waiters",
        "_executor",
        "_exit_timeout",
        "_hot",
        "_io_threads",
        "_loop",
        "_marks",
        "_max_batches",
        "_name",
        "_queue",
        "_refill_at",
        "_roots",
        "_seq",
        "_state",
        "_taken",
        "_tally",
        "_task_timeout",
        "_waiter",
        "in_flight",
        "submit",
    )

    def __init__(
        self,
        batch_size: int = 64,
        task_timeout: float = 60.0,
        allowed_roots: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
        registry: Any = _lifecycle.DEFAULT_REGISTRY,
        *,
        name: str | None = None,
        max_batches: int = 4,
        io_threads: int = 2,
        exit_timeout: float = 5.0,
    ) -> None:
        _check_int("batch_size", batch_size, 1, 65536)
        _check_int("max_batches", max_batches, 1, 4096)
        _check_int("io_threads", io_threads, 1, 256)
        _check_seconds("task_timeout", task_timeout)
        _check_seconds("exit_timeout", exit_timeout)
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        self._batch_size = batch_size
        self._task_timeout = float(task_timeout)
        self._max_batches = max_batches
        self._refill_at = max_batches - max(1, max_batches // 2)
        self._io_threads = io_threads
        self._exit_timeout = float(exit_timeout)
        self._roots = None if allowed_roots is None else Roots(allowed_roots)
        self._name = name or f"cleaner-{_lifecycle.next_id()}"
        self._executor: DaemonExecutor | None = None
        self._reset()
        _lifecycle.track(self)
        if registry is not None:
            from .metrics import register

            register(self, registry)

    def _reset(self) -> None:
        """Start from nothing: construction, and the child after fork()."""
        self._state = _State.STOPPED
        self._queue: deque[Any] = deque()
        # The submit path's whole state, read by the submit closure: what to
        # call with a task (the queue's append while started, the refusal
        # counter otherwise), whether the dispatcher sleeps, how to wake it.
        # Mutated in place, never replaced: fc.submit holds the closure.
        hot = [self._refuse, False, self._wake]
        if hasattr(self, "_hot"):
            self._hot[:] = hot
        else:
            self._hot: list[Any] = hot
            self.submit = _submitter(hot)
        self._tally = Tally()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._dispatcher_loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._capacity: asyncio.Future[None] | None = None
        self._batches: set[_Batch] = set()
        self._drain_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._marks: deque[tuple[int, float]] = deque()
        self._taken = 0  # tasks taken from the queue, minus those handed back
        self._seq = 0  # odd while a consumer moves tasks out of or back into the queue
        self.in_flight = 0
        self._executor = None  # a forked child has none of the parent's threads

    def __repr__(self) -> str:
        return (
            f"<Cleaner {self._name} {self._state.value} queued={len(self._queue)} "
            f"in_flight={self.in_flight}>"
        )

    @property
    def name(self) -> str:
        """The ``cleaner`` label of this cleaner's metrics."""
        return self._name

    # -- submit: any thread, any context -------------------------------------------

    submit: Callable[[CleanupTask], None]
    """Hand a task over; it runs on the cleaner's loop. See :func:`_submitter`."""

    def _wake(self) -> None:
        # Runs once per idle->busy transition, not per task: a burst wakes the
        # loop once. Clearing the flag first lets the other producers skip this.
        self._hot[_IDLE] = False
        loop = self._loop
        try:
            loop.call_soon_threadsafe(self._on_wake)  # type: ignore[union-attr]
        except (RuntimeError, AttributeError):
            pass  # the loop is closed: the task stays queued for the next init_worker()

    def _refuse(self, task: object) -> None:
        kind = _kind_or_invalid(task)
        if self._state is _State.EXITED:
            next(self._tally.exit_submitted)
            self._tally.take(kind)
            self._tally.drop_at_exit(kind)
        else:
            self._tally.drop_before_init(kind)

    # -- lifecycle -----------------------------------------------------------------

    def init_worker(self) -> Cleaner:
        """Start the dispatcher on the running loop; idempotent and cheap once warm.

        Call it at startup (or on every hot entry point: it costs one
        comparison once the dispatcher runs). On a new loop it adopts what a
        dead loop left unfinished.
        """
        loop = asyncio.get_running_loop()
        if self._dispatcher_loop is loop:
            return self
        old = self._loop
        if (
            old is not None
            and old is not loop
            and self._dispatcher_loop is old
            and old.is_running()
            and not old.is_closed()
        ):
            raise RuntimeError(
                f"{self!r} runs on another loop that is still running; call shutdown() "
                "there first, or use one Cleaner per loop"
            )
        self._adopt(loop)
        if self._executor is None:
            self._executor = DaemonExecutor(self._io_threads, name=f"fastcleanup-{self._name}")
        self._loop = loop
        self._state = _State.RUNNING
        self._hot[_IDLE] = False
        self._dispatcher_loop = loop
        self._dispatcher = loop.create_task(self._dispatch(), name=f"fastcleanup-{self._name}")
        self._hot[_PUT] = self._queue.append
        _lifecycle.hold(self)
        from ._scratch import on_init  # sweeps the ScratchDir bases registered with us

        on_init(self)
        return self

    def worker_inited(self) -> bool:
        """True from ``init_worker()`` until ``shutdown()``, even while its loop is dead."""
        return self._state is _State.RUNNING

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take back the unfinished tasks of batches whose loop is gone."""
        for batch in [b for b in self._batches if b.loop is not loop]:
            self._requeue(batch)

    def _requeue(self, batch: _Batch) -> None:
        if batch.abandoned:
            return
        job = batch.job
        if job is not None:
            job.stop = True
            # Let the file in progress finish (an unlink takes microseconds;
            # hung storage gets a tenth of a second), then count what the job
            # did rather than run it again.
            if job.running:
                job.finished.wait(0.1)
            self._account(batch, job, job.done)
            if job.running and not job.finished.is_set() and job.done < len(job.paths):
                # Still inside that unlink: running it again would be a second
                # run. The job's thread decides its outcome (see _InProgress).
                slot = batch.files[batch.files_done]
                batch.tasks[slot] = _InProgress(
                    batch.tasks[slot], job, job.done, self._roots, self._task_timeout
                )
        batch.abandoned = True
        rest = batch.unfinished()
        if batch.counted:  # mark them so submitted_total{task} never counts one twice
            rest = [t if type(t) is _Requeued else _Requeued(t) for t in rest]
        self._put_back(rest, self._taken - len(rest), self.in_flight - len(rest))
        self._batches.discard(batch)

    def _put_back(self, tasks: list[Any], taken: int, in_flight: int) -> None:
        """Return ``tasks`` to the head of the queue, with the counters as given."""
        if not self._seq & 1:  # odd already if an exception cut a move short
            self._seq += 1
        self._queue.extendleft(reversed(tasks))
        self._taken, self.in_flight = taken, in_flight
        self._seq += 1

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every task accepted before this call has finished.

        Returns False if ``timeout`` seconds passed first.
        """
        target = self._submitted()
        if self._drained(target):
            return True
        loop = asyncio.get_running_loop()
        if self._dispatcher_loop is not loop:
            raise RuntimeError(
                f"{self!r} has {target - self._taken + self.in_flight} tasks pending but no "
                "dispatcher on this loop: call init_worker() first"
            )
        fut: asyncio.Future[None] = loop.create_future()
        entry = (target, fut)
        self._drain_waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await fut
            return True
        except TimeoutError:
            return False
        finally:
            if entry in self._drain_waiters:
                self._drain_waiters.remove(entry)

    def _drained(self, target: int) -> bool:
        return self._taken >= target and all(b.first_seq > target for b in self._batches)

    async def shutdown(self, timeout: float | None = 10.0) -> bool:
        """Drain for up to ``timeout`` seconds, then stop the dispatcher.

        Returns whether everything finished. Whatever did not stays queued:
        a later ``init_worker()`` runs it, and at interpreter exit file and
        tree removals run synchronously. Submits are dropped (and counted)
        from now until the next ``init_worker()``.
        """
        loop = asyncio.get_running_loop()
        other = self._dispatcher_loop
        if other is not None and other is not loop and other.is_running():
            raise RuntimeError(
                f"{self!r} runs on another loop that is still running: await shutdown() there"
            )
        if other is loop:
            drained = await self.drain(timeout)
        else:  # its loop is dead: nothing can finish here
            drained = not self._queue and self.in_flight == 0
        if self._state is _State.RUNNING:
            self._state = _State.STOPPED
        self._hot[_PUT] = self._refuse
        running = [b.worker for b in self._batches if b.loop is loop and b.worker is not None]
        if self._dispatcher is not None and self._dispatcher_loop is loop:
            running.append(self._dispatcher)
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        # A dispatcher cancelled before its first step never ran its finally.
        self._dispatcher_loop = self._dispatcher = None
        # A worker cancelled before its first step never ran its own requeue,
        # and batches of dead loops are still listed: take them all back.
        for batch in list(self._batches):
            self._requeue(batch)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        if not self._queue:
            _lifecycle.release(self)
        return drained

    async def __aenter__(self) -> Cleaner:
        return self.init_worker()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    def _worker_alive(self) -> bool:
        loop, task = self._dispatcher_loop, self._dispatcher
        return loop is not None and not loop.is_closed() and task is not None and not task.done()

    def stats(self) -> Stats:
        """A frozen snapshot of the counters; cheap, callable from any thread."""
        return self._tally.snapshot(self._submitted(), len(self._queue), self.in_flight)

    def _submitted(self) -> int:
        """Tasks accepted so far: those taken from the queue plus those still in it.

        submit() counts nothing (a count per call would cost as much as the
        rest of it); the queue's consumers keep ``_taken`` instead and bump
        ``_seq`` around each move, so a reader in another thread retries
        until it sees no move half done. Appends need no care: the value
        read is exact for the moment the queue's length was read.
        """
        for _ in range(100):
            seq = self._seq
            if not seq & 1:
                value = self._taken + len(self._queue)
                if self._seq == seq:
                    return value + count_value(self._tally.exit_submitted)
            time.sleep(0)  # the consumer is mid-move in another thread: let it finish
        # Only a signal handler or finalizer interrupting the consumer on its
        # own thread gets here; its move cannot finish until we return.
        return self._taken + len(self._queue) + count_value(self._tally.exit_submitted)

    # -- dispatcher: the loop's side of the queue -----------------------------------

    def _on_wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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
                    hot[_IDLE] = True
                    # Re-check after publishing that we sleep: a producer that
                    # appended before seeing it did not wake us (lost wakeup).
                    if not queue:
                        self._waiter = loop.create_future()
                        await self._waiter
                    hot[_IDLE] = False
                    continue
                self._sight(len(queue), time.monotonic())
                if len(self._batches) >= self._max_batches:
                    self._capacity = loop.create_future()
                    await self._capacity
                    continue
                n = min(len(queue), self._batch_size)
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
                batch = _Batch(moving, first, self._seen_at(first), loop)
                self.in_flight += n
                self._batches.add(batch)
                moving = None
                self._tally.batch_size.observe(n)
                batch.worker = loop.create_task(self._work(batch))
        finally:
            if moving is not None and not any(b.tasks is moving for b in self._batches):
                self._put_back(moving, *before)  # caught between the queue and its batch
            hot[_IDLE] = False
            if self._dispatcher_loop is loop:
                self._dispatcher_loop = None
            # A worker cancelled before its first step (asyncio.run cancels
            # every task at once) never runs its own requeue: do it for it.
            for batch in [b for b in self._batches if b.loop is loop and not b.counted]:
                self._requeue(batch)

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

    # -- batch worker ----------------------------------------------------------------

    async def _work(self, batch: _Batch) -> None:
        if batch.abandoned:  # taken back before this worker got to start
            return
        loop, tasks = batch.loop, batch.tasks
        children: list[asyncio.Task[None]] = []
        timer = None
        current_executor.set(self._executor)
        try:
            async with asyncio.TaskGroup() as tg:
                retaken, kind = _classify(tasks)
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
                    timer = loop.call_at(loop.time() + self._task_timeout, _expire, batch, children)
                if batch.files:
                    await self._remove_files(batch)
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
        batch: _Batch,
        tg: asyncio.TaskGroup,
        children: list[asyncio.Task[None]],
        retaken: Collection[int],
    ) -> None:
        """Start a child per task; note the files (one job runs them all) and the invalid.

        Each task is counted by kind here, once: ``retaken`` are slots of
        tasks a dead loop handed back, counted when first taken.
        """
        taken = self._tally.taken_by
        for i, task in enumerate(batch.tasks):
            cls = type(task)
            try:
                kind = _KINDS.get(cls) or _kind_or_invalid(task)
                # issubclass on the real type: isinstance would consult a
                # hostile object's own __class__.
                is_file = cls is RemoveFile or (
                    issubclass(cls, RemoveFile) and cls.run is RemoveFile.run
                )
            except Exception:  # a type whose metaclass raises from __hash__, say
                kind, is_file = _INVALID, False
            if i not in retaken and cls is not _InProgress:
                taken[kind] = taken.get(kind, 0) + 1
            if is_file:
                batch.files.append(i)  # one job removes them all, confined like the rest
                continue
            if kind == _INVALID:
                self._finish(batch, i, kind, "invalid", None)
            else:
                children.append(tg.create_task(self._run_one(batch, i, task, kind)))

    async def _run_one(self, batch: _Batch, i: int, task: Any, kind: str) -> None:
        try:
            cls = type(task)
            if cls is Call:  # skip one coroutine frame on the commonest custom cleanup
                await task.fn(*task.args, **task.kwargs)
            elif cls is RemoveTree or (issubclass(cls, RemoveTree) and cls.run is RemoveTree.run):
                await batch.loop.run_in_executor(
                    self._executor, remove_tree_confined, task.path, self._roots
                )
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
            self._finish(batch, i, kind, "timeout" if timed_out else _reason(exc), exc)
        else:
            if batch.abandoned:
                return
            # _finish() inlined: this is the path every successful cleanup takes.
            batch.tasks[i] = _DONE
            self.in_flight -= 1
            tally = self._tally
            tally.completed_by[kind] = tally.completed_by.get(kind, 0) + 1
            tally.completed += 1
            tally.latency.observe(time.monotonic() - batch.seen_at)

    async def _remove_files(self, batch: _Batch) -> None:
        """Unlink the batch's files in one executor job, with a timeout per file.

        The loop does no work per removed file, only per job: every bit of
        Python the loop thread runs holds the GIL that the unlink threads
        need between syscalls. A file that hangs past ``task_timeout`` is
        counted as a timeout and the files after it go to a fresh job, so
        one stuck path costs the others nothing but the wait.
        """
        loop, tasks, slots = batch.loop, batch.tasks, batch.files
        while batch.files_done < len(slots):
            first = batch.files_done
            fut: asyncio.Future[bool] = loop.create_future()
            if len(slots) == len(tasks):  # every slot is a file: map in C
                paths = list(map(_path_of, tasks[first:]))
            else:
                paths = [tasks[i].path for i in slots[first:]]
            job = UnlinkJob(paths, self._roots, loop, fut)
            batch.job = job
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
        batch.job = None

    def _account(self, batch: _Batch, job: UnlinkJob, n: int) -> None:
        """Count the first ``n`` files of ``job`` as finished (completed or failed)."""
        tally = self._tally
        errors = [err for k, err in job.errors if k < n]
        for err in errors:
            tally.fail("remove_file", "refused" if isinstance(err, Refused) else "error")
            logger.warning("fastcleanup: remove_file %r failed: %s", err.filename, err)
        tally.complete("remove_file", n - len(errors))
        tally.latency.observe(time.monotonic() - batch.seen_at, n)
        self.in_flight -= n
        batch.files_done += n

    def _watch(self, job: UnlinkJob, fut: asyncio.Future[bool], done: int, since: float) -> None:
        """Time out the file in progress once the job made no progress for ``task_timeout``.

        Progress is the job's count of finished files, checked four times per
        timeout: no clock is read per file on the unlink threads.
        """
        if fut.done():
            return
        now = time.monotonic()
        if job.done != done or not job.running:  # progress, or still queued behind others
            done, since = job.done, now
        elif done < len(job.paths) and now - since >= self._task_timeout:
            # File ``done`` is the one in progress. The thread checks ``stop``
            # before each file, so none after it starts once this is set.
            job.hung_at = done
            job.stop = True
            fut.set_result(True)
            return
        loop = fut.get_loop()
        job.watchdog = loop.call_later(self._task_timeout / 4, self._watch, job, fut, done, since)

    def _finish(
        self, batch: _Batch, i: int, kind: str, reason: str | None, exc: BaseException | None
    ) -> None:
        if batch.abandoned:
            return
        task = batch.tasks[i]
        batch.tasks[i] = _DONE
        self.in_flight -= 1
        tally = self._tally
        if reason is None:
            tally.complete(kind)
        else:
            tally.fail(kind, reason)
            logger.warning(
                "fastcleanup: %s %s failed (%s): %s",
                kind,
                _safe_repr(task),
                reason,
                _safe_repr(exc),
            )
        tally.latency.observe(time.monotonic() - batch.seen_at)

    def _batch_done(self, batch: _Batch) -> None:
        self._batches.discard(batch)
        cap = self._capacity
        # Wake the dispatcher once half the slots are free, not on every
        # batch: it then hands out several batches in one turn.
        if cap is not None and not cap.done() and len(self._batches) <= self._refill_at:
            cap.set_result(None)
        if self._drain_waiters:
            for target, fut in self._drain_waiters:
                if not fut.done() and self._drained(target):
                    fut.set_result(None)

    # -- interpreter exit and fork (driven by _lifecycle) ----------------------------

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

    def _run_at_exit(self, deadline: float) -> None:
        """Run queued file and tree removals synchronously; count the rest as dropped."""
        self._state = _State.EXITED
        self._hot[_PUT] = self._refuse
        if not self._stop_live_dispatcher(deadline):
            return  # a loop in another thread still owns the queue: leave it be
        for batch in list(self._batches):
            if not batch.loop.is_running():
                self._requeue(batch)
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
            counted = type(task) is _Requeued
            if counted:
                task = task.task
            kind = _kind_or_invalid(task)
            if not counted:
                tally.take(kind)
            if kind == _INVALID:
                tally.fail(kind, "invalid")
            elif type(task) in _SYNC_AT_EXIT and time.monotonic() < deadline:
                try:
                    if type(task) is _InProgress:
                        task.settle(max(0.0, deadline - time.monotonic()))
                    elif type(task) is RemoveTree:
                        remove_tree_confined(task.path, self._roots)
                    else:
                        job = UnlinkJob([task.path], self._roots)
                        job()
                        if job.errors:
                            raise job.errors[0][1]
                except Refused:
                    tally.fail(kind, "refused")
                except OSError:
                    tally.fail(kind, "error")
                else:
                    tally.complete(kind)
            else:
                tally.drop_at_exit(kind)


def _expire(batch: _Batch, children: list[asyncio.Task[None]]) -> None:
    # One timer per batch rather than one per task: every task of a batch
    # starts together, so they share one deadline.
    batch.expired = True
    for child in children:
        if not child.done():
            child.cancel()


_path_of = attrgetter("path")
_SYNC_AT_EXIT: Final = (RemoveFile, RemoveTree, _InProgress)

_KINDS: Final[dict[type, str]] = {
    RemoveFile: RemoveFile.kind,
    RemoveTree: RemoveTree.kind,
    AClose: AClose.kind,
    Call: Call.kind,
}


def _kind_or_invalid(task: object) -> str:
    kind = _KINDS.get(type(task))
    if kind is not None:
        return kind
    try:
        kind = getattr(task, "kind", None)
        run = getattr(task, "run", None)
    except Exception:
        return _INVALID
    if type(kind) is not str or not kind or not callable(run):
        return _INVALID
    return kind


def _reason(exc: BaseException) -> str:
    return "refused" if isinstance(exc, Refused) else "error"


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")


def _check_seconds(name: str, value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{name} must be a positive, finite number of seconds, got {value}")
