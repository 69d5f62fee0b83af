"""Bytes per queued RemoveFile, path string not counted (an untimed measurement).

One million (quick: 50,000) tasks are queued after ``init_worker()`` and
before the dispatcher first runs, under ``tracemalloc``. The figure is in
``extra_info["bytes_per_task"]``; the time is just how long that took.
"""

from __future__ import annotations

from collections.abc import Callable


def test_bytes_per_queued_remove_file(
    measure_queue_memory: Callable[[int], float], queued: int
) -> None:
    per_task = measure_queue_memory(queued)
    assert 0 < per_task < 10_000, per_task  # a sanity bound, not the target
