"""deploy/k8s/base/prometheusrule.yaml: valid rules (promtool), alert unit tests, metric
names that exist in the worker, and a runbook section in deploy/README.md for each alert."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from tests.deploy.conftest import Tools
from tests.deploy.support import (
    ROOT,
    Manifests,
    Obj,
    markdown_anchors,
    promql_series_names,
    worker_metric_names,
)
from tests.deploy.test_grafana import DASHBOARD, expressions

README: Final = ROOT / "deploy" / "README.md"
ALERT_TESTS: Final = Path(__file__).with_name("alerts_test.yaml")
SEVERITIES: Final = frozenset({"critical", "warning", "info"})
REQUIRED_ALERTS: Final = frozenset(
    {
        "SessionWorkerNotConsuming",
        "SessionWorkerStalled",
        "SessionWorkerLagGrowing",
        "SessionWorkerDeadLetters",
        "SessionWorkerManyUnhealthySessions",
        "SessionWorkerScrapeCapHit",
    }
)
DASHBOARD_VARIABLES: Final = {
    "$__rate_interval": "1m",
    "$namespace": "media",
    "$pod": ".*",
}


@pytest.fixture(scope="module")
def groups(overlay: Manifests) -> list[Obj]:
    rule = overlay.one("PrometheusRule", "session-worker")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    found: list[Obj] = rule["spec"]["groups"]
    return found


def rules(groups: list[Obj]) -> list[Obj]:
    return [rule for group in groups for rule in group["rules"]]


def alerts(groups: list[Obj]) -> list[Obj]:
    return [rule for rule in rules(groups) if "alert" in rule]


def test_rule_structure(groups: list[Obj]) -> None:
    names = [g["name"] for g in groups]
    assert len(names) == len(set(names))
    for rule in rules(groups):
        assert ("alert" in rule) != ("record" in rule)
        assert rule["expr"].strip()
    alert_names = [a["alert"] for a in alerts(groups)]
    assert len(alert_names) == len(set(alert_names))
    assert set(alert_names) >= REQUIRED_ALERTS
    for alert in alerts(groups):
        assert alert["alert"].startswith("SessionWorker")
        assert alert["labels"]["severity"] in SEVERITIES
        assert re.fullmatch(r"\d+[smh]", alert["for"]), alert["alert"]
        assert {"summary", "description", "runbook_url"} <= alert["annotations"].keys()


def test_every_alert_has_a_runbook_section(groups: list[Obj]) -> None:
    anchors = markdown_anchors(README)
    for alert in alerts(groups):
        url: str = alert["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page.endswith("/deploy/README.md"), url
        assert anchor == alert["alert"].lower(), url
        assert anchor in anchors, f"deploy/README.md has no section '{alert['alert']}'"


def test_every_series_exists_in_the_worker(groups: list[Obj]) -> None:
    known = worker_metric_names()
    recorded = {rule["record"] for rule in rules(groups) if "record" in rule}
    for rule in rules(groups):
        names = promql_series_names(rule["expr"])
        scrape_health = 'up{job="session-worker"}' in rule["expr"]
        assert names or scrape_health, f"queries nothing of the worker: {rule['expr']}"
        for name in names:
            if ":" in name:
                assert name in recorded, f"{name} is not recorded by any rule"
            else:
                assert name in known, f"unknown series {name} in {rule['expr']}"


def test_every_selector_is_scoped_to_the_job(groups: list[Obj]) -> None:
    for rule in rules(groups):
        for match in re.finditer(r"\b(session_worker_\w+|up)\b(\{[^}]*\})?", rule["expr"]):
            if ":" in rule["expr"][max(0, match.start() - 1) : match.start()]:
                continue  # part of a recording rule name
            selector = match.group(2) or ""
            assert 'job="session-worker"' in selector, rule["expr"]


def _write_rules(directory: Path, groups: list[Obj]) -> Path:
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def _promtool(tools: Tools, *args: str, cwd: Path) -> None:
    result = subprocess.run(
        [str(tools.promtool), *args], capture_output=True, text=True, check=False, cwd=cwd
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_rules(tools: Tools, groups: list[Obj], tmp_path: Path) -> None:
    rules_file = _write_rules(tmp_path, groups)
    _promtool(tools, "check", "rules", "--lint=all", "--lint-fatal", str(rules_file), cwd=tmp_path)


def test_alerts_fire_when_they_should(tools: Tools, groups: list[Obj], tmp_path: Path) -> None:
    """tests/deploy/alerts_test.yaml: promtool unit tests on synthetic series."""
    _write_rules(tmp_path, groups)
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    _promtool(tools, "test", "rules", ALERT_TESTS.name, cwd=tmp_path)


def test_every_alert_has_a_unit_test(groups: list[Obj]) -> None:
    document: dict[str, Any] = yaml.safe_load(ALERT_TESTS.read_text())
    tested = {
        case["alertname"]
        for test in document["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {a["alert"] for a in alerts(groups)} <= tested


def test_promtool_accepts_the_dashboard_queries(tools: Tools, tmp_path: Path) -> None:
    """Dashboard expressions (Grafana variables substituted) parse as PromQL."""
    import json  # noqa: PLC0415

    checks = []
    for index, query in enumerate(expressions(json.loads(DASHBOARD.read_text()))):
        if query.startswith("label_values("):
            continue  # a Grafana function, not PromQL
        expr = query
        for variable, value in DASHBOARD_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        checks.append({"record": f"dashboard:query:{index}", "expr": expr})
    rules_file = tmp_path / "dashboard.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": checks}]}))
    _promtool(tools, "check", "rules", str(rules_file), cwd=tmp_path)
