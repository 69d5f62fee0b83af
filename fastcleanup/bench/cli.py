"""``fastcleanup bench``: fastcleanup against the usual ways to clean up a burst.

>>> from fastcleanup.bench.cli import main
>>> main(["--quick"])        # a short run: a table, targets met or missed
0

The measuring parts live beside this module: ``harness`` (fresh files,
probes, one timed burst), ``competitors`` (who competes) and ``micro``
(submit cost, bytes per queued task). The pytest-benchmark
suite in ``bench/`` drives the same pieces.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TextIO, TypeVar

from .competitors import CALL_COMPETITORS, FILE_COMPETITORS, IDLE, SLICE
from .harness import (
    BenchError,
    BurstSession,
    Competitor,
    Measurement,
    default_loop,
    make_files,
    run_files,
    summarize,
)
from .micro import SubmitCost, bytes_per_queued_remove_file, submit_costs

__all__ = [
    "Report",
    "Target",
    "compare_calls",
    "compare_files",
    "main",
    "measure_calls",
    "measure_files",
    "measure_idle",
    "plot",
    "render",
    "targets",
]

W = TypeVar("W")

BASELINE = "unlink-1-thread"
NAIVE = "gather-aiofiles"
OURS = "fastcleanup-uvloop"
CALL_BASELINE = "taskgroup-64-uvloop"


# -- running competitors ----------------------------------------------------------------


def measure_files(
    name: str, n: int, *, loop: str | None = None, parent: str | None = None
) -> Measurement:
    """One burst of ``n`` fresh files removed by the file competitor ``name``."""
    competitor = FILE_COMPETITORS[name]
    with make_files(n, parent) as files, BurstSession(competitor, loop) as session:
        return run_files(session, files)


def measure_calls(name: str, n: int, *, loop: str | None = None) -> Measurement:
    """One burst of ``n`` trivial Call tasks run by the call competitor ``name``."""
    with BurstSession(CALL_COMPETITORS[name], loop) as session:
        return session.run(n)


def measure_idle(ms: int = 500, *, loop: str | None = None) -> Measurement:
    """The probes alone on an idle loop for ``ms`` milliseconds: the machine's floor."""
    with BurstSession(IDLE, loop) as session:
        return session.run(ms)


def _available(names: Iterable[str], registry: dict[str, Competitor[W]]) -> list[str]:
    return [n for n in names if registry[n].available()]


def _chosen(only: list[str] | None, registry: dict[str, Competitor[W]]) -> list[str]:
    return list(registry) if not only else [n for n in registry if n in only]


def _importable(module: str | None) -> bool:
    return module is None or importlib.util.find_spec(module) is not None


def _rotated(names: Sequence[str], by: int) -> list[str]:
    # Each repeat starts with another competitor, so a slow spell of a noisy
    # machine does not always land on the same one.
    k = by % len(names) if names else 0
    return [*names[k:], *names[:k]]


Progress = Callable[[Measurement], None]


def compare_files(
    names: Sequence[str],
    n: int,
    repeat: int,
    *,
    loop: str | None = None,
    parent: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Measurement]:
    """Every competitor ``repeat`` times on ``n`` fresh files; the median of each."""
    results: dict[str, list[Measurement]] = {name: [] for name in names}
    for r in range(repeat):
        for name in _rotated(names, r):
            m = measure_files(name, n, loop=loop, parent=parent)
            results[name].append(m)
            if progress is not None:
                progress(m)
    return {name: summarize(ms) for name, ms in results.items()}


def compare_calls(
    names: Sequence[str],
    n: int,
    repeat: int,
    *,
    loop: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Measurement]:
    """Every call competitor ``repeat`` times on ``n`` trivial Call tasks; the medians."""
    results: dict[str, list[Measurement]] = {name: [] for name in names}
    for r in range(repeat):
        for name in _rotated(names, r):
            m = measure_calls(name, n, loop=loop)
            results[name].append(m)
            if progress is not None:
                progress(m)
    return {name: summarize(ms) for name, ms in results.items()}


