"""The compiled file lane: C jobs that run and report without the GIL.

``_cbulk.Job`` and ``_cbulk.Pool`` directly, the lane's one property that
matters (its threads keep unlinking while the loop thread holds the GIL),
and a whole cleaner on the lane beside the same cleaner on the executor.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import fastcleanup as fc
from fastcleanup import _lane, _tasks, _unlink
from fastcleanup._paths import Roots, UnlinkJob
from tests.helpers import hold_the_gil

try:
    from fastcleanup import _cbulk
except ImportError:  # pragma: no cover - the extension is optional
    _cbulk = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(_cbulk is None, reason="fastcleanup._cbulk was not built")
# Built, but FASTCLEANUP_PURE_PYTHON=1 keeps a cleaner off the lane.
PURE_FORCED = "FASTCLEANUP_PURE_PYTHON is set: cleaners run the pure-Python path"


def make_files(where: Path, count: int, prefix: str = "f") -> list[str | bytes]:
    where.mkdir(parents=True, exist_ok=True)
    files: list[str | bytes] = [str(where / f"{prefix}{k:05d}") for k in range(count)]
    for f in files:
        Path(os.fsdecode(f)).touch()
    return files


# -- Job ----------------------------------------------------------------------------------


def test_a_job_removes_its_files_and_reports_each_failure(scratch: Path) -> None:
    files = make_files(scratch, 5)
    (scratch / "sub").mkdir()
    names: list[Any] = [
        files[0],
        str(scratch / "never-there"),  # already gone: a success
        str(scratch / "sub"),  # a directory: EISDIR, this entry only
        files[1],
        "bad\0name",  # no path: EINVAL
        42,  # no path either
        os.fsencode(files[2]),
        Path(os.fsdecode(files[3])),
        files[4],
    ]
    job = _cbulk.Job(names)
    assert (len(job), job.done, job.running, job.finished) == (9, 0, False, False)
    job.run()
    assert (job.done, job.finished, job.running, job.fallback_at) == (9, True, False, -1)
    assert job.failures() == [(2, errno.EISDIR), (4, errno.EINVAL), (5, errno.EINVAL)]
    assert sorted(os.listdir(scratch)) == ["sub"]


def test_a_confined_job_opens_parents_below_the_root(scratch: Path) -> None:
    files = make_files(scratch / "a" / "b", 300) + make_files(scratch / "c", 300)
    files += make_files(scratch, 3, prefix="top")  # the root itself as the parent
    files.append(str(scratch / "gone" / "deeper" / "x"))  # a missing parent: gone already
    job = _cbulk.Job(files, (str(scratch),))
    job.run()
    assert (job.done, job.fallback_at, job.failures()) == (len(files), -1, [])
    assert sorted(os.listdir(scratch)) == ["a", "c"]
    assert os.listdir(scratch / "a" / "b") == [] and os.listdir(scratch / "c") == []


def test_a_confined_job_holds_at_most_128_parents_open(scratch: Path) -> None:
    """300 parents, dealt round-robin: the parent cache is emptied and refilled."""
    dirs = [scratch / f"d{k:03d}" for k in range(300)]
    files = [str(d / f"f{i}") for i in range(3) for d in dirs]
    for d in dirs:
        d.mkdir()
    for f in files:
        Path(f).touch()
    before = len(os.listdir("/proc/self/fd"))
    job = _cbulk.Job(files, (str(scratch),))
    job.run()
    assert (job.done, job.failures()) == (len(files), [])
    assert all(not os.listdir(d) for d in dirs)
    assert len(os.listdir("/proc/self/fd")) == before  # every descriptor closed


def _traced(tmp_path: Path, syscalls: str, code: str, *args: str) -> list[str]:
    """The lines strace wrote for ``syscalls`` while ``code`` ran with ``args``."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    trace = tmp_path / "job.strace"
    command = [strace, "-f", "-qq", "-e", f"trace={syscalls}", "-o", str(trace)]
    proc = subprocess.run(
        [*command, sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0 and "ptrace" in proc.stderr:
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    return trace.read_text().splitlines()


def test_a_confined_job_opens_each_directory_below_the_root_once(
    scratch: Path, tmp_path: Path
) -> None:
    """The system calls of a confined job, traced: parents that share
    ancestors are walked to from the deepest one the job has opened, so each
    directory below the root is opened once (O_NOFOLLOW), not once per parent."""
    root = scratch / "root"
    deep = [root / "a" / "b" / f"c{k}" for k in range(5)]
    files = [str(d / f"f{i}") for i in range(2) for d in deep]  # dealt round-robin
    files += [str(root / "a" / "b" / "g"), str(root / "a" / "x" / "y" / "h")]
    for f in files:
        Path(f).parent.mkdir(parents=True, exist_ok=True)
        Path(f).touch()
    calls = _traced(tmp_path, "openat", _TRACED_CONFINED_JOB, str(root), *files)
    walked = [
        re.search(r'openat\((?:AT_FDCWD|\d+), "([^"]*)"', c)
        for c in calls
        if "O_NOFOLLOW" in c and "O_PATH" in c
    ]
    names = sorted(m.group(1) for m in walked if m is not None)
    # Without the ancestors kept, a, b and x would be opened once per parent below them.
    assert names == sorted([str(root), "a", "b", "x", "y", *(f"c{k}" for k in range(5))])
    assert [p for p in root.rglob("*") if p.is_file()] == []


_TRACED_CONFINED_JOB = """
import sys
from fastcleanup import _cbulk
job = _cbulk.Job(sys.argv[2:], (sys.argv[1],))
job.run()
sys.exit(str(job.failures()) if job.failures() or job.fallback_at >= 0 else 0)
"""


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pure-python"])
def test_a_confined_job_keeps_few_descriptors_whatever_the_tree(
    scratch: Path, compiled: bool
) -> None:
    """Ancestors kept for later walks are bounded too: 300 parents with 300
    distinct ancestors empty the cache several times, a parent 100 levels
    deep (too deep to keep its ancestors) is walked whole; every file goes,
    every descriptor is closed."""
    root = scratch / "root"
    spread = [root / f"a{k:03d}" / "b" for k in range(300)]
    deep = root.joinpath(*[f"d{k}" for k in range(100)])
    for d in [*spread, deep]:
        d.mkdir(parents=True)
    files: list[str | bytes] = [str(d / f"f{i}") for i in range(2) for d in spread]
    files[150:150] = [str(deep / "f0"), str(deep / "f1")]
    files.append(str(root / "a000" / "b" / "late"))  # after the cache was emptied
    for f in files:
        Path(os.fsdecode(f)).touch()
    before = len(os.listdir("/proc/self/fd"))
    if compiled:
        job = _cbulk.Job(files, (str(root),))
        job.run()
        assert (job.done, job.fallback_at, job.failures()) == (len(files), -1, [])
    else:
        pure = UnlinkJob(files, Roots([root]))
        pure()
        assert (pure.done, pure.errors) == (len(files), [])
    assert [p for p in root.rglob("*") if p.is_file()] == []
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_job_without_roots_closes_every_parent_it_opened(scratch: Path) -> None:
    """300 parents, three files each, dealt in runs and then round-robin."""
    dirs = [scratch / f"d{k:03d}" for k in range(300)]
    for d in dirs:
        d.mkdir()
    in_runs = [str(d / f"f{i}") for d in dirs for i in range(3)]
    dealt = [str(d / f"g{i}") for i in range(3) for d in dirs]
    for f in in_runs + dealt:
        Path(f).touch()
    before = len(os.listdir("/proc/self/fd"))
    for files in (in_runs, dealt):
        job = _cbulk.Job(files)
        job.run()
        assert (job.done, job.failures()) == (len(files), [])
    assert all(not os.listdir(d) for d in dirs)
    assert len(os.listdir("/proc/self/fd")) == before


_TRACED_JOB = """
import sys
from fastcleanup import _cbulk
job = _cbulk.Job(sys.argv[1:])
job.run()
sys.exit(str(job.failures()) if job.failures() else 0)
"""


def test_a_job_without_roots_opens_a_parent_only_for_its_second_file(
    scratch: Path, tmp_path: Path
) -> None:
    """The system calls of a job, traced: a file alone in its directory is
    unlinked by path with no open; a directory's second file opens it once
    (O_PATH), and its files from then on are unlinked by name from there."""
    alone = [str(scratch / f"a{d}" / "f") for d in range(5)]
    together = [str(scratch / "many" / f"f{i}") for i in range(5)]
    for f in alone + together:
        Path(f).parent.mkdir(exist_ok=True)
        Path(f).touch()
    calls = _traced(tmp_path, "openat,unlinkat", _TRACED_JOB, *alone, *together)
    opened = [c for c in calls if "O_PATH" in c and str(scratch) in c]
    assert len(opened) == 1 and f'"{scratch}/many"' in opened[0], opened
    by_path = [c for c in calls if f'unlinkat(AT_FDCWD, "{scratch}/' in c]
    assert len(by_path) == 6  # the five alone, and the first file of many/
    by_name = [c for c in calls if re.search(r'unlinkat\(\d+, "f[1-4]", 0\)\s*= 0', c)]
    assert len(by_name) == 4, calls
    assert [p for p in scratch.rglob("*") if p.is_file()] == []


def _plain_tree(base: Path) -> list[list[str]]:
    """Spellings of paths, a few per parent as spelled, for a job without roots."""
    real = base / "real"
    (real / "sub").mkdir(parents=True)
    for name in ("a", "b", "c", "d", "e", "f", "g", "h"):
        (real / name).touch()
    (base / "link").symlink_to(real)
    (base / "dangling").symlink_to(base / "nowhere")
    (base / "loop").symlink_to(base / "loop")
    (base / "file").touch()
    here = os.path.relpath(real)
    return [
        [f"{real}/a", f"{real}/b"],
        [f"{base}/link/c", f"{base}/link/d"],  # unlink(2) follows a symlinked parent
        [f"{real}//e", f"{base}//real/./f", f"{real}/../real/g"],
        [f"{here}/h", f"{here}/missing"],  # relative to the working directory
        [f"{base}/file/x", f"{base}/file/y"],  # ENOTDIR
        [f"{base}/dangling/x", f"{base}/gone/x", f"{base}/gone/y"],  # gone already
        [f"{base}/loop/x", f"{base}/loop/y"],  # ELOOP
        [f"{real}/sub", f"{real}/sub/", f"{real}/.", f"{real}/.."],  # directories
        ["top-a", "top-b"],  # no slash at all
    ]


def test_a_job_without_roots_does_what_unlink_by_path_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each group alone, then every group dealt round-robin: the C job (which
    unlinks by a parent's descriptor from its second file on) and a plain
    ``os.unlink`` loop leave the same files and report the same errnos."""
    monkeypatch.chdir(tmp_path)
    probe = _plain_tree(tmp_path / "probe")
    seen: set[int] = set()
    for mix in [*range(len(probe)), None]:
        outcomes = []
        for compiled in (True, False):
            base = tmp_path / f"{mix}-{compiled}"
            base.mkdir()
            monkeypatch.chdir(base)
            groups = _plain_tree(base)
            Path("top-a").touch()
            Path("top-b").touch()
            if mix is None:
                paths = [g[i] for i in range(4) for g in groups if i < len(g)]
            else:
                paths = groups[mix]
            if compiled:
                job = _cbulk.Job(paths)
                job.run()
                failures = job.failures()
            else:
                failures = _unlink.pure_unlinkat_many(None, paths, array("q", [0, 0]))
            left = sorted(str(p.relative_to(base)) for p in base.rglob("*"))
            outcomes.append((left, failures))
        assert outcomes[0] == outcomes[1], f"group {mix}"
        seen.update(code for _, code in outcomes[0][1])
    assert {errno.ENOTDIR, errno.ELOOP, errno.EISDIR} <= seen


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    where = tmp_path / "outside"
    where.mkdir()
    (where / "victim").touch()
    return where


def _spellings(scratch: Path, outside: Path) -> Iterator[tuple[str, str]]:
    """Paths under the root ``scratch`` that are not plainly spelled, each with why."""
    (scratch / "real").mkdir()
    (scratch / "real" / "victim").touch()
    (scratch / "in-link").symlink_to(scratch / "real")
    (scratch / "out-link").symlink_to(outside)
    (scratch / "loop").symlink_to(scratch / "loop")
    (scratch / "plain-file").touch()
    (scratch / ".hidden").mkdir()
    (scratch / ".hidden" / "victim").touch()
    yield "a symlink to a directory inside", str(scratch / "in-link" / "victim")
    yield "a symlink to a directory outside", str(scratch / "out-link" / "victim")
    yield "a missing directory behind a symlink", str(scratch / "in-link" / "gone" / "victim")
    yield "a symlink loop", str(scratch / "loop" / "victim")
    yield "a '..' component", str(scratch / "real" / ".." / "real" / "victim")
    yield "'..' out of the root", str(scratch / "real" / ".." / ".." / "outside" / "victim")
    yield "a '.' component", str(scratch) + "/./real/victim"  # (pathlib would drop it)
    yield "a hidden directory", str(scratch / ".hidden" / "victim")
    yield "a doubled slash", str(scratch) + "//real/victim"
    yield "a doubled slash before the name", str(scratch / "real") + "//victim"
    yield "a relative path", os.path.relpath(scratch / "real" / "victim")
    yield "outside every root", str(outside / "victim")
    yield "a file where a directory should be", str(scratch / "plain-file" / "victim")
    yield "a name that is '..'", str(scratch / "real" / "..")


# What the C side leaves to the Python resolver; it decides every other spelling.
HANDED_OVER = {
    "a missing directory behind a symlink",  # realpath(3) fails where Python's goes on
    "a symlink loop",
    "a doubled slash before the name",
    "a name that is '..'",
}


def _sandbox(base: Path) -> tuple[Path, list[tuple[str, str]]]:
    root, outside = base / "root", base / "outside"
    root.mkdir(parents=True)
    outside.mkdir()
    (outside / "victim").touch()
    return root, list(_spellings(root, outside))


def _outcome(
    base: Path, root: Path, paths: list[str | bytes], compiled: bool
) -> tuple[set[str], list[tuple[int, str, int | None]]]:
    """What is left under ``base``, and each failure, after removing ``paths``.

    ``compiled``: a LaneJob run here, and the rest through UnlinkJob from
    where it handed over, as the batch worker does.
    """
    roots = Roots([root])
    errors: list[tuple[int, OSError]]
    if compiled:
        job = _lane.LaneJob(paths, roots)
        job.c.run()
        errors = job.errors
        if job.fallback_at >= 0:
            rest = UnlinkJob(paths[job.fallback_at :], roots)
            rest()
            errors += [(job.fallback_at + k, err) for k, err in rest.errors]
    else:
        pure = UnlinkJob(paths, roots)
        pure()
        errors = pure.errors
    left = {
        os.path.relpath(os.path.join(d, n), base) for d, ds, fs in os.walk(base) for n in ds + fs
    }
    return left, [(k, type(err).__name__, err.errno) for k, err in errors]


def test_a_confined_job_decides_each_path_as_the_python_resolver_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every spelling, between two plain paths, on the C job and on UnlinkJob: the same
    files go, the same ones stay, the same errors (refused, ENOTDIR, ELOOP) come back."""
    monkeypatch.chdir(tmp_path)  # the relative spelling resolves the same for both
    count = len(_sandbox(tmp_path / "probe")[1])
    for k in range(count):
        outcomes = []
        for compiled in (True, False):
            base = tmp_path / f"{k}-{compiled}"
            root, cases = _sandbox(base)
            why, path = cases[k]
            (root / "ok").mkdir(exist_ok=True)
            before, after = str(root / "ok" / "before"), str(root / "ok" / "after")
            Path(before).touch()
            Path(after).touch()
            outcomes.append(_outcome(base, root, [before, path, after], compiled))
        assert outcomes[0] == outcomes[1], why
        assert "root/ok/before" not in outcomes[0][0] and "root/ok/after" not in outcomes[0][0]


def test_a_confined_job_with_every_spelling_at_once_decides_as_the_python_resolver_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All spellings in one job, among files deeper in the same directories, so
    that walks start from ancestors that earlier entries opened: the C job (with
    the Python resolver from where it hands over) and UnlinkJob agree."""
    monkeypatch.chdir(tmp_path)
    outcomes = []
    for compiled in (True, False):
        base = tmp_path / f"all-{compiled}"
        root, cases = _sandbox(base)
        deeper = [root / "real" / "sub" / "deeper", root / ".hidden" / "sub", root / "x" / "y"]
        plain = make_files(deeper[0], 4) + make_files(deeper[1], 4) + make_files(deeper[2], 4)
        decided = [path for why, path in cases if why not in HANDED_OVER]
        handed = [path for why, path in cases if why in HANDED_OVER]
        paths: list[str | bytes] = []
        for k, path in enumerate(decided):
            paths += [plain[k % len(plain)], path]
        paths += plain[len(decided) :]
        paths += handed
        outcomes.append(_outcome(base, root, paths, compiled))
        assert not any(os.path.exists(os.fsdecode(p)) for p in plain)
    assert outcomes[0] == outcomes[1]


def test_a_confined_job_hands_over_only_what_it_cannot_resolve(tmp_path: Path) -> None:
    for k, (why, path) in enumerate(_sandbox(tmp_path)[1]):
        root = tmp_path / "root"
        before, after = make_files(root / "ok", 2, prefix=f"{k}-")
        job = _cbulk.Job([before, path, after], (str(root),))
        job.run()
        if why in HANDED_OVER:
            assert (job.done, job.fallback_at) == (1, 1), why
            assert os.path.exists(after), why
        else:
            assert (job.done, job.fallback_at) == (3, -1), why
            assert not os.path.exists(after), why
        assert not os.path.exists(before), why
    assert (tmp_path / "outside" / "victim").exists()


def test_a_job_refuses_bad_arguments() -> None:
    with pytest.raises(TypeError, match="list or tuple"):
        _cbulk.Job("/tmp/x")
    with pytest.raises(TypeError, match="roots must be None or a tuple"):
        _cbulk.Job([], ["/tmp"])  # type: ignore[arg-type]
    for root in ("relative", "/tmp/", ""):
        with pytest.raises(ValueError, match="absolute, resolved directory"):
            _cbulk.Job([], (root,))
    with pytest.raises(ValueError, match="null"):
        _cbulk.Job([], ("/t\0mp",))
    with pytest.raises(ValueError, match="empty"):
        _cbulk.Job([], ())


def test_a_job_runs_once(scratch: Path) -> None:
    job = _cbulk.Job(make_files(scratch, 2))
    job.run()
    with pytest.raises(RuntimeError, match="already been started"):
        job.run()
    with pytest.raises(RuntimeError, match="already been started"):
        _cbulk.Pool().put(job)


def test_a_job_stopped_before_it_starts_touches_nothing(scratch: Path) -> None:
    files = make_files(scratch, 3)
    job = _cbulk.Job(files)
    job.stop = True
    assert not job.wait(0.01)
    job.run()
    assert (job.done, job.finished, job.stop) == (0, True, True)
    assert job.wait(0) and job.wait(None)
    assert all(os.path.exists(f) for f in files)


def test_stop_from_another_thread_ends_a_running_job(scratch: Path) -> None:
    """What the loop's watchdog does to a job stuck on one file: the rest is not started."""
    names = [str(scratch / f"missing-{k}") for k in range(200_000)]  # ~1 us each
    job = _cbulk.Job(names)
    runner = threading.Thread(target=job.run)
    runner.start()
    deadline = time.monotonic() + 30
    while not job.done and time.monotonic() < deadline:
        time.sleep(0.0005)
    job.stop = True
    assert job.wait(30)
    runner.join(30)
    assert 0 < job.done < len(names), job.done
    assert job.failures() == [] and job.fallback_at == -1


# -- Pool ---------------------------------------------------------------------------------


def test_a_pool_runs_jobs_on_its_threads_and_signals_each_end(scratch: Path) -> None:
    pool = _cbulk.Pool()
    threads = [threading.Thread(target=pool.serve, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    jobs = [_cbulk.Job(make_files(scratch / f"d{k}", 50)) for k in range(20)]
    for job in jobs:
        pool.put(job)
    seen: list[Any] = []
    deadline = time.monotonic() + 30
    while len(seen) < len(jobs) and time.monotonic() < deadline:
        readable, _, _ = select.select([pool.fileno()], [], [], 1.0)
        if readable:
            seen += pool.completed()
    assert sorted(map(id, seen)) == sorted(map(id, jobs))
    assert all(j.finished and j.done == 50 and not j.failures() for j in jobs)
    assert all(not os.listdir(scratch / f"d{k}") for k in range(20))
    assert select.select([pool.fileno()], [], [], 0)[0] == []  # completed() reset it
    pool.close()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        pool.put(_cbulk.Job([]))


def test_a_closed_pool_still_runs_what_was_queued(scratch: Path) -> None:
    pool = _cbulk.Pool()
    jobs = [_cbulk.Job(make_files(scratch / f"d{k}", 10)) for k in range(3)]
    for job in jobs:
        pool.put(job)
    pool.close()
    pool.serve()  # returns once the queue is empty
    assert [j.done for j in jobs] == [10, 10, 10]
    assert len(pool.completed()) == 3


def test_the_lane_unlinks_while_the_loop_thread_holds_the_gil(scratch: Path) -> None:
    """The whole point of the lane: its threads need no GIL to take, run or end a job.

    The job is queued and this thread then holds the GIL for about half a
    second: the lane takes the job and finishes all 4,000 files meanwhile.
    A thread that needs the GIL to take a job or between chunks (as
    ``UnlinkJob`` on the executor does) gets a chunk or two done at most.
    """
    files = make_files(scratch, 4000)
    lane = _lane.FileLane(1, "test")
    loop = asyncio.new_event_loop()
    try:
        job = _lane.LaneJob(files, None)
        lane.start(job, loop.create_future())
        before = job.done
        hold_the_gil(0.5)
        during = job.done - before
    finally:
        lane.close()
        loop.close()
    assert job.wait(30)
    assert before < len(files) // 2, "the job was over before the GIL was held: no evidence"
    assert during == len(files) - before, f"only {during} files while the GIL was held"
    assert not os.listdir(scratch)


# -- a cleaner on the lane, beside the same cleaner on the executor ------------------------


@pytest.fixture(params=["lane", "executor"])
def file_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Which way a cleaner's file jobs go: a replaced os.unlink turns the lane off."""
    if request.param == "lane" and not _unlink.COMPILED:
        pytest.skip(PURE_FORCED)
    started: list[int] = []
    real_start = _lane.FileLane.start

    def counting_start(self: _lane.FileLane, job: _lane.LaneJob, fut: Any) -> None:
        started.append(len(job.paths))
        real_start(self, job, fut)

    monkeypatch.setattr(_lane.FileLane, "start", counting_start)
    if request.param == "executor":
        real_unlink = os.unlink

        def unlink(path: Any, *, dir_fd: int | None = None) -> None:
            real_unlink(path, dir_fd=dir_fd)

        monkeypatch.setattr(os, "unlink", unlink)
    yield request.param
    assert bool(started) == (request.param == "lane"), started


async def test_a_confined_cleaner_gives_the_same_outcome_on_both_paths(
    file_path: str,
    scratch: Path,
    outside: Path,
    make_cleaner: Callable[..., fc.Cleaner],
    registry: CollectorRegistry,
) -> None:
    cases = list(_spellings(scratch, outside))
    plain = make_files(scratch / "many", 3000)
    c = make_cleaner(allowed_roots=[scratch])
    c.init_worker()
    for p in plain[:1500] + [path for _, path in cases] + plain[1500:]:
        c.submit(fc.RemoveFile(p))
    (scratch / "a-dir").mkdir()
    c.submit(fc.RemoveFile(str(scratch / "a-dir")))
    assert await c.drain(timeout=60)
    stats = c.stats()
    assert not os.listdir(scratch / "many")
    # Removed through the symlink inside the root, "..", "." and "//" (all the same file):
    assert not (scratch / "real" / "victim").exists()
    assert (outside / "victim").exists()
    assert (scratch / "a-dir").is_dir() and (scratch / "plain-file").exists()
    # Refused: the link out, ".." out of the root, the path outside, and "real/.."
    # (it names the root's own entry in its parent). Errors: the symlink loop, a file
    # used as a directory, and the directory. Completed: the 3,000, the missing
    # directory behind the link, the hidden victim and the six spellings of
    # real/victim (one removes it).
    failed = {
        reason: registry.get_sample_value(
            "fastcleanup_failed_total",
            {"cleaner": c.name, "task": "remove_file", "reason": reason},
        )
        for reason in ("refused", "error")
    }
    assert (stats.completed, failed) == (3008, {"refused": 4.0, "error": 3.0}), (stats, failed)


async def test_a_burst_goes_to_the_lane_in_large_jobs(
    file_path: str, scratch: Path, make_cleaner: Callable[..., fc.Cleaner]
) -> None:
    files = make_files(scratch, 5000)
    c = make_cleaner()
    c.init_worker()
    for p in files:
        c.submit(fc.RemoveFile(p))
    assert await c.drain(timeout=60)
    assert (c.stats().completed, c.stats().failed) == (5000, 0)
    assert not os.listdir(scratch)


@pytest.mark.skipif(not _unlink.COMPILED, reason=PURE_FORCED)
def test_the_lane_threads_are_named_after_the_cleaner() -> None:
    async def main() -> list[str]:
        c = fc.Cleaner(name="crawl", registry=None).init_worker()
        try:
            return sorted(t.name for t in threading.enumerate() if "crawl" in t.name)
        finally:
            await c.shutdown()

    names = asyncio.run(main())
    assert [n for n in names if "-lane-" in n] == [
        "fastcleanup-crawl-lane-0",
        "fastcleanup-crawl-lane-1",
    ], names
    assert sys.modules["fastcleanup._cbulk"] is _cbulk


@pytest.mark.skipif(not _unlink.COMPILED, reason="the compiled module is not built")
@pytest.mark.parametrize("build", ["compiled", "pure"])
async def test_a_file_burst_sets_off_no_garbage_collection(
    build: str, scratch: Path, make_cleaner: Callable[..., fc.Cleaner]
) -> None:
    """A burst of 30,000 removals from submit to drain runs no collection on
    the loop thread (a full one costs ~10 ms here); the pure-Python class,
    the control, sets off dozens."""
    remove_file = fc.RemoveFile if build == "compiled" else _tasks.PurePythonRemoveFile
    paths = [str(scratch / f"gone-{i}") for i in range(30_000)]  # already gone: completed
    c = make_cleaner()
    c.init_worker()
    await asyncio.sleep(0)
    runs: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            runs.append(info["generation"])

    gc.collect()
    gc.callbacks.append(seen)
    try:
        for i in range(0, len(paths), 256):
            for p in paths[i : i + 256]:
                c.submit(remove_file(p))
            await asyncio.sleep(0)
        assert await c.drain(timeout=60)
    finally:
        gc.callbacks.remove(seen)
    assert (c.stats().completed, c.stats().failed) == (30_000, 0)
    if build == "compiled":
        assert runs == []
    else:
        assert len(runs) > 20


YIELD_COUNTER = r"""
#define _GNU_SOURCE
#include <stdatomic.h>
#include <sys/syscall.h>
#include <unistd.h>

static atomic_long yields;

/* Interposed on the extension's sched_yield (LD_PRELOAD): counted, then done. */
int sched_yield(void) {
    atomic_fetch_add(&yields, 1);
    return (int)syscall(SYS_sched_yield);
}

long fc_test_yields(void) { return atomic_load(&yields); }
"""

YIELD_CHILD = """
import ctypes, os, sys
from fastcleanup import _cbulk

count = ctypes.CDLL(None).fc_test_yields
where = sys.argv[1]
for n in (31, 32, 1000, 1024):
    paths = [os.path.join(where, f"{n}-{k}") for k in range(n)]
    for p in paths:
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o600))
    job = _cbulk.Job(paths, None)
    before = count()
    job.run()
    print(n, count() - before, sum(map(os.path.exists, paths)))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD and glibc")
def test_a_job_yields_its_cpu_every_32_files(tmp_path: Path) -> None:
    """docs/benchmarks.md: every 32 files a lane thread yields its CPU, so a woken loop
    thread never waits long for one. sched_yield is counted by a shim
    preloaded into a child; the job runs in the child's thread, as a lane
    thread runs it."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler for the counting shim")
    (tmp_path / "shim.c").write_text(YIELD_COUNTER)
    shim = tmp_path / "shim.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O1", "-o", str(shim), str(tmp_path / "shim.c")],
        check=True,
    )
    (tmp_path / "files").mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", YIELD_CHILD, str(tmp_path / "files")],
        # After what is preloaded already: a sanitizer's runtime must stay first.
        env={**os.environ, "LD_PRELOAD": f"{os.environ.get('LD_PRELOAD', '')} {shim}".strip()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # Files in the job, yields during it, files left: one yield per 32 removed.
    assert proc.stdout.split("\n")[:4] == ["31 0 0", "32 1 0", "1000 31 0", "1024 32 0"]
