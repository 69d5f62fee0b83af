"""Guards: Python's Drop. Cleanup submitted when an object goes away."""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import fastcleanup as fc

MakeCleaner = Callable[..., fc.Cleaner]


class Page:
    pass


def guarded_page(scratch: Path, cleaner: fc.Cleaner) -> tuple[Page, weakref.finalize[Any, Any]]:
    """A page whose collection removes the directory ``scratch/profile``."""
    (scratch / "profile").mkdir()
    page = Page()
    return page, fc.on_collect(page, fc.RemoveTree(scratch / "profile"), cleaner=cleaner)


async def test_on_collect_submits_when_the_object_dies(
    scratch: Path, make_cleaner: MakeCleaner
) -> None:
    cleaner = make_cleaner()
    cleaner.init_worker()
    page, fin = guarded_page(scratch, cleaner)
    assert fin.alive
    assert await cleaner.drain(timeout=5)
    assert (scratch / "profile").exists()
    del page
    gc.collect()
    assert await cleaner.drain(timeout=5)
    assert not (scratch / "profile").exists()
    assert cleaner.stats().completed == 1
    await cleaner.shutdown()


async def test_on_collect_detach_cancels_the_cleanup(
    scratch: Path, make_cleaner: MakeCleaner
) -> None:
    """``.detach()`` on what ``on_collect`` returned: the object dies, nothing is submitted."""
    cleaner = make_cleaner()
    cleaner.init_worker()
    page, fin = guarded_page(scratch, cleaner)
    assert fin.detach() is not None
    assert not fin.alive
    del page
    gc.collect()
    assert await cleaner.drain(timeout=5)
    assert (scratch / "profile").is_dir()
    stats = cleaner.stats()
    assert (stats.submitted, stats.dropped_before_init) == (0, 0), stats
    await cleaner.shutdown()


def test_on_collect_checks_the_task_at_once() -> None:
    with pytest.raises(TypeError, match="cleanup task"):
        fc.on_collect(object, "rm -rf")  # type: ignore[arg-type]


async def test_temp_file_is_removed_when_closed_or_dropped(
    scratch: Path, make_cleaner: MakeCleaner
) -> None:
    cleaner = make_cleaner()
    cleaner.init_worker()
    closed = fc.TempFile(dir=scratch, suffix=".html", cleaner=cleaner)
    closed.path.write_text("<html>")
    dropped = fc.TempFile(dir=scratch, cleaner=cleaner)
    kept = fc.TempFile(dir=scratch, cleaner=cleaner)
    kept.keep()
    with fc.TempFile(dir=scratch, cleaner=cleaner) as scoped:
        assert scoped.path.exists()
    assert len(os.listdir(scratch)) == 4
    closed.close()
    closed.close()  # idempotent: submitted once
    del dropped
    gc.collect()
    assert await cleaner.drain(timeout=5)
    assert os.listdir(scratch) == [kept.path.name]
    assert cleaner.stats().submitted == 3
    await cleaner.shutdown()


async def test_staging_file_commits_on_success(scratch: Path, make_cleaner: MakeCleaner) -> None:
    cleaner = make_cleaner()
    cleaner.init_worker()
    dest = scratch / "page.html"
    async with fc.StagingFile(dest, cleaner=cleaner) as out:
        await out.write(b"<html>")
        await out.write(b"</html>")
        assert not dest.exists()
        [staged] = os.listdir(scratch)  # README: "a hidden file beside dest"
        assert staged.startswith(".page.html.") and os.path.join(scratch, staged) == out.part
    assert dest.read_bytes() == b"<html></html>"
    assert out.committed and out.bytes_written == 13
    assert os.listdir(scratch) == ["page.html"]
    await cleaner.shutdown()


@pytest.mark.parametrize("how", ["error", "cancel", "garbage"])
async def test_staging_file_leaves_nothing_on_failure(
    scratch: Path, make_cleaner: MakeCleaner, how: str
) -> None:
    cleaner = make_cleaner()
    cleaner.init_worker()
    dest = scratch / "page.html"

    async def download() -> None:
        async with fc.StagingFile(dest, cleaner=cleaner) as out:
            await out.write(b"partial")
            if how == "error":
                raise ConnectionResetError("peer went away mid-body")
            await asyncio.Event().wait()  # stalls until cancelled

    if how == "garbage":
        out = fc.StagingFile(dest, cleaner=cleaner)
        await out.open()
        await out.write(b"partial")
        await out._file.close()  # the owner forgot it: no commit, no abort
        assert len(os.listdir(scratch)) == 1
        del out
        gc.collect()
    else:
        task = asyncio.create_task(download())
        await asyncio.sleep(0.05)
        if how == "cancel":
            task.cancel()
        with pytest.raises((ConnectionResetError, asyncio.CancelledError)):
            await task
    assert await cleaner.drain(timeout=5)
    assert os.listdir(scratch) == []
    assert cleaner.stats().completed == 1
    await cleaner.shutdown()


def test_staging_file_rejects_bad_destinations(scratch: Path) -> None:
    with pytest.raises(TypeError):
        fc.StagingFile(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name a file"):
        fc.StagingFile(str(scratch) + "/")


async def test_write_before_open_says_how_to_fix(scratch: Path) -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await fc.StagingFile(scratch / "x").write(b"x")


async def test_cancelled_commit_still_tells_the_truth(
    scratch: Path, make_cleaner: MakeCleaner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancellation landing during the rename: the rename finishes, nothing leaks."""
    import aiofiles.os

    cleaner = make_cleaner()
    cleaner.init_worker()
    renaming = asyncio.Event()

    async def slow_replace(src: str, dst: str, **kwargs: object) -> None:
        renaming.set()
        await asyncio.sleep(0.1)
        os.replace(src, dst)

    monkeypatch.setattr(aiofiles.os, "replace", slow_replace)
    dest = scratch / "page.html"
    out = fc.StagingFile(dest, cleaner=cleaner)

    async def download() -> None:
        async with out:
            await out.write(b"whole body")

    task = asyncio.create_task(download())
    await renaming.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert out.committed
    assert dest.read_bytes() == b"whole body"
    assert await cleaner.drain(timeout=5)
    assert os.listdir(scratch) == ["page.html"]
    await cleaner.shutdown()


def test_guards_alive_at_exit_fire_before_the_exit_work(scratch: Path) -> None:
    import subprocess
    import sys
    import textwrap

    code = """
        import sys
        import fastcleanup as fc

        async def main():
            fc.init_worker()

        fc.run(main())
        # Created after fastcleanup registered its exit hook: weakref's own
        # exit hook (registered by the first finalizer) runs before ours.
        keep = fc.TempFile(dir=sys.argv[1])
        keep.path.write_text("scratch")
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(scratch)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(scratch) == []
