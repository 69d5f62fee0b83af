"""The process-wide default cleaner behind ``fastcleanup.submit`` and friends."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TypedDict, Unpack

from ._cleaner import Cleaner
from ._tally import Stats

__all__ = [
    "Settings",
    "configure",
    "default_cleaner",
    "drain",
    "init_worker",
    "shutdown",
    "stats",
    "submit",
    "worker_inited",
]

default_cleaner = Cleaner(name="default")

# Bound methods, not wrappers: a wrapper would add a Python call to every
# submit (a third of its cost).
submit = default_cleaner.submit
init_worker = default_cleaner.init_worker
worker_inited = default_cleaner.worker_inited


async def drain(timeout: float | None = None) -> bool:
    """Wait until every task submitted before this call, and what those submit, has finished.

    False on timeout. See ``Cleaner.drain``.
    """
    return await default_cleaner.drain(timeout)


async def shutdown(timeout: float | None = 10.0) -> bool:
    """Drain the default cleaner for up to ``timeout`` seconds, then stop it."""
    return await default_cleaner.shutdown(timeout)


def stats() -> Stats:
    """A frozen snapshot of the default cleaner's counters."""
    return default_cleaner.stats()


class Settings(TypedDict, total=False):
    """The settings of ``Cleaner(...)`` that ``configure()`` may change."""

    batch_size: int
    task_timeout: float
    allowed_roots: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None
    max_batches: int
    io_threads: int
    exit_timeout: float
    busy_timeout: float | None


# Each setting and the attributes of a Cleaner that hold it.
_SLOTS: dict[str, tuple[str, ...]] = {
    "batch_size": ("_batch_size",),
    "task_timeout": ("_task_timeout",),
    "allowed_roots": ("_roots",),
    "max_batches": ("_max_batches", "_refill_at"),
    "io_threads": ("_io_threads",),
    "exit_timeout": ("_exit_timeout",),
    "busy_timeout": ("_busy_timeout",),
}


def configure(**settings: Unpack[Settings]) -> None:
    """Change settings of the default cleaner; those not named keep their value.

    >>> fc.configure(allowed_roots=["/var/tmp/crawler"], task_timeout=30)
    >>> fc.init_worker()

    Takes the keywords of ``fc.Cleaner(...)`` but ``registry`` and ``name``,
    checked the same way (TypeError, ValueError); a ``task_timeout`` given
    without ``busy_timeout`` also resets that to its default for the new
    ``task_timeout``. Only while the default
    cleaner is stopped: before ``init_worker()`` or after ``shutdown()``;
    ``fc.submit`` stays the same function throughout.
    """
    unknown = sorted(set(settings) - set(_SLOTS))
    if unknown:
        raise TypeError(
            f"configure() got unexpected keyword(s) {', '.join(unknown)}; "
            f"it takes {', '.join(_SLOTS)}"
        )
    if default_cleaner.worker_inited():
        raise RuntimeError(
            f"{default_cleaner!r} is running: call fc.configure() before fc.init_worker() "
            "or after await fc.shutdown()"
        )
    # Cleaner() itself checks the values, so both say the same about a bad one.
    # busy_timeout is bounded by task_timeout: checked against the one in force,
    # and a new task_timeout alone brings busy_timeout's default for it.
    given = dict(settings)
    if "busy_timeout" in given and "task_timeout" not in given:
        given["task_timeout"] = default_cleaner._task_timeout
    checked = Cleaner(registry=None, name="configure", **given)  # type: ignore[arg-type]
    names = {*settings, "busy_timeout"} if "task_timeout" in settings else set(settings)
    for name in names:
        for slot in _SLOTS[name]:
            setattr(default_cleaner, slot, getattr(checked, slot))
