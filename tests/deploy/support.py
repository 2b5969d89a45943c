"""Helpers shared by the deploy checks: manifest lookup, the worker's real metric names,
PromQL identifiers, and Settings built from what a pod would see."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from worker.http import HttpServer, Probes
from worker.metrics import ExportedValues, SessionCollector, WorkerMetrics
from worker.rules import Rules
from worker.settings import Settings
from worker.state import SessionState, new_session, set_meta

ROOT: Final = Path(__file__).resolve().parents[2]
Obj = dict[str, Any]

SECRET_PLACEHOLDER: Final = "from-a-secret"
"""What a test puts in place of values the pod gets from a Secret or the downward API."""


@dataclass(frozen=True, slots=True)
class Manifests:
    """Rendered Kubernetes objects."""

    objects: list[Obj]

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o.get("kind") == kind]

    def one(self, kind: str, name: str | None = None) -> Obj:
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def kinds(self) -> set[str]:
        return {o["kind"] for o in self.objects}


def pod_spec(deployment: Obj) -> Obj:
    spec: Obj = deployment["spec"]["template"]["spec"]
    return spec


def worker_container(deployment: Obj) -> Obj:
    containers = pod_spec(deployment)["containers"]
    assert len(containers) == 1, "one container per worker pod"
    container: Obj = containers[0]
    return container


def config_map_env(manifests: Manifests, deployment: Obj) -> dict[str, str]:
    """The env a ConfigMap referenced by envFrom gives the worker container."""
    env: dict[str, str] = {}
    for source in worker_container(deployment).get("envFrom", []):
        ref = source.get("configMapRef")
        assert ref is not None, f"only ConfigMaps in envFrom (secrets by key): {source}"
        data = manifests.one("ConfigMap", ref["name"]).get("data", {})
        env.update({str(k): str(v) for k, v in data.items()})
    return env


def container_env(manifests: Manifests, deployment: Obj) -> dict[str, str]:
    """Everything the worker container's environment holds, secrets as a placeholder."""
    env = config_map_env(manifests, deployment)
    for item in worker_container(deployment).get("env", []):
        env[item["name"]] = item.get("value", SECRET_PLACEHOLDER)
    return env


def settings_from_env(env: Mapping[str, str], monkeypatch: Any) -> Settings:
    """Settings exactly as the worker would build them from this environment."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def fake_session() -> SessionState:
    """A published session that makes the collector emit every per-session series."""
    state = new_session("sess-1", partition=0, timestamp=1)
    for name, value in {"parent_id": "parent", "project_id": "project", "record": True}.items():
        set_meta(state, name, 1, value)
    state.recording = (1, "ready", None, None)
    return state


FAKE_VALUES: Final = ExportedValues._make([1] * len(ExportedValues._fields))._replace(
    is_healthy=False
)
"""What `fake_session`'s latest snapshot published: every series has a sample."""


def probes(*, ready: bool = False) -> Probes:
    """Probe callbacks for an HttpServer that is not attached to a running worker."""
    return Probes(
        is_ready=lambda: ready,
        last_progress=lambda: 0.0,
        liveness_timeout_s=30.0,
        lookup=lambda _: None,
        clock_ms=lambda _partition: 0,
        rules=Rules(),
    )


def exposition(sessions: Iterable[SessionState] = ()) -> str:
    """/metrics as the worker serves it: its registry, then the per-session collector."""
    registry = CollectorRegistry()
    WorkerMetrics(registry)
    chosen = list(sessions)
    collector = SessionCollector(lambda: list(chosen), max_sessions=10_000)
    collector.values = {s.session_id: FAKE_VALUES for s in chosen}
    return HttpServer(registry, probes(), collector).render_metrics().decode()


_SUFFIXES: Final[Mapping[str, tuple[str, ...]]] = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "info": ("_info",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
}


def exposed_names(metrics: Iterable[Metric]) -> set[str]:
    """Every series name a scrape can show: the samples' names, and for a labelled family
    with no child yet (no sample) the names its type implies."""
    names: set[str] = set()
    for metric in metrics:
        if metric.samples:
            names.update(sample.name for sample in metric.samples)
        else:
            names.update(metric.name + suffix for suffix in _SUFFIXES.get(metric.type, ("",)))
    return names


def worker_metric_names() -> set[str]:
    """Series names in the real exposition, with a session that has every per-session series."""
    return exposed_names(text_string_to_metric_families(exposition([fake_session()])))


def samples_per_session() -> int:
    """Series one exported session adds to a scrape (all of them: health known, recording)."""

    def count(sessions: list[SessionState]) -> int:
        lines = exposition(sessions).splitlines()
        return sum(1 for line in lines if line and not line.startswith("#"))

    return count([fake_session()]) - count([])


_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`')
_IDENTIFIER: Final = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def promql_series_names(expr: str, prefix: str = "session_worker") -> set[str]:
    """Identifiers in a PromQL expression that name this worker's series or recording rules."""
    bare = _STRING.sub('""', expr)
    return {token for token in _IDENTIFIER.findall(bare) if prefix in token}


def github_anchor(heading: str) -> str:
    """The fragment GitHub (and most Markdown renderers) give a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def markdown_anchors(path: Path) -> set[str]:
    anchors = set()
    for line in path.read_text().splitlines():
        match = re.match(r"^#{1,6}\s+(.*)$", line)
        if match:
            anchors.add(github_anchor(match.group(1)))
    return anchors


def load_yaml_documents(path: Path) -> Iterator[Obj]:
    yield from (doc for doc in yaml.safe_load_all(path.read_text()) if doc)
