"""examples/crawler.py: its self-test crawls to the end, or stops cleanly on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

CRAWLER = Path(__file__).resolve().parent.parent / "examples" / "crawler.py"
PAGE_SIZE = 32 * 1024  # the self-test site's page size
CONCURRENCY = 4  # the crawler's default
DONE = re.compile(r"cleanup submitted=(\d+) completed=(\d+) failed=(\d+) drained=(\w+)")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def crawler(out: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CRAWLER), "--self-test", "--out", str(out), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def assert_only_whole_pages(out: Path) -> int:
    """No partial file left, every page complete; returns how many pages there are."""
    pages = list(out.iterdir())
    assert [p.name for p in pages if p.suffix != ".html"] == []
    assert [p.name for p in pages if p.stat().st_size != PAGE_SIZE] == []
    return len(pages)


def test_self_test_crawls_everything_and_leaves_no_partial_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = crawler(out, "--pages", "20")
    stdout, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 0, stdout + stderr
    assert stdout.rstrip().endswith("self-test ok")
    lines = stdout.splitlines()
    broken = [line for line in lines if line.startswith("failed ")]
    assert len(broken) == 4  # pages 3, 8, 13 and 18 break off mid-body
    assert all("ClientPayloadError" in line for line in broken)
    assert assert_only_whole_pages(out) == sum(line.startswith("ok ") for line in lines)
    # One background removal per broken download, all done before exit.
    done = DONE.search(stdout)
    assert done is not None
    assert done.groups() == ("4", "4", "0", "True")


def test_sigterm_mid_crawl_drains_the_cleanups_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = crawler(out, "--pages", "400")
    watchdog = threading.Timer(60, proc.kill)  # never hang the suite on a stuck child
    watchdog.start()
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        metrics_url = first.rsplit(" ", 1)[-1].strip()
        assert metrics_url.endswith("/metrics"), first
        # The service's own /metrics shows the default cleaner, running.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(metrics_url, timeout=10) as resp:
            assert 'fastcleanup_worker_up{cleaner="default"} 1.0' in resp.read().decode()
        seen = [first]
        while sum(line.startswith("ok ") for line in seen) < 6:
            line = proc.stdout.readline()
            assert line, "".join(seen)
            seen.append(line)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        watchdog.cancel()
    stdout = "".join(seen) + stdout

    assert proc.returncode == 0, stdout + stderr
    assert "signal received: stopping the crawl" in stdout
    assert stdout.rstrip().endswith("self-test ok")
    lines = stdout.splitlines()
    ok = sum(line.startswith("ok ") for line in lines)
    assert ok < 400  # it did stop early
    # A download the signal caught after its rename has its page but no "ok" line.
    assert ok <= assert_only_whole_pages(out) <= ok + CONCURRENCY
    done = DONE.search(stdout)
    assert done is not None
    submitted, completed, failed = (int(g) for g in done.groups()[:3])
    assert done.group(4) == "True"
    assert completed == submitted
    assert failed == 0
    # Downloads cut short by the signal handed their partial files over too:
    # more removals than broken pages.
    assert submitted > sum(line.startswith("failed ") for line in lines)
