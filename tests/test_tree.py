"""Tree removal (fastcleanup._tree): one suite for the C walker and its Python twin."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import fastcleanup as fc
from fastcleanup import _log, _tree, _unlink
from fastcleanup._paths import Refused, Roots
from tests.helpers import hold_the_gil

from .torture_helpers import LARGE

MakeCleaner = Callable[..., fc.Cleaner]
Walk = Callable[..., list[Any]]

BUILDS = [
    pytest.param(
        "compiled",
        marks=pytest.mark.skipif(not _unlink.COMPILED, reason="fastcleanup._cbulk was not built"),
    ),
    "pure",
]


@pytest.fixture(params=BUILDS)
def walk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Walk:
    """The walker of one build, also the one the cleaner's tree tasks use in this test."""
    if request.param == "pure":
        monkeypatch.setattr(_tree, "walk_trees", _tree.pure_walk_trees)
    else:
        from fastcleanup import _cbulk

        assert _tree.walk_trees is _cbulk.walk_trees
    assert _tree._walker() is _tree.walk_trees
    fn: Walk = _tree.walk_trees
    return fn


def profile(where: Path, files: int = 200, depth: int = 5, lock_target: Path | None = None) -> Path:
    """A browser-profile-like tree: ``files`` files over ``depth`` nested directories."""
    where.mkdir()
    d = where
    for level in range(depth):
        if level:
            d = d / f"d{level}"
            d.mkdir()
        for k in range(files // depth):
            (d / f"f{k}").write_bytes(b"x")
    os.symlink(lock_target or "host-1234", where / "SingletonLock")
    return where


def deep(where: Path, levels: int) -> None:
    """A chain of ``levels`` nested directories, built by descriptor (paths would be too long)."""
    where.mkdir()
    fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(levels):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(os.open("last", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
    os.close(fd)


def precious(where: Path) -> Path:
    """A directory outside the tree whose files must survive."""
    where.mkdir()
    for k in range(5):
        (where / f"keep{k}").write_bytes(b"keep")
    return where


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- the walk ---------------------------------------------------------------------------


def test_a_profile_is_removed_and_its_lock_target_kept(walk: Walk, scratch: Path) -> None:
    keep = precious(scratch / "outside")
    tree = profile(scratch / "profile", lock_target=keep)
    os.symlink(keep, tree / "d1" / "link-to-outside")
    assert walk([(_tree.AT_FDCWD, str(tree))]) == [(0, [], False, False)]
    assert not tree.exists()
    assert sorted(os.listdir(keep)) == [f"keep{k}" for k in range(5)]


def test_a_symlink_named_as_the_tree_loses_the_link_only(walk: Walk, scratch: Path) -> None:
    keep = precious(scratch / "outside")
    link = scratch / "link"
    link.symlink_to(keep)
    assert walk([(_tree.AT_FDCWD, str(link))]) == [(0, [], False, False)]
    assert not os.path.lexists(link) and len(os.listdir(keep)) == 5


def test_a_file_named_as_the_tree_fails_as_not_a_directory(walk: Walk, scratch: Path) -> None:
    (scratch / "file").write_bytes(b"x")
    (result,) = walk([(_tree.AT_FDCWD, str(scratch / "file"))])
    assert result == (1, [("", errno.ENOTDIR)], False, False)
    assert isinstance(_tree.failure(str(scratch / "file"), result), NotADirectoryError)
    assert (scratch / "file").exists()


def test_a_tree_already_gone_is_a_success(walk: Walk, scratch: Path) -> None:
    assert walk([(_tree.AT_FDCWD, str(scratch / "never"))]) == [(0, [], False, False)]


def test_many_trees_in_one_call_relative_to_a_descriptor(walk: Walk, scratch: Path) -> None:
    names = [f"p{k}" for k in range(10)]
    for name in names:
        profile(scratch / name, files=20, depth=3)
    fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY)
    try:
        results = walk([(fd, name) for name in names])
    finally:
        os.close(fd)
    assert results == [(0, [], False, False)] * 10
    assert os.listdir(scratch) == []


@pytest.mark.parametrize("levels", [5_000])
def test_a_tree_thousands_of_levels_deep_is_removed_with_few_descriptors(
    walk: Walk, scratch: Path, levels: int
) -> None:
    """No recursion, no depth limit, and at most HELD directories open at once."""
    deep(scratch / "deep", levels)
    before = open_fds()
    peak = [before]
    done = threading.Event()

    def watch() -> None:  # samples the descriptors while the walk runs; blocks between
        while not done.wait(0.002):
            peak[0] = max(peak[0], open_fds())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert walk([(_tree.AT_FDCWD, str(scratch / "deep"))]) == [(0, [], False, False)]
    finally:
        done.set()
        watcher.join()
    assert not (scratch / "deep").exists()
    assert open_fds() == before
    # Two per directory at most in the twin (its scandir holds a copy); a walk
    # that kept every level open would have needed thousands.
    assert peak[0] - before <= 2 * _tree.HELD + 4, peak


def test_a_deep_tree_is_removed_inside_allowed_roots(walk: Walk, scratch: Path) -> None:
    deep(scratch / "deep", 3_000)
    _tree.remove_tree(str(scratch / "deep"), Roots([scratch]))
    assert os.listdir(scratch) == []


def test_confinement_refuses_a_tree_outside_and_the_root_itself(scratch: Path) -> None:
    (scratch / "root").mkdir()
    outside = profile(scratch / "outside", files=10, depth=2)
    roots = Roots([scratch / "root"])
    with pytest.raises(Refused):
        _tree.remove_tree(str(outside), roots)
    with pytest.raises(Refused):
        _tree.remove_tree(str(scratch / "root"), roots)
    assert outside.exists() and (scratch / "root").exists()


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """``chattr +i`` a file (root, on a file system that has the flag), undone after."""
    made: list[Path] = []

    def make(path: Path) -> None:
        try:
            subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"chattr +i is not available here: {exc}")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_the_walk_goes_on_past_files_it_cannot_remove_and_names_them(
    walk: Walk, tmp_path: Path, immutable: Callable[[Path], None]
) -> None:
    """Two immutable files among 300: everything else goes; both are named with errno."""
    tree = tmp_path / "tree"
    for k in range(3):
        (tree / f"d{k}").mkdir(parents=True)
        for j in range(100):
            (tree / f"d{k}" / f"f{j:03d}").write_bytes(b"x")
    stuck = [tree / "d0" / "f050", tree / "d1" / "f007"]
    for path in stuck:
        immutable(path)
    (result,) = walk([(_tree.AT_FDCWD, str(tree))])
    failed, named, refilled, stopped = result
    assert (failed, refilled, stopped) == (2, False, False)
    # Only the files are named: their directories' ENOTEMPTY follows from them.
    assert sorted(named) == [("d0/f050", errno.EPERM), ("d1/f007", errno.EPERM)]
    left = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    assert left == ["d0", "d0/f050", "d1", "d1/f007"]
    err = _tree.failure(str(tree), result)
    assert isinstance(err, PermissionError)
    assert str(stuck[0]) in str(err) and str(stuck[1]) in str(err) and "2 entries" in str(err)


def test_a_failure_names_the_first_few_and_counts_all(
    walk: Walk, tmp_path: Path, immutable: Callable[[Path], None]
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for k in range(8):
        (tree / f"f{k}").write_bytes(b"x")
        immutable(tree / f"f{k}")
    (result,) = walk([(_tree.AT_FDCWD, str(tree))])
    assert result[0] == 8 and len(result[1]) == _tree.NAMED
    assert "(and 3 more)" in str(_tree.failure(str(tree), result))


@pytest.fixture
def mounted(scratch: Path) -> Iterator[Path]:
    """A tmpfs mounted inside a tree, with a file of its own (root only)."""
    point = scratch / "tree" / "sub" / "mnt"
    point.mkdir(parents=True)
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "none", str(point)], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        (point / "theirs").write_bytes(b"x")
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_mount_point_inside_is_left_whole_and_named(
    walk: Walk, scratch: Path, mounted: Path
) -> None:
    tree = scratch / "tree"
    for k in range(50):
        (tree / f"f{k}").write_bytes(b"x")
        (tree / "sub" / f"g{k}").write_bytes(b"x")
    (result,) = walk([(_tree.AT_FDCWD, str(tree))])
    assert result == (1, [("sub/mnt", errno.EBUSY)], False, False)
    assert sorted(str(p.relative_to(tree)) for p in tree.rglob("*")) == [
        "sub",
        "sub/mnt",
        "sub/mnt/theirs",  # another file system: never entered
    ]


def test_a_directory_swapped_for_a_symlink_mid_walk_is_unlinked(walk: Walk, scratch: Path) -> None:
    """A thread swaps ``a`` for a symlink to a precious directory while the walk empties it.

    On tmpfs a directory's size counts its entries, so the thread sees the
    walk begin inside ``a``. Whether or not it won the race in a round, the
    outside stays whole and the tree goes, symlink included.
    """
    keep = precious(scratch / "outside")
    swapped_mid_walk = 0
    for rnd in range(10):
        tree = scratch / f"tree{rnd}"
        (tree / "a").mkdir(parents=True)
        for k in range(3000):
            (tree / "a" / f"f{k}").write_bytes(b"")
        (tree / "b").mkdir()
        full = os.stat(tree / "a").st_size
        moved = scratch / f"moved{rnd}"
        state = {"swapped": False}
        started = threading.Event()

        def swap(
            tree: Path = tree,
            moved: Path = moved,
            state: dict[str, bool] = state,
            full: int = full,
            started: threading.Event = started,
        ) -> None:
            started.set()
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                try:
                    if os.stat(tree / "a").st_size < full:
                        os.rename(tree / "a", moved)
                        os.symlink(keep, tree / "a")
                        state["swapped"] = True
                        return
                except FileNotFoundError:
                    return
                time.sleep(0.0002)  # yield: a spinning thread would starve the walk

        swapper = threading.Thread(target=swap)
        swapper.start()
        started.wait()
        (result,) = walk([(_tree.AT_FDCWD, str(tree))])
        swapper.join()
        assert sorted(os.listdir(keep)) == [f"keep{k}" for k in range(5)], rnd
        if state["swapped"] and os.path.isdir(moved):
            swapped_mid_walk += 1
            assert result == (0, [], False, False), rnd
            assert not os.path.lexists(tree), rnd
    if swapped_mid_walk == 0:
        pytest.skip("the swapping thread never caught a walk inside the directory")


def test_a_stop_flag_ends_the_walk(walk: Walk, scratch: Path) -> None:
    from array import array

    profile(scratch / "p", files=50, depth=2)
    stop = array("q", [1])
    assert walk([(_tree.AT_FDCWD, str(scratch / "p"))], stop) == [(0, [], False, True)]
    assert (scratch / "p" / "f0").exists()


# -- busy: completed means gone ---------------------------------------------------------


@pytest.fixture
def refill(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path, int], list[int]]:
    """A live writer that wins every race: one new file in the tree just before each rmdir of it.

    Its first ``times`` rmdirs of ``tree`` meet a fresh entry. It works on
    the Python twin, whose ``os.rmdir`` it wraps: the C walker cannot be
    made to lose the race on purpose.
    """

    def make(tree: Path, times: int) -> list[int]:
        monkeypatch.setattr(_tree, "walk_trees", _tree.pure_walk_trees)
        real, made = os.rmdir, [0]

        def rmdir(path: Any, *, dir_fd: int | None = None) -> None:
            if made[0] < times and os.path.join(*_name_of(path, dir_fd)) == str(tree):
                made[0] += 1
                (tree / f"written-{made[0]}").write_bytes(b"x")
            real(path, dir_fd=dir_fd)

        monkeypatch.setattr(os, "rmdir", rmdir)
        return made

    return make


