"""The library never imports Playwright: ``fastcleanup.playwright`` is opt-in."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import PROJECT_ROOT


def test_importing_fastcleanup_leaves_playwright_unimported() -> None:
    probe = (
        "import sys, fastcleanup, fastcleanup.metrics\n"
        "sys.exit(sorted(m for m in sys.modules if 'playwright' in m) or 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
