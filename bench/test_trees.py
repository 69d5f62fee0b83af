"""Bursts of browser-profile-like trees: fastcleanup beside ``rm -rf`` and a ``shutil.rmtree`` loop.

A round is one burst on fresh trees (made in the untimed setup), from the
first submit to the last tree gone; ``extra_info`` holds trees/s and the
loop's stall. Quick: 20 trees on the bench directory (a tmpfs where there
is one); FASTCLEANUP_BENCH_FULL=1: 600 trees there and 200 on the temp
dir's disk. A round fails only when a tree is left behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.conftest import DIR, QUICK, ROUNDS, _pedantic, _record
from bench.harness import BenchError, BurstSession, Measurement, default_dir
from bench.trees import TREE_COMPETITORS, make_trees, on_tmpfs

PLACES = [DIR or default_dir() or tempfile.gettempdir()]
if not QUICK:
    PLACES.append(tempfile.gettempdir())


@pytest.mark.parametrize("place", list(dict.fromkeys(PLACES)))
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.skipif(not c.available(), reason=f"{c.needs} missing"))
        for n, c in TREE_COMPETITORS.items()
    ],
)
def test_tree_burst(benchmark: BenchmarkFixture, name: str, place: str) -> None:
    tmpfs = on_tmpfs(place)
    size = 20 if QUICK else 600 if tmpfs else 200
    benchmark.group = f"trees on {'tmpfs' if tmpfs else 'disk'}: burst of {size} profiles"
    results: list[Measurement] = []
    with contextlib.ExitStack() as made, BurstSession(TREE_COMPETITORS[name]) as session:

        def setup() -> tuple[tuple[list[str]], dict[str, object]]:
            trees = made.enter_context(make_trees(size, place))  # removed after, if left
            session.prepare()
            return (trees,), {}

        def burst(trees: list[str]) -> None:
            results.append(session.run(trees))
            left = [t for t in trees if os.path.lexists(t)]
            if left:
                raise BenchError(f"{name} left {len(left)} of {size} trees")

        _pedantic(benchmark, burst, setup=setup, rounds=ROUNDS)
    m = _record(benchmark, results)
    assert m.items == size and math.isfinite(m.rate)
