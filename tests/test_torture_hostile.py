"""Hostile input: whatever a caller passes, constructors answer with a TypeError
or ValueError that says what is wrong, and submit() never raises.

Also the awkward paths: NUL bytes, ``..`` components, very long names,
non-UTF-8 bytes, directories given to RemoveFile, files given to RemoveTree.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

import fastcleanup as fc
from tests.conftest import loop_factory
from tests.torture_helpers import (
    conserved,
    existing,
    failures_by_reason,
    forget,
    hypothesis_settings,
    quiet,
    report,
    scrape,
    scratch_dir,
)


class PathLikeOf:
    """An os.PathLike whose ``__fspath__`` returns whatever it was given."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __fspath__(self) -> Any:
        return self.value

    def __repr__(self) -> str:
        return f"PathLikeOf({self.value!r})"


async def an_async_fn(*args: Any, **kw: Any) -> None:
    pass


def a_generator() -> Iterator[int]:
    yield 1


def callables() -> st.SearchStrategy[Any]:
    return st.sampled_from(
        [an_async_fn, len, print, a_generator, lambda: None, int, str, object, os.unlink]
    )


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(),
    st.fractions(),
    st.decimals(),
    st.text(max_size=20),
    st.binary(max_size=20),
)
junk = st.recursive(
    st.one_of(
        scalars,
        st.builds(object),
        callables(),
        st.builds(PathLikeOf, scalars),
        st.builds(CollectorRegistry),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=3), inner, max_size=2),
        st.frozensets(st.integers(), max_size=2),
    ),
    max_leaves=4,
)

TYPE_OR_VALUE = (TypeError, ValueError)
_examples: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_examples() -> Iterator[None]:
    yield
    report("hostile_constructors", examples=sum(_examples.values()), **_examples)


def answers_politely(make: Callable[[], object]) -> object | None:
    """Call ``make``; a failure must be TypeError/ValueError with a message."""
    try:
        return make()
    except TYPE_OR_VALUE as exc:
        error = exc
    assert str(error), f"{type(error).__name__} without a message"
    return None


@hypothesis_settings(300, 3_000)
@given(path=junk)
def test_path_tasks_validate_their_path(path: Any) -> None:
    _examples["path_tasks_validate_their_path"] += 1
    for cls in (fc.RemoveFile, fc.RemoveTree):
        task = answers_politely(lambda cls=cls: cls(path))  # type: ignore[misc]
        if task is not None:
            p = task.path  # type: ignore[attr-defined]
            if isinstance(p, str):
                assert p and "\0" not in p
            else:
                assert isinstance(p, bytes) and p and b"\0" not in p


@hypothesis_settings(200, 2_000)
@given(resource=junk)
def test_aclose_validates_its_resource(resource: Any) -> None:
    _examples["aclose_validates_its_resource"] += 1
    answers_politely(lambda: fc.AClose(resource))


@hypothesis_settings(200, 2_000)
@given(fn=st.one_of(junk, callables()), args=st.lists(junk, max_size=2))
def test_call_validates_its_function(fn: Any, args: list[Any]) -> None:
    _examples["call_validates_its_function"] += 1
    answers_politely(lambda: fc.Call(fn, *args))


cleaner_kwargs = st.fixed_dictionaries(
    {},
    optional={
        "batch_size": st.one_of(junk, st.integers(-5, 70_000)),
        "task_timeout": st.one_of(junk, st.floats(), st.integers()),
        "exit_timeout": st.one_of(junk, st.floats(), st.integers()),
        "max_batches": st.one_of(junk, st.integers(-5, 5_000)),
        "io_threads": st.one_of(junk, st.integers(-5, 300)),
        "name": st.one_of(junk, st.text(max_size=10)),
        "allowed_roots": st.one_of(
            junk,
            st.lists(
                st.one_of(junk, st.sampled_from(["/", "/tmp", "/nonexistent", "/etc/passwd"]))
            ),
        ),
    },
)


@hypothesis_settings(300, 3_000)
@given(kwargs=cleaner_kwargs, registry=st.one_of(st.none(), junk, st.builds(CollectorRegistry)))
def test_cleaner_validates_its_arguments(kwargs: dict[str, Any], registry: Any) -> None:
    _examples["cleaner_validates_its_arguments"] += 1
    cleaner = answers_politely(lambda: fc.Cleaner(registry=registry, **kwargs))
    if isinstance(cleaner, fc.Cleaner):
        cleaner._reset()  # never started: nothing to stop


# No "/" or "." in generated affixes: tempfile would happily put "../x" outside
# the scratch directory. "/x" names a missing directory on purpose.
affix = st.text(st.characters(blacklist_characters="/.", blacklist_categories=["Cs"]), max_size=5)


