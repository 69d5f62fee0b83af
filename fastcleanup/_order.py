"""Ordered cleanup: ``InOrder(a, b)`` runs ``a``, then ``b``, each counted as itself.

A browser profile may go only once its browser has closed::

    fc.submit(fc.InOrder(fc.AClose(context), fc.RemoveTree(profile)))

The queue holds an ``InOrder`` as one item; a batch worker hands it to
``run_ordered``, which runs its tasks one after the other through the
worker's own entry for a task (so a ``RemoveTree`` inside is confined and
walked like any other), each with its own timeout. Counting is per held
task: each is submitted, completed or failed under its own kind, so the
conservation law holds over the tasks, not over the item. The item's share
of that is kept in two counters of the cleaner, ``_extra`` and
``_extra_queued`` (see ``Intake``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from ._batch import DONE, Batch, Requeued
from ._tasks import INVALID, CleanupTask, kind_or_invalid

if TYPE_CHECKING:
    from collections import deque

    from ._tally import Tally

__all__ = [
    "InOrder",
    "Remainder",
    "flatten_at_exit",
    "is_ordered",
    "requeue_ordered",
    "run_ordered",
]


class InOrder:
    """Run cleanup tasks one after the other: "close this, then remove that".

    >>> fc.submit(fc.InOrder(fc.AClose(context), fc.RemoveTree(profile)))

    Each task starts once the one before it has finished, whether it
    completed or failed: a profile is removed even if closing its browser
    raised or timed out. Each is counted as itself (``submitted``,
    ``completed`` and ``failed`` under its own kind, never under
    ``in_order``) and has its own ``task_timeout``. A nested ``InOrder`` is
    flattened. If the cleaner's loop dies midway, the tasks that had not
    finished go back to the queue, in order (the one cut short starts
    again), and the next loop runs them; those that finished never run
    again. At interpreter exit the file and tree removals among them still
    run, in order; the rest are counted as dropped at exit.
    """

    __slots__ = ("tasks",)
    kind = "in_order"  # never a metrics label: its tasks are counted, not it

    tasks: tuple[CleanupTask, ...]

    def __init__(self, *tasks: CleanupTask) -> None:
        flat: list[CleanupTask] = []
        for task in tasks:
            if type(task) is InOrder:
                flat.extend(task.tasks)
                continue
            if kind_or_invalid(task) == INVALID:
                raise TypeError(
                    "InOrder takes cleanup tasks (a non-empty str kind other than "
                    f"'invalid' and an async run()), got {type(task).__name__}"
                )
            flat.append(task)
        if not flat:
            raise ValueError("InOrder needs at least one task")
        self.tasks = tuple(flat)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The worker recognises it by exact type; a subclass would be run as
        # one opaque task and counted under "in_order".
        raise TypeError("InOrder cannot be subclassed; write a CleanupTask of your own")

    async def run(self) -> None:
        """Run the tasks in order without a cleaner; raise their failures together at the end."""
        errors: list[Exception] = []
        for task in self.tasks:
            try:
                await task.run()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise ExceptionGroup(
                f"{len(errors)} of {len(self.tasks)} ordered task(s) failed", errors
            )

    def __repr__(self) -> str:
        return f"InOrder({', '.join(map(repr, self.tasks))})"


class Remainder:
    """What an ``InOrder`` has left, its tasks counted as submitted already.

    ``live`` while a worker runs it: its tasks are then counted in
    ``in_flight``, else (back in the queue) in ``_extra_queued``.
    """

    __slots__ = ("live", "tasks")
    kind = InOrder.kind

    def __init__(self, tasks: tuple[CleanupTask, ...], live: bool) -> None:
        self.tasks = tasks
        self.live = live

    run = InOrder.run

    def __repr__(self) -> str:
        return f"InOrder({', '.join(map(repr, self.tasks))}) (remainder)"


def is_ordered(cls: type) -> bool:
    """True for the types ``run_ordered`` takes (by identity: no metaclass code runs)."""
    return cls is InOrder or cls is Remainder


class Host(Protocol):
    """What running an ordered task needs of the cleaner."""

    _tally: Tally
    _task_timeout: float
    _extra: int
    _extra_queued: int
    in_flight: int

    async def _run_one(self, batch: Batch, i: int, task: Any, kind: str) -> None: ...


async def run_ordered(host: Host, batch: Batch, i: int, task: InOrder | Remainder) -> None:
    """Run the ordered task in slot ``i`` of ``batch``, its tasks one by one.

    Each runs through ``host._run_one`` in a sub-batch of its own (whose
    deadline timer is this task's timeout), which counts it as finished.
    The slot holds what is left, as a live ``Remainder``, so a dying loop
    requeues only that (``Accounts._requeue`` moves its count back to the
    queue), whether or not this coroutine gets to see the loop die.
    """
    tasks, n = task.tasks, len(task.tasks)
    if type(task) is InOrder:  # first taken: count the tasks it holds
        for t in tasks:
            host._tally.take(kind_or_invalid(t))
        host._extra += n - 1
    else:
        host._extra_queued -= n - 1
    host.in_flight += n - 1
    batch.tasks[i] = Remainder(tasks, live=True)
    loop, done = batch.loop, 0
    child: asyncio.Task[None] | None = None
    try:
        while done < n:
            t = tasks[done]
            # The sub-batch's seq is the item's, so a drain that waits for the
            # item waits for what its tasks submit.
            sub = Batch([t], batch.first_seq + i, batch.seen_at, loop)
            child = loop.create_task(host._run_one(sub, 0, t, kind_or_invalid(t)))
            timer = loop.call_at(loop.time() + host._task_timeout, _expire, sub, child)
            try:
                await child
            finally:
                timer.cancel()
            child, done = None, done + 1
            batch.tasks[i] = Remainder(tasks[done:], live=True) if done < n else DONE
    except BaseException:
        if child is not None and child.done() and not child.cancelled():
            done += 1  # it finished (and was counted) before this task was cancelled
        if not batch.abandoned:
            batch.tasks[i] = Remainder(tasks[done:], live=True) if done < n else DONE
        raise


def requeue_ordered(rest: list[Any]) -> int:
    """Mark the live remainders among ``rest`` (going back to the queue) as queued.

    Returns how many tasks they hold beyond one each: the count that moves
    from ``in_flight`` to ``_extra_queued``.
    """
    extra = 0
    for t in rest:
        if type(t) is Remainder and t.live:
            t.live = False
            extra += len(t.tasks) - 1
    return extra


def _expire(sub: Batch, child: asyncio.Task[None]) -> None:
    sub.expired = True  # _run_one then counts the cancellation as a timeout
    child.cancel()


class ExitHost(Protocol):
    """What unfolding an ordered task at interpreter exit needs of the cleaner."""

    _queue: deque[Any]
    _taken: int
    _extra: int
    _extra_queued: int
    in_flight: int

    def _put_back(self, tasks: list[Any], taken: int, in_flight: int) -> None: ...


def flatten_at_exit(host: ExitHost, task: InOrder | Remainder) -> None:
    """Put the tasks of ``task`` (just taken from the queue) at its head, in order.

    The exit handler then runs each like any queued task: removals
    synchronously, the rest counted as dropped. A remainder's tasks were
    counted already and go back marked so.
    """
    n = len(task.tasks)
    if type(task) is InOrder:
        items: list[Any] = list(task.tasks)
    else:  # never live here: the exit handler requeued every batch first
        items = [Requeued(t) for t in task.tasks]
        # Now n queued items rather than one item standing for n.
        host._extra -= n - 1
        host._extra_queued -= n - 1
    host._put_back(items, host._taken - 1, host.in_flight)
