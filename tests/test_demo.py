"""``python -m examples.demo``: crawls to the end, leaks nothing, shows what /metrics served."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import math
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from examples.demo.cli import _parser, main
from examples.demo.crawl import PAGES_PER_SITE, plan
from examples.demo.report import quantile_bound, read_metrics
from tests.helpers import listed_options, run_module

COUNTERS = ("submitted", "completed", "failed", "dropped_at_exit", "queued", "in_flight")


def scraped(text: str, sample: str, **labels: str) -> float:
    """Sum of the samples named ``sample`` with these labels, read straight off the text."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def run_demo(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "summary.json"
    code = main([*args, "--json", str(out)])
    summary: dict[str, Any] = json.loads(out.read_text())
    return code, summary


def assert_metrics_agree(summary: dict[str, Any]) -> None:
    """The counters the demo printed are the ones its /metrics served before shutdown."""
    text, cleanup = summary["metrics"]["scrape"], summary["cleanup"]
    for name in COUNTERS[:4]:
        assert scraped(text, f"fastcleanup_{name}_total", cleaner="demo") == cleanup[name], name
    for name in COUNTERS[4:]:
        assert scraped(text, f"fastcleanup_{name}", cleaner="demo") == cleanup[name] == 0
    for kind, n in cleanup["completed_by_kind"].items():
        assert scraped(text, "fastcleanup_completed_total", cleaner="demo", task=kind) == n
    count = scraped(text, "fastcleanup_cleanup_latency_seconds_count", cleaner="demo")
    assert count == summary["latency"]["count"] == cleanup["completed"] + cleanup["failed"]


