"""Checks of grafana/: the Prometheus alert rules (through promtool) and the dashboard JSON.

The promtool tests skip only when promtool is not installed (Debian/Ubuntu:
``apt-get install prometheus``). Everything else needs nothing but the files.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

GRAFANA = Path(__file__).resolve().parent.parent / "grafana"
ALERTS = GRAFANA / "alerts.yml"
ALERTS_TEST = GRAFANA / "alerts_test.yml"
DASHBOARD = GRAFANA / "fastcleanup-dashboard.json"
DATASOURCE_PROVISIONING = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
DASHBOARD_PROVISIONING = GRAFANA / "provisioning" / "dashboards" / "fastcleanup.yaml"

# The metrics fastcleanup exports (the design contract). Histograms appear in
# queries only with their _bucket, _sum and _count suffixes.
COUNTERS = frozenset(
    {
        "fastcleanup_submitted_total",
        "fastcleanup_dropped_before_init_total",
        "fastcleanup_completed_total",
        "fastcleanup_failed_total",
        "fastcleanup_dropped_at_exit_total",
        "fastcleanup_swept_total",
    }
)
GAUGES = frozenset({"fastcleanup_queued", "fastcleanup_in_flight", "fastcleanup_worker_up"})
HISTOGRAMS = frozenset({"fastcleanup_cleanup_latency_seconds", "fastcleanup_batch_size"})
QUERYABLE = (
    COUNTERS
    | GAUGES
    | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)

ALERT_NAMES = frozenset(
    {
        "FastcleanupWorkerDown",
        "FastcleanupFailureRatioHigh",
        "FastcleanupBacklogGrowing",
        "FastcleanupDroppedBeforeInit",
        "FastcleanupDroppedAtExit",
        "FastcleanupSweptLeftovers",
        "FastcleanupTreesBusy",
    }
)

JOB_FILTER = 'job=~"$job"'
INSTANCE_FILTER = 'instance=~"$instance"'
DATASOURCE_REF = "${datasource}"

# A metric name and the label matchers right after it, if any.
SELECTOR = re.compile(r"(fastcleanup_[a-z_]+)(\{[^}]*\})?")


# --------------------------------------------------------------------- helpers


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian/Ubuntu: apt-get install prometheus)")
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _panels() -> list[dict[str, Any]]:
    panels = _dashboard()["panels"]
    assert isinstance(panels, list)
    assert panels, "the dashboard has no panels"
    return panels


def _targets() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in _panels():
        for target in panel.get("targets", []):
            yield panel, target


def _variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in _dashboard()["templating"]["list"]}


def _alert_blocks() -> dict[str, str]:
    """Map each alert name in alerts.yml to the text of its rule."""
    parts = re.split(r"^\s*- alert:\s*", ALERTS.read_text(encoding="utf-8"), flags=re.MULTILINE)
    blocks: dict[str, str] = {}
    for part in parts[1:]:
        name, _, body = part.partition("\n")
        assert name.strip() not in blocks, f"alert {name.strip()} is defined twice"
        blocks[name.strip()] = body
    return blocks


# ------------------------------------------------------------ alert rules


def test_alert_rules_pass_promtool_check() -> None:
    result = _promtool("check", "rules", ALERTS.name, cwd=GRAFANA)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in result.stdout, result.stdout


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    result = _promtool("test", "rules", ALERTS_TEST.name, cwd=GRAFANA)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


# Each edit breaks one alert; the unit tests must notice every one of them.
MUTATIONS = {
    "worker down even when the process is not scraped": (
        "          and on (job, instance)\n          up == 1\n",
        "",
    ),
    "failure ratio threshold of 50%": (") > 0.05\n", ") > 0.5\n"),
    "failure ratio without a minimum of traffic": (") >= 100\n", ") >= 0\n"),
    "backlog alert on a queue that does not grow": (
        "          and on (job, instance, cleaner)\n          deriv(fastcleanup_queued[15m]) > 0\n",
        "",
    ),
    "drops before init missed when the series is new": (
        "                  fastcleanup_dropped_before_init_total\n"
        "                unless\n"
        "                  fastcleanup_dropped_before_init_total offset 10m\n",
        "                  fastcleanup_dropped_before_init_total\n"
        "                unless\n"
        "                  fastcleanup_dropped_before_init_total\n",
    ),
    "drops at exit with another severity": ("severity: info", "severity: warning"),
    "busy trees missed when the series is new": (
        '                  fastcleanup_failed_total{reason="busy"} offset 15m\n',
        '                  fastcleanup_failed_total{reason="busy"}\n',
    ),
    "busy trees counted with every reason": (
        '              increase(fastcleanup_failed_total{reason="busy"}[15m])\n',
        "              increase(fastcleanup_failed_total[15m])\n",
    ),
    "swept leftovers missed when the series is new": (
        '                  fastcleanup_swept_total{type="directory"} offset 1h\n',
        '                  fastcleanup_swept_total{type="directory"}\n',
    ),
    "swept leftovers missed after a restart that swept as many": (
        "            and on (job, instance)\n"
        "              sum by (job, instance) (resets(fastcleanup_completed_total[1h])) > 0\n",
        "            and on (job, instance)\n"
        "              sum by (job, instance) (resets(fastcleanup_completed_total[1h])) > 1e9\n",
    ),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_promtool_unit_tests_catch_a_broken_rule(mutation: str, tmp_path: Path) -> None:
    old, new = MUTATIONS[mutation]
    rules = ALERTS.read_text(encoding="utf-8")
    assert rules.count(old) == 1, f"update MUTATIONS: {old!r} no longer appears once in alerts.yml"
    (tmp_path / ALERTS.name).write_text(rules.replace(old, new), encoding="utf-8")
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    check = _promtool("check", "rules", ALERTS.name, cwd=tmp_path)
    assert check.returncode == 0, f"the mutation should keep the rules valid: {check.stdout}"
    result = _promtool("test", "rules", ALERTS_TEST.name, cwd=tmp_path)
    assert result.returncode != 0, f"alerts_test.yml did not notice: {mutation}"


def test_promtool_check_rejects_a_broken_expression(tmp_path: Path) -> None:
    rules = ALERTS.read_text(encoding="utf-8").replace("deriv(fastcleanup_queued[15m])", "deriv(")
    (tmp_path / ALERTS.name).write_text(rules, encoding="utf-8")
    result = _promtool("check", "rules", ALERTS.name, cwd=tmp_path)
    assert result.returncode != 0, result.stdout


def test_alert_rules_define_every_alert_with_labels_and_annotations() -> None:
    text = ALERTS.read_text(encoding="utf-8")
    assert re.search(r"^\s*- name:\s*fastcleanup\s*$", text, flags=re.MULTILINE)
    blocks = _alert_blocks()
    assert set(blocks) == ALERT_NAMES
    for name, body in blocks.items():
        assert re.search(r"^\s*severity:\s*(critical|warning|info)\s*$", body, re.MULTILINE), name
        assert re.search(r"^\s*summary:", body, re.MULTILINE), name
        assert re.search(r"^\s*description:", body, re.MULTILINE), name
        assert "{{ $labels.instance }}" in body, name
        assert "$value" in body, name


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    # Each `alertname:` line of alerts_test.yml is followed by its exp_alerts:
    # `exp_alerts: []` (silent) or a list of expected alerts (firing).
    cases = re.findall(
        r"^\s*alertname:\s*(\w+)\s*\n\s*exp_alerts:(.*)$",
        ALERTS_TEST.read_text(encoding="utf-8"),
        flags=re.MULTILINE,
    )
    firing = {name for name, rest in cases if rest.strip() != "[]"}
    silent = {name for name, rest in cases if rest.strip() == "[]"}
    assert firing >= ALERT_NAMES, f"no firing case for {sorted(ALERT_NAMES - firing)}"
    assert silent >= ALERT_NAMES, f"no silent case for {sorted(ALERT_NAMES - silent)}"
    assert {name for name, _ in cases} <= ALERT_NAMES


# ------------------------------------------------------------- dashboard


def test_dashboard_panels_are_complete() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"]
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    ids = [panel.get("id") for panel in _panels()]
    assert all(isinstance(i, int) for i in ids), ids
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for panel in _panels():
        where = f"panel {panel.get('id')} ({panel.get('title')!r})"
        assert panel.get("title"), where
        assert panel.get("description"), where
        assert panel.get("type") in {"timeseries", "stat", "state-timeline"}, where
        assert panel.get("gridPos"), where
        assert panel.get("datasource") == {"type": "prometheus", "uid": DATASOURCE_REF}, where
        targets = panel.get("targets")
        assert targets, f"{where} has no targets"
        ref_ids = [t.get("refId") for t in targets]
        assert all(ref_ids), where
        assert len(ref_ids) == len(set(ref_ids)), f"{where}: duplicate refIds {ref_ids}"
        for target in targets:
            assert isinstance(target.get("expr"), str), where
            assert target["expr"].strip(), where
            assert target.get("datasource", panel["datasource"])["uid"] == DATASOURCE_REF, where


def test_dashboard_templating() -> None:
    variables = _variables()
    assert {"datasource", "job", "instance"} <= set(variables)

    datasource = variables["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"

    queries = {
        "job": "label_values(fastcleanup_worker_up, job)",
        "instance": 'label_values(fastcleanup_worker_up{job=~"$job"}, instance)',
    }
    for name, query in queries.items():
        var = variables[name]
        assert var["type"] == "query", name
        assert var["datasource"]["uid"] == DATASOURCE_REF, name
        query_field = var["query"]
        actual = query_field["query"] if isinstance(query_field, dict) else query_field
        assert actual == query, name
        assert var["multi"] is True, name
        assert var["includeAll"] is True, name
        assert var["allValue"] == ".*", name


def test_dashboard_queries_use_only_exported_metrics() -> None:
    used: set[str] = set()
    for panel, target in _targets():
        names = set(re.findall(r"fastcleanup_[a-z_]+", target["expr"]))
        assert names, f"panel {panel['title']!r} {target['refId']}: no fastcleanup metric"
        unknown = names - QUERYABLE
        assert not unknown, f"panel {panel['title']!r} {target['refId']}: unknown {unknown}"
        used |= names
    # Every exported metric is shown somewhere.
    shown = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    missing = (COUNTERS | GAUGES | HISTOGRAMS) - shown
    assert not missing, f"exported but not on the dashboard: {sorted(missing)}"


def test_dashboard_queries_filter_on_job_and_instance() -> None:
    for panel, target in _targets():
        for name, matchers in SELECTOR.findall(target["expr"]):
            where = f"panel {panel['title']!r} {target['refId']}: {name}"
            assert matchers, f"{where} has no label matchers"
            assert JOB_FILTER in matchers, where
            assert INSTANCE_FILTER in matchers, where


def test_dashboard_rates_use_the_rate_interval() -> None:
    for panel, target in _targets():
        for window in re.findall(r"\[([^\]]*)\]", target["expr"]):
            assert window == "$__rate_interval", f"panel {panel['title']!r}: [{window}]"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # Substitute the Grafana variables and let promtool parse every query as
    # a recording rule. JSON is valid YAML, so no YAML library is needed.
    rules = []
    for panel, target in _targets():
        expr = (
            target["expr"]
            .replace("$__rate_interval", "1m")
            .replace("$job", ".*")
            .replace("$instance", ".*")
        )
        rules.append({"record": f"dashboard:panel{panel['id']}_{target['refId']}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}), "utf-8")
    result = _promtool("check", "rules", path.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_provisioned_datasource_is_the_dashboard_default() -> None:
    uid = re.search(r"^\s*uid:\s*(\S+)\s*$", DATASOURCE_PROVISIONING.read_text("utf-8"), re.M)
    assert uid, "the provisioned data source has no uid"
    assert _variables()["datasource"]["current"]["value"] == uid.group(1)
    provider = DASHBOARD_PROVISIONING.read_text(encoding="utf-8")
    assert re.search(r"^\s*path:\s*/etc/grafana/fastcleanup\s*$", provider, re.MULTILINE)


def test_every_failure_reason_is_explained_wherever_reasons_are_listed() -> None:
    """The HELP text, the failure panel, the failure-ratio alert and README name each reason."""
    from fastcleanup._export import _HELP
    from fastcleanup._worker import REASONS

    assert set(REASONS) == {"error", "timeout", "invalid", "refused", "busy"}
    (panel,) = [p for p in _panels() if p.get("title") == "Failure rate by task and reason"]
    ratio = _alert_blocks()["FastcleanupFailureRatioHigh"]
    readme = (GRAFANA.parent / "README.md").read_text(encoding="utf-8")
    (grows,) = [row for row in readme.splitlines() if row.startswith("| `fc.stats().failed` grows")]
    for reason in REASONS:
        assert f"{reason} (" in _HELP["failed"], reason
        assert f"{reason}: " in panel["description"], reason
        assert f'"{reason}"' in ratio, reason
        assert f"(`{reason}`)" in grows, reason
