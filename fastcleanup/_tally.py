"""Counters a cleaner keeps, and the frozen ``Stats`` snapshot of them.

Who writes what, so no lock is needed anywhere:

* Nothing is counted on the submit path itself: the cleaner derives
  ``submitted`` from its queue (see ``Cleaner._submitted``).
* ``dropped_before_init`` is bumped from any thread, re-entrantly (a
  ``__del__`` or a signal handler may interrupt another submit): one
  ``itertools.count`` per kind, created with the atomic ``dict.setdefault``;
  ``next()`` runs in C under the GIL, so no increment is lost and no lock is
  taken (``prometheus_client``'s ``Counter.inc()`` takes a
  ``threading.Lock`` and deadlocks when re-entered, client_python #1076).
  ``exit_submitted`` (tasks submitted once the interpreter is exiting) works
  the same way.
* ``swept_by`` (leftovers of dead processes removed by a sweep) is written
  by sweep jobs on the cleaner's threads, under a lock of ``_scratch``.
* Everything else is written by one thread at a time: the loop thread of
  the dispatcher, or the exit handler once that loop is dead.

Readers (``stats()``, scrapes) run in any thread and only read; each
counter is monotone on its own, and the conservation law is exact whenever
the cleaner is quiet.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from dataclasses import dataclass

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "Histogram", "Stats", "Tally"]

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of a cleaner's counters and gauges.

    ``submitted == completed + failed + dropped_at_exit + queued + in_flight``
    holds exactly whenever nothing is submitted or finishes while it is
    taken (after ``drain()``, for instance). ``swept`` stands apart from it.
    """

    submitted: int
    dropped_before_init: int
    completed: int
    failed: int
    dropped_at_exit: int
    queued: int
    in_flight: int
    swept: int = 0
    """Scratch directories of dead processes that sweeps removed (see ``fc.sweep``):
    ``fastcleanup_swept_total{type="directory"}``. The files that were in them are
    counted by ``type="file"`` of that metric only. Not part of the conservation
    law: a sweep itself is counted as one task of kind ``sweep``. (Last, with a
    default, so that positional construction of the older fields still works.)"""


def count_value(counter: itertools.count[int]) -> int:
    """The next value ``counter`` would return, read without advancing it."""
    # repr() is "count(N)" on every supported version; __reduce__ would be
    # shorter but is deprecated since 3.12.
    return int(repr(counter)[6:-1])


class Histogram:
    """Bucket counts written by one thread, exported at scrape time."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.total = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += n
        self.total += value * n

    def cumulative(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for bound, c in zip((*self.bounds, float("inf")), list(self.counts), strict=True):
            acc += c
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(acc)))
        return out


class Tally:
    """The counters of one cleaner; see the module docstring for who writes what."""

    __slots__ = (
        "batch_size",
        "completed",
        "completed_by",
        "dropped_at_exit",
        "dropped_at_exit_by",
        "dropped_before_init_by",
        "exit_submitted",
        "failed",
        "failed_by",
        "latency",
        "swept_by",
        "taken_by",
    )

    def __init__(self) -> None:
        self.exit_submitted = itertools.count()
        self.dropped_before_init_by: dict[str, itertools.count[int]] = {}
        self.taken_by: dict[str, int] = {}
        self.completed_by: dict[str, int] = {}
        self.failed_by: dict[tuple[str, str], int] = {}
        self.dropped_at_exit_by: dict[str, int] = {}
        self.swept_by: dict[str, int] = {}  # "directory" and "file"
        self.completed = 0
        self.failed = 0
        self.dropped_at_exit = 0
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)

    def drop_before_init(self, kind: str) -> None:
        counter = self.dropped_before_init_by.get(kind)
        if counter is None:
            counter = self.dropped_before_init_by.setdefault(kind, itertools.count())
        next(counter)

    def take(self, kind: str, n: int = 1) -> None:
        self.taken_by[kind] = self.taken_by.get(kind, 0) + n

    def complete(self, kind: str, n: int = 1) -> None:
        self.completed_by[kind] = self.completed_by.get(kind, 0) + n
        self.completed += n

    def fail(self, kind: str, reason: str, n: int = 1) -> None:
        key = (kind, reason)
        self.failed_by[key] = self.failed_by.get(key, 0) + n
        self.failed += n

    def drop_at_exit(self, kind: str, n: int = 1) -> None:
        self.dropped_at_exit_by[kind] = self.dropped_at_exit_by.get(kind, 0) + n
        self.dropped_at_exit += n

    def dropped_before_init(self) -> int:
        return sum(count_value(c) for c in list(self.dropped_before_init_by.values()))

    def snapshot(self, submitted: int, queued: int, in_flight: int) -> Stats:
        return Stats(
            submitted=submitted,
            dropped_before_init=self.dropped_before_init(),
            completed=self.completed,
            failed=self.failed,
            dropped_at_exit=self.dropped_at_exit,
            queued=queued,
            in_flight=in_flight,
            swept=self.swept_by.get("directory", 0),
        )