def test_demo_in_process_leaks_nothing(
    tmp_path: Path, loop_kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pages, timeout = 40, 0.5
    code, summary = run_demo(
        tmp_path, "--pages", str(pages), "--slow-rate", "0.2", "--timeout", str(timeout),
        "--loop", loop_kind, "--browser", "stand-in",
    )  # fmt: skip
    printed = capsys.readouterr()

    assert code == 0, printed.out
    assert summary["loop"] == loop_kind
    assert "\nbrowser: stand-in\n" in printed.out
    assert summary["browser"] == {
        "name": "stand-in",
        "profiles_made": 4,
        "profiles_removed": 4,
        "processes_left": 0,
        "leftovers": 0,
    }
    assert summary["leak_check"] == {"ok": True, "leftovers": [], "damaged": []}
    assert summary["conservation"]["ok"]
    assert not Path(summary["scratch"]).exists()  # the default scratch dir is removed

    # The crawl did what the plan asked of the site. Only a page cut short
    # breaks; neither it nor a slow page whose last piece leaves the site (at
    # 7/8 of its delay) after the deadline can end up kept. On a loaded
    # machine any page may time out, hence the inequalities.
    specs = [p for site in plan(pages, 0.1, 0.2, seed=1) for p in site]
    cut = sum(s.kind == "fail" for s in specs)
    hopeless = sum(s.kind == "slow" and s.delay * 7 / 8 > 1.2 * timeout for s in specs)
    assert cut > 0
    assert hopeless > 0
    p = summary["pages"]
    assert p["ok"] + p["broken"] + p["timed_out"] == pages
    assert 0 < p["broken"] <= cut
    assert p["timed_out"] >= hopeless
    assert p["ok"] <= pages - cut - hopeless

    # Every guard handed over exactly one cleanup, and every one completed.
    f, c = summary["files"], summary["cleanup"]
    sites = math.ceil(pages / PAGES_PER_SITE)
    assert f["profiles"] == sites
    assert f["committed"] == p["ok"]
    assert f["removed"] == f["created"] - f["committed"]
    assert c["completed_by_kind"] == {
        "remove_file": f["staging"] - f["committed"] + f["temp"],
        "remove_tree": sites,
        "aclose": sites,
    }
    assert c["failed"] == c["dropped_at_exit"] == c["dropped_before_init"] == 0
    assert_metrics_agree(summary)

    assert summary["metrics"]["url"] in printed.out
    assert f"submitted {c['submitted']} = completed {c['completed']} + failed 0" in printed.out
    assert re.search(r"^  leak check +ok ", printed.out, re.MULTILINE)
    assert f"{pages}/{pages} pages" in printed.err  # the last progress line


def test_demo_leak_check_catches_a_file_nobody_removes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scratch = tmp_path / "scratch"
    code, summary = run_demo(
        tmp_path, "--pages", "20", "--slow-rate", "0", "--leak", "2", "--keep",
        "--scratch", str(scratch), "--browser", "stand-in",
    )  # fmt: skip
    printed = capsys.readouterr().out

    assert code == 1
    leftovers = summary["leak_check"]["leftovers"]
    assert len(leftovers) == 2
    assert all(Path(p).parent == scratch / "tmp" and Path(p).is_file() for p in leftovers)
    assert summary["conservation"]["ok"]  # nothing was lost: two guards were told to keep
    assert re.search(r"^  leak check +LEAK ", printed, re.MULTILINE)
    assert f"left behind: {leftovers[0]}" in printed


def test_demo_as_a_subprocess(tmp_path: Path) -> None:
    """What README's "Two commands" says of a demo run with no options but its size."""
    out = tmp_path / "summary.json"
    pages = 30
    proc = run_module(
        "examples.demo", "--pages", str(pages), "--json", str(out), "--browser", "stand-in"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(out.read_text())
    assert summary["leak_check"]["ok"]
    assert summary["leak_check"]["leftovers"] == []
    assert summary["cleanup"]["completed"] > 0
    assert_metrics_agree(summary)
    assert f"metrics  {summary['metrics']['url']}" in proc.stdout
    assert "30/30 pages" in proc.stderr  # stderr is no terminal: periodic progress lines

    # "crawls it on uvloop": the default loop, when installed (it is a dependency).
    loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    assert summary["loop"] == loop
    assert f"sites at a time, on {loop}\n" in proc.stdout
    # "serves /metrics on 127.0.0.1": the scrape above came from there.
    assert urllib.parse.urlsplit(summary["metrics"]["url"]).hostname == "127.0.0.1"
    # "starts a local test site": the pages it crawls come from a loopback address.
    site = re.search(rf"^demo: {pages} pages of \d+ sites at (\S+), ", proc.stdout)
    assert site is not None, proc.stdout
    host = urllib.parse.urlsplit(site[1]).hostname
    assert host is not None and ipaddress.ip_address(host).is_loopback, site[1]
    # "normal, broken and slow pages": the default plan has all three; a page
    # cut short breaks, and a slow page whose last piece leaves the site after
    # the deadline times out (whatever the load; a loaded machine adds more).
    o = summary["options"]
    specs = [
        spec for site in plan(pages, o["fail_rate"], o["slow_rate"], o["seed"]) for spec in site
    ]
    assert {s.kind for s in specs} == {"ok", "fail", "slow"}
    cut = sum(s.kind == "fail" for s in specs)
    hopeless = sum(s.kind == "slow" and s.delay * 7 / 8 > 1.2 * o["timeout"] for s in specs)
    assert hopeless > 0
    p = summary["pages"]
    assert p["ok"] + p["broken"] + p["timed_out"] == pages
    assert 0 < p["broken"] <= cut
    assert p["timed_out"] >= hopeless
    # "through staging-file guards and per-site browser-profile directories".
    f, by_kind = summary["files"], summary["cleanup"]["completed_by_kind"]
    sites = math.ceil(pages / PAGES_PER_SITE)
    assert f["staging"] > 0 and f["profiles"] == sites > 1
    assert by_kind["remove_tree"] == by_kind["aclose"] == sites  # each profile and its session
    assert by_kind["remove_file"] == f["staging"] - f["committed"] + f["temp"]
    # "ends with a summary and a leak check".
    assert re.search(r"^  conservation +ok ", proc.stdout, re.M)
    assert re.match(r"  leak check +ok ", proc.stdout.splitlines()[-1]), proc.stdout


def test_demo_as_a_subprocess_exits_1_on_a_leak() -> None:
    """README: "exit status 1 if anything leaked"; the leaked file goes with the scratch dir."""
    proc = run_module(
        "examples.demo", "--pages", "10", "--slow-rate", "0", "--leak", "1", "--browser", "stand-in"
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"^  leak check +LEAK +1 stray files", proc.stdout, re.M), proc.stdout


def test_demo_help_lists_its_options() -> None:
    """``python -m examples.demo --help`` exits 0 and shows every option but the hidden one."""
    proc = run_module("examples.demo", "--help")
    assert proc.returncode == 0, proc.stderr
    options = listed_options(_parser())
    assert {"--pages", "--metrics-port", "--json", "--loop"} <= set(options)
    shown = proc.stdout.split("\noptions:\n", 1)[1]
    assert [o for o in options if o not in shown] == []


@pytest.mark.parametrize(
    "args",
    [
        ["--pages", "0"],
        ["--concurrency", "0"],
        ["--fail-rate", "0.7", "--slow-rate", "0.5"],
        ["--timeout", "-1"],
        ["--pages", "ten"],
    ],
    ids=["no-pages", "no-concurrency", "rates-above-1", "negative-timeout", "not-a-number"],
)
def test_demo_rejects_bad_options(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    assert "usage: python -m examples.demo" in capsys.readouterr().err


def test_demo_refuses_a_scratch_dir_with_files_in_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["--scratch", str(tmp_path)]) == 2
    assert "must be an empty directory" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_read_metrics_takes_one_cleaners_series() -> None:
    text = (
        "# TYPE fastcleanup_completed counter\n"
        'fastcleanup_completed_total{cleaner="demo",task="remove_file"} 3.0\n'
        'fastcleanup_completed_total{cleaner="demo",task="aclose"} 1.0\n'
        'fastcleanup_completed_total{cleaner="other",task="remove_file"} 50.0\n'
        "# TYPE fastcleanup_failed counter\n"
        'fastcleanup_failed_total{cleaner="demo",task="remove_tree",reason="refused"} 2.0\n'
        "# TYPE fastcleanup_cleanup_latency_seconds histogram\n"
        'fastcleanup_cleanup_latency_seconds_bucket{cleaner="demo",le="0.001"} 4.0\n'
        'fastcleanup_cleanup_latency_seconds_bucket{cleaner="demo",le="+Inf"} 6.0\n'
        'fastcleanup_cleanup_latency_seconds_count{cleaner="demo"} 6.0\n'
        'fastcleanup_cleanup_latency_seconds_sum{cleaner="demo"} 0.5\n'
    )
    seen = read_metrics(text, "demo")
    assert seen["totals"] == {"completed": 4.0, "failed": 2.0}
    assert seen["by_kind"] == {
        "completed": {"remove_file": 3.0, "aclose": 1.0},
        "failed": {"remove_tree/refused": 2.0},
    }
    assert seen["latency"] == {"buckets": [(0.001, 4.0), (math.inf, 6.0)], "sum": 0.5, "count": 6.0}


def test_quantile_bound_is_the_upper_edge_of_the_bucket() -> None:
    buckets = [(0.001, 50.0), (0.0025, 99.0), (0.005, 100.0), (math.inf, 100.0)]
    assert quantile_bound(buckets, 0.5) == 0.001
    assert quantile_bound(buckets, 0.51) == 0.0025
    assert quantile_bound(buckets, 0.99) == 0.0025
    assert quantile_bound(buckets, 1.0) == 0.005
    assert quantile_bound([(0.001, 0.0), (math.inf, 0.0)], 0.5) is None
    assert quantile_bound([], 0.5) is None


def chromium_label() -> str:
    """What the demo's default run names its browser; skips where it is the stand-in."""
    from examples.demo.browser_choice import STAND_IN, choose

    probe = _parser().parse_args([])
    choose(probe)
    if probe.browser_label == STAND_IN:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the demo in Chromium: Playwright or Chromium is missing")
        pytest.skip("Playwright or a Chromium is not installed")
    label: str = probe.browser_label
    return label


def test_the_default_run_in_chromium_is_100_pages_2_sites_at_a_time() -> None:
    """README: "in Chromium ... (100 pages, 2 sites at a time), else in a stand-in"."""
    from examples.demo.browser_choice import STAND_IN, choose

    chromium_label()
    default, stand_in = _parser().parse_args([]), _parser().parse_args(["--browser", STAND_IN])
    choose(default)
    choose(stand_in)
    assert (default.pages, default.concurrency) == (100, 2)
    assert stand_in.browser_label == STAND_IN


def test_demo_in_chromium_leaves_no_profile_and_no_browser(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default run drives a real Chromium where Playwright and one are installed."""
    label = chromium_label()
    code, summary = run_demo(tmp_path, "--pages", "20", "--slow-rate", "0")
    printed = capsys.readouterr().out

    assert code == 0, printed
    assert re.search(r"^browser: chromium \d+ \(playwright \d+\.\d+\)$", printed, re.M)
    b = summary["browser"]
    assert b["name"] == label
    assert b["profiles_made"] == b["profiles_removed"] == 2  # a profile per site of 10 pages
    assert b["processes_left"] == b["leftovers"] == 0
    assert summary["pages"]["ok"] > 0
    c = summary["cleanup"]
    # Each profile went through InOrder(wait for the browser's exit, RemoveTree).
    assert c["completed_by_kind"]["remove_tree"] >= 2
    assert c["failed"] == 0
    assert summary["conservation"]["ok"]
    assert_metrics_agree(summary)


def test_demo_kill_shows_the_next_start_sweeping_a_killed_crawler() -> None:
    chromium_label()
    proc = run_module("examples.demo", "--kill")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    left = re.search(r"^  left +(\d+) directories, (\d+) files in ", out, re.M)
    assert left is not None, out
    assert int(left[2]) > 0  # the killed crawler did leave files: the sweep had work
    assert re.search(r"^  swept +1 scratch directories of dead processes", out, re.M), out
    assert re.search(r"^  after +0 directories, 0 files .*browser processes left: 0$", out, re.M)
    assert out.rstrip().endswith("leftovers 0: ok")