def guard_kwargs() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "suffix": st.one_of(junk, affix, st.just("/x")),
            "prefix": st.one_of(junk, affix, st.binary(max_size=3)),
            "cleaner": st.one_of(st.none(), junk),
        },
    )


@hypothesis_settings(200, 2_000)
@given(kwargs=guard_kwargs())
def test_tempfile_validates_and_leaves_nothing_behind(kwargs: dict[str, Any]) -> None:
    """A TempFile that refuses its arguments leaves no file behind."""
    _examples["tempfile_validates_and_leaves_nothing_behind"] += 1
    with scratch_dir() as d:
        error: Exception | None = None
        try:
            tmp = fc.TempFile(dir=d, **kwargs)
        except (*TYPE_OR_VALUE, OSError) as exc:  # OSError: a suffix "/x" names no directory
            error = exc
        if error is None:
            tmp.keep()
            assert tmp.path.exists()
        else:
            assert str(error)
            assert os.listdir(d) == [], f"{error!r} left {os.listdir(d)}"


@pytest.mark.parametrize(
    ("prefix", "suffix"), [(b"x", b""), (b"x", b".tmp")], ids=["bytes-prefix", "bytes-affixes"]
)
def test_tempfile_with_bytes_affixes_leaves_nothing_behind(prefix: bytes, suffix: bytes) -> None:
    """Bytes affixes with a bytes dir make tempfile create the file before the
    guard can refuse it: the refusal must not leave the file behind."""
    with scratch_dir() as d:
        try:
            tmp = fc.TempFile(prefix=prefix, suffix=suffix, dir=os.fsencode(d))  # type: ignore[arg-type]  # bytes on purpose
        except TYPE_OR_VALUE:
            assert os.listdir(d) == [], f"refused, yet left {os.listdir(d)}"
        else:
            tmp.keep()


@pytest.mark.parametrize("root", ["", b""], ids=["str", "bytes"])
def test_an_empty_allowed_root_is_refused(root: str | bytes) -> None:
    """An empty path is no directory: read as the working directory, it would
    confine a cleaner to wherever the process happens to run."""
    with pytest.raises(ValueError, match="root"):
        fc.Cleaner(allowed_roots=[root], registry=None)  # type: ignore[list-item]  # bytes on purpose


@hypothesis_settings(200, 2_000)
@given(dest=st.one_of(junk, st.text(max_size=10)), cleaner=st.one_of(st.none(), junk))
def test_staging_file_validates_its_arguments(dest: Any, cleaner: Any) -> None:
    _examples["staging_file_validates_its_arguments"] += 1
    with scratch_dir() as d:
        target = os.path.join(d, dest) if isinstance(dest, str) and dest else dest
        answers_politely(lambda: fc.StagingFile(target, cleaner=cleaner))


@hypothesis_settings(200, 2_000)
@given(
    task=st.one_of(junk, st.just(fc.RemoveFile("/nonexistent/x"))),
    cleaner=st.one_of(st.none(), junk),
)
def test_on_collect_validates_its_arguments(task: Any, cleaner: Any) -> None:
    _examples["on_collect_validates_its_arguments"] += 1

    class Obj:
        pass

    fin = answers_politely(lambda: fc.on_collect(Obj(), task, cleaner=cleaner))
    if fin is not None:
        fin.detach()  # type: ignore[attr-defined]


# -- submit: never raises --------------------------------------------------------------


class BadKind:
    @property
    def kind(self) -> str:
        raise RuntimeError("kind is broken")

    async def run(self) -> None:
        pass


