"""ScratchDir and sweep: what SIGKILLed processes leave is removed at the next start.

Real child processes (``tests/scratch_child.py``) own the directories; they
are killed with SIGKILL mid-burst, or stay alive, or race with each other.
Every check is on the file system and the counters, never on a sleep.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import fastcleanup as fc
from fastcleanup import _sweep as protocol
from tests.conftest import loop_factory
from tests.torture_helpers import report, scale

MakeCleaner = Callable[..., fc.Cleaner]

ROOT = Path(__file__).resolve().parent.parent
CHILD = ROOT / "tests" / "scratch_child.py"
GUIDE = ROOT / "docs" / "guides" / "scratch.md"
TIMEOUT = 30.0

KILLED = scale(3, 12)  # children SIGKILLed mid-burst per loop
BURST = scale(200, 2000)  # files each has made when it reports ready (it goes on until killed)
LIVE_FILES = scale(100, 1000)
RACERS = scale(3, 3)
SWEEPERS = 2  # processes that do nothing but sweep, as fast as they can
ROUNDS = scale(40, 300)


class Child:
    """``scratch_child.py MODE BASE ARGS`` with its stdout lines; killed and reaped at the end."""

    def __init__(self, *args: object) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), *map(str, args)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._buffer = b""

    def line(self) -> str:
        """The next line it printed (read unbuffered: select() must see what is left)."""
        out = self.proc.stdout
        assert out is not None
        deadline = time.monotonic() + TIMEOUT
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([out], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(out.fileno(), 65536) if ready else b""
            assert chunk, f"child {self.proc.args!r} said nothing (exit status {self.proc.poll()})"
            self._buffer += chunk
        text, self._buffer = self._buffer.split(b"\n", 1)
        return text.decode()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(TIMEOUT)

    def end(self) -> None:
        """Close its stdin (a live child then exits normally) and reap it."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.kill()
            if self.proc.stdout is not None:
                self.proc.stdout.close()


@pytest.fixture
def children() -> Iterator[Callable[..., Child]]:
    made: list[Child] = []

    def start(*args: object) -> Child:
        made.append(Child(*args))
        return made[-1]

    yield start
    for child in made:
        child.end()


def scratch_dirs(base: Path) -> list[Path]:
    """The directories under ``base`` that carry a scratch name, in any state."""
    names = (protocol._IN_USE, protocol._NEW, protocol._DEAD)
    return sorted(p for p in base.iterdir() if any(r.fullmatch(p.name) for r in names))


def files_in(tree: Path) -> int:
    """Non-directory entries in ``tree``, its lock file left out (what the sweep counts)."""
    n = sum(len(files) for _, _, files in os.walk(tree))
    return n - (tree / protocol.LOCK).exists()


def swept(registry: CollectorRegistry, cleaner: fc.Cleaner, what: str) -> float:
    labels = {"cleaner": cleaner.name, "type": what}
    value = registry.get_sample_value("fastcleanup_swept_total", labels) or 0.0
    if what == "directory":  # Stats.swept is the metric's directory count
        assert cleaner.stats().swept == value
    return value


def decoys(base: Path, outside: Path) -> list[Path]:
    """Entries under ``base`` the sweep must leave alone, whatever their names."""
    outside.mkdir()
    (outside / "precious").write_text("not a leftover")
    hexa = "0123456789abcdef"
    made = [base / "not-ours", base / f"fastcleanup-1-{hexa}", base / f"fastcleanup-2-{hexa}"]
    made[0].mkdir()
    (made[0] / "data").write_text("x")
    made[1].symlink_to(outside, target_is_directory=True)  # a symlink under a scratch name
    made[2].write_text("a file under a scratch name")
    no_lock = base / f"fastcleanup-3-{hexa}"  # in-use name without a lock file: not ours
    no_lock.mkdir()
    return [*made, no_lock]


# -- SIGKILL mid-burst, the next start, a live neighbour ---------------------------


