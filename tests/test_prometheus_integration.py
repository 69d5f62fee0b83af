"""A real Prometheus scrapes a process that runs fastcleanup under load.

``tests/load_process.py`` runs the default cleaner and a second one under
load and serves ``/metrics``; a Prometheus started here scrapes it every
second and loads ``grafana/alerts.yml``. Once the process is quiet, the test
checks through Prometheus' HTTP API that every query of the Grafana
dashboard returns data, that the counters Prometheus holds equal the
process's own ``stats()`` and per-kind counts, and that the alert rules are
loaded, healthy and raise what this scenario should raise.

It is skipped only where no ``prometheus`` binary is on ``PATH``
(Debian/Ubuntu: ``apt-get install prometheus``; ``.ci/run`` installs it).
A second test, without Prometheus, compares the process's ``/metrics``
itself with ``stats()`` for tasks submitted after the exit handler ran.
"""

from __future__ import annotations

import json
import math
import re
import select
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.load_process import EARLY_DEFAULT, EARLY_LOAD, KILLED_FILES, LATE_CALLS

ROOT = Path(__file__).resolve().parent.parent
LOAD_PROCESS = ROOT / "tests" / "load_process.py"
DASHBOARD = ROOT / "grafana" / "fastcleanup-dashboard.json"
ALERTS = ROOT / "grafana" / "alerts.yml"

JOB = "crawler"
LOAD_SECONDS = 5.0
SCRAPES_AFTER_QUIET = 3  # scrapes of the final values before the checks
STARTUP_TIMEOUT = 30.0  # seconds for each process to come up, and for each wait below

# Grafana's values for the dashboard's variables: one job, all instances.
# $__rate_interval is a window that still covers the load when the checks
# run (Grafana would pick max(4 x scrape interval, $__interval + scrape interval)).
VARIABLES = {
    "job": JOB,
    "instance": ".*",
    "__rate_interval": "30s",
    "__interval": "5s",
    "__range": "1m",
}
VARIABLE = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\$(\w+)|\[\[(\w+)\]\]")

# Counters as (metric, labels besides cleaner, key in the stats file,
# Stats field its sum per cleaner must equal).
COUNTERS = [
    ("fastcleanup_submitted_total", ("task",), "submitted_by", "submitted"),
    ("fastcleanup_completed_total", ("task",), "completed_by", "completed"),
    ("fastcleanup_failed_total", ("task", "reason"), "failed_by", "failed"),
    (
        "fastcleanup_dropped_before_init_total",
        ("task",),
        "dropped_before_init_by",
        "dropped_before_init",
    ),
    ("fastcleanup_dropped_at_exit_total", ("task",), "dropped_at_exit_by", "dropped_at_exit"),
]

# The rate of these shows the load itself: over the run each must be above 0 somewhere.
LOAD_SERIES = re.compile(
    r"rate\((fastcleanup_(submitted|completed|failed)_total"
    r"|fastcleanup_cleanup_latency_seconds_\w+|fastcleanup_batch_size_\w+)\{"
)

_T = TypeVar("_T")

