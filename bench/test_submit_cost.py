"""Hand-off cost from a foreign thread: fastcleanup's submit and the alternatives.

This test's thread is the foreign thread; each variant's consumer loop runs
in a thread of its own, held blocked during a round so the round times the
caller's side alone. After each round the loop is released and must receive
every item. ``extra_info["ns_per_call"]`` is the median ns per call.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from bench.micro import SUBMIT_VARIANTS


@pytest.mark.parametrize("variant", SUBMIT_VARIANTS)
def test_submit_cost(
    run_hand_offs: Callable[[str, int], list[float]], variant: str, submit_calls: int
) -> None:
    if variant.startswith("janus"):
        pytest.importorskip("janus")
    if variant.endswith("uvloop") or variant == "fastcleanup.submit":
        pytest.importorskip("uvloop")
    per_call = run_hand_offs(variant, submit_calls)
    assert per_call
    assert all(math.isfinite(ns) and ns > 0 for ns in per_call)