async def test_next_start_removes_what_sigkilled_children_left_and_no_live_file(
    scratch: Path,
    make_cleaner: MakeCleaner,
    registry: CollectorRegistry,
    children: Callable[..., Child],
    loop_kind: str,
) -> None:
    base = scratch / "base"
    live = children("live", base, LIVE_FILES)
    killed = [children("burst", base, BURST, loop_kind) for _ in range(KILLED)]
    live_dir = Path(live.line().split(" ", 1)[1])
    # All ready before any is killed: each start sweeps, and would take a
    # neighbour that died before it.
    assert all(child.line().startswith("ready ") for child in killed)
    for child in killed:
        child.kill()
    kept = decoys(base, scratch / "outside")
    dead = [d for d in scratch_dirs(base) if d != live_dir and d.is_dir() and not d.is_symlink()]
    dead = [d for d in dead if (d / protocol.LOCK).exists()]
    assert len(dead) == KILLED
    left = sum(files_in(d) for d in dead)
    assert left >= KILLED * BURST  # temp files, a tree, a staging file, with removals queued
    live_before = sorted(os.listdir(live_dir))
    live_files = files_in(live_dir)
    assert live_files == LIVE_FILES

    cleaner = make_cleaner()
    fc.sweep(base, cleaner=cleaner)  # registered: the start sweeps
    cleaner.init_worker()
    assert await cleaner.drain(timeout=TIMEOUT)

    assert not any(d.exists() for d in dead)
    assert sorted(os.listdir(live_dir)) == live_before
    assert all(map(os.path.lexists, kept))
    assert (scratch / "outside" / "precious").read_text() == "not a leftover"
    assert swept(registry, cleaner, "directory") == KILLED
    assert swept(registry, cleaner, "file") == left
    stats = cleaner.stats()
    assert (stats.submitted, stats.completed, stats.failed) == (1, 1, 0)
    assert (
        registry.get_sample_value(
            "fastcleanup_completed_total", {"cleaner": cleaner.name, "task": "sweep"}
        )
        == 1.0
    )

    # A process that ends normally removes its own directory: nothing to sweep.
    live.end()
    assert live.proc.returncode == 0
    assert live_dir.name not in os.listdir(base)
    await cleaner.shutdown()
    report(
        "sigkill_mid_burst",
        loop=loop_kind,
        killed=KILLED,
        files_left=left,
        files_after=sum(files_in(d) for d in dead if d.exists()),
        live_files_untouched=live_files,
    )


async def test_two_cleaners_sweeping_one_base_count_each_directory_once(
    scratch: Path,
    make_cleaner: MakeCleaner,
    registry: CollectorRegistry,
    children: Callable[..., Child],
) -> None:
    base = scratch / "base"
    n = scale(20, 200)
    assert children("abandon", base, n).line() == "done"
    assert len(scratch_dirs(base)) == n
    cleaners = [make_cleaner(), make_cleaner()]
    for c in cleaners:
        fc.sweep(base, cleaner=c)
        c.init_worker()
    for c in cleaners:
        assert await c.drain(timeout=TIMEOUT)
        assert c.stats().failed == 0
    assert scratch_dirs(base) == []
    assert sum(swept(registry, c, "directory") for c in cleaners) == n
    assert sum(swept(registry, c, "file") for c in cleaners) == n
    report("two_cleaners_one_base", directories=n, counted=n)


def test_every_later_start_sweeps_again(
    scratch: Path,
    make_cleaner: MakeCleaner,
    registry: CollectorRegistry,
    children: Callable[..., Child],
    loop_kind: str,
) -> None:
    """A base registered once is swept at each init_worker(): a process that
    died after the first start is swept at the next, on a new loop."""
    base = scratch / "base"
    assert children("abandon", base, 1).line() == "done"
    first = scratch_dirs(base)
    assert len(first) == 1
    cleaner = make_cleaner()
    fc.sweep(base, cleaner=cleaner)

    async def start_and_stop() -> fc.Stats:
        cleaner.init_worker()
        assert await cleaner.drain(timeout=TIMEOUT)
        stats = cleaner.stats()
        await cleaner.shutdown()
        return stats

    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        stats = runner.run(start_and_stop())
    assert scratch_dirs(base) == []
    assert (stats.completed, stats.failed) == (1, 0), stats
    assert (swept(registry, cleaner, "directory"), swept(registry, cleaner, "file")) == (1, 1)

    # Between the two starts another process dies and leaves two files behind.
    assert children("abandon", base, 1).line() == "done"
    (second,) = scratch_dirs(base)
    (second / "more").touch()
    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        stats = runner.run(start_and_stop())
    assert not second.exists()
    assert (stats.completed, stats.failed) == (2, 0), stats
    assert (swept(registry, cleaner, "directory"), swept(registry, cleaner, "file")) == (2, 3)
    labels = {"cleaner": cleaner.name, "task": "sweep"}
    assert registry.get_sample_value("fastcleanup_completed_total", labels) == 2.0


