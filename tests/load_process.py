"""A process that runs fastcleanup under load and serves ``/metrics``.

Started by ``tests/test_prometheus_integration.py``; also handy by hand::

    python tests/load_process.py --seconds 5 --stats-file /tmp/stats.json --workdir /tmp/load

Protocol:

1. It starts serving ``/metrics`` (``fc.metrics.serve``, the global registry,
   127.0.0.1) and prints the port alone on stdout's first line.
2. Before ``init_worker()`` it submits a few tasks to each cleaner: they are
   dropped before init. A child it starts makes a ScratchDir under
   ``workdir/scratch`` with a few files and dies by SIGKILL; the load process
   makes its own ScratchDir there, so its start sweeps the child's leftovers.
3. It waits for a line ``go`` on stdin, then runs the load for ``--seconds``:
   files removed through the default cleaner (``fc.submit``) from the loop
   and from a thread, trees, and on a second cleaner named ``load``
   (``task_timeout=0.2``, ``allowed_roots=[workdir]``) ``Call`` tasks that
   succeed, raise (reason ``error``) or hang (``timeout``), removals outside
   its root (``refused``), a tree that is a file (``error``) and ``None``
   (``invalid``).
4. It drains both cleaners. It submits ``Call`` tasks that hang to the
   default cleaner and shuts it down with a short timeout: they are taken
   back into its queue. It ends the event loop with ``load`` still started.
   Then, like a finalizer running after the loop, it submits a file,
   ``None`` and some ``Call`` tasks to ``load``, and runs fastcleanup's
   interpreter-exit handler: the file is removed, ``None`` fails as invalid
   and every call left is dropped at exit.
5. It writes every cleaner's ``stats()`` and per-kind counters as JSON to
   ``--stats-file`` (atomically), then keeps serving until a line ``stop``
   on stdin, the end of stdin, or SIGTERM, and exits with status 0.

Step 4 calls the exit handler itself because the real one runs when no
``/metrics`` can be served any more: from Python 3.12 on no thread can start
during interpreter shutdown, and the embedded server starts one per request.
The counters move exactly as they would at exit, while Prometheus can still
scrape them.

``--submit-after-exit`` submits one more call after the exit handler ran, as
a ``__del__`` late in interpreter exit would: a path whose count
``fastcleanup_submitted_total`` misses at the time of writing (see the xfail
test).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import fastcleanup as fc
from fastcleanup import _lifecycle
from fastcleanup._default import default_cleaner
from fastcleanup._tally import Histogram, Tally, count_value

TICK = 0.02  # seconds between two rounds of load on the loop
FILES_PER_TICK = 10  # files removed through fc.submit per round, from the loop
THREAD_FILES = 5  # files a producer thread creates and submits per round
EARLY_DEFAULT = 3  # RemoveFile submitted to the default cleaner before init_worker()
EARLY_LOAD = 2  # Call submitted to the "load" cleaner before init_worker()
LATE_CALLS = 5  # Call tasks each cleaner still holds when the loop ends: dropped at exit
OUTSIDE = "/nonexistent-fastcleanup-load/outside"  # outside the load cleaner's root
KILLED_FILES = 4  # files in the scratch directory of the child killed before the start

# A process SIGKILLed while it holds a ScratchDir: its directory is left.
KILLED_CHILD = f"""
import os, signal, sys
import fastcleanup as fc
scratch = fc.ScratchDir(sys.argv[1])
for i in range({KILLED_FILES}):
    scratch.temp_file(suffix=".part").keep()