# -- targets ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One target of issue 3 and where this run stands."""

    what: str
    value: float
    limit: float
    higher_is_better: bool
    unit: str = "x"

    @property
    def met(self) -> bool:
        if math.isnan(self.value):
            return False
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    def line(self) -> str:
        sign = ">=" if self.higher_is_better else "<="
        word = "met   " if self.met else "MISSED"
        return f"  [{word}] {self.what}: {_num(self.value)}{self.unit} ({sign} {_num(self.limit)})"


@dataclass(frozen=True, slots=True)
class Report:
    """What one ``fastcleanup bench`` run measured (every figure a median)."""

    files: dict[str, Measurement]
    calls: dict[str, Measurement]
    submit: list[SubmitCost]
    bytes_per_task: float | None
    idle: Measurement | None = None  # the probes on an idle loop


def targets(report: Report) -> list[Target]:
    """The targets whose inputs this run measured."""
    out: list[Target] = []
    files, calls = report.files, report.calls
    ours = files.get(OURS)
    if ours is not None:
        if BASELINE in files:
            out.append(Target(f"{OURS} vs {BASELINE}", ours.rate / files[BASELINE].rate, 1.4, True))
        if NAIVE in files:
            out.append(Target(f"{OURS} vs {NAIVE}", ours.rate / files[NAIVE].rate, 10.0, True))
        out.append(Target(f"{OURS} loop stall p99", ours.stall_p99_ms, 2.0, False, " ms"))
        out.append(Target(f"{OURS} loop stall max", ours.stall_max_ms, 10.0, False, " ms"))
        out.append(Target(f"{OURS} host executor call p99", ours.host_p99_ms, 5.0, False, " ms"))
    cost = {c.variant: c for c in report.submit}
    submit = cost.get("fastcleanup.submit")
    if submit is not None and "deque.append" in cost:
        out.append(
            Target(
                "submit from a foreign thread vs deque.append",
                submit.ns_median / cost["deque.append"].ns_median,
                3.0,
                False,
            )
        )
    if submit is not None and "call_soon_threadsafe-asyncio" in cost:
        out.append(
            Target(
                "call_soon_threadsafe (asyncio) vs submit",
                cost["call_soon_threadsafe-asyncio"].ns_median / submit.ns_median,
                20.0,
                True,
            )
        )
    if OURS in calls and CALL_BASELINE in calls:
        out.append(
            Target(
                f"trivial Call tasks: {OURS} time vs {CALL_BASELINE}",
                calls[OURS].seconds / calls[CALL_BASELINE].seconds,
                2.0,
                False,
            )
        )
    if report.bytes_per_task is not None:
        out.append(Target("bytes per queued RemoveFile", report.bytes_per_task, 250.0, False, " B"))
    return out


# -- the table ------------------------------------------------------------------------------


def _num(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _file_rows(files: dict[str, Measurement]) -> list[list[str]]:
    base = files.get(BASELINE)
    rows = [
        [
            "competitor",
            "loop",
            "files/s",
            "x 1-thread",
            "stall p99/max ms",
            "host p99 ms",
            "peak MiB",
        ]
    ]
    for m in files.values():
        ratio = m.rate / base.rate if base is not None else math.nan
        rows.append(
            [
                m.competitor,
                m.loop,
                _num(m.rate),
                _num(ratio),
                f"{_num(m.stall_p99_ms)} / {_num(m.stall_max_ms)}",
                _num(m.host_p99_ms),
                _num(m.peak_mib),
            ]
        )
    return rows


def _call_rows(calls: dict[str, Measurement]) -> list[list[str]]:
    base = calls.get(CALL_BASELINE)
    rows = [
        [
            "competitor",
            "loop",
            "calls/s",
            "us/call",
            "x taskgroup time",
            "stall p99/max ms",
            "peak MiB",
        ]
    ]
    for m in calls.values():
        ratio = m.seconds / base.seconds if base is not None else math.nan
        rows.append(
            [
                m.competitor,
                m.loop,
                _num(m.rate),
                _num(m.seconds / m.items * 1e6),
                _num(ratio),
                f"{_num(m.stall_p99_ms)} / {_num(m.stall_max_ms)}",
                _num(m.peak_mib),
            ]
        )
    return rows


def _submit_rows(costs: list[SubmitCost]) -> list[list[str]]:
    by = {c.variant: c for c in costs}
    base = by.get("deque.append")
    rows = [["hand-off", "ns/call median", "ns/call best", "x deque.append"]]
    for c in costs:
        ratio = c.ns_median / base.ns_median if base is not None else math.nan
        rows.append([c.variant, _num(c.ns_median), _num(c.ns_best), _num(ratio)])
    return rows


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  " + "  ".join(cells).rstrip(), file=out)
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths), file=out)