def test_sweep_runs_at_once_on_a_running_cleaner_and_once_per_base_at_each_start(
    scratch: Path, make_cleaner: MakeCleaner, registry: CollectorRegistry, loop_kind: str
) -> None:
    """``fc.sweep(base)`` on a running cleaner sweeps now; a base registered
    several times (however spelled) is still one ``sweep`` task per start."""
    a, b = scratch / "a", scratch / "b"
    a.mkdir()
    b.mkdir()

    def leftover(base: Path, n: int) -> Path:
        """A dead process's scratch directory: its lock file, held by nobody."""
        d = base / f"fastcleanup-{n}-{n:016x}"
        d.mkdir()
        (d / protocol.LOCK).touch()
        (d / "page.part").touch()
        return d

    cleaner = make_cleaner()
    labels = {"cleaner": cleaner.name, "task": "sweep"}

    def sweeps() -> float:
        return registry.get_sample_value("fastcleanup_completed_total", labels) or 0.0

    async def running() -> None:
        cleaner.init_worker()
        assert await cleaner.drain(timeout=TIMEOUT)
        assert cleaner.stats().submitted == 0  # nothing registered: nothing to sweep
        dead = leftover(a, 1)
        fc.sweep(a, cleaner=cleaner)  # the cleaner runs: the sweep is submitted now
        assert await cleaner.drain(timeout=TIMEOUT)
        assert not dead.exists()
        await cleaner.shutdown()

    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        runner.run(running())
    assert sweeps() == 1
    assert swept(registry, cleaner, "directory") == 1

    fc.sweep(a / ".." / "a", cleaner=cleaner)  # the same base again, spelled otherwise
    fc.sweep(b, cleaner=cleaner)
    assert cleaner.stats().submitted == 1  # stopped: nothing submitted until the start
    dead = [leftover(a, 2), leftover(b, 3)]

    async def restart() -> None:
        cleaner.init_worker()
        assert await cleaner.drain(timeout=TIMEOUT)
        await cleaner.shutdown()

    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        runner.run(restart())
    assert not any(d.exists() for d in dead)
    assert sweeps() == 3  # one per base, a and b
    assert cleaner._tally.taken_by == {"sweep": 3}
    assert (swept(registry, cleaner, "directory"), swept(registry, cleaner, "file")) == (3, 3)


async def test_the_sweep_is_confined_to_base_whatever_allowed_roots_say(
    scratch: Path,
    make_cleaner: MakeCleaner,
    registry: CollectorRegistry,
    children: Callable[..., Child],
) -> None:
    """allowed_roots elsewhere: the sweep of base still removes what dead
    processes left there, and touches nothing outside base, not even a dead
    process's directory inside the allowed root."""
    base, elsewhere = scratch / "base", scratch / "elsewhere"
    assert children("abandon", base, 2).line() == "done"
    assert children("abandon", elsewhere, 1).line() == "done"
    dead = scratch_dirs(base)
    assert len(dead) == 2
    (not_base,) = scratch_dirs(elsewhere)
    kept = decoys(base, scratch / "outside")
    cleaner = make_cleaner(allowed_roots=[elsewhere])  # base lies outside every root
    fc.sweep(base, cleaner=cleaner)
    cleaner.init_worker()
    assert await cleaner.drain(timeout=TIMEOUT)

    assert not any(d.exists() for d in dead)
    assert scratch_dirs(elsewhere) == [not_base] and (not_base / "left").exists()
    assert all(map(os.path.lexists, kept))
    assert (scratch / "outside" / "precious").read_text() == "not a leftover"
    assert (swept(registry, cleaner, "directory"), swept(registry, cleaner, "file")) == (2, 2)
    stats = cleaner.stats()
    assert (stats.submitted, stats.completed, stats.failed) == (1, 1, 0), stats
    await cleaner.shutdown()


