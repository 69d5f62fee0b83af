"""The compiled file lane: file jobs that are taken, run and reported with no GIL.

A Python thread needs the GIL to take a job from a queue, between
syscalls and to report back. While the loop thread runs Python without
ever blocking (a burst of submits, a busy application), such a thread can
wait for the GIL tens of milliseconds at each of those steps, because
every brief release around the loop's poll restarts its forced-switch
timer. So the loop thread, which holds the GIL anyway, converts a job's
paths once (``_cbulk.Job``); the lane's threads sit inside
``_cbulk.Pool.serve``, run jobs in C without the GIL, and signal an
eventfd that the loop watches; the loop then resolves the jobs' futures.

Used when the C module is built and ``os.unlink`` is the real one (see
``_unlink.use_compiled``); otherwise ``UnlinkJob`` runs on the executor.
"""

from __future__ import annotations

import asyncio
import threading

from ._paths import Roots, failure, refused, resolve

__all__ = ["FileLane", "LaneJob"]

try:
    from ._cbulk import REFUSED, Job, Pool
except ImportError:  # not built: FileLane is never created
    pass


class LaneJob:
    """``UnlinkJob``'s compiled twin: the same interface, over a ``_cbulk.Job``.

    Under ``allowed_roots`` the C side resolves each parent as
    ``Roots.open_dir`` does. A path it leaves to the Python resolver (a
    name without a slash or ending in ``.``, ``..`` or ``/``, a parent
    ``realpath(3)`` cannot resolve) ends the job there: ``fallback_at``
    names it, and the caller runs the rest through ``UnlinkJob``.
    """

    __slots__ = ("c", "hung_at", "paths", "watchdog")

    def __init__(self, paths: list[str | bytes], roots: Roots | None) -> None:
        self.paths = paths
        self.c = Job(paths, None if roots is None else roots.paths)
        self.hung_at = -1
        self.watchdog: asyncio.TimerHandle | None = None

    @property
    def done(self) -> int:
        return self.c.done

    @property
    def attempted(self) -> int:
        return self.c.attempted

    @property
    def stop(self) -> bool:
        return self.c.stop

    @stop.setter
    def stop(self, value: bool) -> None:
        self.c.stop = value

    @property
    def running(self) -> bool:
        return self.c.running or self.c.finished

    @property
    def errors(self) -> list[tuple[int, OSError]]:
        return [
            (k, refused(self.paths[k]) if err == REFUSED else failure(err, self.paths[k]))
            for k, err in self.c.failures()
        ]

    @property
    def fallback_at(self) -> int:
        return self.c.fallback_at

    def wait(self, timeout: float | None) -> bool:
        return self.c.wait(timeout)


class FileLane:
    """``threads`` daemon threads serving one ``_cbulk.Pool``.

    ``start(job, fut)`` queues a job; ``fut`` gets False (not hung) on its
    own loop once the job ends. The loop that starts a job watches the
    pool's eventfd from then on.
    """

    __slots__ = ("_pool", "_reader_loop", "_threads", "_waiting")

    def __init__(self, threads: int, name: str) -> None:
        self._pool = Pool()
        self._waiting: dict[Job, asyncio.Future[bool]] = {}
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        self._threads = [
            threading.Thread(target=self._pool.serve, name=f"{name}-lane-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def start(self, job: LaneJob, fut: asyncio.Future[bool]) -> None:
        loop = fut.get_loop()
        if self._reader_loop is not loop:
            self._unwatch()
            loop.add_reader(self._pool.fileno(), self._collect)
            self._reader_loop = loop
        self._waiting[job.c] = fut
        self._pool.put(job.c)

    def _collect(self) -> None:
        here = self._reader_loop
        for c in self._pool.completed():
            fut = self._waiting.pop(c, None)
            if fut is None or fut.done():
                continue
            loop = fut.get_loop()
            if loop is here:
                fut.set_result(False)
            else:  # started on a loop that since died and was replaced
                try:
                    loop.call_soon_threadsafe(resolve, fut, False)
                except RuntimeError:
                    pass  # closed: its batches were taken back by the new loop

    def _unwatch(self) -> None:
        # Only from the loop that watches, or once that loop no longer runs.
        loop, self._reader_loop = self._reader_loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._pool.fileno())

    def close(self) -> None:
        """Stop watching; the threads end once the queued jobs (stopped ones end at once) ran."""
        self._unwatch()
        self._pool.close()
