"""Run an application on uvloop with one call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")


def loop_factory(use_uvloop: bool | None = None) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop factory when installed (or required), else asyncio's."""
    if use_uvloop is not False:
        try:
            import uvloop
        except ImportError:
            if use_uvloop:
                raise
        else:
            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return factory
    return asyncio.new_event_loop


def run(
    main: Coroutine[Any, Any, _T], *, use_uvloop: bool | None = None, debug: bool | None = None
) -> _T:
    """``asyncio.run(main)`` on uvloop when it is installed.

    The process's event loop policy is left alone: only this run uses uvloop.

    >>> fc.run(crawl())
    """
    with asyncio.Runner(debug=debug, loop_factory=loop_factory(use_uvloop)) as runner:
        return runner.run(main)
