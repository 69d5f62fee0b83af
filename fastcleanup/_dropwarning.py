"""One warning per cleaner when it drops a task submitted before its first ``init_worker()``.

Drops after ``shutdown()`` are expected (finalizers fire while a service
stops) and stay quiet: ``init_worker()`` disarms the warning for good.

The refusal runs on the submit path, so it must stay Drop-safe: never
raise, never block, take no lock. Logging does all three (handlers hold
locks, and a ``QueueHandler``'s queue holds a plain ``threading.Lock``
that a ``__del__`` or signal handler re-entering the same thread would
deadlock on). So the refusal only claims the warning, with one C-level
``list.pop`` (atomic under the GIL: exactly one caller wins, however
re-entered), and a raw thread logs it. ``_thread.start_new_thread`` takes
no Python-level lock, unlike ``threading.Thread.start``. An ``atexit``
hook logs whatever no thread got to before the interpreter exits (a
script that submits once and ends).

    >>> cleaner = fc.Cleaner()
    >>> cleaner.submit(fc.RemoveFile(path))   # WARNING fastcleanup: ... call init_worker() ...
    >>> cleaner.submit(fc.RemoveFile(path))   # quiet; dropped_before_init counts both
"""

from __future__ import annotations

import _thread
import atexit
import logging
import os
from collections import deque

__all__ = ["DropWarning", "flush"]

logger = logging.getLogger("fastcleanup")

# Warnings claimed but not logged yet; deque.append and popleft are C-level and re-entrant.
_pending: deque[tuple[str, str]] = deque()


class DropWarning:
    """The one warning of one cleaner; ``note(kind)`` is safe on the submit path."""

    __slots__ = ("_armed", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._armed = [True]  # popped by the first drop, so only one caller ever warns

    def disarm(self) -> None:
        """Never warn: the cleaner was started, so later drops follow a shutdown()."""
        self._armed.clear()

    def note(self, kind: str) -> None:
        """Claim the warning if nobody has yet, and have it logged off this thread."""
        try:
            self._armed.pop()
        except IndexError:
            return  # warned already: quiet from now on
        try:
            _pending.append((self._name, kind))
            _thread.start_new_thread(flush, ())
        except Exception:
            pass  # no thread at interpreter shutdown: the atexit hook logs it


def flush() -> None:
    """Log every claimed warning not logged yet (each exactly once, whoever calls)."""
    while True:
        try:
            name, kind = _pending.popleft()
        except IndexError:
            return
        logger.warning(
            "cleaner %r dropped a %r task: it was submitted before init_worker(), so it will "
            "never run; it is counted in dropped_before_init. Call init_worker() inside the "
            "running event loop at startup, before anything submits (fc.init_worker() for "
            "fc.submit). This warning is logged once per cleaner.",
            name,
            kind,
        )


atexit.register(flush)
# A forked child never logs its parent's warnings (the parent does).
os.register_at_fork(after_in_child=_pending.clear)
