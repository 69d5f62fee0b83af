"""The process-wide default cleaner behind ``fastcleanup.submit`` and friends."""

from __future__ import annotations

from ._cleaner import Cleaner
from ._tally import Stats

default_cleaner = Cleaner(name="default")

# Bound methods, not wrappers: a wrapper would add a Python call to every
# submit (a third of its cost).
submit = default_cleaner.submit
init_worker = default_cleaner.init_worker
worker_inited = default_cleaner.worker_inited


async def drain(timeout: float | None = None) -> bool:
    """Wait until every task submitted before this call has finished (False on timeout)."""
    return await default_cleaner.drain(timeout)


async def shutdown(timeout: float | None = 10.0) -> bool:
    """Drain the default cleaner for up to ``timeout`` seconds, then stop it."""
    return await default_cleaner.shutdown(timeout)


def stats() -> Stats:
    """A frozen snapshot of the default cleaner's counters."""
    return default_cleaner.stats()
