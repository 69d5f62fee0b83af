"""Prometheus export: names, labels, monotone counters, and the ways to serve them."""

from __future__ import annotations

import asyncio
import gc
import math
import re
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import fastcleanup as fc
from fastcleanup._export import _collectors
from tests.helpers import make_files

MakeCleaner = Callable[..., fc.Cleaner]


README = Path(__file__).resolve().parent.parent / "docs" / "guides" / "monitoring.md"


def readme_metrics() -> dict[str, str]:
    """The metric table of the monitoring guide: each family's name and type."""
    section = README.read_text(encoding="utf-8").split("\n## The metrics\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `(fastcleanup_\w+)` \| (\w+) \|", section, re.M))


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in registry.collect():
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_every_metric_of_the_contract_is_exported(
    scratch: Path, make_cleaner: MakeCleaner, registry: CollectorRegistry
) -> None:
    cleaner = make_cleaner(name="crawler", task_timeout=0.2)
    cleaner.submit(fc.RemoveFile(scratch / "early"))  # dropped before init
    cleaner.init_worker()
    (path,) = make_files(scratch, 1)

    async def boom() -> None:
        raise RuntimeError("nope")

    cleaner.submit(fc.RemoveFile(path))
    cleaner.submit(fc.Call(boom))
    cleaner.submit(fc.Call(asyncio.sleep, 5))
    cleaner.submit(None)  # type: ignore[arg-type]
    assert await cleaner.drain(timeout=5)
    text = generate_latest(registry).decode()
    await cleaner.shutdown()

    expected = [
        'fastcleanup_submitted_total{cleaner="crawler",task="remove_file"} 1.0',
        'fastcleanup_submitted_total{cleaner="crawler",task="call"} 2.0',
        'fastcleanup_dropped_before_init_total{cleaner="crawler",task="remove_file"} 1.0',
        'fastcleanup_completed_total{cleaner="crawler",task="remove_file"} 1.0',
        'fastcleanup_failed_total{cleaner="crawler",reason="error",task="call"} 1.0',
        'fastcleanup_failed_total{cleaner="crawler",reason="timeout",task="call"} 1.0',
        'fastcleanup_failed_total{cleaner="crawler",reason="invalid",task="invalid"} 1.0',
        'fastcleanup_queued{cleaner="crawler"} 0.0',
        'fastcleanup_in_flight{cleaner="crawler"} 0.0',
        'fastcleanup_worker_up{cleaner="crawler"} 1.0',
        'fastcleanup_cleanup_latency_seconds_count{cleaner="crawler"} 4.0',
        'fastcleanup_batch_size_count{cleaner="crawler"} 1.0',
        'fastcleanup_batch_size_sum{cleaner="crawler"} 4.0',
    ]
    for line in expected:
        assert line in text, line
    table = readme_metrics()
    for name, kind in table.items():
        assert re.search(rf"^# HELP {name} \w.{{20,}}$", text, re.M), name
        assert f"\n# TYPE {name} {kind}\n" in text, (name, kind)
    # Every family exported is in the table, and every one in the table is exported.
    assert set(re.findall(r"^# TYPE (fastcleanup_\w+) ", text, re.M)) == set(table)
    assert 'fastcleanup_worker_up{cleaner="crawler"} 0.0' in generate_latest(registry).decode()


@pytest.mark.parametrize(
    ("family", "stated", "lowest", "highest"),
    [
        ("fastcleanup_cleanup_latency_seconds", "(1 ms … 60 s)", 0.001, 60.0),
        ("fastcleanup_batch_size", "(1 … 1024;", 1.0, 1024.0),
    ],
)
def test_histogram_buckets_span_what_readme_says(
    family: str,
    stated: str,
    lowest: float,
    highest: float,
    make_cleaner: MakeCleaner,
    registry: CollectorRegistry,
) -> None:
    """The finite ``le`` bounds run from README's lowest to its highest, then +Inf."""
    readme = README.read_text(encoding="utf-8")
    (row,) = [line for line in readme.splitlines() if line.startswith(f"| `{family}` |")]
    assert stated in row
    make_cleaner(name="buckets")
    text = generate_latest(registry).decode()
    bounds = [
        s.labels["le"]
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == f"{family}_bucket" and s.labels["cleaner"] == "buckets"
    ]
    finite = [float(b) for b in bounds if b != "+Inf"]
    assert all(math.isfinite(b) for b in finite), bounds
    assert (min(finite), max(finite)) == (lowest, highest)
    assert bounds.count("+Inf") == 1, bounds  # spelt as the exposition format wants it


