"""``python -m bench``: fastcleanup against the usual ways to clean up a burst.

>>> from bench.cli import main
>>> main(["--quick"])        # a short run: a table, targets met or missed
0

The measuring parts live beside this module: ``harness`` (fresh files,
probes, one timed burst), ``competitors`` (who competes) and ``micro``
(submit cost, bytes per queued task). The pytest-benchmark
suite in ``bench/`` drives the same pieces.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TextIO, TypeVar

from .competitors import (
    BUSY_SHARE,
    CALL_COMPETITORS,
    CHUNKED,
    CONFINED,
    FILE_COMPETITORS,
    IDLE,
    MIXED,
    ONE_THREAD,
    SLICE,
    busy_loop,
    file_competitor,
)
from .harness import (
    BenchError,
    BurstSession,
    Competitor,
    Measurement,
    creation_rate,
    default_dir,
    default_loop,
    make_files,
    run_files,
    summarize,
)
from .micro import SubmitCost, bytes_per_queued_remove_file, submit_costs
from .trees import (
    RM_RF,
    RMTREE_LOOP,
    TREE_COMPETITORS,
    TREE_DIRS,
    TREE_FILES,
    TREES_OURS,
    compare_trees,
    on_tmpfs,
)

__all__ = [
    "SCENARIOS",
    "Report",
    "Scenario",
    "Target",
    "compare_calls",
    "compare_files",
    "compiled_unlink",
    "fit_sizes",
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
TWO_THREADS = "unlink-2-threads"
CEILING = "bulk-2-threads"  # the kernel's limit for two threads, with no Python per file
# Two ways for two C threads to split a burst: halves, or chunks in turn.
# Which is faster depends on the file system, so a run's ceiling is the
# faster of the two in that run.
CEILINGS = (CEILING, CHUNKED)
NAIVE = "gather-aiofiles"
OURS = "fastcleanup-uvloop"
TARGET_FILES = 100_000  # the burst size the file targets are stated for
CALL_BASELINE = "taskgroup-64-uvloop"


# -- running competitors ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    """A burst setting and who competes in it, beside the 1-thread baseline."""

    key: str
    title: str
    names: tuple[str, ...]
    dirs: int = 1  # directories the files are spread over
    depth: int = 1  # levels those directories lie below the allowed root
    busy: bool = False  # the loop thread busy in Python during the burst
    slow: bool = False  # per-file designs (~10k files/s): sized by --slow-files


_FAST = (BASELINE, TWO_THREADS, *CEILINGS, OURS, CONFINED)
SCENARIOS: tuple[Scenario, ...] = (
    Scenario("one-dir", "one directory", (*_FAST, MIXED, ONE_THREAD, "fastcleanup-asyncio")),
    Scenario("100-dirs", "100 directories (no per-directory lock between unlinks)", _FAST, 100),
    Scenario(
        "1000-deep",
        "1,000 directories 4 levels below the root (about a file per directory in each job)",
        (BASELINE, OURS, CONFINED),
        dirs=1000,
        depth=4,
    ),
    Scenario(
        "busy-loop",
        f"one directory, the loop thread {BUSY_SHARE:.0%} busy in Python",
        _FAST,
        busy=True,
    ),
    Scenario(
        "per-file",
        "one directory, the designs that pay per file",
        (
            BASELINE,
            NAIVE,
            "task-per-file",
            "executor-per-file",
            "aiojobs-spawn",
            "rust-port",
            OURS,
        ),
        slow=True,
    ),
)


def measure_files(
    name: str,
    n: int,
    *,
    loop: str | None = None,
    parent: str | None = None,
    dirs: int = 1,
    depth: int = 1,
    busy: bool = False,
) -> Measurement:
    """One burst of ``n`` fresh files (over ``dirs`` directories) removed by ``name``."""
    competitor = file_competitor(name, parent)
    if busy:
        competitor = busy_loop(competitor)
    with make_files(n, parent, dirs, depth) as files, BurstSession(competitor, loop) as session:
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

# Seconds of file creation a run without --files/--slow-files may spend. On a
# disk that creates only ~2,000 files/s the default sizes alone would take
# eight minutes; the bursts shrink instead (never below the floors).
CREATE_BUDGET = 45.0
QUICK_CREATE_BUDGET = 15.0
MIN_FILES, MIN_SLOW_FILES = 500, 200


def fit_sizes(
    n_files: int, n_slow: int, bursts: tuple[int, int], rate: float, budget: float
) -> tuple[int, int]:
    """Burst sizes whose file creation fits ``budget`` seconds at ``rate`` files/s.

    ``bursts`` counts the fast and the per-file bursts of the run. Both sizes
    shrink by the same factor, to no less than the floors (or the size asked).

    >>> fit_sizes(3000, 1000, (50, 20), rate=1000.0, budget=60.0)
    (1058, 352)
    """
    needed = (bursts[0] * n_files + bursts[1] * n_slow) / rate
    if needed <= budget:
        return n_files, n_slow
    factor = budget / needed
    return (
        max(min(n_files, MIN_FILES), int(n_files * factor)),
        max(min(n_slow, MIN_SLOW_FILES), int(n_slow * factor)),
    )


def compare_files(
    names: Sequence[str],
    n: int,
    repeat: int,
    *,
    loop: str | None = None,
    parent: str | None = None,
    dirs: int = 1,
    depth: int = 1,
    busy: bool = False,
    progress: Progress | None = None,
) -> dict[str, Measurement]:
    """Every competitor ``repeat`` times on ``n`` fresh files; the median of each."""
    results: dict[str, list[Measurement]] = {name: [] for name in names}
    for r in range(repeat):
        for name in _rotated(names, r):
            m = measure_files(name, n, loop=loop, parent=parent, dirs=dirs, depth=depth, busy=busy)
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
    """One target and where this run stands.

    ``ceiling`` is what the kernel's ceiling (the faster of ``CEILINGS``,
    named ``ceiling_name``) reached on the same ratio in this run, for a
    throughput target: when it is below the limit, no design could have met
    the target in this run, and the line says so.
    """

    what: str
    value: float
    limit: float
    higher_is_better: bool
    unit: str = "x"
    ceiling: float | None = None
    ceiling_name: str = CEILING

    @property
    def met(self) -> bool:
        if math.isnan(self.value):
            return False
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    @property
    def out_of_reach(self) -> bool:
        """The ceiling itself missed the limit in this run."""
        return self.ceiling is not None and self.ceiling < self.limit

    def line(self) -> str:
        sign = ">=" if self.higher_is_better else "<="
        word = "met   " if self.met else "MISSED"
        bound = f"{sign} {_num(self.limit)}"
        if self.out_of_reach and not self.met:
            reached = _num(self.ceiling or 0)
            bound += f"; out of reach in this run: {self.ceiling_name} reached {reached}x"
        return f"  [{word}] {self.what}: {_num(self.value)}{self.unit} ({bound})"


@dataclass(frozen=True, slots=True)
class Report:
    """What one ``python -m bench`` run measured (every figure a median).

    ``bursts`` maps a scenario's key (see ``SCENARIOS``) to its competitors.
    """

    bursts: dict[str, dict[str, Measurement]]
    calls: dict[str, Measurement]
    submit: list[SubmitCost]
    bytes_per_task: float | None
    idle: Measurement | None = None  # the probes on an idle loop
    # "trees on tmpfs" / "trees on disk": profile-like trees by competitor
    trees: dict[str, dict[str, Measurement]] = field(default_factory=dict)


def _ratio(rows: dict[str, Measurement], name: str, base: str) -> float | None:
    if name in rows and base in rows:
        return rows[name].rate / rows[base].rate
    return None


def ceiling_of(rows: dict[str, Measurement]) -> str | None:
    """The faster of the C pairs (``CEILINGS``) among ``rows``, if any ran."""
    pairs = [name for name in CEILINGS if name in rows]
    return max(pairs, key=lambda name: rows[name].rate) if pairs else None


def targets(report: Report) -> list[Target]:
    """The targets whose inputs this run measured."""
    out: list[Target] = []

    def ratio(key: str, name: str, base: str, limit: float) -> None:
        rows = report.bursts.get(key, {})
        value = _ratio(rows, name, base)
        if value is not None:
            size = rows[name].items
            best = ceiling_of(rows)
            ceiling = _ratio(rows, best, base) if best and base == BASELINE else None
            what = f"{key}, {size:,} files: {name} vs {base}"
            out.append(
                Target(what, value, limit, True, ceiling=ceiling, ceiling_name=best or CEILING)
            )

    ratio("one-dir", OURS, BASELINE, 1.5)
    ratio("one-dir", CONFINED, BASELINE, 1.5)
    ratio("one-dir", CONFINED, OURS, 0.9)
    ratio("100-dirs", OURS, BASELINE, 1.8)
    # Other cleanups among the files must not send the files back to small
    # batches. The 5,000 Calls of a 100,000-file mixed burst are real work
    # on the loop thread (about 6 µs each, see the Call row), about 30 ms
    # that the unlinking threads share two cores with: hence 0.85, not 0.9.
    ratio("one-dir", MIXED, OURS, 0.85)
    ratio("100-dirs", CONFINED, BASELINE, 1.8)
    # The machine's own limit, measured beside them: the fixed ratios above
    # hold only where the kernel lets two threads go that much faster than one.
    for key in ("one-dir", "100-dirs", "busy-loop"):
        best = ceiling_of(report.bursts.get(key, {}))
        if best is not None:
            ratio(key, OURS, best, 0.9)
            ratio(key, CONFINED, best, 0.9)
    ratio("per-file", OURS, NAIVE, 10.0)
    ours = report.bursts.get("one-dir", {}).get(OURS)
    if ours is not None:
        at = f"one-dir, {ours.items:,} files: {OURS}"
        out.append(Target(f"{at} loop stall p99", ours.stall_p99_ms, 2.0, False, " ms"))
        out.append(Target(f"{at} loop stall max", ours.stall_max_ms, 5.0, False, " ms"))
        out.append(Target(f"{at} host executor call p99", ours.host_p99_ms, 5.0, False, " ms"))
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
    calls = report.calls
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
    out.extend(_tree_targets(report.trees.get(TREES_TMPFS, {})))
    return out


TREES_TMPFS, TREES_DISK = "trees on tmpfs", "trees on disk"


def _tree_targets(rows: dict[str, Measurement]) -> list[Target]:
    """The tree targets (stated for tmpfs, where no disk sets the pace)."""
    ours = rows.get(TREES_OURS)
    if ours is None:
        return []
    at = f"{TREES_TMPFS}, {ours.items:,} trees: {TREES_OURS}"
    out = [
        Target(f"{at} vs {base}", ours.rate / rows[base].rate, limit, True)
        for base, limit in ((RM_RF, 1.5), (RMTREE_LOOP, 2.0))
        if base in rows
    ]
    out.append(Target(f"{at} loop stall p99", ours.stall_p99_ms, 2.0, False, " ms"))
    out.append(Target(f"{at} loop stall max", ours.stall_max_ms, 5.0, False, " ms"))
    return out


def _tree_rows(rows: dict[str, Measurement]) -> list[list[str]]:
    rm, loop = rows.get(RM_RF), rows.get(RMTREE_LOOP)
    header = ["competitor", "loop", "trees", "trees/s", "x rm -rf", "x rmtree loop"]
    table = [[*header, "stall p99/max ms"]]
    table.extend(
        [
            m.competitor,
            m.loop,
            f"{m.items:,}",
            _num(m.rate),
            _num(m.rate / rm.rate if rm is not None else math.nan),
            _num(m.rate / loop.rate if loop is not None else math.nan),
            f"{_num(m.stall_p99_ms)} / {_num(m.stall_max_ms)}",
        ]
        for m in rows.values()
    )
    return table


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


def _file_rows(rows: dict[str, Measurement], quiet: Measurement | None = None) -> list[list[str]]:
    """One row per competitor; with ``quiet``, also the ratio to that quiet baseline."""
    base = rows.get(BASELINE)
    header = ["competitor", "loop", "files", "files/s", "x 1-thread"]
    if quiet is not None:
        header.append("x quiet 1-thread")
    table = [[*header, "stall p99/max ms", "host p99 ms", "peak MiB"]]
    for m in rows.values():
        cells = [m.competitor, m.loop, f"{m.items:,}", _num(m.rate)]
        cells.append(_num(m.rate / base.rate if base is not None else math.nan))
        if quiet is not None:
            cells.append(_num(m.rate / quiet.rate))
        cells += [
            f"{_num(m.stall_p99_ms)} / {_num(m.stall_max_ms)}",
            _num(m.host_p99_ms),
            _num(m.peak_mib),
        ]
        table.append(cells)
    return table


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


def compiled_unlink() -> str:
    """Whether the optional compiled module (the file lane) is in use: yes, no or unknown."""
    try:
        module = importlib.import_module("fastcleanup._unlink")
    except ImportError:
        return "unknown"
    compiled = getattr(module, "COMPILED", None)
    return "unknown" if compiled is None else "yes" if compiled else "no"


def render(report: Report, out: TextIO, *, calls: int, repeat: int) -> None:
    """Print the tables and the targets."""
    quiet = report.bursts.get("one-dir", {}).get(BASELINE)
    for scenario in SCENARIOS:
        rows = report.bursts.get(scenario.key)
        if not rows:
            continue
        print(
            f"\n{scenario.key}: {scenario.title}; RemoveFile bursts, median of {repeat}, "
            f"fresh files each run (producers hand over {SLICE} per loop iteration):",
            file=out,
        )
        _table(_file_rows(rows, quiet if scenario.busy else None), out)
        if scenario.key == "one-dir" and report.idle is not None:
            i = report.idle
            print(
                f"  (the same probes on an idle {i.loop} loop, this machine's floor right now: "
                f"stall {_num(i.stall_p99_ms)} / {_num(i.stall_max_ms)} ms, "
                f"host p99 {_num(i.host_p99_ms)} ms)",
                file=out,
            )
    for key, rows in report.trees.items():
        print(
            f"\n{key}: bursts of browser-profile-like trees ({TREE_FILES} files in "
            f"{TREE_DIRS} nested directories and a symlink each), median of {repeat}:",
            file=out,
        )
        _table(_tree_rows(rows), out)
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
        print("\ntargets (ratios within this run):", file=out)
        for t in found:
            print(t.line(), file=out)
        slow = {sc.key for sc in SCENARIOS if sc.slow}
        fast = [
            m.items for key, rows in report.bursts.items() if key not in slow for m in rows.values()
        ]
        if fast and min(fast) < TARGET_FILES:
            print(
                f"  (the file targets are stated for bursts of {TARGET_FILES:,} files, "
                f"larger than this run's: --files {TARGET_FILES} --dir /dev/shm measures them)",
                file=out,
            )


def plot(report: Report, path: str) -> None:
    """Draw files/s (as a ratio to each scenario's 1-thread loop) and loop stall into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels: list[str] = []
    ratios: list[float] = []
    stalls: list[float] = []
    colors: list[str] = []
    for key, rows in report.bursts.items():
        base = rows.get(BASELINE)
        for m in rows.values():
            labels.append(f"{key}: {m.competitor} ({m.items:,})")
            ratios.append(m.rate / base.rate if base is not None else math.nan)
            stalls.append(max(m.stall_p99_ms, 1e-3))
            colors.append("tab:green" if m.competitor.startswith("fastcleanup") else "tab:gray")
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.4 * len(labels) + 1.8), sharey=True)
    y = range(len(labels))
    left.barh(y, ratios, color=colors)
    left.set_yticks(list(y), labels, fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("files/s as x the scenario's 1-thread os.unlink loop (higher is better)")
    left.axvline(1.0, color="tab:red", linestyle="--", linewidth=1)
    for i, r in enumerate(ratios):
        left.text(r, i, f" {r:.2f}x", va="center", fontsize=7)
    right.barh(y, stalls, color=colors)
    right.set_xscale("log")
    right.set_xlabel("event loop stall p99, ms (log, lower is better)")
    fig.suptitle("bench: bursts of file removals")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the command ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Remove bursts of fresh files with fastcleanup (default and with allowed_roots) "
            "and with the usual ways, in one directory, over 100 directories and beside a "
            "busy loop; time trivial Call tasks, the submit hand-off and queue memory; print "
            "each figure as a ratio to its baseline in the same run, and the targets."
        ),
    )
    p.add_argument(
        "--files",
        type=int,
        help="files per burst of the fast competitors (default 20000; --quick: 2000)",
    )
    p.add_argument(
        "--slow-files",
        type=int,
        help="files per burst of the per-file designs (default 2000; --quick: 500)",
    )
    p.add_argument(
        "--trees",
        type=int,
        help="profile-like trees per burst on tmpfs, a third on disk (default 600; --quick: 30)",
    )
    p.add_argument("--repeat", type=int, help="runs per competitor (default 3; --quick: 1)")
    p.add_argument("--calls", type=int, help="trivial Call tasks per burst (default 20000)")
    p.add_argument("--submit-calls", type=int, help="hand-offs per submit-cost run (default 50000)")
    p.add_argument("--queued", type=int, help="RemoveFile queued for the memory figure (2e5)")
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
    p.add_argument(
        "--scenario",
        action="append",
        choices=[*(sc.key for sc in SCENARIOS), "trees"],
        help="run only this scenario (repeatable); trees: bursts of profile-like trees",
    )
    p.add_argument(
        "--dir",
        help="where to create the files (default: a tmpfs such as /dev/shm, else the temp dir)",
    )
    p.add_argument("--plot", metavar="FILE.png", help="also draw a bar chart (needs matplotlib)")
    p.add_argument(
        "--browser",
        action="store_true",
        help="run only the real-browser scenario: Chromium profiles removed through "
        "fastcleanup against shutil.rmtree on the loop (needs Playwright and a Chromium)",
    )
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
    n_slow = pick("slow-files", args.slow_files, 500, 2_000)
    repeat = pick("repeat", args.repeat, 1, 3)
    n_calls = pick("calls", args.calls, 5_000, 20_000)
    n_submit = pick("submit-calls", args.submit_calls, 20_000, 50_000)
    n_queued = pick("queued", args.queued, 50_000, 200_000)
    n_trees = pick("trees", args.trees, 30, 600)
    if args.browser:
        from .browser import run_browser

        return run_browser(repeat=repeat, quick=quick, loop=args.loop or default_loop())
    if args.plot and not _importable("matplotlib"):
        print(
            "bench: --plot needs matplotlib; install it with pip install matplotlib",
            file=sys.stderr,
        )
        return 2
    loop = args.loop or default_loop()
    file_names = _available(_chosen(args.only, FILE_COMPETITORS), FILE_COMPETITORS)
    call_names = _available(_chosen(args.only, CALL_COMPETITORS), CALL_COMPETITORS)
    skipped = sorted({*FILE_COMPETITORS, *CALL_COMPETITORS} - {*file_names, *call_names})
    if skipped and not args.only:
        print(f"(skipped, a module is missing: {', '.join(skipped)})", file=sys.stderr)
    scenarios = [sc for sc in SCENARIOS if not args.scenario or sc.key in args.scenario]
    with_trees = not args.only and (not args.scenario or "trees" in args.scenario)

    def progress(m: Measurement) -> None:
        print(
            f"  {m.competitor:<26} {m.items:>9,} in {m.seconds:8.3f} s  ({_num(m.rate)}/s)",
            file=sys.stderr,
            flush=True,
        )

    # One directory of our own holds every burst's files: a cleaner confined
    # to it (allowed_roots) then walks one component per file in every scenario.
    where = args.dir if args.dir is not None else default_dir()
    try:
        base = tempfile.mkdtemp(prefix="fastcleanup-bench-", dir=where)
    except OSError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"bench: loop {loop}, {os.cpu_count()} CPUs, load average {load}; "
        f"compiled file lane: {compiled_unlink()}; files in {os.path.dirname(base)}",
        flush=True,
    )
    try:
        if args.files is None and args.slow_files is None:
            plan = [(sc.slow, sum(n in file_names for n in sc.names) * repeat) for sc in scenarios]
            counts = (sum(k for slow, k in plan if not slow), sum(k for slow, k in plan if slow))
            rate = creation_rate(base, n=min(n_files, 2000))
            budget = QUICK_CREATE_BUDGET if quick else CREATE_BUDGET
            fitted = fit_sizes(n_files, n_slow, counts, rate, budget)
            if fitted != (n_files, n_slow):
                n_files, n_slow = fitted
                elsewhere = " or --dir a tmpfs such as /dev/shm" if args.dir is None else ""
                print(
                    f"bench: this directory creates about {rate:,.0f} files/s; "
                    f"bursts of {n_files:,} files ({n_slow:,} for the per-file designs) keep "
                    f"the setup near {budget:.0f} s; such small bursts are noisy (--files and "
                    f"--slow-files set the sizes{elsewhere})",
                    file=sys.stderr,
                    flush=True,
                )
        idle = measure_idle(200 if quick else 1000, loop=loop)
        bursts: dict[str, dict[str, Measurement]] = {}
        for sc in scenarios:
            names = [n for n in sc.names if n in file_names]
            if not names:
                continue
            size = n_slow if sc.slow else n_files
            print(f"bench: {sc.key} ({size:,} files)...", file=sys.stderr, flush=True)
            bursts[sc.key] = compare_files(
                names,
                size,
                repeat,
                loop=loop,
                parent=base,
                dirs=sc.dirs,
                depth=sc.depth,
                busy=sc.busy,
                progress=progress,
            )
        trees: dict[str, dict[str, Measurement]] = {}
        if with_trees:
            # The targets are for tmpfs; a disk run (unless --quick or --dir) shows the
            # I/O-bound case.
            places = [base] if quick or args.dir else [base, tempfile.gettempdir()]
            names = _available(TREE_COMPETITORS, TREE_COMPETITORS)
            for place in dict.fromkeys(places):
                key = TREES_TMPFS if on_tmpfs(place) else TREES_DISK
                if key in trees:
                    continue
                # A third on a disk, where making the trees takes most of the run.
                size = n_trees if key == TREES_TMPFS else max(1, n_trees // 3)
                print(f"bench: {key} ({size:,} trees)...", file=sys.stderr, flush=True)
                trees[key] = compare_trees(names, size, repeat, parent=place, progress=progress)
        print("bench: Call tasks...", file=sys.stderr, flush=True)
        calls = compare_calls(call_names, n_calls, repeat, loop=loop, progress=progress)
        costs: list[SubmitCost] = []
        per_task: float | None = None
        if not args.only:
            print("bench: submit cost, memory...", file=sys.stderr, flush=True)
            costs = submit_costs(n_submit, 3 if quick else 7)
            per_task = bytes_per_queued_remove_file(n_queued, loop)
    except (BenchError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report = Report(bursts, calls, costs, per_task, idle, trees)
    render(report, sys.stdout, calls=n_calls, repeat=repeat)
    if args.plot and report.bursts:
        plot(report, args.plot)
        print(f"\nchart: {args.plot}")
    return 0
