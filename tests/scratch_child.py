"""A child process for ``tests/test_scratch.py``: owns a ScratchDir, then dies or waits.

    scratch_child.py burst BASE FILES LOOP  # ready after FILES files, then on until killed
    scratch_child.py live BASE FILES        # ready after FILES files, then waits for EOF on stdin
    scratch_child.py fork BASE              # forks; parent and child each report and wait
    scratch_child.py race BASE ROUNDS       # starts, abandons and sweeps; prints a JSON summary
    scratch_child.py abandon BASE N         # N forked children each make one and die; prints done
    scratch_child.py sweeper BASE           # sweeps until BASE/stop exists; prints a JSON summary
    scratch_child.py orphan BASE HOLD       # starts a writer in a session of its own, then waits
    scratch_child.py writer DIR HOLD        # writes into DIR until killed, making it again if gone

Each prints ``ready <path>`` (``fork``: ``parent <path>`` and ``child <path>``;
``orphan``: ``ready <path> <writer pid>``) on stdout once its directory holds
what it should.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import fastcleanup as fc
from fastcleanup import _sweep


def _touch(path: Path) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _say(line: str) -> None:
    os.write(1, f"{line}\n".encode())  # one write: parent and child share the pipe


async def burst(base: str, files: int) -> None:
    """Temp files, staging files and a tree in a ScratchDir, half of them submitted for removal."""
    scratch = fc.ScratchDir(base)
    fc.init_worker()
    await fc.drain()  # our own start's sweep is over before anyone is killed
    keep = []
    (scratch.path / "profile" / "cache").mkdir(parents=True)
    n = 0
    while True:  # until SIGKILL: the kill lands mid-burst, with removals queued
        tmp = scratch.temp_file(suffix=".html")
        if n % 2:
            tmp.close()  # submitted; queued or in flight when the kill comes
        else:
            keep.append(tmp)
        _touch(scratch.path / "profile" / "cache" / f"c{n}")
        n += 1
        if n == files:
            staging = fc.StagingFile(scratch.path / "page.html", dir=scratch)
            await staging.open()
            await staging.write(b"half a page")
            print("ready", scratch.path, flush=True)
        if n % 16 == 0:
            await asyncio.sleep(0.001)  # the loop runs the removals meanwhile


def live(base: str, files: int) -> None:
    scratch = fc.ScratchDir(base)
    for i in range(files):
        _touch(scratch.path / f"f{i}")
    print("ready", scratch.path, flush=True)
    sys.stdin.read()  # until the test closes our stdin; then exit normally


def fork(base: str) -> None:
    scratch = fc.ScratchDir(base)
    _touch(scratch.path / "parent-file")
    pid = os.fork()
    if pid == 0:
        _touch(scratch.path / "child-file")  # made on first use: the child's own
        _say(f"child {scratch.path}")
    else:
        _say(f"parent {scratch.path}")
    sys.stdin.read()
    if pid:
        os.waitpid(pid, 0)


def race(base: str, rounds: int) -> None:
    """Start, abandon (a forked child that dies) and sweep, while other processes do too.

    After every sweep each of our live directories must still hold its
    marker. Sweeps claim in-creation directories at once (no grace), so
    creations race with sweeps in other processes at every step.
    """
    _sweep.GRACE = 0.0
    live: list[fc.ScratchDir] = []
    swept: list[str] = []
    lost: list[str] = []
    errors: list[str] = []
    abandoned = 0
    for r in range(rounds):
        scratch = fc.ScratchDir(base)
        _touch(scratch.path / "marker")
        live.append(scratch)
        if len(live) > 3:
            live.pop(0).close()  # no cleaner running: removed here, under its lock
        pid = os.fork()
        if pid == 0:
            fc.ScratchDir(base)
            os._exit(0)  # no exit code runs: a dead owner's directory
        os.waitpid(pid, 0)
        abandoned += 1
        if r % 2:
            errors += map(str, _sweep.sweep_sync(base, lambda name, files: swept.append(name)))
        lost += [str(s.path) for s in live if not (s.path / "marker").exists()]
    for scratch in live:
        scratch.close()
    summary = {"abandoned": abandoned, "swept": swept, "lost": lost, "errors": errors}
    print(json.dumps(summary), flush=True)


def abandon(base: str, n: int) -> None:
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            _touch(fc.ScratchDir(base).path / "left")
            os._exit(0)
        os.waitpid(pid, 0)
    print("done", flush=True)


def sweeper(base: str) -> None:
    """Sweep without a pause (and without grace) while the racers start and abandon."""
    _sweep.GRACE = 0.0
    swept: list[str] = []
    errors: list[str] = []
    sweeps = 0
    stop = os.path.join(base, "stop")  # no scratch name: the sweeps leave it alone
    while not os.path.exists(stop):
        errors += map(str, _sweep.sweep_sync(base, lambda name, files: swept.append(name)))
        sweeps += 1
    print(json.dumps({"swept": swept, "errors": errors, "sweeps": sweeps}), flush=True)


def orphan(base: str, hold: str) -> None:
    """A crawler whose browser outlives it: the writer runs in a session of its own."""
    scratch = fc.ScratchDir(base)
    writer = subprocess.Popen(
        [sys.executable, __file__, "writer", str(scratch.path / "profile"), hold],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    assert writer.stdout is not None
    assert writer.stdout.readline() == b"writing\n"
    writer.stdout.close()
    print("ready", scratch.path, writer.pid, flush=True)
    sys.stdin.read()


def writer(profile: str, hold: str) -> None:
    """Write into ``profile`` as a browser does, until killed; make it again if it goes.

    ``hold`` "1": one file kept open (a log, a database); "0": files opened,
    written and closed each time.
    """
    held = None
    n = 0
    while True:
        try:
            os.makedirs(profile, exist_ok=True)
            if hold == "1":
                if held is None or os.fstat(held.fileno()).st_nlink == 0:
                    held = open(os.path.join(profile, "log"), "a")  # noqa: SIM115
                held.write("x")
                held.flush()
            else:
                with open(os.path.join(profile, f"page{n % 8}"), "w") as f:
                    f.write("x")
        except OSError:
            pass  # removed under us mid-write: made again next time
        if n == 0:
            print("writing", flush=True)
        n += 1
        time.sleep(0.005)


def main() -> None:
    mode, base, *rest = sys.argv[1:]
    if mode == "burst":  # on the loop the test runs on: "asyncio" or "uvloop"
        runner = asyncio.run if rest[1] == "asyncio" else fc.run
        runner(burst(base, int(rest[0])))
    elif mode == "live":
        live(base, int(rest[0]))
    elif mode == "fork":
        fork(base)
    elif mode == "abandon":
        abandon(base, int(rest[0]))
    elif mode == "sweeper":
        sweeper(base)
    elif mode == "orphan":
        orphan(base, rest[0])
    elif mode == "writer":
        writer(base, rest[0])
    elif mode == "race":
        race(base, int(rest[0]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
