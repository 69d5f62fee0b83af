"""Deletion safety under attack.

* A directory inside a tree is swapped for a symlink to somewhere else while
  RemoveTree walks the tree: nothing outside the tree is ever removed.
* The parent directories of a confined burst of file removals are swapped for
  symlinks out of the root: nothing outside is removed, on the compiled lane
  as on the executor.
* allowed_roots cannot be escaped, whatever mix of ``..``, ``.``, symlinks
  (inward, outward, chained) a path is made of: what a confined cleaner
  removes is exactly what the kernel would reach through that path, and only
  when its resolved parent lies inside the root; a root itself never goes.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

import fastcleanup as fc
from tests.conftest import loop_factory
from tests.torture_helpers import (
    conserved,
    existing,
    failures_by_reason,
    forget,
    hypothesis_settings,
    make_tree,
    quiet,
    report,
    scale,
    scrape,
)


def snapshot(top: Path) -> set[str]:
    """Every entry under ``top``, links not followed."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            out.add(os.path.join(dirpath, n))
    return out


def subdirs(top: Path) -> list[Path]:
    return [Path(p) for p in snapshot(top) if os.path.isdir(p)]


class Swapper(threading.Thread):
    """Replaces directories of a tree by symlinks to ``target`` (and back) while
    the tree is being removed. Sleeps between swaps: it must not starve the
    unlink threads of the GIL."""

    def __init__(self, dirs: list[Path], target: Path, seed: int) -> None:
        super().__init__(daemon=True)
        self.dirs = dirs
        self.target = target
        self.rng = random.Random(seed)
        self.done = threading.Event()
        self.swaps = 0

    def run(self) -> None:
        while not self.done.is_set():
            d = self.rng.choice(self.dirs)
            try:
                os.rename(d, f"{d}.moved")
                os.symlink(self.target, d)
                self.swaps += 1
            except OSError:
                pass  # already removed, or already swapped: the race is the point
            self.done.wait(0.0002)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("confined", [False, True], ids=["free", "confined"])
async def test_symlink_swapped_in_during_remove_tree_never_leads_outside(
    scratch: Path, loop_kind: str, confined: bool
) -> None:
    rounds = scale(25, 150)
    outside = scratch / "outside"
    make_tree(outside, 4, 2, "o")
    precious = snapshot(outside)
    root = scratch / "root"
    root.mkdir()
    registry = CollectorRegistry()
    kw: dict[str, Any] = {"allowed_roots": [root]} if confined else {}
    swaps = 0
    outcomes: Counter[str] = Counter()
    async with fc.Cleaner(registry=registry, name="swap", **kw) as cleaner:
        for r in range(rounds):
            top = root / f"tree{r}"
            make_tree(top, 12, 3, "t")
            dirs = [*subdirs(top), top]
            swapper = Swapper(dirs, outside, seed=r)
            swapper.start()
            await asyncio.sleep(0.001 * (r % 3))
            cleaner.submit(fc.RemoveTree(top))
            assert await cleaner.drain(timeout=60)
            swapper.done.set()
            swapper.join()
            swaps += swapper.swaps
            assert snapshot(outside) == precious, f"round {r}: something outside was removed"
            # What the swaps left behind; removing it must not touch outside either.
            for leftover in existing([str(top), f"{top}.moved"]):
                cleaner.submit(fc.RemoveTree(leftover))
            assert await cleaner.drain(timeout=60)
            assert snapshot(outside) == precious
        s = cleaner.stats()
    assert conserved(s) and quiet(s), s
    for (kind, reason), n in failures_by_reason(scrape(registry)).items():
        assert (kind, reason) == ("remove_tree", "error"), (kind, reason, n)
        outcomes[reason] += n
    outcomes["completed"] = s.completed
    assert swaps > rounds, "the swapper hardly ran: the test proves little"
    report(
        "symlink_swap",
        loop=loop_kind,
        confined=str(confined),
        rounds=rounds,
        swaps=swaps,
        files_lost_outside=0,
        **outcomes,
    )


