"""Bursts beyond one quiet directory: 100 directories, and a loop busy in Python.

The same competitors as the command's scenarios (the 1-thread and 2-thread
loops, fastcleanup by default and with ``allowed_roots``); a round fails
only when a competitor leaves files behind.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from bench.harness import Measurement


def test_scenario(
    run_file_bursts: Callable[..., Measurement],
    scenario: str,
    scenario_competitor: str,
    burst_size: int,
) -> None:
    m = run_file_bursts(scenario_competitor, burst_size, scenario)
    assert (m.competitor, m.items) == (scenario_competitor, burst_size)
    assert math.isfinite(m.rate)