@pytest.mark.parametrize("use_uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_worker_up_is_0_while_the_loop_is_stopped(
    registry: CollectorRegistry, use_uvloop: bool
) -> None:
    """A loop that stopped without closing runs no dispatcher: the WorkerDown alert must see it."""
    if use_uvloop:
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    cleaner = fc.Cleaner(name="paused", registry=registry)
    up = 'fastcleanup_worker_up{cleaner="paused"}'

    async def start() -> str:
        cleaner.init_worker()
        await asyncio.sleep(0)
        return generate_latest(registry).decode()

    try:
        assert f"{up} 1.0" in loop.run_until_complete(start())
        cleaner.submit(fc.Call(asyncio.sleep, 0))  # piles up: nothing runs it
        assert cleaner.stats().queued == 1
        assert f"{up} 0.0" in generate_latest(registry).decode()

        async def resume() -> str:
            assert await cleaner.drain(timeout=5)
            return generate_latest(registry).decode()

        assert f"{up} 1.0" in loop.run_until_complete(resume())
        loop.run_until_complete(cleaner.shutdown())
    finally:
        loop.close()


def test_cleaners_share_a_registry_by_name(registry: CollectorRegistry) -> None:
    kept = [fc.Cleaner(name="a", registry=registry), fc.Cleaner(name="b", registry=registry)]
    text = generate_latest(registry).decode()
    assert 'fastcleanup_queued{cleaner="a"}' in text and 'fastcleanup_queued{cleaner="b"}' in text
    assert text.count("# TYPE fastcleanup_queued gauge") == 1
    with pytest.raises(ValueError, match="already registered"):
        fc.Cleaner(name="a", registry=registry)
    del kept  # an unreferenced, idle cleaner leaves the exposition with its series
    gc.collect()  # a cleaner refers to itself through its submit state
    assert "fastcleanup_queued{" not in generate_latest(registry).decode()


def test_default_cleaner_is_on_the_global_registry() -> None:
    from prometheus_client import REGISTRY

    assert 'fastcleanup_worker_up{cleaner="default"}' in generate_latest(REGISTRY).decode()


async def test_registry_none_exports_nowhere(
    make_cleaner: MakeCleaner, registry: CollectorRegistry
) -> None:
    """``registry=None``: in no registry's output and in no collector, unlike a given registry."""
    from prometheus_client import REGISTRY

    hidden = make_cleaner(registry=None, name="unexported")
    shown = make_cleaner(name="exported")  # the fixture's own registry: the contrast

    async def nothing() -> None:
        pass

    for cleaner in (hidden, shown):
        cleaner.init_worker()
        cleaner.submit(fc.Call(nothing))
        assert await cleaner.drain(timeout=5)
    # Both did the same work: only where it is exported differs.
    assert hidden.stats().completed == shown.stats().completed == 1
    outputs = {
        "global": generate_latest(REGISTRY).decode(),
        "own": generate_latest(registry).decode(),
    }
    for cleaner in (hidden, shown):
        await cleaner.shutdown()

    assert 'fastcleanup_completed_total{cleaner="exported",task="call"} 1.0' in outputs["own"]
    assert shown in _collectors[registry]._cleaners
    for text in outputs.values():
        assert 'cleaner="unexported"' not in text
    assert all(hidden not in collector._cleaners for collector in _collectors.values())


@pytest.mark.timeout(120)
async def test_scrapes_during_a_burst_never_see_a_counter_decrease(
    scratch: Path, make_cleaner: MakeCleaner, registry: CollectorRegistry
) -> None:
    cleaner = make_cleaner()
    cleaner.init_worker()
    paths = make_files(scratch, 50_000)
    stop = threading.Event()
    decreases: list[str] = []
    scrapes = 0

    def scraper() -> None:
        nonlocal scrapes
        last: dict[object, float] = {}
        while not stop.is_set():
            for key, value in samples(registry).items():
                name = key[0]
                if name.endswith(("_total", "_bucket", "_count", "_sum")):
                    if value < last.get(key, 0.0):
                        decreases.append(f"{key}: {last[key]} -> {value}")
                    last[key] = value
            scrapes += 1
            stop.wait(0.0005)  # tight, but blocking: never starve the unlink threads

    async def nothing() -> None:
        pass

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        for i, p in enumerate(paths):
            cleaner.submit(fc.RemoveFile(p))
            if i % 10 == 0:
                cleaner.submit(fc.Call(nothing))
            if i % 5000 == 0:
                await asyncio.sleep(0.01)
        assert await cleaner.drain(timeout=60)
    finally:
        stop.set()
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
    assert scrapes > 20
    assert decreases == []
    await cleaner.shutdown()