class BadEverything:
    """Raises from every dunder and attribute it can."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no {name} for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no eq")

    def __hash__(self) -> int:
        raise RuntimeError("no hash")


class SyncRun:
    kind = "sync_run"

    def run(self) -> None:  # not async: its None cannot be awaited
        return None


class RunRaises:
    kind = "run_raises"

    async def run(self) -> None:
        raise ValueError("cleanup failed")


class RunNotCallable:
    kind = "not_callable"
    run = 42


class RunReturnsJunk:
    kind = "junk_awaitable"

    def run(self) -> object:
        return object()


class UglyRepr:
    """A valid task whose repr raises: its failure must still be logged and counted."""

    kind = "ugly_repr"

    async def run(self) -> None:
        raise OSError("it failed")

    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


class OddKind:
    def __init__(self, kind: object) -> None:
        self.kind = kind

    async def run(self) -> None:
        pass


class EqualsEverything:
    """A valid task whose ``__eq__`` says yes to anything (``mock.ANY`` does)."""

    kind = "equals_everything"

    async def run(self) -> None:
        pass

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


class Recipe:
    """Names a hostile object; the test builds it. Hypothesis never sees the
    object itself, so reporting a failing example cannot trip on it."""

    def __init__(self, cls: type) -> None:
        self.cls = cls

    def __repr__(self) -> str:
        return f"{self.cls.__name__}()"


HOSTILE = [
    BadKind,
    BadEverything,
    SyncRun,
    RunRaises,
    RunNotCallable,
    RunReturnsJunk,
    UglyRepr,
    EqualsEverything,
]
hostile_tasks = st.one_of(
    junk,
    st.sampled_from(HOSTILE).map(Recipe),
    st.builds(OddKind, st.one_of(junk, st.text(max_size=30))),
)


def build(spec: object) -> Any:
    return spec.cls() if isinstance(spec, Recipe) else spec


def outcome(task: object) -> str | None:
    """The failure reason a task must end with; None for a completed task."""
    if isinstance(task, RunRaises | UglyRepr | SyncRun | RunReturnsJunk):
        return "error"
    if isinstance(task, EqualsEverything):
        return None
    if isinstance(task, OddKind):
        # "invalid" is the label of objects that are no task: reserved.
        ok = type(task.kind) is str and task.kind and task.kind != "invalid"
        return None if ok else "invalid"
    return "invalid"


@pytest.mark.timeout(600)
def test_submit_never_raises(loop_kind: str) -> None:
    """Any object, in any state of the cleaner: before init, running, after
    shutdown. Whatever was accepted finishes, and /metrics still renders."""
    examples = 0
    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:

        @hypothesis_settings(100, 500)
        @given(specs=st.lists(hostile_tasks, min_size=1, max_size=10))
        def check(specs: list[Any]) -> None:
            nonlocal examples
            examples += 1
            tasks = [build(spec) for spec in specs]
            registry = CollectorRegistry()
            cleaner = fc.Cleaner(registry=registry, task_timeout=5.0, batch_size=4)
            try:
                for t in tasks:  # before init: dropped and counted
                    cleaner.submit(t)  # raising would fail the test
                assert cleaner.stats().dropped_before_init == len(tasks)

                async def running() -> bool:
                    cleaner.init_worker()
                    for t in tasks:
                        cleaner.submit(t)  # raising would fail the test
                    drained = await cleaner.drain(timeout=3)
                    await cleaner.shutdown(timeout=5)
                    return drained

                assert runner.run(running()), cleaner.stats()
                for t in tasks:  # after shutdown: dropped and counted again
                    cleaner.submit(t)  # raising would fail the test
                s = cleaner.stats()
                assert conserved(s) and quiet(s), s
                assert s.dropped_before_init == 2 * len(tasks)
                want = Counter(outcome(t) for t in tasks)
                assert s.completed == want[None], (s, want)
                assert s.failed == len(tasks) - want[None], (s, want)
                reasons: Counter[str | None] = Counter()
                for (_, reason), n in failures_by_reason(scrape(registry)).items():
                    reasons[reason] += n
                assert reasons == +Counter({k: v for k, v in want.items() if k is not None})
                assert generate_latest(registry)  # a hostile kind must not break /metrics
            finally:
                forget(cleaner)

        check()
    report("hostile_submit", loop=loop_kind, examples=examples)


# -- awkward paths ---------------------------------------------------------------------

NAME_MAX = 255


def run_cleanup(
    tasks: list[object], loop_kind: str, **kw: Any
) -> tuple[fc.Stats, Counter[tuple[str, str]]]:
    registry = CollectorRegistry()
    cleaner = fc.Cleaner(registry=registry, **kw)

    async def go() -> fc.Stats:
        async with cleaner:
            for t in tasks:
                cleaner.submit(t)  # type: ignore[arg-type]
            assert await cleaner.drain(timeout=30)
            return cleaner.stats()

    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        s = runner.run(go())
    reasons = failures_by_reason(scrape(registry))
    forget(cleaner)
    assert conserved(s) and quiet(s), s
    return s, reasons


@pytest.mark.parametrize(
    "path",
    ["a\0b", b"a\0b", PathLikeOf("x\0"), PathLikeOf(b"\0"), "", b"", PathLikeOf("")],
    ids=[
        "str",
        "bytes",
        "pathlike-str",
        "pathlike-bytes",
        "empty-str",
        "empty-bytes",
        "empty-pathlike",
    ],
)
def test_nul_bytes_and_empty_paths_are_refused_at_construction(path: Any) -> None:
    for cls in (fc.RemoveFile, fc.RemoveTree):
        with pytest.raises(ValueError, match=r"NUL|empty"):
            cls(path)


@pytest.mark.parametrize("confined", [False, True], ids=["free", "confined"])
def test_awkward_paths(scratch: Path, loop_kind: str, confined: bool) -> None:
    root = scratch / "root"
    (root / "sub").mkdir(parents=True)
    rootb = os.fsencode(root)
    cases: list[tuple[object, str | None, list[Any], list[Any]]] = []  # task, reason, gone, kept

    def file(p: Any) -> Any:
        with open(p, "wb") as f:
            f.write(b"x")
        return p

    long_ok = file(root / ("L" * NAME_MAX))
    cases.append((fc.RemoveFile(long_ok), None, [long_ok], []))
    cases.append((fc.RemoveFile(root / ("L" * (NAME_MAX + 1))), "error", [], []))
    if not confined:  # confined, the walk goes one component at a time and finds none
        deep = str(root) + "/" + "/".join(["d" * 200] * 25)  # longer than PATH_MAX
        cases.append((fc.RemoveFile(deep), "error", [], []))
        cases.append((fc.RemoveTree(deep), "error", [], []))
    raw = file(rootb + b"/\xff\xfe-not-utf8")
    cases.append((fc.RemoveFile(raw), None, [raw], []))
    as_str = file(os.fsdecode(rootb + b"/\xc3\x28-surrogate"))  # str with lone surrogates
    cases.append((fc.RemoveFile(as_str), None, [as_str], []))
    treeb = rootb + b"/tree-\xff"
    os.makedirs(treeb + b"/\xfe")
    file(treeb + b"/\xfe/\x80")
    cases.append((fc.RemoveTree(treeb), None, [treeb], []))
    dotted = file(root / "sub" / "dotted")
    cases.append((fc.RemoveFile(f"{root}/sub/../sub/./dotted"), None, [dotted], []))
    a_dir = root / "a-dir"
    (a_dir / "inner").mkdir(parents=True)
    inner = file(a_dir / "inner" / "f")
    cases.append((fc.RemoveFile(a_dir), "error", [], [a_dir, inner]))
    a_file = file(root / "a-file")
    cases.append((fc.RemoveTree(a_file), "error", [], [a_file]))
    cases.append((fc.RemoveFile(root / "missing"), None, [], []))
    cases.append((fc.RemoveTree(root / "missing-tree"), None, [], []))
    target = root / "target"
    target.mkdir()
    kept_inside = file(target / "kept")
    (root / "link-to-dir").symlink_to(target)
    cases.append((fc.RemoveTree(root / "link-to-dir"), None, [root / "link-to-dir"], [kept_inside]))
    (root / "link-to-file").symlink_to(kept_inside)
    cases.append(
        (fc.RemoveFile(root / "link-to-file"), None, [root / "link-to-file"], [kept_inside])
    )
    (root / "dangling").symlink_to(root / "nowhere")
    cases.append((fc.RemoveFile(root / "dangling"), None, [root / "dangling"], []))

    kw: dict[str, Any] = {"allowed_roots": [root]} if confined else {}
    s, reasons = run_cleanup([c[0] for c in cases], loop_kind, **kw)
    want = Counter((type(t).__name__, r) for t, r, _, _ in cases if r is not None)
    kinds = {"RemoveFile": "remove_file", "RemoveTree": "remove_tree"}
    assert reasons == Counter({(kinds[k], r): n for (k, r), n in want.items()})
    assert s.completed == sum(1 for c in cases if c[1] is None)
    for task, _, gone, kept in cases:
        assert existing(gone) == [], task
        assert existing(kept) == kept, task
    assert root.is_dir()


names = st.one_of(
    st.text(min_size=1, max_size=60).map(os.fsencode),
    st.binary(min_size=1, max_size=120),
).filter(lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("confined", [False, True], ids=["free", "confined"])
def test_generated_names_are_removed(loop_kind: str, confined: bool) -> None:
    """Any name the file system accepts (bytes, surrogates, spaces, newlines,
    up to NAME_MAX) can be removed, as a file or as a tree."""
    with scratch_dir() as d:
        root = os.fsencode(d)
        kw: dict[str, Any] = {"allowed_roots": [d]} if confined else {}

        @hypothesis_settings(60, 300)
        @given(
            batch=st.lists(
                st.tuples(names, st.booleans(), st.booleans()),
                min_size=1,
                max_size=8,
                unique_by=lambda x: x[0],
            )
        )
        def check(batch: list[tuple[bytes, bool, bool]]) -> None:
            tasks: list[object] = []
            made: list[bytes] = []
            for name, as_tree, as_str in batch:
                p = root + b"/" + name
                if as_tree:
                    os.mkdir(p)
                    with open(p + b"/child", "wb"):
                        pass
                else:
                    with open(p, "wb"):
                        pass
                made.append(p)
                arg = os.fsdecode(p) if as_str else p
                tasks.append(fc.RemoveTree(arg) if as_tree else fc.RemoveFile(arg))
            s, reasons = run_cleanup(tasks, loop_kind, **kw)
            assert reasons == Counter()
            assert s.completed == len(tasks)
            assert existing(made) == []
            assert os.listdir(d) == []

        check()
