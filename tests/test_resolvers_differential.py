"""The C resolver of a confined file job against the Python one, on generated spellings.

``tests/test_lane.py`` holds each spelling it knows to the same outcome on
both; here hypothesis composes paths from the same layout (symlinks in and
out of the root, a loop, a file used as a directory, a hidden directory,
".", "..", doubled slashes, relative and bytes spellings) and checks that a
``LaneJob`` (with ``UnlinkJob`` from where it hands over, as the batch
worker runs them) leaves the same files and reports the same errors as
``UnlinkJob`` alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastcleanup import _unlink
from tests.test_lane import _outcome, _sandbox
from tests.torture_helpers import hypothesis_settings, scratch_dir

pytestmark = pytest.mark.skipif(not _unlink.COMPILED, reason="needs the C module")

# Components of the sandbox's layout (see test_lane._spellings) and the odd ones.
COMPONENTS = ["real", "in-link", "out-link", "loop", "plain-file", ".hidden", "gone"]
ODD = [".", "..", ""]  # "" doubles the slash before the next component
NAMES = ["victim", "gone", "plain-file", ".", "..", ""]
STARTS = ["root", "root/", "relative", "outside", "base"]


@st.composite
def spellings(draw: st.DrawFn) -> tuple[str, list[str], str, bool]:
    start = draw(st.sampled_from(STARTS))
    middle = draw(st.lists(st.sampled_from(COMPONENTS + ODD), max_size=4))
    return start, middle, draw(st.sampled_from(NAMES)), draw(st.booleans())


def spelled(base: Path, spelling: tuple[str, list[str], str, bool]) -> str | bytes:
    start, middle, name, as_bytes = spelling
    head = {
        "root": str(base / "root"),
        "root/": str(base / "root") + "/",
        "relative": "root",  # the working directory is base
        "outside": str(base / "outside"),
        "base": str(base),
    }[start]
    path = "/".join([head, *middle, name])
    return os.fsencode(path) if as_bytes else path


@hypothesis_settings(60, 400)
@given(st.lists(spellings(), min_size=1, max_size=3))
def test_the_c_and_python_resolvers_agree(cases: list[tuple[str, list[str], str, bool]]) -> None:
    outcomes = []
    here = os.getcwd()
    with scratch_dir("fc-resolvers-") as top:
        for compiled in (True, False):
            base = top / str(compiled)
            root, _ = _sandbox(base)
            (root / "ok").mkdir()
            before, after = str(root / "ok" / "before"), str(root / "ok" / "after")
            Path(before).touch()
            Path(after).touch()
            paths = [before, *(spelled(base, case) for case in cases), after]
            os.chdir(base)
            try:
                outcomes.append(_outcome(base, root, paths, compiled))
            finally:
                os.chdir(here)
            assert "root/ok/before" not in outcomes[-1][0]
            assert "root/ok/after" not in outcomes[-1][0]
    assert outcomes[0] == outcomes[1], [spelled(Path("<base>"), case) for case in cases]