def test_many_starts_and_sweeps_at_once_never_remove_a_live_directory(
    scratch: Path, children: Callable[..., Child]
) -> None:
    # Every racer starts scratch directories, abandons others (a forked child
    # that dies) and sweeps with no grace for in-creation names, at once.
    base = scratch / "base"
    base.mkdir()
    sweepers = [children("sweeper", base) for _ in range(SWEEPERS)]
    racers = [children("race", base, ROUNDS) for _ in range(RACERS)]
    summaries = [json.loads(r.line()) for r in racers]
    (base / "stop").touch()
    summaries += [{**json.loads(s.line()), "lost": [], "abandoned": 0} for s in sweepers]
    (base / "stop").unlink()
    names: list[str] = []
    final = protocol.sweep_sync(str(base), lambda name, files: names.append(name))
    assert final == []
    for s in summaries:
        assert s["lost"] == [], s["lost"]
        assert s["errors"] == [], s["errors"]
        names += s["swept"]
    assert len(names) == len(set(names)), "a directory was counted by two sweepers"
    abandoned = sum(s["abandoned"] for s in summaries)
    # Every dead owner's directory is swept once; the rest are creations
    # a sweeper claimed mid-way (the creator then started again).
    assert sum(bool(protocol._IN_USE.fullmatch(n)) for n in names) == abandoned
    assert all(protocol._IN_USE.fullmatch(n) or protocol._NEW.fullmatch(n) for n in names)
    assert scratch_dirs(base) == []
    report(
        "scratch_race",
        racers=RACERS,
        sweepers=SWEEPERS,
        sweeps=sum(s.get("sweeps", 0) for s in summaries),
        rounds=ROUNDS,
        abandoned=abandoned,
        claimed_in_creation=len(names) - abandoned,
        live_lost=0,
    )


# -- fork -------------------------------------------------------------------------


def test_fork_child_gets_its_own_directory_and_does_not_keep_the_parent_s(
    scratch: Path, children: Callable[..., Child]
) -> None:
    base = scratch / "base"
    pair = children("fork", base)
    lines = dict(pair.line().split(" ", 1) for _ in range(2))
    parent, child = Path(lines["parent"]), Path(lines["child"])
    assert parent != child
    assert (parent / "parent-file").exists() and (child / "child-file").exists()
    assert not (child / "parent-file").exists()

    # The child closed its copy of the lock descriptor: the parent's lock holds.
    fd = os.open(parent / protocol.LOCK, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    names: list[str] = []
    assert protocol.sweep_sync(str(base), lambda name, files: names.append(name)) == []
    assert names == []

    pair.kill()  # the parent; the child lives on, and no longer holds the parent's lock
    assert protocol.sweep_sync(str(base), lambda name, files: names.append(name)) == []
    assert names == [parent.name]
    assert not parent.exists()
    assert (child / "child-file").exists()

    pair.end()  # EOF: the child exits normally and removes its own directory
    deadline = time.monotonic() + TIMEOUT
    while child.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not child.exists()


def test_lock_descriptor_is_close_on_exec(scratch: Path) -> None:
    s = fc.ScratchDir(scratch)
    try:
        fd = s._lock_fd
        assert fd is not None
        assert not os.get_inheritable(fd)
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    finally:
        s.close()


# -- what the sweep leaves alone, and the in-between states -----------------------


def _sweep(base: Path) -> list[str]:
    names: list[str] = []
    assert protocol.sweep_sync(str(base), lambda name, files: names.append(name)) == []
    return names


def test_sweep_never_follows_a_symlink_nor_touches_other_entries(scratch: Path) -> None:
    base = scratch / "base"
    base.mkdir()
    outside = scratch / "outside"
    kept = decoys(base, outside)
    dead = base / f"fastcleanup-9-{'f' * 16}"
    dead.mkdir()
    (dead / protocol.LOCK).touch()
    (dead / "escape").symlink_to(outside, target_is_directory=True)
    assert _sweep(base) == [dead.name]
    assert not dead.exists()
    assert all(os.path.lexists(p) for p in kept)
    assert (outside / "precious").read_text() == "not a leftover"


async def test_swept_files_count_every_non_directory_links_included(
    scratch: Path, make_cleaner: MakeCleaner, registry: CollectorRegistry
) -> None:
    """``fastcleanup_swept_total{type="file"}`` counts the files and the other
    non-directories (symlinks, FIFOs) in a dead directory, at any depth, the
    lock file left out; a link counts once and is never followed."""
    base = scratch / "base"
    outside = scratch / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "precious").write_text("not a leftover")
    dead = base / f"fastcleanup-9-{'9' * 16}"
    (dead / "sub").mkdir(parents=True)
    (dead / protocol.LOCK).touch()
    (dead / "page.part").touch()
    (dead / "sub" / "nested.part").touch()
    (dead / "to-a-dir").symlink_to(outside, target_is_directory=True)
    (dead / "sub" / "to-a-file").symlink_to(outside / "deep" / "precious")
    os.mkfifo(dead / "fifo")
    cleaner = make_cleaner()
    fc.sweep(base, cleaner=cleaner)
    cleaner.init_worker()
    assert await cleaner.drain(timeout=TIMEOUT)
    assert not dead.exists()
    assert (outside / "deep" / "precious").read_text() == "not a leftover"
    assert (swept(registry, cleaner, "directory"), swept(registry, cleaner, "file")) == (1, 5)
    await cleaner.shutdown()


