"""The task objects and the bulk unlink, under what hostile or careless code does to them.

Deep chains, cycles and leaks are checked in a fresh interpreter of each
build (``FASTCLEANUP_PURE_PYTHON=1`` for the pure one): a crash there is
a failed test, not a dead test run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from fastcleanup import _unlink

from .helpers import PROJECT_ROOT

BUILDS = ["compiled", "pure"]


def run_build(build: str, code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter of ``build``; its output comes back."""
    if build == "compiled" and not _unlink.COMPILED:
        pytest.skip("the C module is not built")
    env = {**os.environ, "FASTCLEANUP_PURE_PYTHON": "1" if build == "pure" else "0"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_ran(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    return proc.stdout.split()


@pytest.mark.parametrize("build", BUILDS)
def test_a_call_nested_200_000_deep_is_freed(build: str) -> None:
    out = run_build(
        build,
        """
        import fastcleanup as fc

        async def f(*args): pass

        x = None
        for _ in range(200_000):
            x = fc.Call(f, x)
        del x
        print("freed")
        """,
    )
    assert assert_ran(out) == ["freed"]


@pytest.mark.parametrize("build", BUILDS)
def test_a_remove_file_chain_a_million_deep_is_refused_or_freed(build: str) -> None:
    """Through ``path``, the C type takes str or bytes only (so no chain forms); the
    pure class holds anything, and the collector's trashcan frees the chain. A
    chain through a subclass's own attribute is freed on both builds."""
    out = run_build(
        build,
        """
        import fastcleanup as fc

        class Linked(fc.RemoveFile):
            __slots__ = ("next",)

        x = fc.RemoveFile("/tmp/0")
        try:
            for _ in range(1_000_000):
                t = fc.RemoveFile("/tmp/1")
                t.path = x
                x = t
            print("built")
        except TypeError:
            print("refused")
        del x
        y = None
        for _ in range(1_000_000):
            t = Linked("/tmp/2")
            t.next = y
            y = t
        del y, t
        print("freed")
        """,
    )
    assert assert_ran(out) == ["refused" if build == "compiled" else "built", "freed"]


def test_a_remove_file_path_is_checked_when_set_as_when_made() -> None:
    out = run_build(
        "compiled",
        """
        import pathlib
        import fastcleanup as fc

        t = fc.RemoveFile("/tmp/a")
        t.path = pathlib.Path("/tmp/b")  # converted, as the constructor does
        print(type(t.path).__name__, t.path)
        for bad in (t, 17, "", "a\\0b", None):
            try:
                t.path = bad
            except (TypeError, ValueError) as exc:
                print(type(exc).__name__)
        print(t.path)
        del t.path
        print(hasattr(t, "path"))
        """,
    )
    assert assert_ran(out) == [
        "str", "/tmp/b", "TypeError", "TypeError", "ValueError", "ValueError", "TypeError",
        "/tmp/b", "False",
    ]  # fmt: skip


def test_the_pure_class_stores_any_path_and_that_task_alone_fails() -> None:
    """A value that is no path fails its one task (EINVAL), counted once; the burst runs."""
    out = run_build(
        "pure",
        """
        import os, tempfile
        import fastcleanup as fc

        async def main():
            where = tempfile.mkdtemp()
            files = [os.path.join(where, f"f{k}") for k in range(2000)]
            for path in files:
                open(path, "w").close()
            bad = fc.RemoveFile(os.path.join(where, "never-made"))
            bad.path = 17  # stored as given: only the constructor checks
            print(bad.path)
            async with fc.Cleaner(registry=None) as cleaner:
                for k, path in enumerate(files):
                    cleaner.submit(fc.RemoveFile(path))
                    if k == 1000:
                        cleaner.submit(bad)
                await cleaner.drain(30)
            os.rmdir(where)  # every file of the burst is gone
            s = cleaner.stats()
            failed_by = cleaner._tally.failed_by.items()
            print(s.completed, s.failed, *(f"{kind}/{why}={n}" for (kind, why), n in failed_by))

        fc.run(main())
        """,
    )
    assert assert_ran(out) == ["17", "2000", "1", "remove_file/error=1"]
    assert "remove_file '17' failed: [Errno 22] Invalid argument" in out.stderr


LEAK_ROUNDS = """
import asyncio, gc, os, sys, tempfile
import fastcleanup as fc

def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

class Holder:
    pass

async def noop(*args, **kwargs):
    pass

async def main(where: str) -> None:
    c = fc.Cleaner(registry=None, task_timeout=5)
    c.init_worker()
    marks = []
    for round in range(9):
        # A cycle attempted through every task type's fields; the C RemoveFile
        # refuses to hold the holder, the others are collected.
        for _ in range(100_000):
            h, t = Holder(), fc.RemoveFile("/tmp/x")
            try:
                t.path = h
            except TypeError:
                pass
            h.task = t
            h.call = fc.Call(noop, h)
        # A burst through the whole path, one failure in it.
        paths = [os.path.join(where, f"{round}-{i}") for i in range(3000)]
        for p in paths:
            open(p, "w").close()
        for p in paths:
            c.submit(fc.RemoveFile(p))
        c.submit(fc.RemoveFile(where))  # a directory: fails
        c.submit(fc.Call(noop, 1, k=2))
        assert await c.drain(timeout=30)
        assert not os.listdir(where)
        gc.collect()
        marks.append((rss(), len(gc.get_objects())))
    await c.shutdown()
    s = c.stats()
    assert (s.completed, s.failed, s.in_flight) == (9 * 3001, 9, 0), s
    (rss0, objs0), (rss1, objs1) = marks[2], marks[-1]
    print(rss1 - rss0, objs1 - objs0)

with tempfile.TemporaryDirectory(dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None) as d:
    asyncio.run(main(d))
"""


@pytest.mark.parametrize("build", BUILDS)
def test_memory_and_objects_stay_flat_over_repeated_bursts(build: str) -> None:
    """Six rounds after the warm-up: a leaked RemoveFile cycle would add some 13 MB
    a round (78 MB in all), a leaked task or error object 3,000 objects a round."""
    grew, objects = map(int, assert_ran(run_build(build, LEAK_ROUNDS, timeout=300)))
    assert grew < 8 * 2**20, f"RSS grew {grew / 2**20:.1f} MB over six rounds"
    assert objects < 1500, f"{objects} more objects after six rounds"
