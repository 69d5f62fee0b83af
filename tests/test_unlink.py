"""Bulk unlink: the C module and its pure-Python twin, held to the same effects."""

from __future__ import annotations

import array
import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

import fastcleanup as fc
from fastcleanup import _unlink

try:
    from fastcleanup import _cbulk
except ImportError:  # pragma: no cover - the extension is optional
    _cbulk = None  # type: ignore[assignment]

Unlink = Callable[..., list[tuple[int, int]]]

IMPLS = [
    pytest.param(
        _cbulk.unlinkat_many if _cbulk is not None else None,
        id="compiled",
        marks=pytest.mark.skipif(_cbulk is None, reason="fastcleanup._cbulk was not built"),
    ),
    pytest.param(_unlink.pure_unlinkat_many, id="pure"),
]


@pytest.fixture(params=IMPLS)
def unlink(request: pytest.FixtureRequest) -> Unlink:
    fn: Unlink = request.param
    return fn


def new_state() -> array.array[int]:
    return array.array("q", [0, 0])


def make_files(where: Path, count: int, prefix: str = "f") -> list[Path]:
    files = [where / f"{prefix}{k:05d}" for k in range(count)]
    for f in files:
        f.touch()
    return files


@pytest.fixture
def dir_fd(scratch: Path) -> Iterator[int]:
    fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_removes_names_relative_to_the_working_directory(
    unlink: Unlink, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = make_files(scratch, 5)
    monkeypatch.chdir(scratch)
    state = new_state()
    assert unlink(None, [f.name for f in files], state) == []
    assert not any(f.exists() for f in files)
    assert list(state) == [5, 0]


def test_removes_names_relative_to_one_fd(unlink: Unlink, scratch: Path, dir_fd: int) -> None:
    files = make_files(scratch, 5)
    state = new_state()
    assert unlink(dir_fd, [f.name for f in files], state, 0, None) == []
    assert not any(f.exists() for f in files)
    assert state[0] == 5


def test_removes_names_relative_to_their_own_fds(unlink: Unlink, scratch: Path) -> None:
    (scratch / "a").mkdir()
    (scratch / "b").mkdir()
    in_a = make_files(scratch / "a", 3)
    in_b = make_files(scratch / "b", 3)
    keep = make_files(scratch / "b", 3, prefix="g")  # same names as in_a's, other directory
    fd_a = os.open(scratch / "a", os.O_RDONLY | os.O_DIRECTORY)
    fd_b = os.open(scratch / "b", os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = [f.name for f in in_a] + [f.name for f in in_b]
        fds = [fd_a] * 3 + [fd_b] * 3
        assert unlink(fds, names, new_state()) == []
    finally:
        os.close(fd_a)
        os.close(fd_b)
    assert not any(f.exists() for f in in_a + in_b)
    assert all(f.exists() for f in keep)


def test_absolute_paths_and_path_objects(unlink: Unlink, scratch: Path, dir_fd: int) -> None:
    files = make_files(scratch, 4)
    # An absolute name ignores its fd, as unlinkat does.
    assert unlink(dir_fd, [files[0], str(files[1])], new_state()) == []
    assert unlink(None, [files[2], os.fsencode(files[3])], new_state()) == []
    assert not any(f.exists() for f in files)


def test_bytes_names(unlink: Unlink, scratch: Path, dir_fd: int) -> None:
    plain = make_files(scratch, 2)
    odd = scratch / os.fsdecode(b"caf\xc3\xa9-\xff")  # UTF-8 and an undecodable byte
    odd.touch()
    names = [os.fsencode(f.name) for f in [*plain, odd]]
    assert unlink(dir_fd, names, new_state()) == []
    assert not any(f.exists() for f in [*plain, odd])


def test_non_ascii_str_names(unlink: Unlink, scratch: Path, dir_fd: int) -> None:
    files = [scratch / "café", scratch / "ページ", scratch / os.fsdecode(b"raw-\xfe")]
    for f in files:
        f.touch()
    assert unlink(dir_fd, [f.name for f in files], new_state()) == []
    assert not any(f.exists() for f in files)


def test_already_gone_is_success(unlink: Unlink, scratch: Path, dir_fd: int) -> None:
    files = make_files(scratch, 2)
    state = new_state()
    assert unlink(dir_fd, ["never-was", files[0].name, files[0].name, files[1].name], state) == []
    assert not any(f.exists() for f in files)
    assert state[0] == 4


def test_a_directory_fails_alone(unlink: Unlink, scratch: Path, dir_fd: int) -> None:
    files = make_files(scratch, 4)
    (scratch / "sub").mkdir()
    names = [files[0].name, files[1].name, "sub", files[2].name, files[3].name]
    state = new_state()
    failures = unlink(dir_fd, names, state)
    assert len(failures) == 1
    assert failures[0][0] == 2
    assert failures[0][1] in (errno.EISDIR, errno.EPERM)
    assert (scratch / "sub").is_dir()
    assert not any(f.exists() for f in files)
    assert state[0] == 5


class BadPath:
    def __fspath__(self) -> str:
        raise RuntimeError("no path today")


def test_items_that_are_no_path_fail_with_einval(
    unlink: Unlink, scratch: Path, dir_fd: int
) -> None:
    files = make_files(scratch, 3)
    (scratch / "nul").touch()
    names: list[Any] = [
        files[0].name,
        "nul\0tail",  # would be "nul" to a C string
        b"nul\0",
        None,
        3,
        bytearray(b"nul"),
        BadPath(),
        "\ud800",  # a lone surrogate no file system encoding can write
        files[1].name,
        files[2].name,
    ]
    state = new_state()
    failures = unlink(dir_fd, names, state)
    assert failures == [(k, errno.EINVAL) for k in range(1, 8)]
    assert not any(f.exists() for f in files)
    assert (scratch / "nul").exists()
    assert state[0] == len(names)


def test_failures_come_back_in_index_order(unlink: Unlink, scratch: Path, dir_fd: int) -> None:
    # More than one chunk (256) of mixed outcomes.
    files = make_files(scratch, 600)
    dirs = [scratch / f"d{k}" for k in range(0, 600, 50)]
    for d in dirs:
        d.mkdir()
    names: list[Any] = [f.name for f in files]
    for k in range(0, 600, 50):
        names[k] = f"d{k}"
    for k in range(25, 600, 50):
        names[k] = None
    failures = unlink(dir_fd, names, new_state())
    assert [k for k, _ in failures] == sorted(list(range(0, 600, 50)) + list(range(25, 600, 50)))
    assert all(e == errno.EINVAL for k, e in failures if k % 50 == 25)
    assert all(d.is_dir() for d in dirs)
    assert [f.exists() for f in files] == [k % 25 == 0 for k in range(600)]


def test_skipped_entries_are_counted_not_touched(
    unlink: Unlink, scratch: Path, dir_fd: int
) -> None:
    files = make_files(scratch, 6)
    fds = [dir_fd, _unlink.SKIP, dir_fd, _unlink.SKIP, _unlink.SKIP, dir_fd]
    names: list[Any] = [f.name for f in files]
    names[4] = None  # a skipped entry is not even converted
    state = new_state()
    assert unlink(fds, names, state) == []
    assert [f.exists() for f in files] == [False, True, False, True, True, False]
    assert state[0] == 6


def test_start_and_stop(unlink: Unlink, scratch: Path, dir_fd: int) -> None:
    files = make_files(scratch, 10)
    (scratch / "sub").mkdir()
    names = [f.name for f in files]
    names[5] = "sub"
    state = new_state()
    assert unlink(dir_fd, names, state, 3, 7) == [(5, errno.EISDIR)]
    assert [f.exists() for f in files] == [k not in (3, 4, 6) for k in range(10)]
    assert state[0] == 7
    assert unlink(dir_fd, names, state, start=8) == []
    assert [f.exists() for f in files] == [k not in (3, 4, 6, 8, 9) for k in range(10)]
    assert state[0] == 10
    assert unlink(dir_fd, names, state, 2, 2) == []
    assert files[2].exists()


def test_stop_flag_set_before_the_call(unlink: Unlink, scratch: Path, dir_fd: int) -> None:
    files = make_files(scratch, 5)
    state = array.array("q", [0, 1])
    assert unlink(dir_fd, [f.name for f in files], state) == []
    assert all(f.exists() for f in files)
    assert list(state) == [0, 1]


def test_stop_flag_from_another_thread(unlink: Unlink, scratch: Path, dir_fd: int) -> None:
    files = make_files(scratch, 20_000)
    names = [f.name for f in files]
    state = new_state()
    result: list[list[tuple[int, int]]] = []
    worker = threading.Thread(target=lambda: result.append(unlink(dir_fd, names, state)))
    worker.start()
    deadline = time.monotonic() + 60
    while state[0] < 1000 and worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.0002)  # poll without spinning: the worker may need the GIL
    state[1] = 1
    worker.join(60)
    assert not worker.is_alive()
    assert result == [[]]
    done = state[0]
    assert 1000 <= done < len(files), "the job ran to its end: the stop flag was not seen"
    assert not any(f.exists() for f in files[:done])
    assert all(f.exists() for f in files[done:])


def _bad_calls(fd: int) -> Iterator[tuple[type[Exception], Callable[[Unlink, list[str]], object]]]:
    q = new_state
    yield TypeError, lambda u, n: u(None, "abc", q())  # a str is no list of names
    yield TypeError, lambda u, n: u(None, iter(n), q())
    yield ValueError, lambda u, n: u([fd] * (len(n) - 1), n, q())
    yield TypeError, lambda u, n: u("dir", n, q())
    yield TypeError, lambda u, n: u(float(fd), n, q())
    yield TypeError, lambda u, n: u(True, n, q())
    yield ValueError, lambda u, n: u(2**40, n, q())
    yield TypeError, lambda u, n: u([fd] * (len(n) - 1) + [None], n, q())
    yield ValueError, lambda u, n: u([fd] * (len(n) - 1) + [-(2**40)], n, q())
    yield ValueError, lambda u, n: u(fd, n, q(), -1)
    yield ValueError, lambda u, n: u(fd, n, q(), 0, len(n) + 1)
    yield ValueError, lambda u, n: u(fd, n, q(), 2, 1)
    yield TypeError, lambda u, n: u(fd, n, q(), 0, 1.5)
    yield TypeError, lambda u, n: u(fd, n, [0, 0])
    yield TypeError, lambda u, n: u(fd, n, None)
    yield ValueError, lambda u, n: u(fd, n, bytes(16))
    yield ValueError, lambda u, n: u(fd, n, bytearray(16))
    yield ValueError, lambda u, n: u(fd, n, array.array("q", [0]))
    yield ValueError, lambda u, n: u(fd, n, array.array("i", [0, 0, 0, 0]))
    yield ValueError, lambda u, n: u(fd, n, array.array("d", [0, 0]))
    yield ValueError, lambda u, n: u(fd, n, array.array("Q", [0, 0]))
    yield ValueError, lambda u, n: u(fd, n, memoryview(array.array("q", [0] * 4))[::2])


def test_bad_calls_raise_before_any_file_is_touched(
    unlink: Unlink, scratch: Path, dir_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = make_files(scratch, 4) + [scratch / c for c in "abc"]
    for f in files[4:]:
        f.touch()
    monkeypatch.chdir(scratch)
    names = [f.name for f in files]
    calls = list(_bad_calls(dir_fd))
    for k, (error, call) in enumerate(calls):
        with pytest.raises(error):
            call(unlink, names)
        assert all(f.exists() for f in files), f"bad call {k} removed files"


def test_state_array_can_grow_after_a_call(unlink: Unlink, scratch: Path, dir_fd: int) -> None:
    state = new_state()
    unlink(dir_fd, [f.name for f in make_files(scratch, 2)], state)
    with pytest.raises(TypeError):
        unlink([dir_fd, "not an fd"], ["x", "y"], state)  # fails after taking the buffer
    state.append(0)  # fails with BufferError while a buffer export is left open
    assert len(state) == 3


def test_ten_thousand_files_in_a_hundred_directories(unlink: Unlink, scratch: Path) -> None:
    fds: list[int] = []
    names: list[str] = []
    files: list[Path] = []
    try:
        for d in range(100):
            where = scratch / f"d{d:03d}"
            where.mkdir()
            fds.append(os.open(where, os.O_RDONLY | os.O_DIRECTORY))
            files += make_files(where, 100)
        # Interleaved, so consecutive entries of one chunk use different fds.
        order = [(k % 100) * 100 + k // 100 for k in range(10_000)]
        names = [files[i].name for i in order]
        entry_fds = [fds[i // 100] for i in order]
        state = new_state()
        assert unlink(entry_fds, names, state) == []
        assert state[0] == 10_000
    finally:
        for fd in fds:
            os.close(fd)
    assert not any(f.exists() for f in files)
    assert all(not any((scratch / f"d{d:03d}").iterdir()) for d in range(100))


def test_the_module_picks_the_compiled_path_when_built() -> None:
    expected = _cbulk is not None and not _unlink._pure_requested()
    assert _unlink.COMPILED is expected
    if _unlink.COMPILED:
        assert _cbulk is not None
        assert _unlink.unlinkat_many is _cbulk.unlinkat_many
        assert cast(object, fc.RemoveFile) is _cbulk.RemoveFile
        assert _unlink.use_compiled()


def test_a_replaced_os_unlink_turns_the_compiled_path_off(
    scratch: Path, dir_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = make_files(scratch, 3)
    seen: list[object] = []
    real = os.unlink

    def fault(path: Any, *, dir_fd: int | None = None) -> None:
        seen.append(path)
        if path == files[1].name:
            raise OSError(errno.EIO, "injected")
        real(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", fault)
    assert not _unlink.use_compiled()
    failures = _unlink.pure_unlinkat_many(dir_fd, [f.name for f in files], new_state())
    assert failures == [(1, errno.EIO)]
    assert seen == [f.name for f in files]
    assert [f.exists() for f in files] == [False, True, False]
    monkeypatch.undo()
    assert _unlink.use_compiled() == _unlink.COMPILED


def run_python(args: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    """Run this interpreter with ``args`` in ``env``; return its output once it succeeded."""
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


PURE_CHECK = """
import array, gc, os, sys
import fastcleanup as fc
import fastcleanup._unlink as u
want = sys.argv[1] == "pure"
assert u.COMPILED is (not want), u.COMPILED
if want:
    assert u.unlinkat_many is u.pure_unlinkat_many
    assert not u.use_compiled()
    import fastcleanup._tasks as t
    assert fc.RemoveFile is t.PurePythonRemoveFile
    assert gc.is_tracked(fc.RemoveFile("x"))
else:
    assert not gc.is_tracked(fc.RemoveFile("x"))
import copy, pickle
task = fc.RemoveFile("x")
assert pickle.loads(pickle.dumps(task)).path == copy.copy(task).path == "x"
open("victim", "w").close()
assert u.unlinkat_many(None, ["victim"], array.array("q", [0, 0])) == []
assert not os.path.exists("victim")
print("ok")
"""


@pytest.mark.parametrize(("value", "pure"), [("1", True), ("yes", True), ("0", False), ("", False)])
def test_environment_forces_the_pure_path(value: str, pure: bool, scratch: Path) -> None:
    if not pure and _cbulk is None:
        pytest.skip("fastcleanup._cbulk was not built")
    env = {**os.environ, "FASTCLEANUP_PURE_PYTHON": value}
    out = run_python(["-c", PURE_CHECK, "pure" if pure else "compiled"], env, cwd=scratch)
    assert out.strip() == "ok"


def test_tuples_work_like_lists(unlink: Unlink, scratch: Path, dir_fd: int) -> None:
    files = make_files(scratch, 3)
    names: Sequence[str] = tuple(f.name for f in files)
    assert unlink((dir_fd, _unlink.SKIP, dir_fd), names, new_state()) == []
    assert [f.exists() for f in files] == [False, True, False]


CLEANER_BURST = """
import os, sys
import fastcleanup as fc
import fastcleanup._unlink as u
from prometheus_client import CollectorRegistry

assert u.COMPILED is (sys.argv[1] == "compiled"), u.COMPILED
root = sys.argv[2]
dirs = [os.path.join(root, f"d{i}") for i in range(20)]
paths = []
for d in dirs:
    os.mkdir(d)
    for i in range(150):
        paths.append(os.path.join(d, f"f{i}"))
        open(paths[-1], "w").close()
outside = os.path.join(root, "..", "outside-" + os.path.basename(root))
open(outside, "w").close()

async def main(roots):
    async with fc.Cleaner(registry=CollectorRegistry(), allowed_roots=roots) as c:
        # The compiled lane runs exactly when the C module does.
        assert (c._lane is not None) is u.COMPILED, c._lane
        for p in paths[: len(paths) // 2] if roots is None else paths[len(paths) // 2 :]:
            c.submit(fc.RemoveFile(p))
        if roots is not None:
            c.submit(fc.RemoveFile(outside))
        assert await c.drain(timeout=60)
        return c.stats()

plain = fc.run(main(None))
confined = fc.run(main([root]))
left = sum(len(os.listdir(d)) for d in dirs)
assert left == 0, left
assert os.path.exists(outside)
os.unlink(outside)
print(plain.completed, confined.completed, confined.failed)
"""


@pytest.mark.parametrize("path", ["pure", "compiled"])
def test_a_cleaner_burst_on_each_path(path: str, tmp_path: Path) -> None:
    """The whole pipeline, default and confined, on the pure-Python path and the compiled one."""
    if path == "compiled" and _cbulk is None:
        pytest.skip("fastcleanup._cbulk was not built")
    root = tmp_path / "root"
    root.mkdir()
    env = {**os.environ, "FASTCLEANUP_PURE_PYTHON": "1" if path == "pure" else ""}
    out = run_python(["-c", CLEANER_BURST, path, str(root)], env)
    assert out.split() == ["1500", "1500", "1"]


@pytest.mark.parametrize("compiler", ["missing", "present"])
def test_the_build_never_fails_for_want_of_a_compiler(compiler: str, tmp_path: Path) -> None:
    """setup.py's extension is optional: with no working compiler the build still
    succeeds and builds nothing, and with one it builds the module."""
    pytest.importorskip("setuptools")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ}
    if compiler == "missing":
        env.update(CC="/bin/false", LDSHARED="/bin/false")
    build = ["build_ext", "--build-lib", str(tmp_path / "lib"), "--build-temp", str(tmp_path / "t")]
    run_python(["setup.py", "-q", *build], env, cwd=root)
    built = list((tmp_path / "lib").rglob("_cbulk*.so"))
    assert (len(built) == 1) is (compiler == "present"), built


class Shrinking:
    """A ``stop`` whose ``__index__`` empties the caller's lists: no length read
    before it may be trusted after it."""

    def __init__(self, *lists: list[Any], value: int) -> None:
        self.lists, self.value = lists, value

    def __index__(self) -> int:
        for items in self.lists:
            del items[1:]
        return self.value


class ShortList(list[Any]):
    """A list whose Python-level reads lie about its items."""

    def __getitem__(self, index: Any) -> Any:
        return []

    def __len__(self) -> int:
        return 0


def test_lists_changed_during_the_call_do_not_change_the_job(
    unlink: Unlink, scratch: Path, dir_fd: int
) -> None:
    """The job is the lists as they were when called: taken whole, read in C."""
    files = make_files(scratch, 1000)
    names: list[Any] = [f.name for f in files]
    fds = [dir_fd] * len(names)
    state = new_state()
    assert unlink(fds, names, state, 0, Shrinking(names, fds, value=1000)) == []
    assert len(names) == 1 and not any(f.exists() for f in files)
    assert state[0] == 1000

    files = make_files(scratch, 600, prefix="g")
    assert unlink(dir_fd, ShortList(f.name for f in files), new_state()) == []
    assert not any(f.exists() for f in files)
