"""Loops torn down mid-burst, fork() during a burst, interpreter exit with
work pending, SIGTERM with and without a handler.

The exit and SIGTERM tests check what docs/reliability.md promises,
in a real child interpreter each.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import fastcleanup as fc
from tests.conftest import LOOP_KINDS, loop_factory
from tests.torture_helpers import (
    LoopErrors,
    LoopThread,
    UnlinkSpy,
    conserved,
    existing,
    forget,
    quiet,
    report,
    scale,
    scrape,
    total,
    touch_all,
)


def submit_paced(cleaner: fc.Cleaner, tasks: list[Any], stop: threading.Event) -> None:
    """Submit ``tasks`` in chunks, sleeping a little between chunks (never spinning).

    The sleeps set the burst's length (at least 2 ms per 100 tasks), not the
    speed of the cleaner or the GIL: the teardown test needs a burst that
    outlasts half of its twenty loops.
    """
    for k in range(0, len(tasks), 100):
        for t in tasks[k : k + 100]:
            cleaner.submit(t)
        time.sleep(0.002)
        if stop.is_set():
            for t in tasks[k + 100 :]:
                cleaner.submit(t)
            return


@pytest.mark.timeout(300)
def test_loop_teardown_mid_burst_20_cycles(scratch: Path, loop_kind: str) -> None:
    """Twenty loops in a row die under the worker (no shutdown) while two threads
    keep submitting; the next init_worker() always adopts what was left."""
    n = scale(20_000, 100_000)
    calls = scale(400, 4_000)
    paths = [str(scratch / f"t{i}") for i in range(n)]
    touch_all(paths)
    finished: list[int] = []

    async def slow_close(i: int) -> None:
        await asyncio.sleep(0.002)
        finished.append(i)

    tasks: list[Any] = [fc.RemoveFile(p) for p in paths]
    tasks += [fc.Call(slow_close, i) for i in range(calls)]
    random.Random(7).shuffle(tasks)
    registry = CollectorRegistry()
    cleaner = fc.Cleaner(registry=registry, name="teardown", max_batches=4, batch_size=64)
    stop = threading.Event()
    producers = [
        threading.Thread(target=submit_paced, args=(cleaner, tasks[k::2], stop)) for k in range(2)
    ]
    rng = random.Random(11)
    mid_burst = 0
    errors = LoopErrors()

    async def live_a_little(first: bool) -> None:
        errors.attach()
        cleaner.init_worker()
        if first:
            for p in producers:
                p.start()
        await asyncio.sleep(rng.uniform(0.0, 0.03))

    try:
        for cycle in range(20):
            with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
                runner.run(live_a_little(cycle == 0))
            # The loop is gone; the cleaner still accepts and holds everything
            # (exact conservation waits for the producers to stop, below).
            s = cleaner.stats()
            assert s.completed + s.failed + s.queued + s.in_flight >= s.submitted - 200, s
            assert cleaner.worker_inited()
            if s.queued or any(p.is_alive() for p in producers):
                mid_burst += 1
        stop.set()
        for p in producers:
            p.join(60)
            assert not p.is_alive()

        async def finish() -> fc.Stats:
            errors.attach()
            cleaner.init_worker()
            assert await cleaner.drain(timeout=120), cleaner.stats()
            s = cleaner.stats()
            await cleaner.shutdown()
            return s

        with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
            s = runner.run(finish())
    finally:
        stop.set()
        forget(cleaner)

    assert mid_burst >= 10, "most teardowns should hit a burst in progress"
    assert (s.submitted, s.completed, s.failed) == (n + calls, n + calls, 0), s
    assert conserved(s) and quiet(s)
    assert existing(paths) == []
    assert sorted(set(finished)) == list(range(calls))
    assert errors.messages() == []
    report(
        "loop_teardown",
        loop=loop_kind,
        cycles=20,
        mid_burst=mid_burst,
        operations=n + calls,
        files_lost=len(existing(paths)),
        deadlocks=0,
    )


def die_mid_job(scratch: Path, loop_kind: str) -> tuple[UnlinkSpy, list[str], fc.Stats]:
    """A batch of 64 removals; the loop dies while its unlink job is inside the
    unlink of file 20 (files 0-19 done); the next loop finishes the batch."""
    names = [f"rr{i}" for i in range(64)]
    paths = [str(scratch / n) for n in names]
    touch_all(paths)
    spy = UnlinkSpy("rr")
    spy.gates[names[20]] = threading.Event()  # the job stops here until the loop is dead
    spy.entered[names[20]] = threading.Event()
    cleaner = fc.Cleaner(registry=None, batch_size=64)
    try:
        with spy.installed():

            async def first() -> None:
                cleaner.init_worker()
                for p in paths:
                    cleaner.submit(fc.RemoveFile(p))
                assert await asyncio.to_thread(spy.entered[names[20]].wait, 30)

            with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
                runner.run(first())
            # Dead loop; the unlink in progress returns a moment later, as a
            # real one would (the test cannot hold it for the whole requeue).
            threading.Timer(0.05, spy.gates[names[20]].set).start()

            async def second() -> fc.Stats:
                cleaner.init_worker()
                assert await cleaner.drain(timeout=30)
                return cleaner.stats()

            with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
                s = runner.run(second())
    finally:
        forget(cleaner)
    assert existing(paths) == []
    assert s.submitted == s.completed + s.failed == 64 and conserved(s) and quiet(s), s
    return spy, names, s


@pytest.mark.timeout(120)
def test_loop_death_never_reruns_a_finished_removal(scratch: Path, loop_kind: str) -> None:
    """Files the dead loop's unlink job had already removed are not removed a
    second time by the next loop.

    A second unlink of the same path is not harmless: a crawler that reuses
    names may have created a new file there in between.
    """
    spy, names, _ = die_mid_job(scratch, loop_kind)
    assert [n for n in spy.twice() if n in names[:20]] == []


@pytest.mark.timeout(120)
def test_loop_death_never_reruns_the_removal_in_progress(scratch: Path, loop_kind: str) -> None:
    """Nor is the file whose unlink was in progress when the loop died: that
    unlink still completes in its thread, so running it again is a second run
    (exactly once, as the state machine checks after every step)."""
    spy, _, _ = die_mid_job(scratch, loop_kind)
    assert spy.twice() == [], f"removed twice: {spy.twice()}"


@pytest.mark.timeout(120)
def test_exported_submitted_total_counts_each_task_once(scratch: Path, loop_kind: str) -> None:
    """Tasks taken back from a dead loop and run on the next one are still one
    submission each in ``fastcleanup_submitted_total``."""
    paths = [str(scratch / f"x{i}") for i in range(5_000)]
    touch_all(paths)
    registry = CollectorRegistry()
    cleaner = fc.Cleaner(registry=registry, name="once", batch_size=64, max_batches=4)
    gate = asyncio.Event()

    async def blocked() -> None:
        await gate.wait()

    try:

        async def first() -> None:
            cleaner.init_worker()
            for i, p in enumerate(paths):
                cleaner.submit(fc.RemoveFile(p) if i % 50 else fc.Call(blocked))
            await asyncio.sleep(0.05)  # batches in flight, blocked on the gate

        with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
            runner.run(first())
        assert cleaner.stats().queued > 0

        async def second() -> fc.Stats:
            nonlocal gate
            gate = asyncio.Event()
            gate.set()
            cleaner.init_worker()
            assert await cleaner.drain(timeout=60)
            return cleaner.stats()

        with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
            s = runner.run(second())
        samples = scrape(registry)
    finally:
        forget(cleaner)
    assert s.submitted == s.completed == len(paths), s
    assert total(samples, "fastcleanup_completed_total") == len(paths)
    assert total(samples, "fastcleanup_submitted_total") == len(paths)


@pytest.mark.timeout(60)
def test_shutdown_without_a_dispatcher_reports_pending_work(scratch: Path, loop_kind: str) -> None:
    """shutdown() returns whether everything finished: not True while tasks are queued."""
    cleaner = fc.Cleaner(registry=None)
    try:

        async def start() -> None:
            cleaner.init_worker()

        with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
            runner.run(start())
        cleaner.submit(fc.RemoveFile(scratch / "never-made"))  # queued: the loop is dead

        async def stop() -> bool:
            return await cleaner.shutdown(timeout=1)

        with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
            finished = runner.run(stop())
        s = cleaner.stats()
        assert s.queued == 1
        assert finished is False, "shutdown() said everything finished; one task is queued"
    finally:
        forget(cleaner)


# -- fork ---------------------------------------------------------------------------


def fork_and_check(cleaner: fc.Cleaner, scratch: Path, kind: str, marker: str) -> dict[str, Any]:
    """Fork; the child checks that it starts clean, runs a cleanup of its own on a
    fresh loop, and reports as JSON through a pipe. Returns the report."""
    r, w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads: on purpose
        pid = os.fork()
    if pid == 0:  # the child: no logging, no print; os.write and os._exit only
        code = 70
        try:
            os.close(r)
            out: dict[str, Any] = {"inited": cleaner.worker_inited()}
            out["clean"] = cleaner.stats() == fc.Stats(0, 0, 0, 0, 0, 0, 0)
            cleaner.submit(fc.RemoveFile(scratch / f"{marker}-dropped"))
            out["dropped"] = cleaner.stats().dropped_before_init
            own = [str(scratch / f"{marker}-child{i}") for i in range(50)]
            touch_all(own)

            async def child() -> fc.Stats:
                cleaner.init_worker()
                for p in own:
                    cleaner.submit(fc.RemoveFile(p))
                assert await cleaner.drain(timeout=20)
                s = cleaner.stats()
                await cleaner.shutdown()
                return s

            with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
                s = runner.run(child())
            out["child"] = [s.submitted, s.completed, s.failed, s.queued, s.in_flight]
            out["own_left"] = len(existing(own))
            os.write(w, json.dumps(out).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    deadline = time.monotonic() + 60
    while True:  # a hung child must fail the test, not hang it
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child deadlocked")
        time.sleep(0.01)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    assert os.waitstatus_to_exitcode(status) == 0, data
    result: dict[str, Any] = json.loads(data)
    return result


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.timeout(300)
def test_fork_during_a_burst(scratch: Path, loop_kind: str) -> None:
    """fork() while threads submit and batches run: each child starts uninitialised
    with zero counters, runs only its own work, and never a task of the parent's."""
    n = scale(20_000, 100_000)
    forks = scale(4, 20)
    paths = [str(scratch / f"p{i}") for i in range(n)]
    touch_all(paths)
    pid_log = os.open(scratch / "ran-in.log", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)

    async def record_pid() -> None:
        await asyncio.sleep(0)
        os.write(pid_log, f"{os.getpid()}\n".encode())  # shared by parent and children

    tasks: list[Any] = [fc.RemoveFile(p) for p in paths]
    tasks += [fc.Call(record_pid) for _ in range(n // 100)]
    random.Random(3).shuffle(tasks)
    cleaner = fc.Cleaner(registry=None, name="forked")
    lt = LoopThread(loop_factory(loop_kind))
    stop = threading.Event()
    children: list[dict[str, Any]] = []
    try:
        lt.call(cleaner.init_worker)
        producer = threading.Thread(target=submit_paced, args=(cleaner, tasks, stop))
        producer.start()
        for k in range(forks):
            time.sleep(0.02)
            busy = cleaner.stats()
            children.append(fork_and_check(cleaner, scratch, loop_kind, f"c{k}"))
            children[-1]["parent_busy"] = busy.queued + busy.in_flight > 0 or producer.is_alive()
        stop.set()
        producer.join(60)
        assert lt.call(lambda: cleaner.drain(timeout=120)), cleaner.stats()
        s = cleaner.stats()
        lt.call(cleaner.shutdown)
    finally:
        stop.set()
        lt.close()
        forget(cleaner)

    for child in children:
        assert child["inited"] is False
        assert child["clean"] is True
        assert child["dropped"] == 1
        assert child["child"] == [50, 50, 0, 0, 0]  # its own 50 files and nothing else
        assert child["own_left"] == 0
    assert sum(c["parent_busy"] for c in children) >= 1, "no fork hit a burst"
    os.close(pid_log)
    ran_in = (scratch / "ran-in.log").read_text().split()
    assert len(ran_in) == n // 100 and set(ran_in) == {str(os.getpid())}
    assert (s.submitted, s.completed, s.failed) == (len(tasks), len(tasks), 0), s
    assert existing(paths) == []
    report("fork", loop=loop_kind, forks=forks, operations=len(tasks), files_lost=0, deadlocks=0)


# -- interpreter exit and SIGTERM (docs/reliability.md) --------------------------------

CHILD_PRELUDE = """
import asyncio, atexit, dataclasses, json, os, signal, sys, time

# Registered before fastcleanup is imported, so atexit runs them after
# fastcleanup's own exit hook (last registered, first run): _late submits
# what the script put in LATE, then _report prints the final counters.
LATE = []
REPORTED = []

def _late():
    for task in LATE:
        fc.submit(task)

def _report():
    for cleaner in REPORTED or [fc]:
        print("STATS " + json.dumps(dataclasses.asdict(cleaner.stats())), flush=True)

atexit.register(_report)
atexit.register(_late)
import fastcleanup as fc
SCRATCH, USE_UVLOOP = sys.argv[1], sys.argv[2] == "1"
"""

SLOW_UNLINK = """
_real_unlink = os.unlink
def _slow_unlink(path, *, dir_fd=None):
    time.sleep(0.005)  # slow storage: work is still pending when the signal comes
    return _real_unlink(path, dir_fd=dir_fd)
os.unlink = _slow_unlink
"""


def run_child(code: str, scratch: Path, kind: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(code), str(scratch), kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def ended(proc: subprocess.Popen[str]) -> tuple[str, str, dict[str, int]]:
    """Wait for a child that must exit 0 and print its final counters: out, err, counters."""
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    stats = child_stats(out)
    assert stats is not None, out + err
    return out, err, stats


def child_stats(stdout: str) -> dict[str, int] | None:
    # Not only at the start of a line: a SystemExit can cut a print short.
    for line in stdout.splitlines():
        if "STATS " in line:
            stats: dict[str, int] = json.loads(line.split("STATS ", 1)[1])
            return stats
    return None


use_uvloop = pytest.mark.parametrize("kind", ["0", "1"], ids=["asyncio", "uvloop"])
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@use_uvloop
@pytest.mark.timeout(120)
def test_exit_with_pending_work(scratch: Path, kind: str) -> None:
    """asyncio.run returns without shutdown(): at exit the queued file and tree
    removals run synchronously (subclasses that keep the built-in run() too);
    other tasks are counted as dropped at exit; a submit that comes after
    fastcleanup's exit hook is dropped at exit too."""
    # The dispatcher may hand out max_batches jobs of 1,024 files before the
    # loop dies, and the compiled lane needs no GIL to run them meanwhile: far
    # more files than that are needed for most to be pending at exit.
    files = [str(scratch / f"e{i}") for i in range(20_000)]
    touch_all(files)
    for t in range(20):
        (scratch / f"tree{t}" / "sub").mkdir(parents=True)
        (scratch / f"tree{t}" / "sub" / "leaf").write_bytes(b"x")
    (scratch / "early").write_bytes(b"x")  # submitted by an atexit hook before fastcleanup's
    (scratch / "late").write_bytes(b"x")  # submitted by an atexit hook after fastcleanup's
    (scratch / "sub-file").write_bytes(b"x")  # a plain RemoveFile subclass
    (scratch / "sub-tree" / "leaf").mkdir(parents=True)  # a plain RemoveTree subclass
    (scratch / "own-run").write_bytes(b"x")  # a subclass with a run() of its own
    (scratch / "not-a-dir").write_bytes(b"x")  # RemoveTree of a file: fails at exit
    proc = run_child(
        """
        async def later():
            pass

        class MyFile(fc.RemoveFile):
            pass

        class MyTree(fc.RemoveTree):
            pass

        class OwnRun(fc.RemoveFile):
            async def run(self):
                os.unlink(self.path)

        async def main():
            fc.init_worker()
            for name in sorted(os.listdir(SCRATCH)):
                path = os.path.join(SCRATCH, name)
                if name.startswith("tree"):
                    fc.submit(fc.RemoveTree(path))
                elif name.startswith("e") and name != "early":
                    fc.submit(fc.RemoveFile(path))
            fc.submit(MyFile(os.path.join(SCRATCH, "sub-file")))
            fc.submit(MyTree(os.path.join(SCRATCH, "sub-tree")))
            fc.submit(OwnRun(os.path.join(SCRATCH, "own-run")))  # its run() needs a loop
            for _ in range(30):
                fc.submit(fc.Call(later))  # not a removal: cannot run without a loop
            fc.submit("not a task")  # failed, reason invalid
            fc.submit(fc.RemoveTree(os.path.join(SCRATCH, "not-a-dir")))  # failed, reason error
            # Return at once: nothing has run yet.

        LATE.append(fc.RemoveFile(os.path.join(SCRATCH, "late")))
        fc.run(main(), use_uvloop=USE_UVLOOP)
        atexit.register(lambda: fc.submit(fc.RemoveFile(os.path.join(SCRATCH, "early"))))
        s = fc.stats()
        print("PENDING", s.queued + s.in_flight, flush=True)
        """,
        scratch,
        kind,
    )
    out, err, stats = ended(proc)
    pending = int(out.split("PENDING ")[1].split()[0])
    assert pending > 10_000, out  # most of it was still pending when main() returned
    # Every file and tree but the late one and the one whose own run() needs a loop: gone.
    assert sorted(os.listdir(scratch)) == ["late", "not-a-dir", "own-run"]
    assert stats == {
        "submitted": 20_057,
        "dropped_before_init": 0,
        "completed": 20_023,  # 20,000 files, 20 trees, the early one and two subclasses
        "failed": 2,  # "not a task" and the tree that is a file
        "dropped_at_exit": 32,  # 30 calls, the own run() and the late one
        "queued": 0,
        "in_flight": 0,
        "swept": 0,
    }
    # Failures at exit are logged as in the loop (logging's last resort writes to stderr).
    assert "invalid 'not a task' failed (invalid)" in err, err
    assert re.search(r"remove_tree RemoveTree\('.*/not-a-dir'\) failed \(error\)", err)
    # What could not run is named once, by kind.
    summary = "cleaner default dropped 31 queued task(s) at exit, unrun: call 30, remove_file 1"
    assert f"fastcleanup: {summary}" in err, err


@use_uvloop
@pytest.mark.timeout(120)
def test_scratch_dir_closed_while_running_is_removed_at_exit(scratch: Path, kind: str) -> None:
    """close() while the cleaner runs queues the directory's removal; when the
    loop ends without shutdown(), the exit handler removes it, so nothing is
    left for the next start's sweep."""
    base = scratch / "base"
    files = [str(scratch / f"f{i}") for i in range(20_000)]
    touch_all(files)
    proc = run_child(
        """
        async def main():
            fc.init_worker()
            own = fc.ScratchDir(os.path.join(SCRATCH, "base"))
            await fc.drain()  # the sweep that making it started is over
            (own.path / "profile").mkdir()
            (own.path / "profile" / "cookies").write_bytes(b"x")
            for name in sorted(os.listdir(SCRATCH)):
                if name.startswith("f"):
                    fc.submit(fc.RemoveFile(os.path.join(SCRATCH, name)))
            own.close()  # queued behind the 20,000 files
            OWN.append(own)

        OWN = []
        fc.run(main(), use_uvloop=USE_UVLOOP)
        print("LEFT", os.listdir(OWN[0]._base), flush=True)
        """,
        scratch,
        kind,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    # The directory was still there when the loop ended: its removal was pending.
    assert "LEFT ['fc-" in out, out + err
    assert os.listdir(base) == [], out
    assert sorted(os.listdir(scratch)) == ["base"]
    assert child_stats(out) == {
        "submitted": 20_002,  # the sweep, the files, the directory
        "dropped_before_init": 0,
        "completed": 20_002,
        "failed": 0,
        "dropped_at_exit": 0,
        "queued": 0,
        "in_flight": 0,
        "swept": 0,
    }


@use_uvloop
@pytest.mark.timeout(120)
def test_exit_counts_removals_that_fail_as_failed(scratch: Path, kind: str) -> None:
    """At exit, queued removals that fail (a directory given to RemoveFile, a
    parent that is a regular file) or are refused (outside allowed_roots) are
    counted as failed, by reason, never as dropped at exit; their paths stay."""
    root, outside = scratch / "root", scratch / "outside"
    root.mkdir()
    touch_all([str(root / f"e{i}") for i in range(20_000)])  # queued ahead of the rest
    (root / "a-dir").mkdir()
    (root / "a-file").write_bytes(b"x")
    (outside / "tree").mkdir(parents=True)
    (outside / "tree" / "leaf").write_bytes(b"x")
    (outside / "precious").write_bytes(b"x")
    proc = run_child(
        """
        ROOT, OUTSIDE = os.path.join(SCRATCH, "root"), os.path.join(SCRATCH, "outside")
        cleaner = fc.Cleaner(registry=None, allowed_roots=[ROOT])

        class ByReason:
            # _report() asks for stats() after the exit work: print the reasons first.
            def stats(self):
                failed = sorted([*key, n] for key, n in cleaner._tally.failed_by.items())
                print("REASONS " + json.dumps(failed), flush=True)
                return cleaner.stats()

        REPORTED.append(ByReason())

        async def main():
            cleaner.init_worker()
            for i in range(20_000):
                cleaner.submit(fc.RemoveFile(os.path.join(ROOT, f"e{i}")))
            cleaner.submit(fc.RemoveFile(os.path.join(ROOT, "a-dir")))  # EISDIR
            cleaner.submit(fc.RemoveFile(os.path.join(ROOT, "a-file", "x")))  # ENOTDIR
            cleaner.submit(fc.RemoveTree(os.path.join(ROOT, "a-file")))  # not a directory
            cleaner.submit(fc.RemoveFile(os.path.join(OUTSIDE, "precious")))  # refused
            cleaner.submit(fc.RemoveTree(os.path.join(OUTSIDE, "tree")))  # refused
            # Return at once: the five are still at the tail of the queue.

        fc.run(main(), use_uvloop=USE_UVLOOP)
        s = cleaner.stats()
        print("BEFORE_EXIT", s.queued, s.failed, flush=True)
        """,
        scratch,
        kind,
    )
    out, _, stats = ended(proc)
    queued, failed = map(int, out.split("BEFORE_EXIT ")[1].split()[:2])
    # The five failures were still queued when the loop ended: only the exit work ran them.
    assert queued > 10_000 and failed == 0, out
    assert sorted(os.listdir(root)) == ["a-dir", "a-file"]
    assert (root / "a-dir").is_dir() and (root / "a-file").read_bytes() == b"x"
    assert (outside / "precious").exists() and (outside / "tree" / "leaf").exists()
    assert stats == {
        "submitted": 20_005,
        "dropped_before_init": 0,
        "completed": 20_000,
        "failed": 5,
        "dropped_at_exit": 0,
        "queued": 0,
        "in_flight": 0,
        "swept": 0,
    }
    reasons = json.loads(out.split("REASONS ")[1].splitlines()[0])
    assert reasons == [
        ["remove_file", "error", 2],
        ["remove_file", "refused", 1],
        ["remove_tree", "error", 1],
        ["remove_tree", "refused", 1],
    ]


@use_uvloop
@pytest.mark.timeout(120)
def test_exit_is_bounded_by_exit_timeout(scratch: Path, kind: str) -> None:
    """Slow storage at exit: removals stop after exit_timeout, the rest is counted
    as dropped at exit, and the process ends soon after."""
    files = [str(scratch / f"b{i}") for i in range(200)]
    touch_all(files)
    proc = run_child(
        SLOW_UNLINK
        + textwrap.dedent(
            """
        cleaner = fc.Cleaner(registry=None, exit_timeout=0.3)
        REPORTED.append(cleaner)

        async def main():
            cleaner.init_worker()
            for name in sorted(os.listdir(SCRATCH)):
                cleaner.submit(fc.RemoveFile(os.path.join(SCRATCH, name)))

        fc.run(main(), use_uvloop=USE_UVLOOP)
        print("EXITING", time.monotonic(), flush=True)
        """
        ),
        scratch,
        kind,
    )
    out, err = proc.communicate(timeout=60)
    ended = time.monotonic()
    assert proc.returncode == 0, err
    stats = child_stats(out)
    assert stats is not None, out + err
    exiting = float(out.split("EXITING ")[1].split()[0])
    assert ended - exiting < 0.3 + 5.0  # 0.3 s of removals, plus interpreter teardown
    left = len(os.listdir(scratch))
    assert stats["completed"] == 200 - left
    assert stats["dropped_at_exit"] == left > 0  # 200 x 5 ms do not fit in 0.3 s
    assert stats["submitted"] == stats["completed"] + stats["dropped_at_exit"]
    # A cleaner of its own is named in one warning of its own, as the default one is.
    summaries = re.findall(
        r"fastcleanup: cleaner (\S+) dropped (\d+) queued task\(s\) at exit, unrun: (.*)", err
    )
    assert [(n, rest) for _, n, rest in summaries] == [(str(left), f"remove_file {left}")], err
    assert summaries[0][0] != "default"


SIGTERM_CHILD = """
# C is the cleaner under test: the default one (the module's functions), or
# one with batches of a single task, whose dispatcher is busy far longer.
C = fc if BATCH is None else fc.Cleaner(batch_size=BATCH, max_batches=1000, registry=None)
if C is not fc:
    REPORTED.append(C)

async def main():
    C.init_worker()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if MODE == "shutdown":
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    elif MODE == "raise":
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    for name in sorted(os.listdir(SCRATCH)):
        C.submit(fc.RemoveFile(os.path.join(SCRATCH, name)))
    print("READY", flush=True)
    while not stop.is_set():
        s = C.stats()
        print("PENDING", s.queued + s.in_flight, flush=True)
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except TimeoutError:
            pass
    await C.shutdown(timeout=60)

fc.run(main(), use_uvloop=USE_UVLOOP)
"""


def sigterm_child(
    scratch: Path, kind: str, mode: str, settle: int = 2, batch: int | None = None
) -> tuple[int, str, str]:
    """Start the child, send SIGTERM once it has reported ``settle`` times (every
    50 ms) that work is pending; 0 sends it at once, while the dispatcher is
    busiest handing out the first batches."""
    head = SLOW_UNLINK + f"MODE, BATCH = {mode!r}, {batch!r}\n"
    proc = run_child(head + SIGTERM_CHILD, scratch, kind)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "READY", line + proc.communicate(timeout=30)[1]
    seen = ""
    for _ in range(settle):
        seen += proc.stdout.readline()
        assert int(seen.split()[-1]) > 0  # the signal comes while work is pending
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, seen + out, err


@posix_only
@use_uvloop
@pytest.mark.timeout(120)
def test_sigterm_unhandled_loses_the_queue(scratch: Path, kind: str) -> None:
    """No SIGTERM handler: the process dies at once; atexit does not run, so what
    was still queued is not removed (docs/guides/crawler.md tells how to handle SIGTERM)."""
    files = [str(scratch / f"u{i}") for i in range(300)]
    touch_all(files)
    code, out, _ = sigterm_child(scratch, kind, "none")
    assert code == -signal.SIGTERM
    assert child_stats(out) is None  # no exit hook ran
    assert len(existing(files)) > 0  # what was pending is left behind


@posix_only
@use_uvloop
@pytest.mark.timeout(120)
def test_sigterm_handled_by_shutdown_removes_everything(scratch: Path, kind: str) -> None:
    """A SIGTERM handler that makes main() await shutdown(): all work finishes."""
    files = [str(scratch / f"h{i}") for i in range(300)]
    touch_all(files)
    code, out, err = sigterm_child(scratch, kind, "shutdown")
    assert code == 0, err
    stats = child_stats(out)
    assert stats is not None
    assert existing(files) == []
    assert stats["completed"] == stats["submitted"] == 300
    assert stats["dropped_at_exit"] == 0


@posix_only
@use_uvloop
@pytest.mark.timeout(120)
def test_sigterm_handler_raising_systemexit_removes_everything(scratch: Path, kind: str) -> None:
    """A SIGTERM handler that raises SystemExit: the loop unwinds without
    shutdown(), atexit runs, and the queued removals run synchronously."""
    files = [str(scratch / f"r{i}") for i in range(300)]
    touch_all(files)
    code, out, err = sigterm_child(scratch, kind, "raise")
    assert code == 143, err
    stats = child_stats(out)
    assert stats is not None, out + err
    assert existing(files) == []
    assert stats["completed"] == stats["submitted"] == 300
    assert stats["dropped_at_exit"] == 0


@posix_only
@pytest.mark.skipif("uvloop" not in LOOP_KINDS, reason="needs uvloop")
@pytest.mark.timeout(300)
def test_sigterm_raising_while_the_dispatcher_works_loses_nothing(scratch: Path) -> None:
    """The same handler, with SIGTERM sent the moment work is submitted: the
    SystemExit often lands inside the dispatcher as it moves tasks from the
    queue to a batch. No task may vanish there, from disk or from the counters.

    On uvloop only: asyncio's own loop is pure Python, and a SystemExit that
    lands in its ``_run_once`` between popping a callback and running it loses
    that callback; a task whose step it was never finishes, and asyncio.run's
    teardown then waits for it forever (seen about once in 100 trials). That
    is CPython's, not fastcleanup's, and one more reason for
    ``loop.add_signal_handler``.
    """
    kind = "1"
    trials = scale(10, 40)
    for t in range(trials):
        files = [str(scratch / f"s{t}-{i}") for i in range(200)]
        touch_all(files)
        code, out, err = sigterm_child(scratch, kind, "raise", settle=0, batch=1)
        assert code == 143, err
        stats = child_stats(out)
        assert stats is not None, out + err
        assert stats["submitted"] == 200, (t, stats)  # counted, never un-counted
        assert existing(files) == [], (t, len(existing(files)), stats)
        assert stats["completed"] == 200, (t, stats)
    report("sigterm_race", loop="uvloop", trials=trials, files_lost=0)


@use_uvloop
@pytest.mark.timeout(120)
def test_ctrl_c_inside_a_cleanup_loses_nothing(scratch: Path, kind: str) -> None:
    """KeyboardInterrupt (Ctrl-C) or SystemExit (a SIGTERM handler that raises)
    can land while the loop runs a cleanup's own code. The batch it hits must
    not vanish: at exit its file removals run like any other queued ones."""
    files = [str(scratch / f"k{i}") for i in range(300)]
    touch_all(files)
    proc = run_child(
        """
        async def interrupted():
            raise KeyboardInterrupt  # Ctrl-C arriving while this cleanup runs

        async def main():
            fc.init_worker()
            fc.submit(fc.Call(interrupted))  # shares its batch with 63 removals
            for name in sorted(os.listdir(SCRATCH)):
                fc.submit(fc.RemoveFile(os.path.join(SCRATCH, name)))
            await asyncio.sleep(30)

        try:
            fc.run(main(), use_uvloop=USE_UVLOOP)
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
        """,
        scratch,
        kind,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "INTERRUPTED" in out
    stats = child_stats(out)
    assert stats is not None, out + err
    assert existing(files) == []
    assert stats["queued"] == stats["in_flight"] == 0, stats
    assert stats["completed"] == 300, stats
    # The interrupted cleanup itself ran and failed: counted once, not requeued.
    assert stats["failed"] == 1 and stats["dropped_at_exit"] == 0, stats
    assert stats["submitted"] == stats["completed"] + stats["failed"] + stats["dropped_at_exit"]
