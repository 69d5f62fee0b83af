"""Process-level events every cleaner must survive: interpreter exit and fork()."""

from __future__ import annotations

import atexit
import itertools
import os
import time
import weakref
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY

if TYPE_CHECKING:
    from ._cleaner import Cleaner

DEFAULT_REGISTRY = REGISTRY

_ids = itertools.count(1)
_cleaners: weakref.WeakSet[Cleaner] = weakref.WeakSet()


def next_id() -> int:
    return next(_ids)


def track(cleaner: Cleaner) -> None:
    _cleaners.add(cleaner)


# Started cleaners are held strongly: a cleaner with work queued must not
# vanish with its tasks because its owner dropped the last reference.
_held: set[Cleaner] = set()


def hold(cleaner: Cleaner) -> None:
    _held.add(cleaner)


def release(cleaner: Cleaner) -> None:
    _held.discard(cleaner)


def _at_exit() -> None:
    from ._guards import fire_pending

    fire_pending()  # guards still alive hand their files over first
    # Each cleaner's exit work ends exit_timeout after the exit began, so the
    # whole exit is bounded by the largest of them.
    start = time.monotonic()
    for cleaner in list(_cleaners):
        cleaner._run_at_exit(start + cleaner._exit_timeout)


def _after_fork_in_child() -> None:
    # The child has none of the parent's threads or loops; running the
    # parent's queue here would remove the same files twice.
    for cleaner in list(_cleaners):
        cleaner._reset()


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