async def test_submit_path_takes_no_lock_a_scrape_holds(
    make_cleaner: MakeCleaner, registry: CollectorRegistry
) -> None:
    """Hold every lock a scrape takes; submits and cleanups still go through."""
    cleaner = make_cleaner()
    cleaner.init_worker()
    ran = 0

    async def count() -> None:
        nonlocal ran
        ran += 1

    with registry._lock, _collectors[registry]._lock:
        for _ in range(100):
            cleaner.submit(fc.Call(count))
        assert await cleaner.drain(timeout=5)
    assert ran == 100
    await cleaner.shutdown()


def test_serve_binds_loopback_and_reports_its_port(registry: CollectorRegistry) -> None:
    cleaner = fc.Cleaner(name="served", registry=registry)
    with fc.metrics.serve(port=0, registry=registry) as server:
        assert server.addr == "127.0.0.1" and server.port > 0
        with urllib.request.urlopen(server.url, timeout=5) as resp:
            body = resp.read().decode()
    assert 'fastcleanup_worker_up{cleaner="served"} 0.0' in body
    assert cleaner.name == "served"
    with pytest.raises(ValueError, match="port"):
        fc.metrics.serve(port=70000)


async def test_asgi_app_serves_the_registry(registry: CollectorRegistry) -> None:
    cleaner = fc.Cleaner(name="asgi", registry=registry)
    app = fc.metrics.asgi_app(registry)
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/metrics", "query_string": b"",
             "headers": []}  # fmt: skip
    await app(scope, receive, send)
    assert sent[0]["status"] == 200
    assert f'fastcleanup_queued{{cleaner="{cleaner.name}"}}'.encode() in sent[1]["body"]  # type: ignore[operator]


async def test_aiohttp_handler_serves_the_registry(registry: CollectorRegistry) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    cleaner = fc.Cleaner(name="aio", registry=registry)
    app = web.Application()
    app.router.add_get("/metrics", fc.metrics.aiohttp_handler(registry))
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        assert f'fastcleanup_queued{{cleaner="{cleaner.name}"}}' in await resp.text()


async def test_submitted_is_counted_by_kind_when_the_dispatcher_takes_it(
    make_cleaner: MakeCleaner, registry: CollectorRegistry
) -> None:
    """Until the dispatcher first takes a task, it is in ``fastcleanup_queued``
    alone: ``fastcleanup_submitted_total`` counts it by kind from then on."""
    cleaner = make_cleaner(name="lagging")

    async def nothing() -> None:
        pass

    cleaner.init_worker()
    cleaner.submit(fc.Call(nothing))
    assert await cleaner.drain(timeout=5)
    submitted = {"cleaner": "lagging", "task": "call"}
    assert registry.get_sample_value("fastcleanup_submitted_total", submitted) == 1.0
    # The loop does not run between these submits and the scrape: none is taken yet.
    for _ in range(3):
        cleaner.submit(fc.Call(nothing))
    assert cleaner.stats().submitted == 4
    assert registry.get_sample_value("fastcleanup_queued", {"cleaner": "lagging"}) == 3.0
    assert registry.get_sample_value("fastcleanup_submitted_total", submitted) == 1.0
    assert await cleaner.drain(timeout=5)
    assert registry.get_sample_value("fastcleanup_submitted_total", submitted) == 4.0
    await cleaner.shutdown()


def test_serve_binds_the_address_it_is_given(registry: CollectorRegistry) -> None:
    """``addr=`` is honoured: all interfaces answer, 127.0.0.1 among them."""
    cleaner = fc.Cleaner(name="anyhost", registry=registry)
    with fc.metrics.serve(port=0, addr="0.0.0.0", registry=registry) as server:
        assert server.addr == "0.0.0.0" and server.port > 0
        assert server._httpd.server_address[0] == "0.0.0.0"
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read().decode()
    assert f'fastcleanup_queued{{cleaner="{cleaner.name}"}} 0.0' in body


async def test_register_exports_a_cleaner_made_without_a_registry(
    make_cleaner: MakeCleaner, registry: CollectorRegistry
) -> None:
    """``fc.metrics.register(cleaner, registry)``: a cleaner built with
    ``registry=None`` shows up there, with what it counted before."""
    cleaner = make_cleaner(registry=None, name="late-export")

    async def nothing() -> None:
        pass

    cleaner.init_worker()
    cleaner.submit(fc.Call(nothing))
    assert await cleaner.drain(timeout=5)
    assert 'cleaner="late-export"' not in generate_latest(registry).decode()
    fc.metrics.register(cleaner, registry)
    labels = {"cleaner": "late-export", "task": "call"}
    assert registry.get_sample_value("fastcleanup_completed_total", labels) == 1.0
    assert registry.get_sample_value("fastcleanup_worker_up", {"cleaner": "late-export"}) == 1.0
    await cleaner.shutdown()
