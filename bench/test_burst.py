"""Bursts of RemoveFile: every competitor on the same number of fresh files.

The recorded time of a round is one whole burst, from the first hand-off to
the last file gone; ``extra_info`` holds the harness's own figures (files/s,
loop stall, host executor latency, peak memory). Measurements, not pass/fail
timing tests: a round fails only when a competitor leaves files behind.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from bench.harness import Measurement


def test_burst(
    run_file_bursts: Callable[..., Measurement], file_competitor: str, burst_size: int
) -> None:
    m = run_file_bursts(file_competitor, burst_size)
    assert m.items == burst_size
    assert math.isfinite(m.rate)
