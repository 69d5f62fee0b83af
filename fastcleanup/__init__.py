"""fastcleanup: async cleanup that is safe and fast from anywhere.

>>> import fastcleanup as fc
>>> async def main():
...     fc.init_worker()                      # once, inside the running loop
...     fc.submit(fc.RemoveFile(tmp_path))    # from anywhere: __del__, threads, finalizers
...     await fc.shutdown()                   # drain, then stop
>>> fc.run(main())                            # asyncio.run on uvloop
"""

from __future__ import annotations

from . import metrics
from ._cleaner import Cleaner
from ._default import configure, drain, init_worker, shutdown, stats, submit, worker_inited
from ._guards import StagingFile, TempFile, on_collect
from ._order import InOrder
from ._runner import run
from ._scratch import ScratchDir, sweep
from ._tally import Stats
from ._tasks import AClose, Call, CleanupTask, RemoveFile, RemoveTree

__all__ = [
    "AClose",
    "Call",
    "Cleaner",
    "CleanupTask",
    "InOrder",
    "RemoveFile",
    "RemoveTree",
    "ScratchDir",
    "StagingFile",
    "Stats",
    "TempFile",
    "configure",
    "drain",
    "init_worker",
    "metrics",
    "on_collect",
    "run",
    "shutdown",
    "stats",
    "submit",
    "sweep",
    "worker_inited",
]

__version__ = "0.1.0"