def _name_of(path: Any, dir_fd: int | None) -> tuple[str, str]:
    parent = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else ""
    return parent, os.fsdecode(path)


@pytest.mark.parametrize("refills", [3, 1_000_000], ids=["writer-stops", "writer-goes-on"])
async def test_a_refilled_tree_is_walked_again_and_never_completed_while_there(
    scratch: Path,
    make_cleaner: MakeCleaner,
    refill: Callable[[Path, int], list[int]],
    refills: int,
) -> None:
    """A writer that stops within busy_timeout: completed, gone. One that goes on: busy, there."""
    tree = profile(scratch / "profile")
    made = refill(tree, refills)
    cleaner = make_cleaner(busy_timeout=0.5)
    cleaner.init_worker()
    cleaner.submit(fc.RemoveTree(tree))
    assert await cleaner.drain(timeout=10)
    await cleaner.shutdown()
    stats = cleaner.stats()
    if refills == 3:
        assert made[0] == 3 and not tree.exists()
        assert (stats.completed, stats.failed) == (1, 0)
    else:
        assert tree.exists() and made[0] >= 4  # walked again with backoff, refilled each time
        assert (stats.completed, stats.failed) == (0, 1)
        assert cleaner._tally.failed_by == {("remove_tree", "busy"): 1}