def render(report: Report, out: TextIO, *, files: int, calls: int, repeat: int) -> None:
    """Print the tables and the targets."""
    if report.files:
        print(
            f"\nBurst of {files:,} RemoveFile, median of {repeat}, files created fresh for "
            f"each run (producers hand over {SLICE} per loop iteration):",
            file=out,
        )
        _table(_file_rows(report.files), out)
        if report.idle is not None:
            i = report.idle
            print(
                f"  (the same probes on an idle {i.loop} loop, this machine's floor right now: "
                f"stall {_num(i.stall_p99_ms)} / {_num(i.stall_max_ms)} ms, "
                f"host p99 {_num(i.host_p99_ms)} ms)",
                file=out,
            )
    if report.calls:
        print(f"\n{calls:,} trivial Call tasks, median of {repeat}:", file=out)
        _table(_call_rows(report.calls), out)
    if report.submit:
        first = report.submit[0]
        print(
            f"\nHand-off from a foreign thread, {first.calls:,} calls x {first.repeat} "
            "(the consumer's loop held blocked, so this is the caller's cost alone):",
            file=out,
        )
        _table(_submit_rows(report.submit), out)
    if report.bytes_per_task is not None:
        print(
            f"\nMemory: {_num(report.bytes_per_task)} bytes per queued RemoveFile "
            "(tracemalloc, path strings not counted)",
            file=out,
        )
    found = targets(report)
    if found:
        print("\nTargets of issue 3 (set at 100,000 files on uvloop):", file=out)
        for t in found:
            print(t.line(), file=out)


