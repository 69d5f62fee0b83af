"""Step 1 of a task's path: submit() puts it in the queue, from any thread.

``submit`` is a small callable over one list, ``hot``: what to call with a
task (the queue's C-level ``append`` while the cleaner runs, the refusal
counter otherwise), whether the dispatcher sleeps, how to wake it, and,
for a submit made by one of the cleaner's own cleanups (its context
variable ``parent``, in ``hot`` while such cleanups run, is set), what to
call instead: ``follow``, which also tells drain() whose follow-up the
task is. It counts nothing:
``submitted`` is derived from the queue by its single consumer (see
``Intake._items``), so no lock is taken and nothing re-entrant can
deadlock.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final

from ._dropwarning import DropWarning
from ._order import InOrder
from ._tally import Tally, count_value
from ._tasks import CleanupTask, kind_or_invalid
from ._unlink import COMPILED

if COMPILED:
    from ._cbulk import submitter as compiled_submitter
if TYPE_CHECKING:
    from ._batch import Batch

__all__ = [
    "FOLLOW",
    "IDLE",
    "PARENT",
    "PUT",
    "WAKE",
    "Intake",
    "State",
    "pure_submitter",
    "submitter",
]

# Slots of Intake._hot (both builds of submit spell them as literals).
PUT, IDLE, WAKE, PARENT, FOLLOW = 0, 1, 2, 3, 4
# The kind of a batch of plain file removals, which runs no code of ours.
FILES: Final = "remove_file"


def submitter(hot: list[Any]) -> Callable[[CleanupTask], None]:
    """The submit function over ``hot``: built in C when the module is, else a closure.

    Both take the same steps. The compiled one is a builtin function, whose
    calls CPython specializes, and runs no Python frame: that frame is most
    of what a call to the closure costs.
    """
    return compiled_submitter(hot) if COMPILED else pure_submitter(hot)


def pure_submitter(hot: list[Any]) -> Callable[[CleanupTask], None]:
    # A plain function over one list: a method would cost a third more.
    # ``hot`` is a closure cell rather than a keyword-only default: CPython
    # specializes calls only to functions without keyword-only parameters,
    # and the specialized call makes submit about a fifth cheaper.
    def submit(task: CleanupTask) -> None:
        """Hand ``task`` over; it runs on the cleaner's loop.

        Never raises and never blocks: safe in ``__del__``, ``weakref.finalize``
        callbacks, signal handlers and other threads. One C-level append to the
        queue (re-entrant, no lock) and one flag test; only when the dispatcher
        sleeps, one wakeup. Before ``init_worker()`` and after ``shutdown()`` the
        task goes to the refusal counter instead. Submitted by a cleanup of the
        same cleaner, it is one that drain() waits for if it waits for that cleanup.
        """
        # The compiled build's docstring (_cintake.c) says the same; a test compares them.
        try:
            parent = hot[3]
            if parent is None or parent.get(None) is None:
                hot[0](task)
            else:  # submitted by one of the cleaner's own cleanups
                hot[4](task)
            if hot[1]:
                hot[2]()
        except Exception:  # submit must never raise; only MemoryError could get here
            pass

    return submit


class State(enum.Enum):
    STOPPED = "stopped"  # before init_worker, after shutdown(): submit drops and counts
    RUNNING = "running"  # accepting; queued work runs while the loop lives
    EXITED = "exited"  # the interpreter is exiting: submit counts the task as dropped at exit


class Intake:
    """The queue and its hand-off: the submit side and the consumer's bookkeeping."""

    __slots__ = (
        "_drop_warning", "_extra", "_extra_queued", "_hot", "_loop", "_parent", "_queue", "_seq",
        "_state", "_taken", "_tally", "_waiter", "in_flight",
    )  # fmt: skip

    _drop_warning: DropWarning

    # An InOrder is one item in the queue but counts as the n tasks it holds:
    # ``_extra`` is the n - 1 each adds to ``submitted`` once first taken, and
    # ``_extra_queued`` the part of it that an interrupted one, back in the
    # queue, adds to ``queued`` (see ``_order``).
    _extra: int
    _extra_queued: int

    _hot: list[Any]
    _loop: asyncio.AbstractEventLoop | None
    _queue: deque[Any]
    _seq: int  # odd while a consumer moves tasks out of or back into the queue
    _state: State
    _taken: int  # tasks taken from the queue, minus those handed back
    _tally: Tally
    _waiter: asyncio.Future[None] | None  # the sleeping dispatcher waits on it
    in_flight: int
    # Set by a batch worker to its batch, in its own context: a submit that
    # sees it set comes from one of our cleanups (or a task it spawned). It
    # is in hot[PARENT] only while a batch that may run code of the user's
    # runs: a burst of files alone costs submit nothing more.
    _parent: ContextVar[Batch]

    def _stopped_hot(self) -> list[Any]:
        """``hot`` as it is while the cleaner is stopped: submits go to the refusal counter."""
        if not hasattr(self, "_parent"):
            self._parent = ContextVar(f"fastcleanup_parent_{id(self):x}")
        return [self._refuse, False, self._wake, None, self._follow]

    def _running(self, batch: Batch) -> None:
        """A worker starts ``batch``: what its cleanups submit is marked as theirs."""
        self._parent.set(batch)  # in the worker's own context, which its children copy
        if batch.kind != FILES:
            self._hot[PARENT] = self._parent

    def _follow(self, task: object) -> None:
        """submit() of a task by one of our cleanups: queued, and owed by drains owing its parent.

        Its sequence number is known to lie between the two reads of
        ``_items()`` around the append (other threads may append too).
        """
        if self._state is not State.RUNNING:
            self._refuse(task)
            return
        parent = self._parent.get()
        first = self._items() + 1
        self._queue.append(task)
        last = self._items()
        loop = self._loop
        if loop is None:
            return
        if asyncio._get_running_loop() is loop:
            self._owe(parent, first, last)
        else:  # from a thread the cleanup started: drain()'s state is the loop's
            try:
                loop.call_soon_threadsafe(self._owe, parent, first, last)
            except RuntimeError:
                pass  # the loop is closed: no drain() waits on it

    def _owe(self, parent: Batch, first: int, last: int) -> None:
        raise NotImplementedError  # Accounts, the drain side, keeps the waiters

    def _wake(self) -> None:
        # Runs once per idle->busy transition, not per task: a burst wakes the
        # loop once. Clearing the flag first lets the other producers skip this.
        self._hot[IDLE] = False
        loop = self._loop
        try:
            loop.call_soon_threadsafe(self._on_wake)  # type: ignore[union-attr]
        except (RuntimeError, AttributeError):
            pass  # the loop is closed: the task stays queued for the next init_worker()

    def _on_wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _refuse(self, task: object) -> None:
        if type(task) is InOrder:  # counted as the tasks it holds
            for t in task.tasks:
                self._refuse(t)
            return
        kind = kind_or_invalid(task)
        if self._state is State.EXITED:
            next(self._tally.exit_submitted)
            self._tally.take(kind)
            self._tally.drop_at_exit(kind)
        else:
            self._tally.drop_before_init(kind)
            self._drop_warning.note(kind)  # logged once, off this thread: see _dropwarning

    def _submitted(self) -> int:
        """Tasks accepted so far: the queue's items, and the extra tasks of InOrders."""
        return self._items() + self._extra + count_value(self._tally.exit_submitted)

    def _items(self) -> int:
        """Items accepted so far: those taken from the queue plus those still in it.

        It is also the sequence number of the last item accepted, which
        drain() waits for. submit() counts nothing (a count per call would
        cost as much as the rest of it); the queue's consumers keep
        ``_taken`` instead and bump ``_seq`` around each move, so a reader in
        another thread retries until it sees no move half done. Appends need
        no care: the value read is exact for the moment the queue's length
        was read.
        """
        for _ in range(100):
            seq = self._seq
            if not seq & 1:
                value = self._taken + len(self._queue)
                if self._seq == seq:
                    return value
            time.sleep(0)  # the consumer is mid-move in another thread: let it finish
        # Only a signal handler or finalizer interrupting the consumer on its
        # own thread gets here; its move cannot finish until we return.
        return self._taken + len(self._queue)

    def _queued(self) -> int:
        """Tasks waiting in the queue, an interrupted InOrder's counted as the tasks it has left."""
        return len(self._queue) + self._extra_queued

    def _put_back(self, tasks: list[Any], taken: int, in_flight: int) -> None:
        """Return ``tasks`` to the head of the queue, with the counters as given."""
        if not self._seq & 1:  # odd already if an exception cut a move short
            self._seq += 1
        self._queue.extendleft(reversed(tasks))
        self._taken, self.in_flight = taken, in_flight
        self._seq += 1
