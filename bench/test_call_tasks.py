"""Trivial Call tasks: fastcleanup's overhead against a bare TaskGroup per 64.

Every competitor awaits the same trivial coroutine ``count`` times; the
round fails only when a call did not run.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from bench.harness import Measurement


def test_call_tasks(
    run_call_bursts: Callable[[str, int], Measurement], call_competitor: str, call_count: int
) -> None:
    m = run_call_bursts(call_competitor, call_count)
    assert m.items == call_count
    assert math.isfinite(m.rate)
