"""The ``trees`` scenario: bursts of browser-profile-like trees.

Each tree is what a crawler's browser context leaves: ``TREE_FILES`` files
over ``TREE_DIRS`` nested directories and a ``SingletonLock`` symlink.
fastcleanup (``RemoveTree`` per tree, by default and with
``allowed_roots``: /dev/shm and the temp dir) runs beside one ``rm -rf``
process given every tree and a plain ``for t in trees: shutil.rmtree(t)``
loop on one thread, all on fresh trees of the same shape, with the
harness's loop probes.

>>> rows = compare_trees(TREE_COMPETITORS, 100, 3, parent="/dev/shm")
>>> rows["fastcleanup-uvloop"].rate / rows[RM_RF].rate   # trees/s as x one rm -rf
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Final

import fastcleanup as fc

from .harness import BenchError, Burst, BurstSession, Competitor, Measurement, summarize

__all__ = [
    "RMTREE_LOOP",
    "RM_RF",
    "TREES_CONFINED",
    "TREES_OURS",
    "TREE_COMPETITORS",
    "TREE_DIRS",
    "TREE_FILES",
    "compare_trees",
    "make_trees",
    "measure_trees",
    "on_tmpfs",
]

TREE_FILES: Final = 200
TREE_DIRS: Final = 5
RM_RF: Final = "rm-rf-1-process"
RMTREE_LOOP: Final = "rmtree-loop-1-thread"
TREES_OURS: Final = "fastcleanup-uvloop"
TREES_CONFINED: Final = "fastcleanup-confined"

Trees = Sequence[str]


def _make_one(path: str) -> None:
    os.mkdir(path)
    d = path
    per_dir = TREE_FILES // TREE_DIRS
    for level in range(TREE_DIRS):
        if level:
            d = os.path.join(d, f"Default-{level}")
            os.mkdir(d)
        for k in range(per_dir):
            with open(os.path.join(d, f"f{k}"), "wb") as f:
                f.write(b"x")
    os.symlink("host-4242", os.path.join(path, "SingletonLock"))


@contextlib.contextmanager
def make_trees(n: int, parent: str | None = None) -> Iterator[list[str]]:
    """``n`` fresh profile-like trees in a directory of their own, removed after."""
    where = tempfile.mkdtemp(prefix="trees-", dir=parent)
    trees = [os.path.join(where, f"profile-{i}") for i in range(n)]
    try:
        for t in trees:
            _make_one(t)
        yield trees
    finally:
        shutil.rmtree(where, ignore_errors=True)


@contextlib.asynccontextmanager
async def _rm_rf() -> AsyncIterator[Burst[Trees]]:
    async def burst(trees: Trees) -> None:
        proc = await asyncio.create_subprocess_exec("rm", "-rf", "--", *trees)
        if await proc.wait() != 0:
            raise BenchError(f"rm -rf exited with {proc.returncode}")

    yield burst


@contextlib.asynccontextmanager
async def _rmtree_loop() -> AsyncIterator[Burst[Trees]]:
    def remove(trees: Trees) -> None:
        for t in trees:
            shutil.rmtree(t)

    async def burst(trees: Trees) -> None:
        await asyncio.to_thread(remove, trees)

    yield burst


def _roots() -> list[str]:
    """The allowed roots of the confined competitor: where bench trees are made."""
    return [p for p in dict.fromkeys(("/dev/shm", tempfile.gettempdir())) if os.path.isdir(p)]


def _fastcleanup(confined: bool) -> Competitor[Trees]:
    @contextlib.asynccontextmanager
    async def open_() -> AsyncIterator[Burst[Trees]]:
        cleaner = fc.Cleaner(allowed_roots=_roots() if confined else None, registry=None)
        cleaner.init_worker()

        async def burst(trees: Trees) -> None:
            before = cleaner.stats()
            for t in trees:
                cleaner.submit(fc.RemoveTree(t))
            if not await cleaner.drain(timeout=600):
                raise BenchError("fastcleanup did not drain within 600 s")
            failed = cleaner.stats().failed - before.failed
            if failed:
                raise BenchError(f"fastcleanup failed {failed} trees (outside {_roots()}?)")

        try:
            yield burst
        finally:
            await cleaner.shutdown()

    name = TREES_CONFINED if confined else TREES_OURS
    about = "RemoveTree per tree" + (", allowed_roots" if confined else "")
    return Competitor(name, about, open_, loop="uvloop", needs="uvloop")


TREE_COMPETITORS: Final[dict[str, Competitor[Trees]]] = {
    RM_RF: Competitor(RM_RF, "one `rm -rf` process given every tree", _rm_rf),
    RMTREE_LOOP: Competitor(
        RMTREE_LOOP, "for t in trees: shutil.rmtree(t), one thread", _rmtree_loop
    ),
    TREES_OURS: _fastcleanup(False),
    TREES_CONFINED: _fastcleanup(True),
}


def on_tmpfs(path: str) -> bool:
    """Whether ``path`` lies on a tmpfs (the mount with the longest matching prefix)."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return False
    real, best, fs = os.path.realpath(path), "", ""
    for cols in mounts:
        inside = len(cols) >= 3 and (real == cols[1] or real.startswith(cols[1].rstrip("/") + "/"))
        if inside and len(cols[1]) > len(best):
            best, fs = cols[1], cols[2]
    return fs == "tmpfs"


def measure_trees(name: str, n: int, *, parent: str | None = None) -> Measurement:
    """One burst of ``n`` fresh trees removed by competitor ``name``; every tree must go."""
    with make_trees(n, parent) as trees, BurstSession(TREE_COMPETITORS[name]) as session:
        m = session.run(trees)
        left = [t for t in trees if os.path.lexists(t)]
        if left:
            raise BenchError(f"{name} left {len(left)} of {n} trees, first {left[0]}")
        return m


def compare_trees(
    names: Sequence[str],
    n: int,
    repeat: int,
    *,
    parent: str | None = None,
    progress: Callable[[Measurement], None] | None = None,
) -> dict[str, Measurement]:
    """Every competitor ``repeat`` times on ``n`` fresh trees, in turn; the medians."""
    results: dict[str, list[Measurement]] = {name: [] for name in names}
    for r in range(repeat):
        k = r % len(names) if names else 0
        for name in [*names[k:], *names[:k]]:
            m = measure_trees(name, n, parent=parent)
            results[name].append(m)
            if progress is not None:
                progress(m)
    return {name: summarize(ms) for name, ms in results.items()}