def plot(report: Report, path: str) -> None:
    """Draw files/s and loop stall per competitor as bar charts into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = list(report.files.values())
    names = [m.competitor for m in ms]
    base = report.files.get(BASELINE)
    colors = ["tab:green" if n.startswith("fastcleanup") else "tab:gray" for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.5 * len(ms) + 1.8), sharey=True)
    y = range(len(ms))
    left.barh(y, [m.rate for m in ms], color=colors)
    left.set_yticks(list(y), names)
    left.invert_yaxis()
    left.set_xlabel("files/s (higher is better)")
    if base is not None:
        left.axvline(base.rate, color="tab:red", linestyle="--", linewidth=1)
        for i, m in enumerate(ms):
            left.text(m.rate, i, f" {m.rate / base.rate:.2f}x", va="center", fontsize=8)
    right.barh(y, [max(m.stall_p99_ms, 1e-3) for m in ms], color=colors)
    right.set_xscale("log")
    right.set_xlabel("event loop stall p99, ms (log, lower is better)")
    n = ms[0].items if ms else 0
    fig.suptitle(f"fastcleanup bench: a burst of {n:,} file removals")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the command ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastcleanup bench",
        description=(
            "Remove a burst of fresh files with fastcleanup and with the usual ways "
            "(plain threads, gather, a task or an executor job per file, aiojobs, the Rust "
            "reference's design), then print files/s, loop stall, host executor latency "
            "and memory, and whether the targets are met."
        ),
    )
    p.add_argument("--files", type=int, help="files per burst (default 20000; --quick: 2000)")
    p.add_argument("--repeat", type=int, help="runs per competitor (default 3; --quick: 1)")
    p.add_argument("--calls", type=int, help="trivial Call tasks per burst (default 100000)")
    p.add_argument("--submit-calls", type=int, help="hand-offs per submit-cost run (100000)")
    p.add_argument("--queued", type=int, help="RemoveFile queued for the memory figure (1e6)")
    p.add_argument("--quick", action="store_true", help="a short run that proves it works")
    p.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default=None,
        help="the loop of the competitors other than fastcleanup-* (default uvloop)",
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        choices=sorted({*FILE_COMPETITORS, *CALL_COMPETITORS}),
        help="run only this competitor (repeatable); skips the micro-benchmarks",
    )
    p.add_argument("--dir", help="where to create the files (default: the temp dir)")
    p.add_argument("--plot", metavar="FILE.png", help="also draw a bar chart (needs matplotlib)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print it; 0 on success, 2 on a usage or setup error."""
    p = _parser()
    args = p.parse_args(argv)
    quick = args.quick

    def pick(name: str, value: int | None, short: int, full: int) -> int:
        n = (short if quick else full) if value is None else value
        if n < 1:
            p.error(f"--{name} must be >= 1, got {n}")
        return n

    n_files = pick("files", args.files, 2_000, 20_000)
    repeat = pick("repeat", args.repeat, 1, 3)
    n_calls = pick("calls", args.calls, 5_000, 100_000)
    n_submit = pick("submit-calls", args.submit_calls, 20_000, 100_000)
    n_queued = pick("queued", args.queued, 50_000, 1_000_000)
    if args.plot and not _importable("matplotlib"):
        print(
            "fastcleanup bench: --plot needs matplotlib; install it with "
            "pip install 'fastcleanup[plot]'",
            file=sys.stderr,
        )
        return 2
    loop = args.loop or default_loop()
    file_names = _available(_chosen(args.only, FILE_COMPETITORS), FILE_COMPETITORS)
    call_names = _available(_chosen(args.only, CALL_COMPETITORS), CALL_COMPETITORS)
    skipped = sorted({*FILE_COMPETITORS, *CALL_COMPETITORS} - {*file_names, *call_names})
    if skipped and not args.only:
        print(f"(skipped, a module is missing: {', '.join(skipped)})", file=sys.stderr)

    def progress(m: Measurement) -> None:
        print(
            f"  {m.competitor:<22} {m.items:>9,} in {m.seconds:8.3f} s  ({_num(m.rate)}/s)",
            file=sys.stderr,
            flush=True,
        )

    try:
        idle = measure_idle(200 if quick else 1000, loop=loop)
        print(f"fastcleanup bench: files ({loop})...", file=sys.stderr, flush=True)
        files = compare_files(
            file_names, n_files, repeat, loop=loop, parent=args.dir, progress=progress
        )
        print("fastcleanup bench: Call tasks...", file=sys.stderr, flush=True)
        calls = compare_calls(call_names, n_calls, repeat, loop=loop, progress=progress)
        costs: list[SubmitCost] = []
        per_task: float | None = None
        if not args.only:
            print("fastcleanup bench: submit cost, memory...", file=sys.stderr, flush=True)
            costs = submit_costs(n_submit, 3 if quick else 7)
            per_task = bytes_per_queued_remove_file(n_queued, loop)
    except (BenchError, OSError) as exc:
        print(f"fastcleanup bench: {exc}", file=sys.stderr)
        return 2
    report = Report(files, calls, costs, per_task, idle)
    render(report, sys.stdout, files=n_files, calls=n_calls, repeat=repeat)
    if args.plot and report.files:
        plot(report, args.plot)
        print(f"\nchart: {args.plot}")
    return 0
