"""deploy/grafana/session-worker.json: a well-formed dashboard over metrics that exist."""

from __future__ import annotations

import json
import re
from typing import Any, Final

import pytest

from tests.deploy.support import ROOT, promql_series_names, worker_metric_names

DASHBOARD: Final = ROOT / "deploy" / "grafana" / "session-worker.json"
GRID_WIDTH: Final = 24
BUILTIN_VARIABLES: Final = frozenset({"__rate_interval", "__interval", "__range"})
EXTERNAL_SERIES: Final = frozenset(
    {
        "up",  # Prometheus
        "kube_pod_status_ready",  # kube-state-metrics
        "kube_pod_container_status_restarts_total",
        "kube_pod_container_resource_requests",
        "kube_pod_container_resource_limits",
        "container_cpu_usage_seconds_total",  # cAdvisor (kubelet)
        "container_cpu_cfs_throttled_periods_total",
        "container_cpu_cfs_periods_total",
        "container_memory_working_set_bytes",
    }
)
"""Series of kube-prometheus-stack's standard exporters: the pod and resource panels."""
WORKER_PODS: Final = 'pod=~"session-worker-.*", container="worker"'
"""How a query of cAdvisor or kube-state-metrics keeps to the worker's containers."""
REQUIRED_QUERIES: Final = (
    "sum(up{",
    "kube_pod_status_ready{",
    "kube_pod_container_status_restarts_total{",
    "rate(container_cpu_usage_seconds_total{",
    'kube_pod_container_resource_requests{namespace=~"$namespace", pod=~"$pod", '
    'pod=~"session-worker-.*", container="worker", resource="cpu"}',
    "container_cpu_cfs_throttled_periods_total{",
    "container_memory_working_set_bytes{",
    "rate(session_worker_checkpoint_failures_total{",
    "max(session_worker_input_partitions{",
    "rate(session_worker_events_consumed_total",
    "session_worker_consumer_lag_records",
    "session_worker_invalid_events_total",
    "histogram_quantile(0.99, sum by (le) (rate(session_worker_publish_latency_seconds_bucket",
    "session_worker_sessions_in_memory",
    "count(session_worker_session_healthy{",
    "topk(10, session_worker_session_ingest_rate_bytes_per_second",
)

Json = dict[str, Any]


@pytest.fixture(scope="module")
def dashboard() -> Json:
    document: Json = json.loads(DASHBOARD.read_text())
    return document


def panels(dashboard: Json) -> list[Json]:
    found: list[Json] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def expressions(dashboard: Json) -> list[str]:
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def test_top_level(dashboard: Json) -> None:
    assert dashboard["uid"] == "session-worker"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["time"]["from"].startswith("now-")
    assert "id" not in dashboard or dashboard["id"] is None, "importable: no instance id"


def test_panels_are_well_formed(dashboard: Json) -> None:
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels(dashboard):
        assert panel["type"] in {"row", "timeseries", "stat", "table", "gauge", "bargauge"}
        assert panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0
        assert grid["w"] > 0
        assert grid["x"] + grid["w"] <= GRID_WIDTH
        assert grid["y"] >= 0
        assert grid["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target["datasource"]["uid"] == "${datasource}"


def test_panels_do_not_overlap(dashboard: Json) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_variables_are_defined(dashboard: Json) -> None:
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "pod"} <= defined
    text = DASHBOARD.read_text()
    inputs = {i["name"] for i in dashboard["__inputs"]}
    used = set(re.findall(r"\$\{?(\w+)", text)) - inputs
    assert used - BUILTIN_VARIABLES <= defined, used - BUILTIN_VARIABLES - defined


def test_every_series_exists_in_the_worker(dashboard: Json) -> None:
    """The worker's series exist in worker/metrics.py; anything else is a standard
    exporter's series, and then only about the worker's own containers."""
    known = worker_metric_names()
    for expr in expressions(dashboard):
        names = promql_series_names(expr)
        assert names <= known, f"unknown series {sorted(names - known)} in {expr}"
        selected = set(re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\{", expr))
        assert selected, f"selects no series: {expr}"
        external = selected - known
        assert external <= EXTERNAL_SERIES, f"unknown series {sorted(external)} in {expr}"
        for name in external - {"up"}:
            for selector in re.findall(rf"\b{name}\{{([^}}]*)\}}", expr):
                assert 'pod=~"session-worker-.*"' in selector, expr
                assert name.startswith("kube_pod_status") or WORKER_PODS in selector, expr


def test_import_prompts_for_the_data_source(dashboard: Json) -> None:
    """Grafana's import asks for each __inputs entry and writes the choice wherever its
    ${NAME} appears: here the datasource variable, which every panel uses."""
    (prompt,) = dashboard["__inputs"]
    assert prompt["type"] == "datasource"
    assert prompt["pluginId"] == "prometheus"
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
    assert variable["type"] == "datasource"
    assert variable["query"] == prompt["pluginId"]
    assert variable["current"]["value"] == "${" + prompt["name"] + "}"
    referenced = set(re.findall(r"\$\{(DS_\w+)\}", DASHBOARD.read_text()))
    assert referenced == {prompt["name"]}
    required = {(r["type"], r["id"]) for r in dashboard["__requires"]}
    assert ("datasource", "prometheus") in required
    assert {("panel", p["type"]) for p in panels(dashboard) if p["type"] != "row"} <= required


def test_table_sorts_by_a_column_it_shows(dashboard: Json) -> None:
    """sortBy names the column as displayed, i.e. after the organize transformation's rename."""
    for panel in panels(dashboard):
        if panel["type"] != "table":
            continue
        renamed: dict[str, str] = {}
        for transformation in panel.get("transformations", []):
            if transformation["id"] == "organize":
                renamed.update(transformation["options"].get("renameByName", {}))
        shown = {renamed.get(column, column) for column in ("Value", *renamed)}
        for sort in panel["options"]["sortBy"]:
            assert sort["displayName"] in shown, f"{panel['title']}: {sort['displayName']}"
            assert sort["displayName"] not in renamed, "sorting by a name that was renamed"


def test_every_query_selects_the_worker_job(dashboard: Json) -> None:
    for expr in expressions(dashboard):
        for selector in re.findall(r"session_worker_\w+\{([^}]*)\}", expr):
            assert 'job="session-worker"' in selector, expr


def test_required_views_are_there(dashboard: Json) -> None:
    joined = "\n".join(expressions(dashboard))
    for query in REQUIRED_QUERIES:
        assert query in joined, query