def test_a_directory_held_in_this_process_survives_a_sweep(scratch: Path) -> None:
    # flock locks belong to open file descriptions: a sweep in the owner's
    # own process that opens the lock file again is refused like any other.
    with fc.ScratchDir(scratch) as s:
        (s.path / "f").touch()
        assert protocol.sweep_sync(str(scratch), lambda name, files: None) == []
        assert (s.path / "f").exists()
        path = s.path
    assert not path.exists()


def test_in_creation_directory_waits_for_the_grace_period(scratch: Path) -> None:
    assert protocol.GRACE == 60.0  # what the docs promise: in-creation names are left 60 s
    young = scratch / f".fastcleanup-new-5-{'a' * 16}"
    old = scratch / f".fastcleanup-new-6-{'b' * 16}"
    stalled = scratch / f".fastcleanup-new-7-{'c' * 16}"  # an old one whose creator holds its lock
    for d in (young, old, stalled):
        d.mkdir()
    (stalled / protocol.LOCK).touch()
    fd = os.open(stalled / protocol.LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        past = time.time() - protocol.GRACE - 1
        for d in (old, stalled):
            os.utime(d, (past, past))
        assert _sweep(scratch) == [old.name]
        assert young.exists() and stalled.exists()
    finally:
        os.close(fd)
    assert _sweep(scratch) == [stalled.name]  # its creator is gone now


def test_a_sweep_during_creation_leaves_the_new_directory_to_its_creator(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sweep with no grace runs at the worst moment: the creator is about to
    # make its lock file in its in-creation directory. Had the sweep claimed
    # the directory, that lock file could land in it while the sweeper empties
    # it (ENOTEMPTY for the sweeper), and the creator would need a second try.
    monkeypatch.setattr(protocol, "GRACE", 0.0)
    real_open = os.open
    swept: list[str] = []
    made: list[str] = []

    def sweep_then_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if not made and path == protocol.LOCK and flags & os.O_CREAT:
            made.extend(d.name for d in scratch.iterdir())
            swept.extend(_sweep(scratch))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", sweep_then_open)
    with fc.ScratchDir(scratch) as s:
        monkeypatch.undo()
        assert len(made) == 1 and made[0].startswith(".fc-new-")
        assert swept == []  # left to its creator, whose first attempt won
        assert s.path.name == made[0].replace(".fc-new-", "fc-")
        assert _sweep(scratch) == []  # and once in use, its lock keeps it
    assert scratch_dirs(scratch) == []


def test_leftover_of_a_dead_sweeper_is_swept_and_a_live_sweeper_s_is_not(scratch: Path) -> None:
    dead = scratch / f".fastcleanup-dead-{'d' * 16}"
    busy = scratch / f".fastcleanup-dead-{'e' * 16}"
    for d in (dead, busy):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "f").touch()
    fd = os.open(busy, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a sweeper at work on it
        assert _sweep(scratch) == [dead.name]
        assert (busy / "sub" / "f").exists()
    finally:
        os.close(fd)


# -- the API ------------------------------------------------------------------------


async def test_scratch_dir_files_go_through_its_cleaner_and_close_removes_it(
    scratch: Path, make_cleaner: MakeCleaner
) -> None:
    cleaner = make_cleaner()
    cleaner.init_worker()
    s = fc.ScratchDir(scratch / "base", cleaner=cleaner)  # after the start: sweeps at once
    assert re.fullmatch(r"<ScratchDir '.*/fc-[0-9a-z]+-[0-9a-z]{4}' held>", repr(s))
    assert s.path.parent == Path(s.base) and os.fspath(s) == str(s.path)
    tmp = s.temp_file(suffix=".html")
    other = fc.TempFile(dir=s, cleaner=cleaner)
    assert tmp.path.parent == other.path.parent == s.path
    tmp.close()
    assert await cleaner.drain(timeout=TIMEOUT)
    assert not tmp.path.exists() and other.path.exists()
    s.close()
    assert await cleaner.drain(timeout=TIMEOUT)
    assert not other.path.parent.exists()
    assert repr(s) == f"<ScratchDir {s.base!r} closed>"
    with pytest.raises(RuntimeError, match="is closed"):
        s.temp_file()
    s.close()  # idempotent
    # One sweep (at construction) and one tree removal (close), nothing swept.
    assert cleaner.stats().completed == 3 and cleaner.stats().failed == 0
    await cleaner.shutdown()


async def test_close_keeps_the_lock_until_the_cleaner_has_removed_the_directory(
    scratch: Path, make_cleaner: MakeCleaner
) -> None:
    """close() on a running cleaner queues the removal and still holds the
    lock meanwhile: a sweep that comes before the removal leaves it alone."""
    cleaner = make_cleaner()
    cleaner.init_worker()
    base = scratch / "base"
    s = fc.ScratchDir(base, cleaner=cleaner)
    assert await cleaner.drain(timeout=TIMEOUT)  # its start's sweep: done
    path = s.path
    (path / "page.part").touch()
    s.close()  # queued: the loop has not run since
    assert cleaner.stats().queued == 1
    assert _sweep(base) == []  # another sweeper finds it locked
    assert (path / "page.part").exists()
    assert await cleaner.drain(timeout=TIMEOUT)
    assert not path.exists()
    assert scratch_dirs(base) == []
    await cleaner.shutdown()


def test_a_release_run_twice_closes_its_lock_descriptor_once(scratch: Path) -> None:
    """A dying loop can leave a release running in its thread while the next
    loop runs it again: the second run removes what is left and never closes
    the descriptor number a second time (by then it may be another file's)."""
    from fastcleanup._scratch import _Release

    own = scratch / "base" / "fastcleanup-1-0000000000000000"
    (own / "sub").mkdir(parents=True)
    release = _Release(str(own), str(own.parent), os.open(own / "sub", os.O_RDONLY))
    release.run_sync()
    assert not own.exists()
    own.mkdir()  # made again meanwhile: the rerun removes it
    reused = os.open(scratch, os.O_RDONLY)  # likely the number the release closed
    try:
        release.run_sync()
        os.fstat(reused)  # still open
    finally:
        os.close(reused)
    assert not own.exists()
    # A run that cannot get the release from a stuck earlier one gives up in time.
    release._mutex.acquire()
    try:
        with pytest.raises(TimeoutError, match="an earlier run is still removing it"):
            release.run_sync(timeout=0.01)
    finally:
        release._mutex.release()


async def test_staging_file_in_a_scratch_dir_commits_onto_its_destination(
    scratch: Path, make_cleaner: MakeCleaner
) -> None:
    cleaner = make_cleaner()
    with fc.ScratchDir(scratch / "base", cleaner=cleaner) as s:
        dest = scratch / "page.html"
        async with fc.StagingFile(dest, dir=s, cleaner=cleaner) as out:
            assert Path(out.part).parent == s.path
            await out.write(b"body")
        assert dest.read_bytes() == b"body"
        assert os.listdir(s.path) == [protocol.LOCK]


def test_staging_file_refuses_a_scratch_dir_on_another_file_system(
    scratch: Path, tmp_path: Path
) -> None:
    if os.stat(scratch).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs two file systems (tmpfs at /dev/shm and another for tmp_path)")
    with fc.ScratchDir(scratch / "base") as s, pytest.raises(ValueError, match="file system"):
        fc.StagingFile(tmp_path / "page.html", dir=s)


@pytest.mark.parametrize(
    ("base", "error", "message"),
    [
        (42, TypeError, "str path"),
        (b"/tmp/x", TypeError, "str path"),
        ("", ValueError, "name a directory"),
        ("a\0b", ValueError, "name a directory"),
    ],
)
def test_constructors_check_their_arguments(base: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        fc.ScratchDir(base)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        fc.sweep(base)  # type: ignore[arg-type]


def test_bad_base_or_cleaner_is_refused(scratch: Path) -> None:
    (scratch / "file").touch()
    with pytest.raises(ValueError, match="no directory"):
        fc.ScratchDir(scratch / "file")
    with pytest.raises(ValueError, match="not an existing directory"):
        fc.sweep(scratch / "missing")
    with pytest.raises(TypeError, match="cleaner must be"):
        fc.ScratchDir(scratch, cleaner="default")  # type: ignore[arg-type]


def test_the_guide_s_example_sweeps_what_a_killed_run_left(scratch: Path) -> None:
    text = GUIDE.read_text(encoding="utf-8")
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    base = scratch / "crawler-scratch"  # the example's base, in its temp dir
    leftover = base / f"fastcleanup-1-{'0' * 16}"  # what a killed run left
    leftover.mkdir(parents=True)
    (leftover / protocol.LOCK).touch()
    (leftover / "page.part").touch()
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert proc.returncode == 0, proc.stderr
    assert not leftover.exists()
    assert scratch_dirs(base) == []


# -- orphans: a dead owner's browser that lives on -------------------------------


def wait_for(done: Callable[[], bool], what: str) -> None:
    """Poll ``done`` (a state of the file system or of /proc) until it holds."""
    deadline = time.monotonic() + TIMEOUT
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def has_no_fds(pid: int) -> bool:
    try:
        return os.listdir(f"/proc/{pid}/fd") == []  # a zombie has none
    except OSError:
        return True


def kill_writer(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait_for(lambda: has_no_fds(pid), "the writer to die")


@pytest.mark.parametrize("hold", ["1", "0"], ids=["holds-a-file", "reopens-files"])
def test_an_orphan_s_directory_is_swept_once_the_orphan_is_gone(
    scratch: Path, children: Callable[..., Child], monkeypatch: pytest.MonkeyPatch, hold: str
) -> None:
    """The owner is SIGKILLed, its browser writes on; what it recreates goes after it dies."""
    monkeypatch.setattr(protocol, "GRACE", 0.0)  # else a later sweep, a minute on
    base = scratch / "base"
    base.mkdir()
    owner = children("orphan", base, hold)
    _, path, pid = owner.line().split()
    directory, writer = Path(path), int(pid)
    try:
        owner.kill()
        if hold == "1":  # the owner is dead, but a process still works in its directory
            assert _sweep(base) == [] and (directory / "profile" / "log").exists()
        # What an earlier sweep (or version 0.1) did: remove it under the writer.
        shutil.rmtree(directory, ignore_errors=True)
        wait_for(lambda: (directory / "profile").is_dir(), "the writer to make it again")
        assert not (directory / protocol.LOCK).exists()
        if hold == "1":
            assert _sweep(base) == [] and directory.is_dir()  # still in use
    finally:
        kill_writer(writer)
    assert _sweep(base) == [directory.name]
    assert os.listdir(base) == []


def test_a_live_owner_s_directory_recreated_without_its_lock_is_kept(
    scratch: Path, children: Callable[..., Child], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protocol, "GRACE", 0.0)
    base = scratch / "base"
    base.mkdir()
    owner = children("orphan", base, "0")
    _, path, pid = owner.line().split()
    directory = Path(path)
    try:
        shutil.rmtree(directory, ignore_errors=True)  # by someone else, while the owner lives
        wait_for(lambda: (directory / "profile").is_dir(), "the writer to make it again")
    finally:
        kill_writer(int(pid))  # nothing uses it now, but its owner lives
    assert _sweep(base) == [] and directory.is_dir()
    owner.end()  # a normal end removes it
    assert os.listdir(base) == []


def test_a_lockless_name_is_proven_dead_by_its_pid_and_start_time(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ours and alive (pid and start time match) is kept; the same pid started at another
    time (a reused pid) and a pid with no process are swept; a long name is never taken."""
    monkeypatch.setattr(protocol, "GRACE", 0.0)
    me = os.getpid()
    stamp = protocol._stamp(me)
    assert stamp is not None and len(stamp) == 2
    other = protocol._base36((int(stamp, 36) + 1) % 36**2).rjust(2, "0")
    free = next(p for p in range(4_000_000, 4_194_304) if not os.path.exists(f"/proc/{p}"))
    names = {
        "alive": f"fc-{protocol._base36(me)}-{stamp}zz",
        "reused": f"fc-{protocol._base36(me)}-{other}zz",
        "gone": f"fc-{protocol._base36(free)}-00zz",
        "long": f"fastcleanup-{free}-{'0' * 16}",
    }
    for name in names.values():
        (scratch / name / "sub").mkdir(parents=True)
    assert sorted(_sweep(scratch)) == sorted([names["reused"], names["gone"]])
    assert sorted(os.listdir(scratch)) == sorted([names["alive"], names["long"]])
    # Changed within GRACE: left for a later sweep, whatever its pid says.
    monkeypatch.setattr(protocol, "GRACE", 60.0)
    (scratch / names["reused"]).mkdir()
    assert _sweep(scratch) == []


def test_a_lockless_name_of_a_zombie_owner_is_swept(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dead but not reaped by its parent: /proc still lists it, with its start time."""
    monkeypatch.setattr(protocol, "GRACE", 0.0)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only waits, then exits
        os.read(r, 1)
        os._exit(0)
    try:
        stamp = protocol._stamp(pid)
        assert stamp is not None
        name = f"fc-{protocol._base36(pid)}-{stamp}zz"
        (scratch / name).mkdir()
        assert _sweep(scratch) == []  # alive
        os.write(w, b"x")
        wait_for(lambda: protocol._stamp(pid) is None, "the child to exit")
        assert os.path.exists(f"/proc/{pid}")  # a zombie: not reaped yet
        assert _sweep(scratch) == [name]
    finally:
        os.close(r)
        os.close(w)
        os.waitpid(pid, 0)


# -- short names ------------------------------------------------------------------

SOCKET_DIR = ".org.chromium.Chromium.XXXXXX"  # Chromium's mkdtemp template under TMPDIR


def test_short_names_leave_room_for_a_browser_socket_under_a_40_byte_base(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The budget README states: with a 40-byte base, 6 bytes are left for a context name."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    longest = f"fc-{protocol._base36(max(pid_max, 2**22))}-zzzz"
    assert len(longest) == protocol.NAME_MAX == 13
    fixed = len("/".join(["b" * 40, longest, "", SOCKET_DIR, "SingletonSocket"]))
    assert protocol.SOCKET_BUDGET - fixed == 6  # the context name's room
    # The same path for real: a 40-byte base, a real scratch directory, a 6-byte context.
    top = Path(tempfile.mkdtemp(prefix="fc-", dir="/tmp"))
    try:
        base = top / ("b" * (40 - len(str(top)) - 1))
        assert len(str(base)) == 40
        with fc.ScratchDir(base) as s:
            assert len(s.path.name) <= protocol.NAME_MAX
            sockets = s.path / "ctx-01" / SOCKET_DIR
            sockets.mkdir(parents=True)
            sock = socket.socket(socket.AF_UNIX)
            try:
                path = str(sockets / "SingletonSocket")
                # Our pid's name is as long as the longest only on a machine with big pids.
                assert len(path) <= protocol.SOCKET_BUDGET
                sock.bind(path)
            finally:
                sock.close()
            long_name = base / f"fastcleanup-{pid_max}-{'0' * 16}"  # version 0.1's name
            too_long = long_name / "ctx-01" / SOCKET_DIR / "SingletonSocket"
            assert len(str(too_long)) > protocol.SOCKET_BUDGET
    finally:
        shutil.rmtree(top)


def test_scratch_dir_makes_its_base_but_not_a_missing_parent(scratch: Path) -> None:
    with pytest.raises(FileNotFoundError, match="create it first") as info:
        fc.ScratchDir(scratch / "typo" / "base")
    assert info.value.filename == str(scratch / "typo")
    assert not (scratch / "typo").exists()
    with fc.ScratchDir(scratch / "base") as s:
        assert s.base == str(scratch / "base")
        assert (scratch / "base").stat().st_mode & 0o777 == 0o700
