"""The default cleaner: fc.configure() changes its settings while it is stopped."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fastcleanup as fc
from fastcleanup._default import _SLOTS, Settings, default_cleaner
from tests.helpers import make_files


@pytest.fixture
def restore_defaults() -> Iterator[None]:
    """Put the default cleaner's settings back as they were: other tests share it."""
    saved = {slot: getattr(default_cleaner, slot) for slots in _SLOTS.values() for slot in slots}
    yield
    for slot, value in saved.items():
        setattr(default_cleaner, slot, value)


@pytest.mark.usefixtures("restore_defaults")
async def test_configure_confines_the_default_cleaner(scratch: Path) -> None:
    submit = fc.submit
    root = scratch / "root"
    inside, outside = make_files(root, 2), make_files(scratch / "outside", 2)
    fc.configure(allowed_roots=[root], batch_size=1, task_timeout=5)
    before = fc.stats()
    fc.init_worker()
    try:
        for path in inside + outside:
            fc.submit(fc.RemoveFile(path))
        assert await fc.drain(timeout=10)
        with pytest.raises(
            RuntimeError, match=r"before fc.init_worker\(\) or after await fc.shutdown"
        ):
            fc.configure(batch_size=2)
    finally:
        await fc.shutdown()
    after = fc.stats()
    assert (os.listdir(root), len(os.listdir(scratch / "outside"))) == ([], 2)
    assert after.failed - before.failed == 2  # refused: outside allowed_roots
    assert fc.submit is submit  # bound at import, still the default cleaner's
    assert default_cleaner._batch_size == 1
    fc.configure(allowed_roots=None)  # stopped again: allowed, and the rest is kept
    assert (default_cleaner._roots, default_cleaner._batch_size) == (None, 1)


@pytest.mark.parametrize(
    "settings",
    [
        {"batch_size": 0},
        {"batch_size": 1.5},
        {"task_timeout": -1},
        {"task_timeout": float("nan")},
        {"max_batches": True},
        {"io_threads": 1000},
        {"exit_timeout": "5"},
        {"allowed_roots": 3},
        {"busy_timeout": 60.0},
        {"busy_timeout": -1},
    ],
    ids=repr,
)
@pytest.mark.usefixtures("restore_defaults")
def test_configure_checks_as_the_cleaner_does(settings: dict[str, Any]) -> None:
    with pytest.raises((TypeError, ValueError)) as by_cleaner:
        fc.Cleaner(registry=None, **settings)
    saved = {slot: getattr(default_cleaner, slot) for slots in _SLOTS.values() for slot in slots}
    with pytest.raises(type(by_cleaner.value), match="^" + re.escape(str(by_cleaner.value)) + "$"):
        fc.configure(**settings)
    assert saved == {slot: getattr(default_cleaner, slot) for slot in saved}  # nothing changed


def test_configure_takes_the_cleaner_s_settings_but_registry_and_name() -> None:
    settings = set(inspect.signature(fc.Cleaner).parameters) - {"registry", "name"}
    assert set(_SLOTS) == set(Settings.__annotations__) == settings


def test_configure_refuses_what_it_does_not_take() -> None:
    for name in ("registry", "name", "batchsize"):
        with pytest.raises(TypeError, match=f"unexpected keyword.*{name}.*it takes batch_size"):
            fc.configure(**{name: 1})  # type: ignore[arg-type]


@pytest.mark.usefixtures("restore_defaults")
def test_configure_keeps_busy_timeout_below_task_timeout() -> None:
    fc.configure(task_timeout=60.0, busy_timeout=10.0)
    assert (default_cleaner._task_timeout, default_cleaner._busy_timeout) == (60.0, 10.0)
    fc.configure(task_timeout=1.0)  # busy_timeout 10 would outlast every tree task
    assert (
        default_cleaner._busy_timeout == fc.Cleaner(task_timeout=1.0, registry=None)._busy_timeout
    )
    assert default_cleaner._busy_timeout < 1.0
    with pytest.raises(ValueError, match="less than task_timeout"):
        fc.configure(busy_timeout=2.0)  # checked against the task_timeout in force
    fc.configure(busy_timeout=0.25)
    assert (default_cleaner._task_timeout, default_cleaner._busy_timeout) == (1.0, 0.25)