os.kill(os.getpid(), signal.SIGKILL)
"""


class Control:
    """Commands from stdin and SIGTERM, as plain flags.

    A signal handler only assigns an attribute (an ``Event.set()`` there
    could deadlock on the lock the interrupted code holds); waiters poll
    the flags with a sleep.
    """

    def __init__(self) -> None:
        self.go = False
        self.stop = False

    def read_stdin(self) -> None:
        for line in sys.stdin:
            command = line.strip()
            if command == "go":
                self.go = True
            elif command == "stop":
                self.stop = True
        self.stop = True  # end of stdin: whoever started us is gone

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.stop = True


async def ok() -> None:
    await asyncio.sleep(0)


async def boom() -> None:
    raise OSError("load_process: a cleanup that fails on purpose")


async def hang() -> None:
    await asyncio.sleep(3600)


def touch(path: Path) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def make_tree(root: Path) -> None:
    for d in ("a", "a/b", "c"):
        (root / d).mkdir(parents=True)
        for i in range(3):
            touch(root / d / f"f{i}")


def produce_from_thread(directory: Path, ctl: Control, deadline: float) -> None:
    """Submit file removals from a thread that is not the loop's, as a crawler's workers do."""
    directory.mkdir()
    n = 0
    while time.monotonic() < deadline and not ctl.stop:
        for _ in range(THREAD_FILES):
            path = directory / f"t{n}"
            touch(path)
            fc.submit(fc.RemoveFile(path))
            n += 1
        time.sleep(TICK)


async def generate_load(ctl: Control, load: fc.Cleaner, workdir: Path, seconds: float) -> float:
    """Wait for ``go``, run the load, drain; returns the wall-clock time of ``go``."""
    fc.init_worker()
    load.init_worker()
    # A poll, not an asyncio.Event: SIGTERM's handler may only set a flag.
    while not (ctl.go or ctl.stop):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    go_at = time.time()
    deadline = time.monotonic() + seconds
    files = workdir / "files"
    files.mkdir()
    thread = threading.Thread(
        target=produce_from_thread, args=(workdir / "thread", ctl, deadline), daemon=True
    )
    thread.start()
    tick = n = 0
    while time.monotonic() < deadline and not ctl.stop:
        tick += 1
        for _ in range(FILES_PER_TICK):
            path = files / f"f{n}"
            touch(path)
            fc.submit(fc.RemoveFile(path))
            n += 1
        for _ in range(3):
            load.submit(fc.Call(ok))
        load.submit(fc.Call(boom))
        if tick % 5 == 0:
            tree = workdir / f"tree{tick}"
            make_tree(tree)
            fc.submit(fc.RemoveTree(tree))
            load.submit(fc.RemoveTree(workdir / f"gone{tick}"))  # never existed: completed
        if tick % 10 == 0:
            load.submit(fc.Call(hang))  # outlives task_timeout=0.2
            load.submit(fc.RemoveFile(OUTSIDE))  # refused
            not_a_dir = workdir / f"file{tick}"
            touch(not_a_dir)
            load.submit(fc.RemoveTree(not_a_dir))  # NotADirectoryError: error
            fc.submit(None)  # type: ignore[arg-type]  # invalid, on purpose
            load.submit(None)  # type: ignore[arg-type]
        await asyncio.sleep(TICK)
    await asyncio.to_thread(thread.join)
    if not (await fc.drain(timeout=60) and await load.drain(timeout=60)):
        raise RuntimeError(f"load_process: no drain within 60 s: {fc.stats()} {load.stats()}")
    # Shut down while calls still hang (task_timeout is 60 s here): they go
    # back to the queue, and from there nowhere until the exit handler.
    for _ in range(LATE_CALLS):
        fc.submit(fc.Call(hang))
    async with asyncio.timeout(30):  # running, not just queued: the requeue path
        while default_cleaner.in_flight < LATE_CALLS:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    if await fc.shutdown(timeout=0.3):
        raise RuntimeError("load_process: hanging calls finished")
    return go_at


def after_the_loop(load: fc.Cleaner, workdir: Path, submit_after_exit: bool) -> None:
    """What happens between the end of the event loop and the end of the process."""
    # A finalizer running late: "load" is still started but its loop is
    # gone, so these stay queued (no wakeup is possible).
    late = workdir / "late"
    touch(late)
    load.submit(fc.RemoveFile(late))  # removed synchronously at exit: completed
    load.submit(None)  # type: ignore[arg-type]  # failed, reason invalid
    for _ in range(LATE_CALLS):
        load.submit(fc.Call(hang))  # a call cannot run without a loop: dropped at exit
    _lifecycle._at_exit()  # the handler fastcleanup registered with atexit; see the docstring
    if submit_after_exit:
        fc.submit(fc.Call(hang))  # after the exit handler: dropped at exit


def _histogram(h: Histogram) -> dict[str, float]:
    return {"count": sum(h.counts), "sum": h.total}


def tally_of(cleaner: fc.Cleaner) -> dict[str, Any]:
    t: Tally = cleaner._tally
    failed: dict[str, dict[str, int]] = {}
    for (kind, reason), n in sorted(t.failed_by.items()):
        failed.setdefault(kind, {})[reason] = n
    return {
        "stats": dataclasses.asdict(cleaner.stats()),
        "submitted_by": dict(sorted(t.taken_by.items())),
        "dropped_before_init_by": {
            k: count_value(c) for k, c in sorted(t.dropped_before_init_by.items())
        },
        "completed_by": dict(sorted(t.completed_by.items())),
        "failed_by": failed,
        "dropped_at_exit_by": dict(sorted(t.dropped_at_exit_by.items())),
        "swept_by": dict(sorted(t.swept_by.items())),
        "latency": _histogram(t.latency),
        "batch_size": _histogram(t.batch_size),
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)  # readers never see half a file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="/metrics port (0: any free one)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the load runs")
    parser.add_argument("--stats-file", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True, help="an empty or new directory")
    parser.add_argument(
        "--submit-after-exit", action="store_true", help="also a path miscounted at present"
    )
    args = parser.parse_args(argv)

    # Failures are the point of the exercise; the counters record them.
    logging.getLogger("fastcleanup").setLevel(logging.ERROR)
    ctl = Control()
    signal.signal(signal.SIGTERM, ctl.on_sigterm)
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    server = fc.metrics.serve(port=args.port)
    print(server.port, flush=True)
    threading.Thread(target=ctl.read_stdin, name="stdin", daemon=True).start()

    load = fc.Cleaner(name="load", task_timeout=0.2, batch_size=16, allowed_roots=[workdir])
    for i in range(EARLY_DEFAULT):
        fc.submit(fc.RemoveFile(workdir / f"early{i}"))  # before init_worker(): dropped
    for _ in range(EARLY_LOAD):
        load.submit(fc.Call(ok))
    scratch_base = workdir / "scratch"
    killed = subprocess.run([sys.executable, "-c", KILLED_CHILD, str(scratch_base)], check=False)
    if killed.returncode != -signal.SIGKILL:
        raise RuntimeError(f"load_process: the child to be killed exited with {killed.returncode}")
    fc.ScratchDir(scratch_base)  # registers the base: init_worker() sweeps the child's directory

    go_at = fc.run(generate_load(ctl, load, workdir, args.seconds))
    after_the_loop(load, workdir, args.submit_after_exit)

    cleaners = {c.name: tally_of(c) for c in (default_cleaner, load)}
    write_json(
        args.stats_file,
        {"go_at": go_at, "written_at": time.time(), "pid": os.getpid(), "cleaners": cleaners},
    )
    while not ctl.stop:
        time.sleep(0.1)
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
