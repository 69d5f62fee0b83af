"""The collector: every cleaner's counters, read at scrape time, labelled by cleaner.

Nothing here runs on the submit path. Cleaners count with plain ints and
C-level counters; one collector per registry reads them when scraped, so
several cleaners share a registry without a clash.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._tally import Tally, count_value

__all__ = ["Exported", "register"]


class Exported(Protocol):
    """What the collector reads of a cleaner."""

    @property
    def name(self) -> str: ...

    _tally: Tally

    def _gauges(self) -> tuple[int, int, bool]:
        """``(queued, in_flight, worker_up)`` now."""
        ...


_HELP = {
    "submitted": "Cleanup tasks accepted by submit(), by kind. A task is counted when the "
    "dispatcher first takes it from the queue; until then it is only in fastcleanup_queued (a "
    "task handed back by a dead loop or by shutdown() is counted and queued again).",
    "dropped_before_init": "Cleanup tasks submitted while the cleaner was not started "
    "(before init_worker() or after shutdown()); they never run.",
    "completed": "Cleanup tasks that finished; a file already gone counts as completed.",
    "failed": "Cleanup tasks that failed, by kind and reason: error (raised), timeout (ran past "
    "task_timeout), invalid (not a cleanup task), refused (outside allowed_roots), busy (a tree "
    "still written to after its walks within busy_timeout).",
    "dropped_at_exit": "Accepted cleanup tasks that could not run before the interpreter exited.",
    "swept": "Leftovers of dead processes (killed by SIGKILL, the OOM killer, a reboot) "
    "removed by a sweep of a ScratchDir base: type=directory counts their scratch directories "
    "(Stats.swept), those an orphan such as their browser recreated among them, "
    "type=file the files and other non-directory entries that were in them.",
    "queued": "Cleanup tasks waiting in the queue for the dispatcher.",
    "in_flight": "Cleanup tasks handed to batch workers and not yet finished.",
    "worker_up": "1 while the cleaner's dispatcher runs on a live event loop, else 0.",
    "cleanup_latency_seconds": "Seconds from the dispatcher first seeing a cleanup in its queue "
    "(it looks on every wake, so a burst is seen within one loop turn) "
    "to the cleanup finishing. Time spent queued before that first "
    "look is not included.",
    "batch_size": "Cleanup tasks per batch handed to one worker.",
}


class _CleanupCollector(Collector):
    """Collects every cleaner registered with one registry."""

    def __init__(self) -> None:
        self._cleaners: weakref.WeakSet[Exported] = weakref.WeakSet()
        self._lock = threading.Lock()  # scrapes only; never taken on the submit path

    def add(self, cleaner: Exported) -> None:
        with self._lock:
            names = {c.name for c in self._cleaners}
            if cleaner.name in names:
                raise ValueError(
                    f"a cleaner named {cleaner.name!r} is already registered with "
                    "this registry; give each Cleaner its own name="
                )
            self._cleaners.add(cleaner)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # our names are checked by add(); an empty describe() skips collect()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cleaners = sorted(self._cleaners, key=lambda c: c.name)
        families = {
            "submitted": CounterMetricFamily(
                "fastcleanup_submitted", _HELP["submitted"], labels=["cleaner", "task"]
            ),
            "dropped_before_init": CounterMetricFamily(
                "fastcleanup_dropped_before_init",
                _HELP["dropped_before_init"],
                labels=["cleaner", "task"],
            ),
            "completed": CounterMetricFamily(
                "fastcleanup_completed", _HELP["completed"], labels=["cleaner", "task"]
            ),
            "failed": CounterMetricFamily(
                "fastcleanup_failed", _HELP["failed"], labels=["cleaner", "task", "reason"]
            ),
            "dropped_at_exit": CounterMetricFamily(
                "fastcleanup_dropped_at_exit", _HELP["dropped_at_exit"], labels=["cleaner", "task"]
            ),
            "swept": CounterMetricFamily(
                "fastcleanup_swept", _HELP["swept"], labels=["cleaner", "type"]
            ),
            "queued": GaugeMetricFamily("fastcleanup_queued", _HELP["queued"], labels=["cleaner"]),
            "in_flight": GaugeMetricFamily(
                "fastcleanup_in_flight", _HELP["in_flight"], labels=["cleaner"]
            ),
            "worker_up": GaugeMetricFamily(
                "fastcleanup_worker_up", _HELP["worker_up"], labels=["cleaner"]
            ),
            "latency": HistogramMetricFamily(
                "fastcleanup_cleanup_latency_seconds",
                _HELP["cleanup_latency_seconds"],
                labels=["cleaner"],
            ),
            "batch": HistogramMetricFamily(
                "fastcleanup_batch_size", _HELP["batch_size"], labels=["cleaner"]
            ),
        }
        for c in cleaners:
            _add_cleaner(families, c)
        yield from families.values()


def _add_cleaner(f: dict[str, Any], cleaner: Exported) -> None:
    name, t = cleaner.name, cleaner._tally
    # sorted() copies each dict in C without releasing the GIL: safe while
    # the loop thread adds a new kind.
    for kind, n in sorted(t.taken_by.items()):
        f["submitted"].add_metric([name, kind], n)
    for kind, c in sorted(t.dropped_before_init_by.items()):
        f["dropped_before_init"].add_metric([name, kind], count_value(c))
    for kind, n in sorted(t.completed_by.items()):
        f["completed"].add_metric([name, kind], n)
    for (kind, reason), n in sorted(t.failed_by.items()):
        f["failed"].add_metric([name, kind, reason], n)
    for kind, n in sorted(t.dropped_at_exit_by.items()):
        f["dropped_at_exit"].add_metric([name, kind], n)
    for what, n in sorted(t.swept_by.items()):
        f["swept"].add_metric([name, what], n)
    queued, in_flight, up = cleaner._gauges()
    f["queued"].add_metric([name], queued)
    f["in_flight"].add_metric([name], in_flight)
    f["worker_up"].add_metric([name], 1.0 if up else 0.0)
    for fam, h in ((f["latency"], t.latency), (f["batch"], t.batch_size)):
        buckets = h.cumulative()
        fam.add_metric([name], buckets, sum_value=h.total)


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, _CleanupCollector] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = threading.Lock()


def register(cleaner: Exported, registry: CollectorRegistry) -> None:
    """Export ``cleaner`` through ``registry`` (done by ``Cleaner(registry=...)``)."""
    if not isinstance(registry, CollectorRegistry):
        raise TypeError(
            f"registry must be a prometheus_client CollectorRegistry or None, "
            f"got {type(registry).__name__}"
        )
    with _collectors_lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = _collectors[registry] = _CleanupCollector()
            registry.register(collector)
    collector.add(cleaner)
