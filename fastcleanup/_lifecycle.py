"""Process-level events every cleaner must survive: interpreter exit and fork().

Cleaners and guards sign up here; this module imports none of them, so it
sits at the bottom of the package's import graph.
"""

from __future__ import annotations

import atexit
import itertools
import os
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import REGISTRY

DEFAULT_REGISTRY = REGISTRY


class Survivor(Protocol):
    """What exit and fork ask of a cleaner."""

    _exit_timeout: float

    def _run_at_exit(self, deadline: float) -> None: ...

    def _reset(self) -> None: ...


_ids = itertools.count(1)
_cleaners: weakref.WeakSet[Survivor] = weakref.WeakSet()
_before_exit: list[Callable[[], None]] = []
_on_start: list[Callable[[Any], None]] = []


def next_id() -> int:
    return next(_ids)


def track(cleaner: Survivor) -> None:
    _cleaners.add(cleaner)


def before_exit(hook: Callable[[], None]) -> None:
    """Run ``hook`` at interpreter exit before any cleaner's exit work (guards use it)."""
    _before_exit.append(hook)


def on_start(hook: Callable[[Any], None]) -> None:
    """Call ``hook(cleaner)`` at the end of every ``init_worker()`` that starts one."""
    _on_start.append(hook)


def started(cleaner: Survivor) -> None:
    _held.add(cleaner)
    for hook in _on_start:
        hook(cleaner)  # ScratchDir sweeps; a hook never raises


# Started cleaners are held strongly: a cleaner with work queued must not
# vanish with its tasks because its owner dropped the last reference.
_held: set[Survivor] = set()


def release(cleaner: Survivor) -> None:
    _held.discard(cleaner)


def _at_exit() -> None:
    for hook in _before_exit:
        hook()  # guards still alive hand their files over first
    # Each cleaner's exit work ends exit_timeout after the exit began, so the
    # whole exit is bounded by the largest of them.
    start = time.monotonic()
    for cleaner in list(_cleaners):
        cleaner._run_at_exit(start + cleaner._exit_timeout)


# In a forked child: the parent's pending dispatcher and batch workers, held
# for good. Freed, each would log "Task was destroyed but it is pending!"
# and close its coroutine, whose finally blocks would then act on the
# child's fresh state (unset its dispatcher loop, requeue into its queue).
_orphans: list[Any] = []


def _after_fork_in_child() -> None:
    # The child has none of the parent's threads or loops; running the
    # parent's queue here would remove the same files twice.
    for cleaner in list(_cleaners):
        _orphan(cleaner)
        cleaner._reset()


def _orphan(cleaner: Survivor) -> None:
    """Keep the parent's tasks of ``cleaner`` alive and silent; nothing here counts them."""
    batches = list(getattr(cleaner, "_batches", ()))
    for batch in batches:
        batch.abandoned = True  # a worker that still wakes here returns without counting
    for task in [getattr(cleaner, "_dispatcher", None), *(b.worker for b in batches)]:
        if task is not None and not task.done():
            task._log_destroy_pending = False
            _orphans.append(task)


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
