"""Safe deletion: trees never followed out of, allowed roots never escaped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import fastcleanup as fc
from fastcleanup._paths import Refused, Roots, UnlinkJob

MakeCleaner = Callable[..., fc.Cleaner]


def outside_tree(base: Path) -> Path:
    outside = base / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "precious.txt").write_text("keep me")
    (outside / "deep" / "also.txt").write_text("keep me too")
    return outside


async def test_remove_tree_removes_links_not_their_targets(
    scratch: Path, make_cleaner: MakeCleaner
) -> None:
    outside = outside_tree(scratch)
    tree = scratch / "profile"
    (tree / "Default" / "Cache").mkdir(parents=True)
    (tree / "Default" / "Cache" / "data_0").write_bytes(b"x" * 100)
    (tree / "link-to-outside").symlink_to(outside)
    (tree / "Default" / "file-link").symlink_to(outside / "precious.txt")
    link_root = scratch / "profile-link"
    link_root.symlink_to(outside)  # a RemoveTree on a link removes the link only

    cleaner = make_cleaner()
    cleaner.init_worker()
    cleaner.submit(fc.RemoveTree(tree))
    cleaner.submit(fc.RemoveTree(link_root))
    cleaner.submit(fc.RemoveTree(scratch / "never-existed"))
    assert await cleaner.drain(timeout=10)

    assert not tree.exists()
    assert not link_root.is_symlink()
    assert (outside / "precious.txt").read_text() == "keep me"
    assert (outside / "deep" / "also.txt").exists()
    assert cleaner.stats().completed == 3
    await cleaner.shutdown()


async def test_wrong_kind_of_path_fails_and_is_left(
    scratch: Path, make_cleaner: MakeCleaner
) -> None:
    (scratch / "dir").mkdir()
    (scratch / "file").write_text("x")
    cleaner = make_cleaner()
    cleaner.init_worker()
    cleaner.submit(fc.RemoveFile(scratch / "dir"))
    cleaner.submit(fc.RemoveTree(scratch / "file"))
    assert await cleaner.drain(timeout=10)
    assert (scratch / "dir").is_dir() and (scratch / "file").is_file()
    assert cleaner._tally.failed_by == {("remove_file", "error"): 1, ("remove_tree", "error"): 1}
    await cleaner.shutdown()


async def test_allowed_roots_refuse_outside_paths(scratch: Path, make_cleaner: MakeCleaner) -> None:
    root = scratch / "crawl"
    (root / "pages").mkdir(parents=True)
    inside = root / "pages" / "ok.html"
    inside.write_text("x")
    outside = outside_tree(scratch)
    (root / "escape").symlink_to(outside)  # a symlinked parent that leads out

    cleaner = make_cleaner(allowed_roots=[root])
    cleaner.init_worker()
    attempts = [
        fc.RemoveFile(outside / "precious.txt"),  # plainly outside
        fc.RemoveFile(root / "pages" / ".." / ".." / "outside" / "precious.txt"),  # .. out
        fc.RemoveFile(root / "escape" / "precious.txt"),  # through the symlinked parent
        fc.RemoveTree(root / "escape" / "deep"),
        fc.RemoveTree(root),  # the root itself
        fc.RemoveTree(root / "pages" / ".." / ".." / "crawl"),  # the root, spelled with ..
    ]
    for task in attempts:
        cleaner.submit(task)  # type: ignore[arg-type]
    cleaner.submit(fc.RemoveFile(inside))
    assert await cleaner.drain(timeout=10)

    assert (outside / "precious.txt").exists() and (outside / "deep" / "also.txt").exists()
    assert root.is_dir() and not inside.exists()
    assert cleaner._tally.failed_by == {
        ("remove_file", "refused"): 3,
        ("remove_tree", "refused"): 3,
    }
    assert cleaner.stats().completed == 1
    await cleaner.shutdown()


async def test_a_path_task_with_its_own_run_is_checked_before_it_runs(
    scratch: Path, make_cleaner: MakeCleaner
) -> None:
    """A RemoveFile or RemoveTree subclass with a run() of its own: refused
    outside the roots before that run() starts, run as usual inside them."""
    root = scratch / "crawl"
    (root / "pages" / "tree" / "sub").mkdir(parents=True)
    inside = root / "pages" / "ok.html"
    inside.write_text("x")
    outside = outside_tree(scratch)
    (root / "escape").symlink_to(outside)  # a symlinked parent that leads out
    ran: list[str] = []

    class AuditedFile(fc.RemoveFile):
        async def run(self) -> None:
            ran.append(os.fsdecode(self.path))
            await super().run()

    class AuditedTree(fc.RemoveTree):
        async def run(self) -> None:
            ran.append(os.fsdecode(self.path))
            await super().run()

    cleaner = make_cleaner(allowed_roots=[root])
    cleaner.init_worker()
    tasks: list[fc.CleanupTask] = [
        AuditedFile(outside / "precious.txt"),  # plainly outside
        AuditedFile(root / "escape" / "precious.txt"),  # through the symlinked parent
        AuditedTree(outside / "deep"),
        AuditedTree(root / "escape" / "deep"),
        AuditedFile(inside),
        AuditedTree(root / "pages" / "tree"),
    ]
    for task in tasks:
        cleaner.submit(task)
    assert await cleaner.drain(timeout=10)

    # Only the two inside the root ever got to run().
    assert sorted(ran) == sorted([str(inside), str(root / "pages" / "tree")])
    assert (outside / "precious.txt").read_text() == "keep me"
    assert (outside / "deep" / "also.txt").read_text() == "keep me too"
    assert not inside.exists() and not (root / "pages" / "tree").exists()
    assert cleaner._tally.failed_by == {
        ("remove_file", "refused"): 2,
        ("remove_tree", "refused"): 2,
    }
    assert cleaner.stats().completed == 2
    await cleaner.shutdown()


def test_symlink_swapped_in_after_the_check_fails_the_walk(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent is reopened from the root with O_NOFOLLOW: a late swap cannot escape."""
    root = scratch / "root"
    (root / "sub").mkdir(parents=True)
    outside = outside_tree(scratch)
    roots = Roots([root])
    fd, name = roots.open_parent(str(root / "sub" / "x"))
    os.close(fd)
    assert name == "x"
    (root / "sub").rmdir()
    (root / "sub").symlink_to(outside)
    with pytest.raises(Refused):  # resolved now: plainly outside
        roots.open_parent(str(root / "sub" / "precious.txt"))
    # The swap lands between the resolution and the walk: resolution saw a directory.
    monkeypatch.setattr(os.path, "realpath", lambda p, **kw: os.path.abspath(p))
    with pytest.raises(OSError, match="sub") as caught:
        roots.open_parent(str(root / "sub" / "precious.txt"))
    assert not isinstance(caught.value, Refused)  # the walk itself refused to follow
    assert (outside / "precious.txt").exists()


