"""Failure lines with a bound: a burst of failures cannot flood the log.

Each failed cleanup is one warning on the ``fastcleanup`` logger, until
``limit`` lines were written in the current ``interval``; the rest of that
interval are counted, and one line then says how many were left out. The
counters of the metrics still count every failure.

>>> FAILURES.warning("remove_file %r failed: %s", path, err)
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["FAILURES", "FailureLog"]


class FailureLog:
    """At most ``limit`` warnings per ``interval`` seconds on ``logger``, then a summary.

    The summary comes when the interval ends (on the running loop, if any),
    or with the next line after it, or at ``flush()``.
    """

    __slots__ = (
        "_clock", "_left_out", "_lock", "_logger", "_since", "_timer", "_written", "interval",
        "limit",
    )  # fmt: skip

    def __init__(
        self,
        logger: logging.Logger,
        limit: int = 100,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or not interval > 0:
            raise ValueError(f"need limit >= 1 and interval > 0, got {limit} and {interval}")
        self.limit, self.interval = limit, interval
        self._logger, self._clock = logger, clock
        # The exit handler and a loop in another thread may log at once.
        self._lock = threading.Lock()
        self._since = 0.0
        self._written = self._left_out = 0
        self._timer: asyncio.TimerHandle | None = None

    def warning(self, msg: str, *args: object) -> None:
        """Log ``msg % args`` unless this interval's lines are used up."""
        with self._lock:
            now = self._clock()
            summary = self._roll(now)
            write = self._written < self.limit
            if write:
                self._written += 1
            else:
                self._left_out += 1
                self._arm(now)
        if summary:
            self._logger.warning(summary)
        if write:
            self._logger.warning(msg, *args)

    def flush(self) -> None:
        """Write the summary of the lines left out so far, if any."""
        with self._lock:
            summary = self._summary()
        if summary:
            self._logger.warning(summary)

    def _roll(self, now: float) -> str:
        if now - self._since < self.interval:
            return ""
        summary = self._summary()
        self._since, self._written = now, 0
        return summary

    def _summary(self) -> str:
        n, self._left_out = self._left_out, 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not n:
            return ""
        return (
            f"{n} more failure(s) not logged one by one: at most {self.limit} lines per "
            f"{self.interval:g} s (the failed_total counters hold them all)"
        )

    def _arm(self, now: float) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop here (the exit handler): the next line or flush() tells
        self._timer = loop.call_later(self.interval - (now - self._since), self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.flush()

    def reset(self) -> None:
        """Start afresh: a new interval with nothing written or left out."""
        with self._lock:
            self._summary()
            self._since, self._written = 0.0, 0


FAILURES = FailureLog(logging.getLogger("fastcleanup"))
