"""The demo's local test site: pages that load, break off mid-body, or trickle in.

The demo runs it as a child process (``python -m examples.demo.site``, from
the project's root) so that serving pages never competes with the
crawler's loop for the GIL: the loop-stall figure of the demo then measures
the crawler and its cleanup alone. The child prints ``port N`` once it
listens on 127.0.0.1 and exits when its stdin closes, so it cannot outlive
the demo, even one that was killed.

The site keeps no state: each page does what its URL asks, e.g.
``/site-3/page-17?kind=fail&size=40000&delay=0.02&cut=0.5``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

import fastcleanup as fc

__all__ = ["PageSpec", "main", "serving"]

_CHUNK = 16 * 1024
_SLOW_CHUNKS = 8  # a slow page arrives in this many pieces spread over its delay
_FILLER = b"".join(
    b'<p><a href="/site-%d/page-%d">a link the demo never follows</a></p>\n' % (i % 97, i)
    for i in range(8192)
)
MAX_SIZE = len(_FILLER)


@dataclass(frozen=True, slots=True)
class PageSpec:
    """One page of the site and how it behaves; the crawler's plan is a list of these.

    ``kind`` is ``ok``, ``fail`` (the connection drops after ``cut`` of the
    body) or ``slow`` (the body trickles in over ``delay`` seconds);
    ``delay`` is the server's think time for the other kinds.
    """

    site: int
    number: int
    kind: str
    size: int
    delay: float
    cut: float = 1.0

    @property
    def path(self) -> str:
        return (
            f"/site-{self.site}/page-{self.number}"
            f"?kind={self.kind}&size={self.size}&delay={self.delay:.3f}&cut={self.cut:.2f}"
        )


def body(number: int, size: int) -> bytes:
    head = b"<!doctype html><title>page %d</title>\n" % number
    return (head + _FILLER)[:size]


async def _page(request: web.Request) -> web.StreamResponse:
    q = request.query
    try:
        number = int(request.match_info["page"].removeprefix("page-"))
        kind, size = q.get("kind", "ok"), int(q.get("size", "4096"))
        delay, cut = float(q.get("delay", "0")), float(q.get("cut", "1"))
    except ValueError:
        raise web.HTTPBadRequest(text="bad page parameters") from None
    if kind not in ("ok", "fail", "slow") or not 0 < size <= MAX_SIZE:
        raise web.HTTPBadRequest(text="bad page parameters")
    data = body(number, size)
    resp = web.StreamResponse(headers={"Content-Type": "text/html"})
    resp.content_length = size
    try:
        if kind != "slow":
            await asyncio.sleep(delay)
        await resp.prepare(request)
        if kind == "ok":
            await resp.write(data)
        elif kind == "fail":
            await resp.write(data[: int(size * cut)])
            # Drop the connection with the body short of its Content-Length:
            # the crawler's read fails mid-body, as on a flaky network.
            if request.transport is not None:
                request.transport.abort()
            return resp
        else:
            step = -(-size // _SLOW_CHUNKS)
            for start in range(0, size, step):
                await resp.write(data[start : start + step])
                await asyncio.sleep(delay / _SLOW_CHUNKS)
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the crawler gave up on the page (its deadline, or Ctrl-C)
    return resp


async def _serve() -> None:
    app = web.Application()
    app.router.add_get("/{site}/{page}", _page)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        print(f"port {port}", flush=True)
        # Blocks a thread (not the loop) until the demo closes our stdin or dies.
        await asyncio.to_thread(sys.stdin.buffer.read)
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def serving() -> Iterator[str]:
    """The site in a child process, for code without a loop (tests, benchmarks); yields its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.demo.site"],
        cwd=Path(__file__).resolve().parents[2],  # where ``examples`` is a package
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline()
        if not line.startswith("port "):
            raise RuntimeError("the test site did not start (its error is above)")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.stdin.close()  # the site exits when its stdin closes
        proc.wait(timeout=10)
        proc.stdout.close()


def main() -> int:
    # Ctrl-C in a terminal reaches the whole process group; the demo stops
    # us by closing stdin, after its own cleanup.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fc.run(_serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
