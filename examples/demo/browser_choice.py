"""Which browser the demo drives, and the defaults that follow from it.

Kept apart from :mod:`.browser`, which imports Playwright: the choice must
be made where Playwright is not installed too.
"""

from __future__ import annotations

import argparse
import importlib.util

__all__ = ["choose"]

STAND_IN = "stand-in"


def choose(args: argparse.Namespace) -> None:
    """Set ``args.browser_label`` (None: Chromium asked for but missing) and the defaults.

    Chromium launches a browser per site and loads pages far slower than the
    stand-in, so its default crawl is smaller.
    """
    label: str | None = STAND_IN
    if args.browser != STAND_IN and importlib.util.find_spec("playwright") is not None:
        from .browser import describe

        label = describe()
        if label is None and args.browser == "auto":
            label = STAND_IN
    elif args.browser == "chromium":
        label = None
    args.browser_label = label
    chromium = label not in (None, STAND_IN)
    if args.pages is None:
        args.pages = 100 if chromium else 500
    if args.concurrency is None:
        args.concurrency = 2 if chromium else 8
