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
    container_env,
    load_yaml_documents,
    markdown_anchors,
    promql_series_names,
    settings_from_env,
    worker_metric_names,
)
from tests.deploy.test_grafana import DASHBOARD, expressions
from worker.metrics import LATENCY_BUCKETS

README: Final = ROOT / "deploy" / "README.md"
ALERT_TESTS: Final = Path(__file__).with_name("alerts_test.yaml")
SEVERITIES: Final = frozenset({"critical", "warning", "info"})
PAGING_ALERTS: Final = frozenset(
    {
        "SessionWorkerFreshnessBudgetBurn",
        "SessionWorkerAbsent",
        "SessionWorkerPartitionsUnowned",
        "SessionWorkerNotConsuming",
        "SessionWorkerCheckpointsStopped",
    }
)
"""Symptoms users of the snapshots feel; every other alert is a warning (a ticket)."""
REQUIRED_ALERTS: Final = PAGING_ALERTS | {
    "SessionWorkerFreshnessBudgetLow",
    "SessionWorkerDown",
    "SessionWorkerStalled",
    "SessionWorkerCheckpointsFailing",
    "SessionWorkerLagGrowing",
    "SessionWorkerDeadLetters",
    "SessionWorkerRebalanceStorm",
    "SessionWorkerManyUnhealthySessions",
    "SessionWorkerScrapeCapHit",
    "SessionWorkerKafkaCAExpiring",
}
EXTERNAL_SERIES: Final = frozenset({"up", "strimzi_certificate_expiration_timestamp_ms"})
"""Series from Prometheus itself and from Strimzi's cluster operator, not from the worker."""
SLO_BOUND_BUCKET: Final = re.compile(
    r'session_worker_event_to_snapshot_latency_seconds_bucket\{[^}]*le="([0-9.]+)"'
)
RUNBOOK_PLACEHOLDER: Final = "https://runbooks.invalid/"
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


def test_paging_alerts_are_the_symptoms(groups: list[Obj]) -> None:
    critical = {a["alert"] for a in alerts(groups) if a["labels"]["severity"] == "critical"}
    assert critical == PAGING_ALERTS


def test_every_alert_has_a_runbook_section(groups: list[Obj]) -> None:
    anchors = markdown_anchors(README)
    for alert in alerts(groups):
        url: str = alert["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page.endswith("/deploy/README.md"), url
        assert not url.startswith(RUNBOOK_PLACEHOLDER), f"the overlay did not replace {url}"
        assert anchor == alert["alert"].lower(), url
        assert anchor in anchors, f"deploy/README.md has no section '{alert['alert']}'"


def test_every_series_exists_in_the_worker(groups: list[Obj]) -> None:
    known = worker_metric_names()
    recorded = {rule["record"] for rule in rules(groups) if "record" in rule}
    for rule in rules(groups):
        names = promql_series_names(rule["expr"])
        external = {n for n in EXTERNAL_SERIES if re.search(rf"\b{n}\{{", rule["expr"])}
        assert names or external, f"queries nothing of the worker: {rule['expr']}"
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


def test_the_overlay_replaces_the_runbook_host(base: Manifests, overlay: Manifests) -> None:
    """The base links a placeholder; the example overlay's replacement sets every link."""
    source = next(
        doc
        for doc in load_yaml_documents(ROOT / "deploy/k8s/overlays/example/runbooks.yaml")
        if doc["kind"] == "ConfigMap"
    )
    target = source["data"]["url"]
    base_urls = _runbook_urls(base.one("PrometheusRule", "session-worker"))
    overlay_urls = _runbook_urls(overlay.one("PrometheusRule", "session-worker"))
    assert base_urls
    assert all(u.startswith(RUNBOOK_PLACEHOLDER) for u in base_urls)
    assert len(overlay_urls) == len(base_urls)
    for before, after in zip(base_urls, overlay_urls, strict=True):
        assert after == f"{target}#{before.partition('#')[2]}"
    assert not overlay.of_kind("ConfigMap") or all(
        c["metadata"]["name"] != source["metadata"]["name"] for c in overlay.of_kind("ConfigMap")
    ), "the runbook ConfigMap is local config, never applied"


def _runbook_urls(rule: Obj) -> list[str]:
    return [
        r["annotations"]["runbook_url"]
        for g in rule["spec"]["groups"]
        for r in g["rules"]
        if "alert" in r
    ]


def test_slo_bound_is_the_publish_interval_plus_one_second(
    groups: list[Obj], overlay: Manifests, clean_worker_env: pytest.MonkeyPatch
) -> None:
    """The le bucket of the freshness SLI follows WORKER_PUBLISH_INTERVAL_S, and is a real
    bucket of the worker's histogram (a missing bucket would make every ratio 1)."""
    deployment = overlay.one("Deployment", "session-worker")
    settings = settings_from_env(container_env(overlay, deployment), clean_worker_env)
    bounds = {
        float(bound) for rule in rules(groups) for bound in SLO_BOUND_BUCKET.findall(rule["expr"])
    }
    assert bounds == {settings.publish_interval_s + 1}
    assert settings.publish_interval_s + 1 in LATENCY_BUCKETS


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
