"""The Cleaner: the public face of one queue, one dispatcher and its workers.

A task's path, one module a step, each class building on the one before:

1. ``_intake``      submit() appends to the queue, from any thread;
2. ``_dispatcher``  the dispatcher moves tasks from the queue into batches;
3. ``_worker``      a batch worker runs one batch, each task isolated;
4. ``_accounts``    finished tasks are counted; drain() learns of it;
5. ``_handback``    work whose loop died goes to the next loop, or runs at exit.

This module adds the lifecycle: construction, ``init_worker()``,
``shutdown()`` and ``stats()``.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from . import _export, _lifecycle
from ._dropwarning import DropWarning
from ._executor import DaemonExecutor
from ._handback import Handback
from ._intake import IDLE, PUT, State, submitter
from ._lane import FileLane
from ._paths import Roots
from ._tally import Stats, Tally
from ._tasks import CleanupTask
from ._tree import DEFAULT_BUSY_TIMEOUT, TreeLane
from ._unlink import COMPILED

__all__ = ["Cleaner"]


class Cleaner(Handback):
    """Runs cleanup tasks handed over from anywhere on one asyncio loop.

    >>> async with fc.Cleaner(allowed_roots=["/var/crawl"]) as cleaner:
    ...     cleaner.submit(fc.RemoveFile("/var/crawl/tmp/page.html"))
    ...     await cleaner.drain()

    ``batch_size`` tasks at most go to one worker; ``task_timeout`` seconds
    bound each cleanup; at most ``max_batches`` batches run at once (the rest
    wait in the queue); file removals run on ``io_threads`` daemon threads of
    the cleaner's own (the compiled lane's, when built), tree removals and
    the rest on as many more; ``exit_timeout`` bounds the removals run
    synchronously at interpreter exit. A tree that a live writer refills
    is walked again for up to ``busy_timeout`` seconds (default: 3, or half
    ``task_timeout`` if that is less), then fails with reason ``busy``.
    ``registry`` is the
    ``prometheus_client`` registry to export to (``None``: none).
    """

    __slots__ = (
        "__weakref__", "_batch_size", "_busy_timeout", "_executor", "_exit_timeout",
        "_io_threads", "_lane", "_max_batches", "_name", "_refill_at", "_roots", "_task_timeout",
        "_trees", "submit",
    )  # fmt: skip

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
        busy_timeout: float | None = None,
    ) -> None:
        _check_int("batch_size", batch_size, 1, 65536)
        _check_int("max_batches", max_batches, 1, 4096)
        _check_int("io_threads", io_threads, 1, 256)
        _check_seconds("task_timeout", task_timeout)
        _check_seconds("exit_timeout", exit_timeout)
        self._busy_timeout = _busy_timeout(busy_timeout, float(task_timeout))
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
        self._lane: FileLane | None = None
        self._reset()
        _lifecycle.track(self)
        if registry is not None:
            _export.register(self, registry)

    def _reset(self) -> None:
        """Start from nothing: construction, and the child after fork()."""
        self._state = State.STOPPED
        self._queue = deque()
        # The submit path's whole state, read by the submit closure: what to
        # call with a task (the queue's append while started, the refusal
        # counter otherwise), whether the dispatcher sleeps, how to wake it,
        # and how a task submitted by one of our own cleanups is taken.
        # Mutated in place, never replaced: fc.submit holds the closure.
        hot = self._stopped_hot()
        if hasattr(self, "_hot"):
            self._hot[:] = hot
        else:
            self._hot = hot
            self.submit = submitter(hot)
        self._tally = Tally()
        self._drop_warning = DropWarning(self._name)
        self._loop = None
        self._dispatcher = None
        self._dispatcher_loop = None
        self._waiter = None
        self._capacity = None
        self._batches = set()
        self._drain_waiters = []
        self._marks = deque()
        self._taken = 0
        self._extra = self._extra_queued = 0
        self._seq = 0
        self.in_flight = 0
        self._executor = None  # a forked child has none of the parent's threads
        self._lane = None
        self._trees: TreeLane | None = None

    def __repr__(self) -> str:
        return (
            f"<Cleaner {self._name} {self._state.value} queued={len(self._queue)} "
            f"in_flight={self.in_flight}>"
        )

    @property
    def name(self) -> str:
        """The ``cleaner`` label of this cleaner's metrics."""
        return self._name

    submit: Callable[[CleanupTask], None]
    """Hand a task over; it runs on the cleaner's loop. See ``_intake.submitter``."""

    def init_worker(self) -> Cleaner:
        """Start the dispatcher on the running loop; idempotent and cheap once warm.

        Call it at startup (or on every hot entry point: it costs one
        comparison once the dispatcher runs). On a new loop it adopts what a
        dead loop left unfinished. Outside a running loop it raises
        ``RuntimeError``: call it from a coroutine, such as the ``main()``
        given to ``fc.run()`` or ``asyncio.run()``.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                f"{self!r}: init_worker() needs a running event loop; call it inside a "
                "coroutine, e.g. first thing in the main() you pass to fc.run(main()) or "
                "asyncio.run(main())"
            ) from None
        if self._dispatcher_loop is loop:
            return self
        self._drop_warning.disarm()  # drops from now on follow a shutdown(): expected
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
        if self._lane is None and COMPILED:
            self._lane = FileLane(self._io_threads, name=f"fastcleanup-{self._name}")
        self._trees = TreeLane(self._executor, self._roots, self._busy_timeout, self._io_threads)
        self._loop = loop
        self._state = State.RUNNING
        self._hot[IDLE] = False
        self._dispatcher_loop = loop
        self._dispatcher = loop.create_task(self._dispatch(), name=f"fastcleanup-{self._name}")
        self._hot[PUT] = self._queue.append
        _lifecycle.started(self)  # held until shut down empty; ScratchDir bases swept
        return self

    def worker_inited(self) -> bool:
        """True from ``init_worker()`` until ``shutdown()``, even while its loop is dead."""
        return self._state is State.RUNNING

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
        if self._state is State.RUNNING:
            self._state = State.STOPPED
        self._hot[PUT] = self._refuse
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
        if self._lane is not None:
            self._lane.close()
            self._lane = None
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
        # A loop stopped but not closed (run_until_complete returned) runs no
        # dispatcher either: submits pile up, and worker_up must say so.
        loop, task = self._dispatcher_loop, self._dispatcher
        return (
            loop is not None
            and loop.is_running()
            and not loop.is_closed()
            and task is not None
            and not task.done()
        )

    def _gauges(self) -> tuple[int, int, bool]:
        return self._queued(), self.in_flight, self._worker_alive()

    def stats(self) -> Stats:
        """A frozen snapshot of the counters; cheap, callable from any thread."""
        return self._tally.snapshot(self._submitted(), self._queued(), self.in_flight)


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


def _busy_timeout(value: object, task_timeout: float) -> float:
    if value is None:
        return min(DEFAULT_BUSY_TIMEOUT, task_timeout / 2)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"busy_timeout must be a number of seconds, got {type(value).__name__}")
    if not 0 <= value < task_timeout:
        raise ValueError(
            f"busy_timeout must be at least 0 and less than task_timeout ({task_timeout}), "
            f"got {value}: the walks of a busy tree must end before its task times out"
        )
    return float(value)
