"""The Prometheus side of fastcleanup: ways to serve the cleaners' metrics.

Every cleaner is exported through a registry (the global one unless told
otherwise) by a collector that reads its counters at scrape time; nothing
here runs on the submit path.

>>> server = fc.metrics.serve(port=9464)          # a process with no /metrics yet
>>> app.mount("/metrics", fc.metrics.asgi_app())  # an ASGI app (Starlette, FastAPI)
>>> web_app.router.add_get("/metrics", fc.metrics.aiohttp_handler())
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST, make_asgi_app, start_http_server

from ._export import register

__all__ = ["MetricsServer", "aiohttp_handler", "asgi_app", "register", "serve"]


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
