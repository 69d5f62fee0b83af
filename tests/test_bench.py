"""The benchmark harness works: small bursts, every file gone, a table with finite ratios.

Timings are never asserted here (benchmarks are measurements); what is
asserted is what each part did: files removed, calls run, items received.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

import fastcleanup as fc
from bench import cli as bench_cli
from bench.cli import (
    SCENARIOS,
    Report,
    Target,
    compare_files,
    compiled_unlink,
    fit_sizes,
    main,
    measure_calls,
    render,
    targets,
)
from bench.competitors import CHUNKED, CONFINED, FILE_COMPETITORS, MIXED, busy_loop, confined_to
from bench.harness import (
    BenchError,
    Burst,
    BurstSession,
    Competitor,
    FileSet,
    Measurement,
    make_files,
    percentile,
    run_files,
    summarize,
    tmpfs_among,
)
from bench.micro import bytes_per_queued_remove_file, submit_costs
from fastcleanup import _tasks
from tests.helpers import listed_options, run_module


@pytest.mark.parametrize(
    "name", ["unlink-1-thread", "rust-port", "fastcleanup-asyncio", "fastcleanup-uvloop", CONFINED]
)
def test_a_burst_removes_every_file(name: str, tmp_path: Path) -> None:
    files = make_files(300, str(tmp_path))
    assert len(os.listdir(files.root)) == 300
    with BurstSession(FILE_COMPETITORS[name]) as session:
        m = run_files(session, files)
    assert not any(os.path.lexists(p) for p in files.paths)
    assert not os.path.exists(files.root)
    assert (m.competitor, m.items) == (name, 300)
    assert m.seconds > 0
    assert math.isfinite(m.rate)
    assert math.isfinite(m.stall_p99_ms)
    assert m.stall_max_ms >= m.stall_p99_ms >= 0


@pytest.mark.parametrize(
    "name", ["unlink-2-threads", "bulk-2-threads", CHUNKED, "fastcleanup-uvloop", CONFINED]
)
def test_bursts_over_100_directories_beside_a_busy_loop_remove_every_file(
    name: str, tmp_path: Path
) -> None:
    files = make_files(500, str(tmp_path), dirs=100)
    assert len(files.dirs) == 100
    assert {os.path.dirname(d) for d in files.dirs} == {str(tmp_path)}
    assert all(len(os.listdir(d)) == 5 for d in files.dirs)  # spread evenly
    competitor = busy_loop(
        confined_to(str(tmp_path)) if name == CONFINED else FILE_COMPETITORS[name]
    )
    with BurstSession(competitor) as session:
        m = run_files(session, files)
    assert not any(os.path.lexists(p) for p in files.paths)
    assert list(tmp_path.iterdir()) == []
    assert (m.competitor, m.items) == (name, 500)


def test_deep_directories_share_their_ancestors_and_go_with_the_set(tmp_path: Path) -> None:
    files = make_files(2000, str(tmp_path), dirs=1000, depth=4)
    assert len(files.dirs) == 1000
    assert all(len(os.listdir(d)) == 2 for d in files.dirs)  # spread evenly
    # Each directory four levels below tmp_path, all below the same three.
    assert {len(Path(d).relative_to(tmp_path).parts) for d in files.dirs} == {4}
    assert len({os.path.dirname(d) for d in files.dirs}) == 1
    assert files.root == os.path.dirname(files.dirs[0])
    with BurstSession(confined_to(str(tmp_path))) as session:
        m = run_files(session, files)
    assert m.items == 2000 and files.leftovers() == 0
    files.dispose()
    assert list(tmp_path.iterdir()) == []


def test_a_confined_cleaner_refuses_files_outside_its_root(tmp_path: Path) -> None:
    # The bench's allowed_roots competitor really is confined: files outside
    # its root stay, are counted as failed, and the harness says so.
    root = tmp_path / "root"
    root.mkdir()
    files = make_files(20, str(tmp_path))
    with (
        BurstSession(confined_to(str(root))) as session,
        pytest.raises(BenchError, match="20 submitted, 0 completed, 20 failed"),
    ):
        run_files(session, files)


def test_compare_files_runs_every_scenario_of_the_command(tmp_path: Path) -> None:
    for sc in SCENARIOS:
        found = compare_files(
            sc.names, 200, 2, parent=str(tmp_path), dirs=sc.dirs, depth=sc.depth, busy=sc.busy
        )
        assert list(found) == list(sc.names)
        assert all(m.items == 200 and math.isfinite(m.rate) for m in found.values())
    assert list(tmp_path.iterdir()) == []


def test_a_burst_that_misses_one_file_raises(tmp_path: Path) -> None:
    @contextlib.asynccontextmanager
    async def all_but_one() -> AsyncIterator[Burst[Sequence[str]]]:
        async def burst(paths: Sequence[str]) -> None:
            for p in paths[1:]:
                os.unlink(p)

        yield burst

    files = make_files(300, str(tmp_path), dirs=100)
    missing = Competitor("all-but-one", "forgets the first", all_but_one, loop="asyncio")
    with BurstSession(busy_loop(missing)) as session, pytest.raises(BenchError, match="left 1 "):
        run_files(session, files)
    assert list(tmp_path.iterdir()) == []


def test_compiled_unlink_is_reported_whatever_is_installed() -> None:
    assert compiled_unlink() in ("yes", "no", "unknown")


def test_a_competitor_that_leaves_files_raises(tmp_path: Path) -> None:
    @contextlib.asynccontextmanager
    async def half() -> AsyncIterator[Burst[Sequence[str]]]:
        async def burst(paths: Sequence[str]) -> None:
            for p in paths[: len(paths) // 2]:
                os.unlink(p)

        yield burst

    files = make_files(10, str(tmp_path))
    with (
        BurstSession(Competitor("half", "removes half", half, loop="asyncio")) as session,
        pytest.raises(BenchError, match="half left 5 of 10 files"),
    ):
        run_files(session, files)
    assert not os.path.exists(files.root)  # disposed of all the same


@pytest.mark.parametrize("name", ["taskgroup-64-asyncio", "fastcleanup-asyncio"])
def test_call_competitors_run_every_call(name: str) -> None:
    m = measure_calls(name, 500)
    assert (m.competitor, m.items, m.loop) == (name, 500, "asyncio")
    assert math.isfinite(m.rate)


def test_submit_costs_are_measured_for_each_variant() -> None:
    variants = ("deque.append", "fastcleanup.submit", "call_soon_threadsafe-asyncio")
    costs = submit_costs(2_000, 2, variants)
    assert [c.variant for c in costs] == list(variants)
    for c in costs:
        assert 0 < c.ns_best <= c.ns_median < 1e7
        assert (c.calls, c.repeat) == (2_000, 2)


def test_bytes_per_queued_remove_file_is_readme_s_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    """README: a queued RemoveFile costs 32 bytes besides its path (48 as a
    Python object): the object and its share of the queue's blocks."""
    said = re.search(
        r"A queued `RemoveFile` costs (\d+) bytes besides its path string"
        r" \((\d+) as a\s+Python object\)",
        (Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md").read_text(),
    )
    assert said is not None
    if fc.RemoveFile is not _tasks.PurePythonRemoveFile:
        assert round(bytes_per_queued_remove_file(20_000, "asyncio")) == int(said[1])
    monkeypatch.setattr(fc, "RemoveFile", _tasks.PurePythonRemoveFile)
    assert round(bytes_per_queued_remove_file(20_000, "asyncio")) == int(said[2])


def test_percentile_and_summarize() -> None:
    assert percentile([5.0, 1.0, 3.0], 99) == 5.0
    assert percentile(list(map(float, range(1, 101))), 99) == 99.0
    assert math.isnan(percentile([], 99))
    ms = [Measurement("c", "asyncio", 10, s, 1.0, s, 2.0, 0.5) for s in (1.0, 3.0, 2.0)]
    med = summarize(ms)
    assert (med.seconds, med.stall_max_ms, med.rate) == (2.0, 2.0, 5.0)
    with pytest.raises(ValueError, match="cannot summarize"):
        summarize([*ms, Measurement("other", "asyncio", 10, 1.0, 1.0, 1.0, 1.0, 1.0)])


def test_targets_compare_within_the_run() -> None:
    def m(name: str, seconds: float) -> Measurement:
        return Measurement(name, "uvloop", 1000, seconds, 1.0, 4.0, 3.0, 1.0)

    report = Report(
        bursts={
            "one-dir": {
                "unlink-1-thread": m("unlink-1-thread", 1.0),
                "fastcleanup-uvloop": m("fastcleanup-uvloop", 0.5),
                CONFINED: m(CONFINED, 0.8),
                MIXED: m(MIXED, 0.625),
            },
            "100-dirs": {
                "unlink-1-thread": m("unlink-1-thread", 1.0),
                "fastcleanup-uvloop": m("fastcleanup-uvloop", 0.625),
            },
            "per-file": {
                "gather-aiofiles": m("gather-aiofiles", 10.0),
                "fastcleanup-uvloop": m("fastcleanup-uvloop", 0.5),
            },
        },
        calls={},
        submit=[],
        bytes_per_task=300.0,
    )
    found = {t.what: t for t in targets(report)}
    assert found["one-dir, 1,000 files: fastcleanup-uvloop vs unlink-1-thread"].value == 2.0
    assert found["one-dir, 1,000 files: fastcleanup-uvloop vs unlink-1-thread"].met
    confined = found[f"one-dir, 1,000 files: {CONFINED} vs unlink-1-thread"]
    assert (confined.value, confined.met) == (1.25, False)
    assert found[f"one-dir, 1,000 files: {CONFINED} vs fastcleanup-uvloop"].value == 0.625
    mixed = found[f"one-dir, 1,000 files: {MIXED} vs fastcleanup-uvloop"]
    assert (mixed.value, mixed.met) == (0.8, False)
    assert found["100-dirs, 1,000 files: fastcleanup-uvloop vs unlink-1-thread"].value == 1.6
    assert not found["100-dirs, 1,000 files: fastcleanup-uvloop vs unlink-1-thread"].met
    assert found["per-file, 1,000 files: fastcleanup-uvloop vs gather-aiofiles"].value == 20.0
    stall_max = found["one-dir, 1,000 files: fastcleanup-uvloop loop stall max"]
    assert (stall_max.value, stall_max.met) == (4.0, True)
    assert not found["bytes per queued RemoveFile"].met
    assert "[MISSED]" in found["bytes per queued RemoveFile"].line()
    assert not Target("nan", math.nan, 1.0, True).met
    # No bulk-2-threads in this run: no target against it, and no target out of reach.
    assert not [t for t in found.values() if "bulk-2-threads" in t.what or t.out_of_reach]

    # The ceiling ran at 1.25x the loop (a time of 0.8): a 1.5x target is out of reach.
    report.bursts["one-dir"]["bulk-2-threads"] = m("bulk-2-threads", 0.8)
    found = {t.what: t for t in targets(report)}
    shares = found["one-dir, 1,000 files: fastcleanup-uvloop vs bulk-2-threads"]
    assert (shares.value, shares.limit, shares.met) == (1.6, 0.9, True)
    confined_share = found[f"one-dir, 1,000 files: {CONFINED} vs bulk-2-threads"]
    assert (confined_share.value, confined_share.met) == (1.0, True)
    confined = found[f"one-dir, 1,000 files: {CONFINED} vs unlink-1-thread"]
    assert (confined.ceiling, confined.out_of_reach, confined.met) == (1.25, True, False)
    assert confined.line() == (
        f"  [MISSED] one-dir, 1,000 files: {CONFINED} vs unlink-1-thread: 1.25x "
        "(>= 1.50; out of reach in this run: bulk-2-threads reached 1.25x)"
    )
    ours = found["one-dir, 1,000 files: fastcleanup-uvloop vs unlink-1-thread"]
    assert ours.met and ours.out_of_reach  # beat the ceiling (noise): no note on a met line
    assert "out of reach" not in ours.line()
    assert not found[f"one-dir, 1,000 files: {CONFINED} vs fastcleanup-uvloop"].out_of_reach
    assert "100-dirs, 1,000 files: fastcleanup-uvloop vs bulk-2-threads" not in found

    # The C pair in chunks ran faster (1.6x the loop): it is this run's ceiling.
    report.bursts["one-dir"][CHUNKED] = m(CHUNKED, 0.625)
    found = {t.what: t for t in targets(report)}
    assert not [t for t in found.values() if t.what.endswith("vs bulk-2-threads")]
    shares = found[f"one-dir, 1,000 files: fastcleanup-uvloop vs {CHUNKED}"]
    assert (shares.value, shares.met) == (1.25, True)
    confined_share = found[f"one-dir, 1,000 files: {CONFINED} vs {CHUNKED}"]
    assert (round(confined_share.value, 6), confined_share.met) == (0.78125, False)
    confined = found[f"one-dir, 1,000 files: {CONFINED} vs unlink-1-thread"]
    assert (confined.ceiling, confined.out_of_reach) == (1.6, False)
    assert "out of reach" not in confined.line()
    report.bursts["one-dir"][CHUNKED] = m(CHUNKED, 0.9)  # slower than the halves: 1.11x
    found = {t.what: t for t in targets(report)}
    confined = found[f"one-dir, 1,000 files: {CONFINED} vs unlink-1-thread"]
    assert (confined.ceiling, confined.ceiling_name) == (1.25, "bulk-2-threads")
    assert f"one-dir, 1,000 files: {CONFINED} vs bulk-2-threads" in found


_SMALL = [
    "--files",
    "200",
    "--slow-files",
    "100",
    "--calls",
    "200",
    "--submit-calls",
    "1000",
    "--queued",
    "2000",
]


def _ratios(out: str, scenario: str) -> dict[str, float]:
    """The "x 1-thread" column of one scenario's table, by competitor."""
    table = out.split(f"\n{scenario}: ")[1].split("\n\n")[0]
    lines = table.splitlines()
    column = re.split(r"\s{2,}", lines[1].strip()).index("x 1-thread")
    ratios = {}
    for line in lines[3:]:
        if line.strip().startswith("("):
            continue  # the idle loop's floor, below the rows
        cells = re.split(r"\s{2,}", line.strip())
        ratios[cells[0]] = float(cells[column])
    return ratios


def test_main_quick_prints_the_comparison(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chart = tmp_path / "bench.png"
    work = tmp_path / "work"
    work.mkdir()
    argv = ["--quick", *_SMALL, "--dir", str(work), "--plot", str(chart)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert list(work.iterdir()) == []  # every burst's files and directories are gone
    assert chart.stat().st_size > 1000
    assert re.search(r"compiled file lane: (yes|no|unknown)", out.splitlines()[0])
    assert out.splitlines()[0].endswith(f"; files in {work}")
    for sc in SCENARIOS:
        ratios = _ratios(out, sc.key)
        assert list(ratios) == list(sc.names)
        assert ratios["unlink-1-thread"] == 1.0
        assert all(math.isfinite(r) and r > 0 for r in ratios.values())
    assert "x quiet 1-thread" in out.split("\nbusy-loop: ")[1].split("\n\n")[0]
    assert "x quiet 1-thread" not in out.split("\none-dir: ")[1].split("\n\n")[0]
    assert {n for sc in SCENARIOS for n in sc.names} == set(FILE_COMPETITORS)
    for section in ("trivial Call tasks", "Hand-off from a foreign thread", "bytes per queued"):
        assert section in out
    assert "this machine's floor right now" in out
    assert "\ntargets (ratios within this run):\n" in out
    assert "issue" not in out
    for what in (
        "one-dir, 200 files: fastcleanup-uvloop vs unlink-1-thread",
        f"one-dir, 200 files: {CONFINED} vs fastcleanup-uvloop",
        f"100-dirs, 200 files: {CONFINED} vs unlink-1-thread",
        "per-file, 100 files: fastcleanup-uvloop vs gather-aiofiles",
    ):
        assert re.search(rf"\[(met   |MISSED)\] {re.escape(what)}: [0-9.]+x", out), what


def test_main_only_runs_the_named_competitors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--only", "unlink-1-thread", "--only", "taskgroup-64-asyncio", *_SMALL]) == 0
    out = capsys.readouterr().out
    assert "unlink-1-thread" in out
    assert "taskgroup-64-asyncio" in out
    assert "gather-aiofiles" not in out
    assert "Hand-off" not in out


def test_main_plot_without_matplotlib_says_how_to_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(bench_cli, "_importable", lambda module: module != "matplotlib")
    assert main(["--quick", "--plot", str(tmp_path / "x.png")]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err


def test_fit_sizes_keeps_file_creation_within_the_budget() -> None:
    bursts = (51, 21)
    assert fit_sizes(3000, 1000, bursts, rate=50_000.0, budget=60.0) == (3000, 1000)
    files, slow = fit_sizes(3000, 1000, bursts, rate=1_000.0, budget=60.0)
    assert abs(files / 3000 - slow / 1000) < 0.01  # both shrink by one factor
    assert 59.0 <= (bursts[0] * files + bursts[1] * slow) / 1_000.0 <= 60.0  # no more than that
    assert fit_sizes(3000, 1000, bursts, rate=10.0, budget=60.0) == (500, 200)  # the floors
    assert fit_sizes(300, 100, bursts, rate=10.0, budget=60.0) == (300, 100)  # never grows


def test_main_on_a_slow_disk_shrinks_the_bursts_and_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(bench_cli, "creation_rate", lambda parent=None, n=0: 400.0)
    argv = ["--quick", "--only", "unlink-1-thread", *_SMALL[4:], "--dir", str(tmp_path)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    # --quick: 2,000 and 500 files, once per scenario with the one competitor.
    fast = sum(not sc.slow for sc in bench_cli.SCENARIOS)
    files, slow = fit_sizes(2000, 500, (fast, 1), 400.0, bench_cli.QUICK_CREATE_BUDGET)
    assert files < 2000 and slow < 500
    assert f"creates about 400 files/s; bursts of {files:,} files ({slow:,}" in captured.err
    assert "one-dir: one directory; RemoveFile bursts" in captured.out
    assert f"{files:,}" in captured.out.split("\none-dir: ")[1].split("\n\n")[0]
    assert f"{slow:,}" in captured.out.split("\nper-file: ")[1].split("\n\n")[0]
    # Sizes asked for are never changed.
    assert main([*argv, "--files", "700"]) == 0
    captured = capsys.readouterr()
    assert "files/s; bursts of" not in captured.err
    assert "700" in captured.out.split("\none-dir: ")[1].split("\n\n")[0]


def test_render_says_when_the_bursts_are_smaller_than_the_targets_size() -> None:
    def rendered(files: int) -> str:
        def m(name: str, seconds: float) -> Measurement:
            return Measurement(name, "uvloop", files, seconds, 1.0, 4.0, 3.0, 1.0)

        rows = {n: m(n, s) for n, s in (("unlink-1-thread", 1.0), ("fastcleanup-uvloop", 0.5))}
        slow = {n: m(n, s) for n, s in (("gather-aiofiles", 10.0), ("fastcleanup-uvloop", 0.5))}
        report = Report({"one-dir": rows, "per-file": slow}, {}, [], None)
        out = io.StringIO()
        render(report, out, calls=0, repeat=3)
        return out.getvalue()

    note = "(the file targets are stated for bursts of 100,000 files, larger than this run's"
    assert note in rendered(20_000)
    assert "targets (ratios" in rendered(100_000) and note not in rendered(100_000)


def test_tmpfs_among_picks_the_first_writable_tmpfs_candidate() -> None:
    mounts = (
        "/dev/vda / ext4 rw,relatime 0 0\n"
        "tmpfs /run tmpfs rw,nosuid 0 0\n"
        "tmpfs /dev/shm tmpfs rw,nosuid,nodev 0 0\n"
        "tmpfs /ro tmpfs ro,nosuid 0 0\n"
    )
    assert tmpfs_among(["/tmp", "/dev/shm"], mounts) == "/dev/shm"  # /tmp is on the disk
    assert tmpfs_among(["/run", "/dev/shm"], mounts) == "/run"  # the order given wins
    assert tmpfs_among(["/ro", "/"], mounts) is None  # read-only, and not a tmpfs
    assert tmpfs_among(["/dev/shm"], "") is None


def test_main_without_dir_creates_its_files_in_the_default_dir(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(bench_cli, "default_dir", lambda: str(tmp_path))
    made: list[str] = []

    def spy(n: int, parent: str | None = None, dirs: int = 1, depth: int = 1) -> FileSet:
        made.append(str(parent))
        return make_files(n, parent, dirs, depth)

    monkeypatch.setattr(bench_cli, "make_files", spy)
    argv = ["--quick", "--only", "unlink-1-thread", "--scenario", "one-dir", *_SMALL[:4]]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(f"; files in {tmp_path}")
    assert made and all(os.path.dirname(p) == str(tmp_path) for p in made), made
    assert list(tmp_path.iterdir()) == []


def test_main_rejects_a_size_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--files", "0"])
    assert exc.value.code == 2
    assert "--files must be >= 1" in capsys.readouterr().err


def test_bench_help_lists_every_option_readme_names() -> None:
    """``python -m bench --help`` exits 0 and shows its options, among them all README names."""
    proc = run_module("bench", "--help")
    assert proc.returncode == 0, proc.stderr
    options = listed_options(bench_cli._parser())
    shown = proc.stdout.split("\noptions:\n", 1)[1]
    assert [o for o in options if o not in shown] == []
    docs = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
    section = docs.read_text(encoding="utf-8")
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", section))
    assert {"--files", "--slow-files", "--quick", "--plot"} <= named  # the section was found
    assert named - set(options) == set()


def test_the_trees_scenario_removes_every_tree_and_prints_its_targets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.trees import RM_RF, RMTREE_LOOP, TREES_OURS, compare_trees

    rows = compare_trees([RM_RF, RMTREE_LOOP, TREES_OURS], 4, 1, parent=str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # every tree went (a leftover raises), and its dir
    assert {m.items for m in rows.values()} == {4}
    report = bench_cli.Report({}, {}, [], None, trees={bench_cli.TREES_TMPFS: rows})
    bench_cli.render(report, io.StringIO(), calls=0, repeat=1)
    lines = [t.line() for t in bench_cli.targets(report)]
    for base in (RM_RF, RMTREE_LOOP):
        assert any(
            re.search(rf"\] trees on tmpfs, 4 trees: .* vs {base}: [0-9.]+x", x) for x in lines
        )
    assert sum("loop stall" in x for x in lines) == 2, lines
