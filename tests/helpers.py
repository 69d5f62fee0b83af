"""Small helpers shared by the tests."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import fastcleanup as fc


def make_files(directory: Path, n: int, prefix: str = "f") -> list[str]:
    """Create ``n`` empty files; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [str(directory / f"{prefix}{i}") for i in range(n)]
    for p in paths:
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o600))
    return paths


def assert_conserved(stats: fc.Stats) -> None:
    total = stats.completed + stats.failed + stats.dropped_at_exit + stats.queued + stats.in_flight
    assert stats.submitted == total, stats


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def run_module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m module args...`` from the project's root, as README runs bench and examples."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=PROJECT_ROOT,
    )


def listed_options(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string of ``parser`` that its --help is meant to show."""
    return [
        option
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        for option in action.option_strings
    ]


def hold_the_gil(seconds: float) -> None:
    """Keep the GIL for about ``seconds``: sum() over a range runs in C and never lets go."""
    start = time.perf_counter()
    n = 1_000_000
    sum(range(n))
    rate = n / max(time.perf_counter() - start, 1e-9)
    sum(range(int(rate * seconds)))