# Loopback only: never go through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(url: str, params: dict[str, str] | None = None, timeout: float = 10.0) -> bytes:
    if params:
        url = f"{url}?{urllib.parse.urlencode(params)}"
    with _OPENER.open(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def wait_for(
    what: str,
    probe: Callable[[], _T | None],
    timeout: float,
    detail: Callable[[], object] = lambda: "",
) -> _T:
    """Call ``probe`` until it returns something other than None; sleeps in between.

    On timeout the test fails with ``what`` and ``detail()``.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} {detail()}")
        time.sleep(0.25)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it does not end within ``timeout``; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


class LoadProcess:
    """``tests/load_process.py`` as a context manager; stopped and reaped on exit."""

    def __init__(self, tmp_path: Path, *extra: str, seconds: float = LOAD_SECONDS) -> None:
        self.stats_file = tmp_path / "stats.json"
        self.stderr_path = tmp_path / "load_process.stderr"
        self._stderr = self.stderr_path.open("w", encoding="utf-8")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-W",
                "error",
                str(LOAD_PROCESS),
                "--port=0",
                f"--seconds={seconds}",
                f"--stats-file={self.stats_file}",
                f"--workdir={tmp_path / 'work'}",
                *extra,
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.port = self._read_port()
        self.target = f"127.0.0.1:{self.port}"

    def _read_port(self) -> int:
        stdout = self.proc.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], STARTUP_TIMEOUT)
        line = stdout.readline() if ready else ""
        if not line.strip().isdigit():
            stop_process(self.proc)
            pytest.fail(f"load_process printed no port: {line!r}\n{self.stderr()}")
        return int(line)

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(encoding="utf-8")

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def stats(self) -> dict[str, Any] | None:
        """The stats file once the process has written it, else None."""
        if self.proc.poll() is not None:
            pytest.fail(f"load_process exited with {self.proc.returncode}\n{self.stderr()}")
        if not self.stats_file.exists():
            return None
        data: dict[str, Any] = json.loads(self.stats_file.read_text(encoding="utf-8"))
        return data

    def finish(self) -> int:
        """Ask it to stop (a ``stop`` line); returns its exit status."""
        self.send("stop")
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("load_process did not stop within 15 s of 'stop'")

    def scrape(self) -> str:
        return http_get(f"http://{self.target}/metrics").decode()

    def __enter__(self) -> LoadProcess:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            stop_process(self.proc)
        finally:
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None and not pipe.closed:
                    try:
                        pipe.close()
                    except BrokenPipeError:
                        pass
            self._stderr.close()


class Prometheus:
    """A Prometheus server on a free loopback port; stopped and reaped on exit."""

    def __init__(self, tmp_path: Path, target: str) -> None:
        self.config = tmp_path / "prometheus.yml"
        self.config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "rule_files:\n"
            f"  - {json.dumps(str(ALERTS))}\n"
            "scrape_configs:\n"
            f"  - job_name: {JOB}\n"
            "    static_configs:\n"
            f"      - targets: [{json.dumps(target)}]\n",
            encoding="utf-8",
        )
        self.log_path = tmp_path / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            for _ in range(3):  # another process may take the free port before it binds
                if self._start(tmp_path):
                    return
            pytest.fail(f"Prometheus could not bind a port:\n{self.log()}")
        except BaseException:
            self.__exit__(None, None, None)  # no `with` block owns it yet
            raise

    def _start(self, tmp_path: Path) -> bool:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(shutil.which("prometheus")),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def ready() -> bool | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                http_get(f"{self.url}/-/ready", timeout=2)
            except OSError:
                return None
            return True

        if wait_for("Prometheus to be ready", ready, STARTUP_TIMEOUT, self.log):
            return True
        if "address already in use" in self.log():
            return False
        pytest.fail(f"Prometheus exited with {self.proc.returncode}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def api(self, path: str, **params: str) -> Any:
        body = json.loads(http_get(f"{self.url}/api/v1/{path}", params))
        assert body.get("status") == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        data = self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step="1")
        assert data["resultType"] == "matrix", (expr, data)
        result: list[dict[str, Any]] = data["result"]
        return result

    def values(self, expr: str, *labels: str) -> dict[tuple[str, ...], float]:
        """An instant vector as {label values: value}."""
        out: dict[tuple[str, ...], float] = {}
        for series in self.query(expr):
            key = tuple(series["metric"].get(label, "") for label in labels)
            assert key not in out, (expr, key)
            out[key] = float(series["value"][1])
        return out

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None:
            stop_process(self.proc)


# ---------------------------------------------------------------- dashboard


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables (``$x``, ``${x}``, ``${x:fmt}``, ``[[x]]``) in ``expr``."""

    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise AssertionError(f"the dashboard uses ${name}, unknown to this test: {expr!r}")
        return values[name]

    return VARIABLE.sub(one, expr)


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panel_targets(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """(panel title / refId, expr) of every visible query, rows included."""
    for panel in panels:
        yield from panel_targets(panel.get("panels", []))  # a row's panels
        for target in panel.get("targets", []):
            if target.get("expr") and not target.get("hide"):
                yield f"{panel.get('title')!r} / {target.get('refId')}", target["expr"]


def numbers(values: list[list[Any]]) -> list[float]:
    return [float(v) for _, v in values]


# -------------------------------------------------------------------- checks


def counters_by_label(
    scrape: Callable[[str, tuple[str, ...]], dict[tuple[str, ...], float]],
    cleaners: dict[str, Any],
) -> list[str]:
    """Mismatches between exported counters and the process's own numbers."""
    problems: list[str] = []

    def check(what: str, got: object, want: object) -> None:
        if got != want:
            problems.append(f"{what}: exported {got}, the process has {want}")

    for metric, labels, key, field in COUNTERS:
        got = scrape(metric, ("cleaner", *labels))
        want: dict[tuple[str, ...], float] = {}
        for name, c in cleaners.items():
            for kind, v in c[key].items():
                if isinstance(v, dict):  # failed_by: {kind: {reason: n}}
                    want.update({(name, kind, reason): n for reason, n in v.items()})
                else:
                    want[(name, kind)] = v
        check(metric, got, want)
        for name, c in cleaners.items():
            total = sum(n for k, n in got.items() if k[0] == name)
            stats = c["stats"]
            if field == "submitted":
                # A task gets its kind label when the dispatcher takes it: until
                # then it is only in fastcleanup_queued.
                check(f"sum({metric}) + queued, {name}", total + stats["queued"], stats[field])
            else:
                check(f"sum({metric}), {name}", total, stats[field])

    got = scrape("fastcleanup_swept_total", ("cleaner", "type"))
    want = {(name, what): n for name, c in cleaners.items() for what, n in c["swept_by"].items()}
    check("fastcleanup_swept_total", got, want)

    for gauge in ("queued", "in_flight"):
        got = scrape(f"fastcleanup_{gauge}", ("cleaner",))
        check(f"fastcleanup_{gauge}", got, {(n,): c["stats"][gauge] for n, c in cleaners.items()})
    for histogram, key in (
        ("fastcleanup_cleanup_latency_seconds", "latency"),
        ("fastcleanup_batch_size", "batch_size"),
    ):
        got = scrape(f"{histogram}_count", ("cleaner",))
        check(f"{histogram}_count", got, {(n,): c[key]["count"] for n, c in cleaners.items()})
        sums = scrape(f"{histogram}_sum", ("cleaner",))
        for name, c in cleaners.items():
            if not math.isclose(sums.get((name,), math.nan), c[key]["sum"], rel_tol=1e-9):
                problems.append(f"{histogram}_sum, {name}: {sums} vs {c[key]['sum']}")
    return problems


def conservation(
    scrape: Callable[[str, tuple[str, ...]], dict[tuple[str, ...], float]],
    cleaners: dict[str, Any],
) -> list[str]:
    """submitted == completed + failed + dropped_at_exit + queued + in_flight, from the export."""
    per_cleaner: dict[str, dict[str, float]] = {name: {} for name in cleaners}
    for metric in (
        "submitted_total",
        "completed_total",
        "failed_total",
        "dropped_at_exit_total",
        "queued",
        "in_flight",
    ):
        by_series = scrape(f"fastcleanup_{metric}", ("cleaner", "task", "reason"))
        for key, value in by_series.items():
            sums = per_cleaner[key[0]]
            sums[metric] = sums.get(metric, 0.0) + value
    problems = []
    for name, t in per_cleaner.items():
        # The submitted counter labels a task when the dispatcher takes it.
        left = t.get("submitted_total", 0.0) + t.get("queued", 0.0)
        right = sum(v for m, v in t.items() if m != "submitted_total")
        if left != right:
            problems.append(f"{name}: submitted + queued = {left}, finished + pending = {right}")
    return problems


def check_scenario(cleaners: dict[str, Any]) -> None:
    """The load process produced every series the dashboard and alerts look at."""
    assert set(cleaners) == {"default", "load"}
    default, load = cleaners["default"], cleaners["load"]
    assert default["dropped_before_init_by"] == {"remove_file": EARLY_DEFAULT}
    assert load["dropped_before_init_by"] == {"call": EARLY_LOAD}
    assert default["dropped_at_exit_by"] == load["dropped_at_exit_by"] == {"call": LATE_CALLS}
    assert default["completed_by"]["remove_file"] > 100
    assert default["completed_by"]["remove_tree"] > 0
    assert load["completed_by"]["call"] > 0
    assert default["failed_by"] == {"invalid": {"invalid": default["submitted_by"]["invalid"]}}
    assert load["completed_by"]["remove_file"] == 1  # the late one, at exit
    # The SIGKILLed child's scratch directory, swept by the default cleaner's start.
    assert default["completed_by"]["sweep"] == 1
    assert default["swept_by"] == {"directory": 1, "file": KILLED_FILES}
    assert load["swept_by"] == {}
    reasons = {reason for by_reason in load["failed_by"].values() for reason in by_reason}
    assert reasons == {"error", "timeout", "invalid", "refused"}
    for c in cleaners.values():
        assert c["stats"]["queued"] == c["stats"]["in_flight"] == 0


# --------------------------------------------------------------------- tests


@pytest.mark.timeout(180)
def test_prometheus_scrapes_the_dashboard_and_counters_of_a_loaded_process(
    tmp_path: Path,
) -> None:
    if shutil.which("prometheus") is None:
        pytest.skip(
            "no prometheus binary on PATH (Debian/Ubuntu: apt-get install prometheus; "
            ".ci/run installs it)"
        )
    with LoadProcess(tmp_path) as load, Prometheus(tmp_path, load.target) as prom:
        selector = f'job="{JOB}", instance="{load.target}"'

        # Scraped before any load: the cleaners are up, the early drops are visible.
        def first_scrape() -> bool | None:
            return len(prom.query(f"fastcleanup_worker_up{{{selector}}} == 1")) == 2 or None

        wait_for("the first scrape of the load process", first_scrape, STARTUP_TIMEOUT)
        load.send("go")
        data = wait_for("the load process's stats file", load.stats, LOAD_SECONDS + 60)
        cleaners: dict[str, Any] = data["cleaners"]
        check_scenario(cleaners)

        # Let Prometheus scrape the final values a few times.
        seen: set[float] = set()

        # timestamp() of a plain selector is the sample's (scrape's) time; a
        # series the last scrape did not bring is stale and absent.
        def final_scrapes() -> bool | None:
            query = f'timestamp(fastcleanup_worker_up{{{selector}, cleaner="default"}})'
            for series in prom.query(query):
                ts = float(series["value"][1])
                if ts > data["written_at"]:
                    seen.add(ts)
            return len(seen) >= SCRAPES_AFTER_QUIET or None

        wait_for(f"{SCRAPES_AFTER_QUIET} scrapes after the load", final_scrapes, STARTUP_TIMEOUT)

        # (a) The dashboard's variables resolve, and every query has data now
        # and, over the run, shows the load.
        board = dashboard()
        for variable in board["templating"]["list"]:
            if variable["type"] != "query":
                continue
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
            assert match, f"variable {variable['name']}: unexpected query {query!r}"
            label = match[2]
            got = prom.api(f"label/{label}/values", **{"match[]": substitute(match[1], VARIABLES)})
            assert {"job": JOB, "instance": load.target}[label] in got, (variable["name"], got)

        now = time.time()
        problems: list[str] = []
        targets = list(panel_targets(board["panels"]))
        assert len(targets) >= 16, targets
        for where, raw in targets:
            expr = substitute(raw, VARIABLES)
            # Quantiles and means of a histogram that no longer moves are NaN
            # (0/0): the series is there, which is what a panel needs.
            if not prom.query(expr):
                problems.append(f"{where}: no series now: {expr}")
            series = prom.query_range(expr, data["go_at"] - 1, now)
            seen_values = [v for s in series for v in numbers(s["values"])]
            if not any(math.isfinite(v) for v in seen_values):
                problems.append(f"{where}: no number over the run: {expr}")
            elif LOAD_SERIES.search(expr) and not any(v > 0 for v in seen_values):
                problems.append(f"{where}: never above 0 during the load: {expr}")
        assert not problems, "dashboard queries without data:\n" + "\n".join(problems)

        # (b) The counters Prometheus holds are the process's own.
        def from_prometheus(metric: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
            return prom.values(f"{metric}{{{selector}}}", *labels)

        problems = counters_by_label(from_prometheus, cleaners)
        problems += conservation(from_prometheus, cleaners)
        assert not problems, "Prometheus disagrees with stats():\n" + "\n".join(problems)
        worker_up = prom.values(f"fastcleanup_worker_up{{{selector}}}", "cleaner")
        assert worker_up == {("default",): 0.0, ("load",): 0.0}  # their loop has ended

        # (c) The alert rules are loaded, evaluate without error, and raise
        # exactly what this scenario calls for.
        def rules_ok() -> list[dict[str, Any]] | None:
            groups = [g for g in prom.api("rules")["groups"] if g["name"] == "fastcleanup"]
            rules = [r for g in groups for r in g["rules"]]
            if not rules or any(r["health"] != "ok" for r in rules):
                return None
            assert [g["file"] for g in groups] == [str(ALERTS)]
            return rules

        rules = wait_for("healthy fastcleanup rules", rules_ok, STARTUP_TIMEOUT)
        assert {r["name"] for r in rules} == {
            "FastcleanupWorkerDown",
            "FastcleanupFailureRatioHigh",
            "FastcleanupBacklogGrowing",
            "FastcleanupDroppedBeforeInit",
            "FastcleanupDroppedAtExit",
            "FastcleanupSweptLeftovers",
            "FastcleanupTreesBusy",
        }
        expected_alerts = {
            # Both loops have ended while the process answers scrapes ("for: 5m").
            ("FastcleanupWorkerDown", "default"): "pending",
            ("FastcleanupWorkerDown", "load"): "pending",
            # A quarter of the load cleaner's tasks fail on purpose ("for: 5m").
            ("FastcleanupFailureRatioHigh", "load"): "pending",
            # Dropped before the first scrape: a new series counts whole.
            ("FastcleanupDroppedBeforeInit", "default"): "firing",
            ("FastcleanupDroppedBeforeInit", "load"): "firing",
            ("FastcleanupDroppedAtExit", "default"): "firing",
            ("FastcleanupDroppedAtExit", "load"): "firing",
            # Swept at the start, before the first scrape: a new series counts whole.
            ("FastcleanupSweptLeftovers", "default"): "firing",
        }
        active: dict[tuple[str, str], str] = {}

        def alerts_as_expected() -> bool | None:
            active.clear()
            for alert in prom.api("alerts")["alerts"]:
                labels = alert["labels"]
                assert labels["job"] == JOB and labels["instance"] == load.target, labels
                active[(labels["alertname"], labels["cleaner"])] = alert["state"]
            return active == expected_alerts or None

        wait_for(
            "the expected alerts",
            alerts_as_expected,
            STARTUP_TIMEOUT,
            lambda: f"\nactive:   {active}\nexpected: {expected_alerts}",
        )

        assert load.finish() == 0, load.stderr()
        assert load.stderr() == ""
    assert load.proc.returncode is not None
    assert prom.proc is not None and prom.proc.returncode is not None


@pytest.mark.timeout(120)
def test_counters_stay_exact_for_a_task_submitted_after_exit(tmp_path: Path) -> None:
    """The /metrics exposition itself (no Prometheus) against stats()."""
    with LoadProcess(tmp_path, "--submit-after-exit", seconds=1) as load:
        load.send("go")
        data = wait_for("the load process's stats file", load.stats, 60)
        families = list(text_string_to_metric_families(load.scrape()))

        def from_exposition(metric: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
            out: dict[tuple[str, ...], float] = {}
            for s in (s for f in families for s in f.samples if s.name == metric):
                key = tuple(s.labels.get(label, "") for label in labels)
                assert key not in out, (metric, key)
                out[key] = s.value
            return out

        problems = counters_by_label(from_exposition, data["cleaners"])
        problems += conservation(from_exposition, data["cleaners"])
        if load.finish() != 0:
            pytest.fail(f"load_process exited with {load.proc.returncode}\n{load.stderr()}")
        assert not problems, "/metrics disagrees with stats():\n" + "\n".join(problems)