def test_remove_tree_retries_then_raises_busy(
    scratch: Path, refill: Callable[[Path, int], list[int]]
) -> None:
    tree = profile(scratch / "profile", files=10, depth=2)
    refill(tree, 1_000_000)
    start = time.monotonic()
    with pytest.raises(_tree.Busy) as caught:
        _tree.remove_tree(str(tree), None, busy_timeout=0.2)
    assert tree.exists() and time.monotonic() - start < 2
    assert caught.value.errno == errno.ENOTEMPTY and caught.value.filename == str(tree)
    assert "walks" in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"busy_timeout": -1}, ValueError),
        ({"busy_timeout": float("nan")}, ValueError),
        ({"busy_timeout": 5.0, "task_timeout": 5.0}, ValueError),
        ({"busy_timeout": "3"}, TypeError),
        ({"busy_timeout": True}, TypeError),
    ],
)
def test_busy_timeout_is_validated(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match="busy_timeout"):
        fc.Cleaner(registry=None, **kwargs)


def test_busy_timeout_defaults_below_task_timeout() -> None:
    assert fc.Cleaner(registry=None)._busy_timeout == _tree.DEFAULT_BUSY_TIMEOUT
    assert fc.Cleaner(registry=None, task_timeout=1.0)._busy_timeout == 0.5