def test_roots_take_one_bare_path_and_reject_missing_ones(scratch: Path) -> None:
    assert Roots(scratch)._roots == (os.path.realpath(scratch),)
    with pytest.raises(ValueError, match="not an existing directory"):
        Roots([scratch / "missing"])


def test_a_confined_job_opens_each_parent_once(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each parent is resolved and opened once per job, not once per file; files
    outside the roots are refused and left, a missing parent means a file gone."""
    root = scratch / "root"
    inside = [make_files_in(root / f"d{i}", 100) for i in range(3)]
    outside = make_files_in(scratch / "elsewhere", 10)
    paths: list[str | bytes] = [p for trio in zip(*inside, strict=True) for p in trio]
    paths[5:5] = outside
    paths.append(str(root / "gone" / "x"))
    opened: list[str] = []
    real_open_dir = Roots.open_dir

    def open_dir(self: Roots, parent: str, held: dict[str, int] | None = None) -> int:
        opened.append(parent)
        return real_open_dir(self, parent, held)

    monkeypatch.setattr(Roots, "open_dir", open_dir)
    job = UnlinkJob(paths, Roots([root]))
    job()

    assert sorted(opened) == sorted({os.path.dirname(p) for p in map(os.fsdecode, paths)})
    assert job.done == len(paths)
    assert [k for k, err in job.errors] == list(range(5, 15))
    assert all(isinstance(err, Refused) for _, err in job.errors)
    assert all(os.path.exists(p) for p in outside)
    assert not any(os.listdir(root / f"d{i}") for i in range(3))


def test_a_confined_job_opens_each_directory_below_the_root_once(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parents that share ancestors are walked to from the deepest one the job
    has opened: each directory is opened once, however many parents lie below it."""
    root = scratch / "root"
    deep = [root / "a" / "b" / f"c{k}" for k in range(5)]
    paths: list[str | bytes] = [str(d / f"f{i}") for i in range(2) for d in deep]
    paths += [str(root / "a" / "b" / "g"), str(root / "a" / "x" / "y" / "h")]
    for p in map(os.fsdecode, paths):
        Path(p).parent.mkdir(parents=True, exist_ok=True)
        Path(p).touch()
    opened: list[str] = []
    real_open = os.open

    def counting_open(path: str, flags: int, mode: int = 0o777, **kw: Any) -> int:
        opened.append(os.fsdecode(path))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", counting_open)
    job = UnlinkJob(paths, Roots([root]))
    job()
    monkeypatch.undo()
    assert (job.done, job.errors) == (len(paths), [])
    # One walk per parent would open a and b seven times, x twice.
    assert sorted(opened) == sorted([str(root), "a", "b", "x", "y", *(f"c{k}" for k in range(5))])
    assert [p for p in root.rglob("*") if p.is_file()] == []


def make_files_in(directory: Path, n: int) -> list[str]:
    directory.mkdir(parents=True)
    for i in range(n):
        (directory / f"f{i}").touch()
    return [str(directory / f"f{i}") for i in range(n)]


# A cleaner in a child process that is subject to file permissions (a root
# child gives up its two DAC overrides) removes files below a directory it
# may search and write but not read. unlink(2) by path needs no more, and
# neither may a cleaner, with allowed_roots or without.
_NO_READ_CHILD = """
import asyncio, os, sys
import fastcleanup as fc

base, roots = sys.argv[1], sys.argv[2:] or None
try:
    os.listdir(os.path.join(base, "noread"))
except PermissionError:
    pass  # as it must be, or the test would prove nothing
else:
    sys.exit("the child could read noread/: it is not subject to file permissions")

async def main():
    async with fc.Cleaner(allowed_roots=roots) as cleaner:
        for k in range(40):
            for where in ("noread", "noread/inner", "plain"):
                cleaner.submit(fc.RemoveFile(os.path.join(base, where, f"f{k}")))
        await cleaner.drain()

asyncio.run(main())
"""


def _subject_to_permissions() -> list[str]:
    """The command prefix that makes a child subject to file permissions."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv (util-linux) is missing")
    drop = "-dac_override,-dac_read_search"
    return [setpriv, "--bounding-set", drop, "--inh-caps", "-all", "--"]


@pytest.mark.parametrize("pure", [False, True], ids=["compiled", "pure-python"])
@pytest.mark.parametrize("confined", [False, True], ids=["default", "allowed-roots"])
def test_a_directory_that_is_searchable_but_not_readable_is_no_obstacle(
    scratch: Path, confined: bool, pure: bool
) -> None:
    for where in ("noread/inner", "plain"):
        (scratch / where).mkdir(parents=True)
    for k in range(40):
        for where in ("noread", "noread/inner", "plain"):
            (scratch / where / f"f{k}").touch()
    command = [*_subject_to_permissions(), sys.executable, "-c", _NO_READ_CHILD, str(scratch)]
    if confined:
        command.append(str(scratch))
    env = dict(os.environ, FASTCLEANUP_PURE_PYTHON="1" if pure else "0")
    (scratch / "noread").chmod(0o333)
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    finally:
        (scratch / "noread").chmod(0o755)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert [p for p in scratch.rglob("*") if p.is_file()] == []
