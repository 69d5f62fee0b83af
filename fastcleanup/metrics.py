"""The Prometheus side of fastcleanup: the collector and ways to serve it.

Nothing here runs on the submit path. Cleaners count with plain ints and
C-level counters; one collector per registry reads them when scraped and
labels each series with the cleaner's name, so several cleaners share a
registry without a clash.

>>> server = fc.metrics.serve(port=9464)          # a process with no /metrics yet
>>> app.mount("/metrics", fc.metrics.asgi_app())  # an ASGI app (Starlette, FastAPI)
>>> web_app.router.add_get("/metrics", fc.metrics.aiohttp_handler())
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, make_asgi_app, start_http_server
from prometheus_client.registry import Collector

from ._tally import count_value

if TYPE_CHECKING:
    from ._cleaner import Cleaner

__all__ = ["MetricsServer", "aiohttp_handler", "asgi_app", "register", "serve"]

_HELP = {
    "submitted": "Cleanup tasks accepted by submit(), by kind. A task is counted when the "
    "dispatcher first takes it from the queue; until then it is only in fastcleanup_queued (a "
    "task handed back by a dead loop or by shutdown() is counted and queued again).",
    "dropped_before_init": "Cleanup tasks submitted while the cleaner was not started "
    "(before init_worker() or after shutdown()); they never run.",
    "completed": "Cleanup tasks that finished; a file already gone counts as completed.",
    "failed": "Cleanup tasks that failed, by kind and reason: error (raised), timeout (ran past "
    "task_timeout), invalid (not a cleanup task), refused (outside allowed_roots).",
    "dropped_at_exit": "Accepted cleanup tasks that could not run before the interpreter exited.",
    "swept": "Leftovers of dead processes (killed by SIGKILL, the OOM killer, a reboot) "
    "removed by a sweep of a ScratchDir base: type=directory counts their scratch directories, "
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
        self._cleaners: weakref.WeakSet[Cleaner] = weakref.WeakSet()
        self._lock = threading.Lock()  # scrapes only; never taken on the submit path

    def add(self, cleaner: Cleaner) -> None:
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


def _add_cleaner(f: dict[str, Any], cleaner: Cleaner) -> None:
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
    f["queued"].add_metric([name], len(cleaner._queue))
    f["in_flight"].add_metric([name], cleaner.in_flight)
    f["worker_up"].add_metric([name], 1.0 if cleaner._worker_alive() else 0.0)
    for fam, h in ((f["latency"], t.latency), (f["batch"], t.batch_size)):
        buckets = h.cumulative()
        fam.add_metric([name], buckets, sum_value=h.total)


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, _CleanupCollector] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = threading.Lock()


def register(cleaner: Cleaner, registry: CollectorRegistry) -> None:
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


class MetricsServer:
    """A running ``/metrics`` server; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, port: int, addr: str, registry: CollectorRegistry) -> None:
        self._httpd, self._thread = start_http_server(port, addr=addr, registry=registry)
        self.addr: str = addr
        self.port: int = self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving. Blocks up to half a second (the server's poll interval)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    async def aclose(self) -> None:
        """``close()`` without blocking the event loop."""
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}>"


def serve(
    port: int = 0, addr: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY
) -> MetricsServer:
    """Serve ``/metrics`` from a daemon thread; it never touches the event loop.

    Binds 127.0.0.1 unless told otherwise (pass ``addr="0.0.0.0"`` for a
    scraper on another host); ``port=0`` picks a free port, see ``.port``.
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    return MetricsServer(port, addr, registry)


def asgi_app(registry: CollectorRegistry = REGISTRY) -> Callable[..., Awaitable[None]]:
    """An ASGI app serving the registry, to mount at ``/metrics``."""
    app: Callable[..., Awaitable[None]] = make_asgi_app(registry)
    return app


def aiohttp_handler(registry: CollectorRegistry = REGISTRY) -> Callable[[Any], Awaitable[Any]]:
    """An aiohttp request handler serving the registry.

    The exposition is rendered in a thread, so a large registry never
    stalls the loop.
    """
    from aiohttp import web  # optional dependency: pip install fastcleanup[demo]

    async def handler(request: web.Request) -> web.Response:
        body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handler