# -- through a cleaner ------------------------------------------------------------------


async def test_a_burst_of_profiles_is_removed_through_the_cleaner(
    walk: Walk, scratch: Path, make_cleaner: MakeCleaner
) -> None:
    keep = precious(scratch / "outside")
    trees = [profile(scratch / f"p{k}", files=20, depth=3, lock_target=keep) for k in range(150)]
    cleaner = make_cleaner(allowed_roots=[scratch])
    cleaner.init_worker()
    for tree in trees:
        cleaner.submit(fc.RemoveTree(tree))
    assert await cleaner.drain(timeout=30)
    await cleaner.shutdown()
    assert os.listdir(scratch) == ["outside"] and len(os.listdir(keep)) == 5
    assert cleaner.stats().completed == 150


async def test_a_tree_gone_with_its_parent_is_completed_inside_roots_and_refused_outside(
    walk: Walk, scratch: Path, make_cleaner: MakeCleaner
) -> None:
    """As without roots: a tree already gone counts as completed; confinement still comes first."""
    (scratch / "root").mkdir()
    cleaner = make_cleaner(allowed_roots=[scratch / "root"])
    cleaner.init_worker()
    cleaner.submit(fc.RemoveTree(scratch / "root" / "gone" / "profile"))  # its parent is gone
    cleaner.submit(fc.RemoveTree(scratch / "elsewhere" / "gone" / "profile"))  # outside
    assert await cleaner.drain(timeout=30)
    await cleaner.shutdown()
    s = cleaner.stats()
    assert (s.completed, s.failed) == (1, 1)
    with pytest.raises(Refused):
        _tree.remove_tree(
            str(scratch / "elsewhere" / "gone" / "profile"), Roots([scratch / "root"])
        )
    _tree.remove_tree(str(scratch / "root" / "gone" / "profile"), Roots([scratch / "root"]))


