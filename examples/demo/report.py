"""What the demo shows: a live progress line, a loop-stall ticker, /metrics read back, the table."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Progress", "StallTicker", "quantile_bound", "read_metrics", "render_table"]


class StallTicker:
    """How late a 1 ms timer fires: how long the loop could not run anything else."""

    PERIOD = 0.001

    def __init__(self) -> None:
        self.late: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> None:
        """Stop ticking; ``start()`` again resumes, adding to the same samples."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait((self._task,))
            self._task = None

    async def _tick(self) -> None:
        clock, note, period = time.perf_counter, self.late.append, self.PERIOD
        while True:
            t0 = clock()
            await asyncio.sleep(period)
            note(max(0.0, clock() - t0 - period))

    def summary(self) -> dict[str, float]:
        if not self.late:
            return {"ticks": 0, "p99_ms": 0.0, "max_ms": 0.0}
        ordered = sorted(self.late)
        p99 = ordered[max(1, math.ceil(0.99 * len(ordered))) - 1]  # nearest rank
        return {"ticks": len(self.late), "p99_ms": p99 * 1e3, "max_ms": max(self.late) * 1e3}


class Progress:
    """A status line on ``stream``: rewritten in place on a terminal, else a line a second."""

    def __init__(self, render: Callable[[], str], stream: TextIO) -> None:
        self._render = render
        self._stream = stream
        self._tty = stream.isatty()
        self._width = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop updating and leave the final state on its own line."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait((self._task,))
            self._task = None
            self._show()
            if self._tty:
                self._stream.write("\n")
                self._stream.flush()

    async def _run(self) -> None:
        interval = 0.1 if self._tty else 1.0
        while True:
            await asyncio.sleep(interval)
            self._show()

    def _show(self) -> None:
        line = self._render()
        if self._tty:
            self._stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()


def read_metrics(text: str, cleaner: str) -> dict[str, Any]:
    """The series of one cleaner in a /metrics scrape, summed and by label.

    ``totals`` has one number per counter and gauge (``submitted`` ...
    ``in_flight``); ``by_kind`` has ``completed`` and ``failed`` per task
    kind (``failed`` keyed ``kind/reason``); ``latency`` has the cumulative
    buckets, sum and count of the cleanup latency histogram.
    """
    totals: dict[str, float] = {}
    by_kind: dict[str, dict[str, float]] = {"completed": {}, "failed": {}}
    buckets: list[tuple[float, float]] = []
    latency = {"sum": 0.0, "count": 0.0}
    # Keyed on sample names, not family names: how a family is named
    # (with or without _total) depends on the exposition format.
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.name.startswith("fastcleanup_") or s.labels.get("cleaner") != cleaner:
                continue
            name = s.name.removeprefix("fastcleanup_")
            if name == "cleanup_latency_seconds_bucket":
                buckets.append((float(s.labels["le"]), s.value))
            elif name in ("cleanup_latency_seconds_sum", "cleanup_latency_seconds_count"):
                latency[name.rpartition("_")[2]] = s.value
            elif not name.startswith(("cleanup_latency_seconds", "batch_size")):
                name = name.removesuffix("_total")
                totals[name] = totals.get(name, 0.0) + s.value
                if name in by_kind:
                    key = s.labels["task"]
                    if name == "failed":
                        key += "/" + s.labels["reason"]
                    by_kind[name][key] = by_kind[name].get(key, 0.0) + s.value
    return {
        "totals": totals,
        "by_kind": by_kind,
        "latency": {"buckets": sorted(buckets), **latency},
    }


def quantile_bound(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The upper bound of the histogram bucket holding quantile ``q`` (None: no samples).

    A bound, not an estimate: Prometheus' ``histogram_quantile`` would
    interpolate inside the bucket, which invents precision the buckets do
    not have.
    """
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    return next(le for le, cumulative in buckets if cumulative >= rank)


def _ms_bound(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds == math.inf:
        return "> 60 s"
    return f"<= {seconds * 1e3:g} ms"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def render_table(s: dict[str, Any]) -> str:
    """The closing table of the demo, drawn from its JSON summary."""
    p, f, c, lat, leak = s["pages"], s["files"], s["cleanup"], s["latency"], s["leak_check"]
    b = s["browser"]
    stall, idle = s["loop_stall"], s["loop_stall"]["idle"]
    done = c["completed_by_kind"]
    removals = {k: n for k, n in sorted(done.items()) if k.startswith("remove_")}
    failed = ", ".join(f"{k} {n}" for k, n in sorted(c["failed_by_kind"].items()))
    agree = s["metrics"]["agree"]
    rows = [
        ("pages", p["total"], f"ok {p['ok']}, broken mid-body {p['broken']}, "
         f"timed out {p['timed_out']}"),
        ("files created", f["created"], f"{f['staging']} staging, {f['temp']} scratch, "
         f"{f['profile']} in {f['profiles']} browser profiles"),
        ("kept", f["committed"], f"pages renamed into place, {_mib(f['bytes_kept'])}"),
        ("removed", f["removed"], f"files, by {sum(removals.values())} cleanups: "
         + (", ".join(f"{k} {n}" for k, n in removals.items()) or "none")),
        ("closed", done.get("aclose", 0), "client sessions, by aclose cleanups"),
        ("browser", b["profiles_made"], f"profiles made in {b['name']}, "
         f"{b['profiles_removed']} removed; browser processes left: {b['processes_left']}; "
         f"leftovers: {b['leftovers']}"),
        ("failed", c["failed"], f"cleanups ({failed or 'none'})"),
        ("held in cycles", c["released_by_gc"], "cleanups submitted only when gc.collect() "
         "freed their guards from reference cycles"),
        ("cleanup latency", "", f"p50 {_ms_bound(lat['p50_s'])}, p99 {_ms_bound(lat['p99_s'])}, "
         f"mean {lat['mean_s'] * 1e3:.1f} ms  (the cleaner's histogram, {lat['count']} cleanups)"),
        ("loop stall", "", f"p99 {stall['p99_ms']:.1f} ms, max {stall['max_ms']:.1f} ms  "
         f"(a 1 ms ticker's lateness; idle before the crawl: p99 {idle['p99_ms']:.1f} ms, "
         f"max {idle['max_ms']:.1f} ms)"),
        ("conservation", "ok" if s["conservation"]["ok"] else "BROKEN",
         f"submitted {c['submitted']} = completed {c['completed']} + failed {c['failed']} "
         f"+ dropped at exit {c['dropped_at_exit']} + queued {c['queued']} "
         f"+ in flight {c['in_flight']}"),
        ("metrics", "ok" if agree else "DIFFER", f"{s['metrics']['url']} "
         + ("agreed with stats() before shutdown" if agree else "disagreed with stats()")),
        ("leak check", "ok" if leak["ok"] else "LEAK",
         f"{len(leak['leftovers'])} stray files, {len(leak['damaged'])} damaged pages"
         f" in {s['scratch']}"),
    ]  # fmt: skip
    out = [f"\ndemo: {p['total']} pages in {s['elapsed_s']:.1f} s on {s['loop']}\n"]
    out.extend(f"  {name:<16}{value!s:>6}  {detail}" for name, value, detail in rows)
    out.extend(f"    left behind: {path}" for path in leak["leftovers"][:10])
    if len(leak["leftovers"]) > 10:
        out.append(f"    ... and {len(leak['leftovers']) - 10} more")
    out.extend(f"    damaged: {line}" for line in leak["damaged"][:10])
    return "\n".join(out) + "\n"
