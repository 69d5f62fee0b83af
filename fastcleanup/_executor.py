"""The cleaner's own small thread pool.

Why not ``ThreadPoolExecutor``: its threads are joined at interpreter exit,
so one cleanup hung on a dead NFS mount would hang the exit of the whole
process. These threads are daemons; exit stays bounded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from queue import SimpleQueue
from typing import Any, ParamSpec, TypeVar

logger = logging.getLogger("fastcleanup")
_P = ParamSpec("_P")
_T = TypeVar("_T")


class DaemonExecutor(Executor):
    """A fixed pool of daemon threads fed by one ``SimpleQueue``."""

    def __init__(self, workers: int, name: str = "fastcleanup") -> None:
        self._jobs: SimpleQueue[tuple[Future[Any] | None, Callable[[], Any]] | None] = SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        self._closed = False
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        if self._closed:
            raise RuntimeError("cannot schedule new jobs after shutdown")
        fut: Future[_T] = Future()
        self._jobs.put((fut, lambda: fn(*args, **kwargs)))
        return fut

    def run(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` with no Future: for jobs that report back by themselves."""
        if self._closed:
            raise RuntimeError("cannot schedule new jobs after shutdown")
        self._jobs.put((None, fn))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if not self._closed:
            self._closed = True
            for _ in self._threads:
                self._jobs.put(None)
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fut, fn = job
            if fut is None:
                try:
                    fn()
                except BaseException:  # a job reports its own errors; keep the thread alive
                    logger.exception("fastcleanup: executor job %r raised", fn)
            elif fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # handed to the awaiting side, never lost
                    fut.set_exception(exc)
            del job, fut, fn  # drop references before blocking on the next job