async def test_a_failed_tree_is_logged_once_with_its_entries(
    walk: Walk,
    tmp_path: Path,
    make_cleaner: MakeCleaner,
    immutable: Callable[[Path], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "stuck").write_bytes(b"x")
    (tree / "other").write_bytes(b"x")
    immutable(tree / "sub" / "stuck")
    cleaner = make_cleaner()
    cleaner.init_worker()
    with caplog.at_level(logging.WARNING, logger="fastcleanup"):
        cleaner.submit(fc.RemoveTree(tree))
        assert await cleaner.drain(timeout=10)
    await cleaner.shutdown()
    assert cleaner._tally.failed_by == {("remove_tree", "error"): 1}
    assert not (tree / "other").exists()
    (line,) = [r.getMessage() for r in caplog.records if r.name == "fastcleanup"]
    assert str(tree / "sub" / "stuck") in line and os.strerror(errno.EPERM) in line, line
    assert line.startswith("remove_tree "), line  # the logger's name is the prefix


async def test_a_burst_of_failures_writes_a_bounded_number_of_lines(
    scratch: Path,
    make_cleaner: MakeCleaner,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """300 failures: ``limit`` lines, then one line saying how many were left out."""
    monkeypatch.setattr(_log.FAILURES, "limit", 10)
    monkeypatch.setattr(_log.FAILURES, "interval", 0.3)
    files = []
    for k in range(300):
        (scratch / f"file{k}").write_bytes(b"x")
        files.append(scratch / f"file{k}")
    handler = logging.StreamHandler(stream := _Lines())
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logger = logging.getLogger("fastcleanup")
    logger.addHandler(handler)
    try:
        cleaner = make_cleaner()
        cleaner.init_worker()
        for f in files:
            cleaner.submit(fc.RemoveTree(f))  # a file: NotADirectoryError
        assert await cleaner.drain(timeout=30)
        assert cleaner._tally.failed_by == {("remove_tree", "error"): 300}
        for _ in range(200):  # the summary comes when the interval ends
            if any("not logged" in line for line in stream.lines):
                break
            await asyncio.sleep(0.01)
        await cleaner.shutdown()
    finally:
        logger.removeHandler(handler)
    failures = [line for line in stream.lines if "failed (error)" in line]
    summaries = [line for line in stream.lines if "not logged" in line]
    assert len(failures) == 10, stream.lines
    assert summaries == [
        "fastcleanup: 290 more failure(s) not logged one by one: at most 10 "
        "lines per 0.3 s (the failed_total counters hold them all)"
    ]
    assert all(line.startswith("fastcleanup: remove_tree RemoveTree(") for line in failures)
    assert not any("fastcleanup: fastcleanup:" in line for line in stream.lines)
    assert all(f"[Errno {errno.ENOTDIR}]" in line for line in failures), failures


class _Lines:
    """A text stream that keeps the lines written to it."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.extend(line for line in text.splitlines() if line)
        return len(text)

    def flush(self) -> None:
        pass


def test_the_failure_log_resumes_after_its_interval() -> None:
    now = [100.0]
    records: list[str] = []

    class Sink(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("fastcleanup.test-failure-log")
    logger.propagate = False
    sink = Sink()
    logger.addHandler(sink)
    try:
        log = _log.FailureLog(logger, limit=3, interval=10.0, clock=lambda: now[0])
        for k in range(7):
            log.warning("line %d", k)
        assert records == ["line 0", "line 1", "line 2"]
        now[0] += 10.0
        log.warning("line %d", 7)
        assert records[3:] == [
            "4 more failure(s) not logged one by one: at most 3 lines per 10 s "
            "(the failed_total counters hold them all)",
            "line 7",
        ]
        log.flush()
        assert len(records) == 5  # nothing left out since: no summary
    finally:
        logger.removeHandler(sink)


def test_the_library_logs_at_most_100_failure_lines_a_minute() -> None:
    """The bound docs/reliability.md states, on the ``fastcleanup`` logger."""
    handler = logging.StreamHandler(stream := _Lines())
    logger = logging.getLogger("fastcleanup")
    logger.addHandler(handler)
    try:
        for k in range(150):  # well within a minute
            _log.FAILURES.warning("failure %d", k)
        _log.FAILURES.flush()
    finally:
        logger.removeHandler(handler)
    assert stream.lines == [f"failure {k}" for k in range(100)] + [
        "50 more failure(s) not logged one by one: at most 100 lines per 60 s "
        "(the failed_total counters hold them all)"
    ]


# -- size ---------------------------------------------------------------------------------


async def _removed_with_ticks(cleaner: fc.Cleaner, tree: Path) -> tuple[int, float]:
    """Remove ``tree``; count 1 ms ticks of the loop meanwhile and the longest gap."""
    ticks, gap = 0, 0.0
    cleaner.submit(fc.RemoveTree(tree))
    drained = asyncio.ensure_future(cleaner.drain(timeout=600))
    last = time.monotonic()
    while not drained.done():
        await asyncio.sleep(0.001)
        now = time.monotonic()
        ticks, gap, last = ticks + 1, max(gap, now - last), now
    assert await drained
    return ticks, gap


def _one_dir(where: Path, files: int) -> None:
    where.mkdir()
    _fill(where, files)


@pytest.mark.parametrize(
    "files",
    [
        20_000,
        pytest.param(
            1_000_000,
            marks=[
                pytest.mark.slow,
                pytest.mark.skipif(not LARGE, reason="FASTCLEANUP_LARGE=1 runs it"),
            ],
        ),
    ],
)
async def test_a_huge_directory_is_removed_with_the_loop_responsive(
    walk: Walk, scratch: Path, make_cleaner: MakeCleaner, files: int
) -> None:
    _one_dir(scratch / "huge", files)
    cleaner = make_cleaner(task_timeout=600)
    cleaner.init_worker()
    ticks, gap = await _removed_with_ticks(cleaner, scratch / "huge")
    await cleaner.shutdown()
    assert not (scratch / "huge").exists() and cleaner.stats().completed == 1
    # The loop kept turning while the walk ran on another thread; the bound
    # is loose (a shared machine), the point is that the walk never held it.
    assert ticks >= 3 and gap < 0.5, (ticks, gap)


def test_the_compiled_walk_runs_while_another_thread_holds_the_gil(
    walk: Walk, scratch: Path
) -> None:
    """README: trees are walked "in C without the GIL". A walker thread starts
    on 20,000 files in 20 directories and this thread takes the GIL at once
    and keeps it for about a second: the C walk ends meanwhile, the pure twin
    (which needs the GIL for every entry) is nowhere near done."""
    _one_dir(scratch / "tree", 1_000)
    for d in range(1, 20):
        _one_dir(scratch / "tree" / f"d{d}", 1_000)
    fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY)
    started, results = threading.Event(), []

    def walker() -> None:
        started.set()  # this thread keeps the GIL until the walk lets it go
        results.extend(walk([(fd, "tree")]))

    thread = threading.Thread(target=walker)
    thread.start()
    try:
        started.wait()  # returns once the walk has let the GIL go, or stepped aside
        hold_the_gil(1.0)
        gone = not os.path.lexists(scratch / "tree")  # the first call to let the GIL go
    finally:
        thread.join()
        os.close(fd)
    assert results == [(0, [], False, False)]
    if walk is _tree.pure_walk_trees:
        assert not gone  # the hold did keep the GIL: the twin, which needs it, was stalled
    else:
        assert gone, "the compiled walk did not finish while the GIL was held"


def test_shutil_cannot_remove_what_the_walker_can(scratch: Path) -> None:
    """The depth that made the old implementation fail is past Python's recursion limit."""
    deep(scratch / "deep", 1_500)
    if hasattr(shutil.rmtree, "avoids_symlink_attacks"):
        try:
            shutil.rmtree(scratch / "deep")
        except RecursionError:
            pass
        else:
            pytest.skip("this Python's rmtree walks iteratively (3.12.4+)")
    _tree.remove_tree(str(scratch / "deep"), None)
    assert os.listdir(scratch) == []


async def test_a_tree_past_task_timeout_times_out_and_its_walk_stops(
    scratch: Path, make_cleaner: MakeCleaner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A walk on slow storage: the task times out, and the walk ends soon after."""
    _one_dir(scratch / "slow", 2_000)
    (scratch / "quick").mkdir()
    removed = [0]
    real_unlink = os.unlink

    def slow_unlink(path: Any, *, dir_fd: int | None = None) -> None:
        time.sleep(0.001)  # storage at 1,000 files/s: two seconds for this tree
        real_unlink(path, dir_fd=dir_fd)
        removed[0] += 1

    monkeypatch.setattr(os, "unlink", slow_unlink)  # the twin walks: it sees this unlink
    cleaner = make_cleaner(task_timeout=0.3)
    cleaner.init_worker()
    cleaner.submit(fc.RemoveTree(scratch / "slow"))
    cleaner.submit(fc.RemoveTree(scratch / "quick"))
    assert await cleaner.drain(timeout=10)
    assert cleaner._tally.failed_by == {("remove_tree", "timeout"): 1}
    assert cleaner.stats().completed == 1 and not (scratch / "quick").exists()
    at_timeout = removed[0]
    await asyncio.sleep(0.1)
    assert removed[0] - at_timeout <= 5, (at_timeout, removed[0])  # stopped, not finishing
    assert len(os.listdir(scratch / "slow")) > 1_000
    await cleaner.shutdown()


def test_a_walk_whose_way_back_was_moved_away_goes_on_and_names_it(
    walk: Walk, scratch: Path
) -> None:
    """Deep in a walk, levels 5 and 12 move out of the tree.

    A thread moves them once the walk is busy with the 5,000 files at the
    bottom (on tmpfs a directory's size counts its entries). The closed
    ancestors cannot be reopened the way the walk came: it names the
    directory it lost, leaves what moved away alone, and removes the rest.
    """
    deep(scratch / "tree", 100)
    level = [str(scratch / "tree" / os.path.join(*["d"] * k)) for k in range(1, 101)]
    _fill(Path(level[-1]), 5_000)
    full = os.stat(level[-1]).st_size
    moved = threading.Event()

    def move() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if os.stat(level[-1]).st_size < full:
                os.rename(level[11], scratch / "moved-12")  # the deeper first: its path holds 5
                os.rename(level[4], scratch / "moved-5")
                moved.set()
                return
            time.sleep(0.0002)  # yield: a spinning thread would starve the walk

    mover = threading.Thread(target=move)
    mover.start()
    (result,) = walk([(_tree.AT_FDCWD, str(scratch / "tree"))])
    mover.join()
    if not moved.is_set():
        pytest.skip("the moving thread never caught the walk at the bottom")
    assert not (scratch / "tree").exists()
    failed, named, refilled, stopped = result
    assert (failed, refilled, stopped) == (1, False, False)
    assert named == [(os.path.join(*["d"] * 11), errno.ESTALE)]
    assert (scratch / "moved-5").is_dir() and (scratch / "moved-12").is_dir()


def _fill(where: Path, files: int) -> None:
    fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for k in range(files):
            os.close(os.open(f"f{k}", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
    finally:
        os.close(fd)