@pytest.mark.timeout(600)
@pytest.mark.parametrize("via", ["lane", "executor"])
async def test_symlink_swapped_in_for_a_parent_never_leads_outside(
    scratch: Path, loop_kind: str, via: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bursts of confined file removals while their parent directories are swapped
    for symlinks to a directory of files with the same names: not one of those goes.

    The compiled lane walks each parent from the root with ``O_NOFOLLOW`` and hands
    a symlink to the resolver; the executor's job resolves first, then walks.
    """
    if via == "executor":
        real_unlink = os.unlink

        def unlink(path: Any, *, dir_fd: int | None = None) -> None:
            real_unlink(path, dir_fd=dir_fd)

        monkeypatch.setattr(os, "unlink", unlink)  # a replaced os.unlink: no lane
    rounds, per_dir = scale(20, 150), 150
    outside = scratch / "outside"
    outside.mkdir()
    for i in range(per_dir):
        (outside / f"f{i}").write_bytes(b"x")
    precious = snapshot(outside)
    root = scratch / "root"
    root.mkdir()
    swaps = 0
    async with fc.Cleaner(registry=CollectorRegistry(), allowed_roots=[root]) as cleaner:
        for r in range(rounds):
            dirs = [root / f"r{r}" / f"d{k}" for k in range(8)]
            for d in dirs:
                d.mkdir(parents=True)
                for i in range(per_dir):
                    (d / f"f{i}").write_bytes(b"x")
            swapper = Swapper(dirs, outside, seed=r)
            swapper.start()
            for i in range(per_dir):
                for d in dirs:
                    cleaner.submit(fc.RemoveFile(str(d / f"f{i}")))
                if i % 16 == 0:
                    await asyncio.sleep(0)  # submits spread over loop turns, as in a crawler
            assert await cleaner.drain(timeout=60)
            swapper.done.set()
            swapper.join()
            swaps += swapper.swaps
            assert snapshot(outside) == precious, f"round {r}: a file outside was removed"
        s = cleaner.stats()
    assert conserved(s) and quiet(s), s
    assert swaps >= rounds, f"only {swaps} swaps: the test proves little"
    report("parent_swap", loop=loop_kind, via=via, rounds=rounds, swaps=swaps, lost_outside=0)


# -- allowed_roots -------------------------------------------------------------------

# The sandbox, rebuilt for every example:
#
#   base/root/                  the allowed root
#       a/b/file, a/file, file
#       in  -> a                (inward symlink)
#       deep -> a/b             (inward, two levels)
#       out -> ../outside/x     (outward symlink)
#       up  -> ..               (to base: outward)
#       self -> .               (to the root itself)
#   base/outside/x/y/file, x/file, file
#   base/file
COMPONENTS = [
    "a",
    "b",
    "x",
    "y",
    "file",
    "in",
    "deep",
    "out",
    "up",
    "self",
    "..",
    ".",
    "root",
    "outside",
]


LINKS = ["in", "deep", "out", "up", "self"]


def build_sandbox(base: Path) -> Path:
    root = base / "root"
    (root / "a" / "b").mkdir(parents=True)
    (base / "outside" / "x" / "y").mkdir(parents=True)
    for f in (
        "root/a/b/file",
        "root/a/file",
        "root/file",
        "outside/x/y/file",
        "outside/x/file",
        "outside/file",
        "file",
    ):
        (base / f).write_bytes(b"x")
    (root / "in").symlink_to("a")
    (root / "deep").symlink_to("a/b")
    (root / "out").symlink_to("../outside/x")
    (root / "up").symlink_to("..")
    (root / "self").symlink_to(".")
    return root


def physical_target(path: str) -> str:
    """What the kernel reaches through ``path``, without following its last component."""
    parent, name = os.path.split(path)
    if name in ("", ".", ".."):
        return os.path.realpath(path)
    return os.path.join(os.path.realpath(parent), name)


def inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


@pytest.mark.timeout(900)
def test_allowed_roots_cannot_be_escaped(loop_kind: str, scratch: Path) -> None:
    base = Path(os.path.realpath(scratch)) / "sandbox"
    examples = 0
    refused = 0
    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        base.mkdir()
        root = build_sandbox(base)
        real_root = os.path.realpath(root)
        registry = CollectorRegistry()
        cleaner = fc.Cleaner(allowed_roots=[root], registry=registry, name="roots")

        async def start() -> None:
            cleaner.init_worker()

        runner.run(start())

        @hypothesis_settings(300, 1_500)
        @given(
            parts=st.one_of(
                st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=6),
                # The classic escapes: through a symlink, then ".." out of it.
                st.builds(
                    lambda link, ups, rest: [link, *ups, *rest],
                    st.sampled_from(LINKS),
                    st.lists(st.sampled_from(["..", "."]), min_size=1, max_size=3),
                    st.lists(st.sampled_from(COMPONENTS), max_size=2),
                ),
            ),
            tree=st.booleans(),
        )
        def check(parts: list[str], tree: bool) -> None:
            nonlocal examples, refused
            examples += 1
            shutil.rmtree(base)
            base.mkdir()
            build_sandbox(base)
            path = str(root) + "/" + "/".join(parts)
            target = physical_target(path)
            allowed = inside(os.path.dirname(target), real_root) and target != real_root
            before = snapshot(base)
            before_failed = cleaner.stats().failed

            try:
                task = fc.RemoveTree(path) if tree else fc.RemoveFile(path)
            except ValueError:
                return  # refused at construction: "root/a/.." and the like

            async def go() -> None:
                cleaner.submit(task)
                assert await cleaner.drain(timeout=20)

            runner.run(go())
            gone = before - snapshot(base)
            assert os.path.isdir(real_root), f"{path}: the root itself was removed"
            if not allowed:
                assert gone == set(), f"{path} is outside the root, yet {sorted(gone)} went"
            for g in gone:  # only the target, and for a tree what lies under it
                assert g == target or g.startswith(target + os.sep), (
                    f"{path}: removed {g}, but the kernel reaches {target}"
                )
            if cleaner.stats().failed > before_failed and not allowed:
                refused += 1

        try:
            check()

            async def stop() -> fc.Stats:
                s = cleaner.stats()
                await cleaner.shutdown()
                return s

            s = runner.run(stop())
            reasons = failures_by_reason(scrape(registry))
        finally:
            forget(cleaner)
    assert conserved(s) and quiet(s)
    assert set(reasons) <= {
        ("remove_file", "refused"),
        ("remove_tree", "refused"),
        ("remove_file", "error"),
        ("remove_tree", "error"),
    }
    report("allowed_roots", loop=loop_kind, examples=examples, refused=refused, escapes=0)


def test_dotdot_after_a_symlink_is_resolved_like_the_kernel(scratch: Path, loop_kind: str) -> None:
    """root/link/../victim, with link -> outside/inner: the kernel reaches
    outside/victim, so a confined cleaner must refuse. Reading ``..`` as text
    (root/victim) would remove a file nobody named."""
    root, outside = scratch / "root", scratch / "outside"
    root.mkdir()
    (outside / "inner").mkdir(parents=True)
    (outside / "victim").write_bytes(b"outside")
    (root / "victim").write_bytes(b"inside, never named")
    (root / "link").symlink_to(outside / "inner")
    registry = CollectorRegistry()
    cleaner = fc.Cleaner(allowed_roots=[root], registry=registry, name="dotdot")

    async def go() -> fc.Stats:
        async with cleaner:
            cleaner.submit(fc.RemoveFile(f"{root}/link/../victim"))
            cleaner.submit(fc.RemoveTree(f"{root}/link/../inner"))
            assert await cleaner.drain(timeout=10)
            return cleaner.stats()

    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        s = runner.run(go())
    reasons = failures_by_reason(scrape(registry))
    forget(cleaner)
    assert (root / "victim").exists(), "removed root/victim, which no task named"
    assert (outside / "victim").exists() and (outside / "inner").is_dir()
    assert reasons == Counter({("remove_file", "refused"): 1, ("remove_tree", "refused"): 1})
    assert s.completed == 0


def test_subclassed_path_tasks_stay_confined(scratch: Path, loop_kind: str) -> None:
    """A RemoveFile or RemoveTree subclass (say, one that adds logging) is
    either refused at class creation or confined like its base class."""
    root, outside = scratch / "root", scratch / "outside"
    root.mkdir()
    (outside / "tree").mkdir(parents=True)
    (outside / "file").write_bytes(b"x")
    try:

        class LoggedRemoveFile(fc.RemoveFile):
            pass

        class LoggedRemoveTree(fc.RemoveTree):
            pass

    except TypeError:
        return  # final classes: nothing can bypass them
    cleaner = fc.Cleaner(allowed_roots=[root], registry=None)

    async def go() -> None:
        async with cleaner:
            cleaner.submit(LoggedRemoveFile(outside / "file"))
            cleaner.submit(LoggedRemoveTree(outside / "tree"))
            assert await cleaner.drain(timeout=10)

    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        runner.run(go())
    forget(cleaner)
    assert (outside / "file").exists(), "a RemoveFile subclass escaped allowed_roots"
    assert (outside / "tree").is_dir(), "a RemoveTree subclass escaped allowed_roots"


@pytest.mark.parametrize("suffix", ["", "/", "/.", "/a/..", "/self", "/self/."])
def test_a_root_itself_is_never_removed(scratch: Path, loop_kind: str, suffix: str) -> None:
    root = scratch / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "f").write_bytes(b"x")
    (root / "self").symlink_to(".")
    try:
        task = fc.RemoveTree(f"{root}{suffix}")
    except ValueError:
        task = None  # refused at once ("name the directory itself"): just as safe
    cleaner = fc.Cleaner(allowed_roots=[root], registry=None)

    async def go() -> None:
        async with cleaner:
            if task is not None:
                cleaner.submit(task)
            assert await cleaner.drain(timeout=10)

    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        runner.run(go())
    forget(cleaner)
    assert (root / "a" / "f").exists()
    if suffix == "/self":
        assert not os.path.lexists(root / "self")  # the link is inside: it may go
    else:
        assert (root / "self").is_symlink()


def test_concurrent_deletions_inside_a_tree_do_not_stop_its_removal(
    scratch: Path, loop_kind: str
) -> None:
    """The browser deletes its own lock files while RemoveTree walks its profile
    directory: the tree must still go (or be counted as failed), never be
    counted as completed while it is still there."""
    tops = [scratch / f"profile{i}" for i in range(20)]
    for i, top in enumerate(tops):
        make_tree(top, 10, 2, f"p{i}.")
    real_unlink = os.unlink
    raced: list[str] = []

    def racing_unlink(path: Any, *, dir_fd: int | None = None) -> None:
        # Before an unlink inside a tree, "the browser" removes a sibling file
        # that the walk has listed (it lists a directory before removing in it).
        name = os.fsdecode(path)
        if dir_fd is not None and name[-2:-1] == "f" and name[-1].isdigit():
            sibling = f"{name[:-1]}{(int(name[-1]) + 5) % 10}"
            try:
                real_unlink(sibling, dir_fd=dir_fd)
                raced.append(sibling)
            except FileNotFoundError:
                pass
        real_unlink(path, dir_fd=dir_fd)

    registry = CollectorRegistry()
    cleaner = fc.Cleaner(registry=registry, name="race")

    async def go() -> fc.Stats:
        async with cleaner:
            for top in tops:
                cleaner.submit(fc.RemoveTree(top))
            assert await cleaner.drain(timeout=30)
            return cleaner.stats()

    os.unlink = racing_unlink
    try:
        with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
            s = runner.run(go())
    finally:
        os.unlink = real_unlink
        forget(cleaner)
    assert raced, "the race was never staged"
    left = [t for t in tops if t.exists()]
    assert s.failed >= len(left), f"{len(left)} trees left behind, counted completed: {s}"
    assert left == [], f"{len(left)} trees left behind"
