"""The Kustomize output: schema-valid core objects, a restricted pod, and no drift from the
worker's code (probe paths, port, settings names, shutdown deadline)."""

from __future__ import annotations

import asyncio
from typing import Any, Final

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from aiohttp import ClientSession
from prometheus_client import CollectorRegistry

from tests.deploy.conftest import Tools
from tests.deploy.support import (
    Manifests,
    Obj,
    config_map_env,
    container_env,
    pod_spec,
    probes,
    samples_per_session,
    settings_from_env,
    worker_container,
)
from worker.http import HttpServer
from worker.settings import Settings

KUBERNETES_VERSIONS: Final = ("1.29.0", "1.37.0")
"""Oldest and newest minor validated: the manifests use nothing newer than 1.29 (PDB v1,
matchLabelKeys in topology spread)."""

CORE_KINDS: Final = frozenset(
    {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
)
CUSTOM_KINDS: Final = frozenset(
    {"PodMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication", "KafkaAccess"}
)
"""Validated strictly against their CRDs in test_custom_resources.py."""
WORKER_RATE_EV_S: Final = 5_000
"""Planned events/s per worker: docs/performance.md, Sizing (about 5,000 events/s)."""
WORKER_CPU_AT_RATE: Final = 0.72
"""Cores one worker used at that rate (docs/performance.md: 72% of a core at 5,000/s)."""
KAFKA_SECRET: Final = "session-worker-kafka"
"""The Access Operator's binding Secret (KafkaAccess of that name in the overlay)."""
SCRATCH_DIR: Final = "/tmp"  # noqa: S108  # the pod's emptyDir, not a file the test writes
SHUTDOWN_HEADROOM_S: Final = 15
"""After the drain deadline the worker still closes its consumer and producer."""


def _deployment(manifests: Manifests) -> Obj:
    return manifests.one("Deployment", "session-worker")


def test_every_kind_is_checked(base: Manifests, overlay: Manifests) -> None:
    """A new kind in the manifests needs a check here (schema or custom rules) first."""
    assert base.kinds() <= CORE_KINDS | CUSTOM_KINDS
    assert overlay.kinds() == CORE_KINDS | CUSTOM_KINDS


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", ["base", "overlay"])
def test_core_objects_match_kubernetes_schemas(
    variant: str, version: str, request: pytest.FixtureRequest
) -> None:
    manifests: Manifests = request.getfixturevalue(variant)
    checked = 0
    for obj in manifests.objects:
        if obj["kind"] in CORE_KINDS:
            # strict: unknown fields (typos) fail too
            kubernetes_validate.validate(obj, version, strict=True)
            checked += 1
    assert checked >= 5


def test_names_and_labels_are_consistent(overlay: Manifests) -> None:
    deployment = _deployment(overlay)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    for kind in ("Service", "PodDisruptionBudget"):
        obj = overlay.one(kind, "session-worker")
        spec_selector = obj["spec"]["selector"]
        labels = spec_selector.get("matchLabels", spec_selector)
        assert labels.items() <= pod_labels.items(), f"{kind} selects no worker pod"
    namespace = overlay.one("Namespace")["metadata"]["name"]
    for obj in overlay.objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace, obj["metadata"]["name"]


def test_pod_meets_the_restricted_pod_security_standard(overlay: Manifests) -> None:
    deployment = _deployment(overlay)
    spec = pod_spec(deployment)
    pod_security = spec["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] > 0
    assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    assert not spec.get("hostNetwork")
    assert not spec.get("hostPID")
    assert not spec.get("hostIPC")
    for container in spec["containers"] + spec.get("initContainers", []):
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["runAsNonRoot"] is True
        assert security.get("privileged", False) is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert not security["capabilities"].get("add")
        assert security["seccompProfile"]["type"] == "RuntimeDefault"
        assert container.get("ports")
        assert all("hostPort" not in p for p in container["ports"])
    allowed_volumes = {"emptyDir", "secret", "configMap", "projected", "downwardAPI"}
    for volume in spec["volumes"]:
        assert set(volume) - {"name"} <= allowed_volumes, volume
    mounts = {m["mountPath"]: m["name"] for m in worker_container(deployment)["volumeMounts"]}
    scratch = next(v for v in spec["volumes"] if v["name"] == mounts[SCRATCH_DIR])
    assert "emptyDir" in scratch, "a writable scratch dir: the root filesystem is read-only"


def test_resources_are_bounded(overlay: Manifests) -> None:
    resources = worker_container(_deployment(overlay))["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert {"cpu", "memory"} <= resources["limits"].keys()
    requests, limits = resources["requests"], resources["limits"]
    assert _cores(requests["cpu"]) >= WORKER_CPU_AT_RATE, "request below the measured need"
    assert _cores(limits["cpu"]) >= _cores(requests["cpu"])
    assert requests["memory"] == limits["memory"], "memory request = limit: no overcommit"


def _cores(quantity: str | int) -> float:
    text = str(quantity)
    return int(text.removesuffix("m")) / 1000 if text.endswith("m") else float(text)


def test_image_is_pinned_by_the_overlay(overlay: Manifests, base: Manifests) -> None:
    image = worker_container(_deployment(overlay))["image"]
    name, _, tag = image.rpartition(":")
    assert "/" in name, image
    assert tag not in ("", "latest"), image
    assert worker_container(_deployment(base))["image"] == "session-worker"


def test_env_names_are_real_settings(base: Manifests, overlay: Manifests) -> None:
    """Settings ignores unknown WORKER_* names silently, so a typo would be a silent no-op."""
    fields = {f"WORKER_{name.upper()}" for name in Settings.model_fields}
    for manifests in (base, overlay):
        deployment = _deployment(manifests)
        names = set(container_env(manifests, deployment))
        worker_names = {n for n in names if n.startswith("WORKER_")}
        assert worker_names == names, f"non-worker env: {names - worker_names}"
        assert worker_names <= fields, f"not settings: {sorted(worker_names - fields)}"


def test_config_map_builds_valid_settings(
    overlay: Manifests, clean_worker_env: pytest.MonkeyPatch
) -> None:
    deployment = _deployment(overlay)
    settings = settings_from_env(container_env(overlay, deployment), clean_worker_env)
    assert settings.create_topics is False, "topics come from deploy/k8s/topics"
    assert settings.sasl_username is not None
    assert settings.sasl_password is not None


def test_credentials_come_from_a_secret(overlay: Manifests) -> None:
    deployment = _deployment(overlay)
    config = config_map_env(overlay, deployment)
    assert not {k for k in config if "PASSWORD" in k or "USERNAME" in k}, "secrets in ConfigMap"
    env = {e["name"]: e for e in worker_container(deployment)["env"]}
    for name, key in (("WORKER_SASL_USERNAME", "username"), ("WORKER_SASL_PASSWORD", "password")):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (KAFKA_SECRET, key), "the binding Secret's keys"
    assert not any(o["kind"] == "Secret" for o in overlay.objects), "no Secret in git"


def test_credentials_follow_ca_renewal(overlay: Manifests, topics: Manifests) -> None:
    """The Access Operator keeps the Secret current; Reloader restarts the pods on a change
    (the worker reads the CA and password at start only)."""
    access = overlay.one("KafkaAccess", KAFKA_SECRET)["spec"]
    user = topics.one("KafkaUser")
    assert access["user"] == {
        "kind": "KafkaUser",
        "apiGroup": "kafka.strimzi.io",
        "name": user["metadata"]["name"],
        "namespace": user["metadata"]["namespace"],
    }
    assert access["kafka"]["name"] == user["metadata"]["labels"]["strimzi.io/cluster"]
    assert access["kafka"]["namespace"] == user["metadata"]["namespace"]
    deployment = _deployment(overlay)
    annotations = deployment["metadata"]["annotations"]
    assert annotations["secret.reloader.stakater.com/reload"] == KAFKA_SECRET
    secrets = {v["secret"]["secretName"] for v in pod_spec(deployment)["volumes"] if "secret" in v}
    assert secrets == {KAFKA_SECRET}, "every Secret the pod mounts is one Reloader watches"


def test_group_membership_is_dynamic(
    overlay: Manifests, clean_worker_env: pytest.MonkeyPatch
) -> None:
    """Static members send no LeaveGroup: on a Deployment every replaced pod's partitions
    would wait out the session timeout (measured: deploy/README.md, Scaling)."""
    deployment = _deployment(overlay)
    settings = settings_from_env(container_env(overlay, deployment), clean_worker_env)
    assert settings.group_instance_id is None
    # Only a member that dies without leaving (SIGKILL, node loss) waits this out.
    assert settings.session_timeout_s <= 30


def test_ca_file_is_mounted(overlay: Manifests, clean_worker_env: pytest.MonkeyPatch) -> None:
    deployment = _deployment(overlay)
    settings = settings_from_env(container_env(overlay, deployment), clean_worker_env)
    assert settings.ssl_cafile is not None
    mounts = {m["mountPath"]: m["name"] for m in worker_container(deployment)["volumeMounts"]}
    directory, _, filename = settings.ssl_cafile.rpartition("/")
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mounts[directory])
    assert volume["secret"]["secretName"] == KAFKA_SECRET
    assert {"key": "ssl.truststore.crt", "path": filename} in volume["secret"]["items"]


def test_grace_period_outlasts_the_drain_deadline(
    base: Manifests, overlay: Manifests, clean_worker_env: pytest.MonkeyPatch
) -> None:
    for manifests in (base, overlay):
        deployment = _deployment(manifests)
        settings = settings_from_env(container_env(manifests, deployment), clean_worker_env)
        grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        assert grace > settings.shutdown_timeout_s
        assert grace >= settings.shutdown_timeout_s + SHUTDOWN_HEADROOM_S
        assert grace > Settings.model_fields["shutdown_timeout_s"].default


def test_ports_match_the_worker_http_port(
    overlay: Manifests, clean_worker_env: pytest.MonkeyPatch
) -> None:
    deployment = _deployment(overlay)
    container = worker_container(deployment)
    settings = settings_from_env(container_env(overlay, deployment), clean_worker_env)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": settings.http_port}
    assert settings.http_port == Settings.model_fields["http_port"].default
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ("metrics", settings.http_port)
    service = overlay.one("Service", "session-worker")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["metrics"]
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_probe_paths(overlay: Manifests) -> None:
    container = worker_container(_deployment(overlay))
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30


async def _status_of(paths: list[str]) -> dict[str, int]:
    server = HttpServer(CollectorRegistry(), probes(ready=False))
    await server.start("127.0.0.1", 0)
    try:
        async with ClientSession() as client:
            statuses = {}
            for path in paths:
                async with client.get(f"http://127.0.0.1:{server.port}{path}") as response:
                    statuses[path] = response.status
            return statuses
    finally:
        await server.stop()


def test_probe_and_scrape_paths_are_served_by_the_worker(overlay: Manifests) -> None:
    """Against the real HTTP server: a path the worker does not route answers 404."""
    container = worker_container(_deployment(overlay))
    probe_paths = {
        container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    endpoints = overlay.one("PodMonitor", "session-worker")["spec"]["podMetricsEndpoints"]
    scrape_paths = {e.get("path", "/metrics") for e in endpoints}
    statuses = asyncio.run(_status_of(sorted(probe_paths | scrape_paths | {"/nope"})))
    assert statuses.pop("/nope") == 404
    for path in probe_paths:
        assert statuses[path] in (200, 503), f"{path}: {statuses[path]}"
    for path in scrape_paths:
        assert statuses[path] == 200


def test_pod_monitor_scrapes_the_worker(overlay: Manifests) -> None:
    deployment = _deployment(overlay)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    monitor = overlay.one("PodMonitor", "session-worker")
    spec = monitor["spec"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    port_names = {p["name"] for p in worker_container(deployment)["ports"]}
    for endpoint in spec["podMetricsEndpoints"]:
        assert endpoint["port"] in port_names
        assert _seconds(endpoint["scrapeTimeout"]) < _seconds(endpoint["interval"])
    assert pod_labels[spec["jobLabel"]] == "session-worker", "alerts select job=session-worker"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_sample_limit_fits_the_session_cap(
    overlay: Manifests, clean_worker_env: pytest.MonkeyPatch
) -> None:
    """Over sampleLimit Prometheus drops the whole scrape: the cap must keep us below it."""
    deployment = _deployment(overlay)
    settings = settings_from_env(container_env(overlay, deployment), clean_worker_env)
    limit = overlay.one("PodMonitor", "session-worker")["spec"]["sampleLimit"]
    worker_series_budget = 2_000  # histograms, per-partition lag, per-type/reason counters
    needed = settings.metrics_max_sessions * samples_per_session() + worker_series_budget
    assert limit >= needed, f"sampleLimit {limit} < {needed}"


def test_disruption_budget_keeps_workers(overlay: Manifests, base: Manifests) -> None:
    pdb = overlay.one("PodDisruptionBudget", "session-worker")["spec"]
    assert pdb.get("maxUnavailable") == 1
    assert "minAvailable" not in pdb
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow", "drains pass crash-looping pods"
    strategy = _deployment(base)["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_keda_owns_the_replica_count(
    overlay: Manifests, base: Manifests, topics: Manifests
) -> None:
    partitions = _input_partitions(overlay, topics)
    assert "replicas" not in _deployment(overlay)["spec"], "the HPA owns replicas"
    assert 1 <= _deployment(base)["spec"]["replicas"] <= partitions
    scaled = overlay.one("ScaledObject", "session-worker")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "session-worker"
    assert scaled["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"] <= partitions


def test_keda_trigger_watches_what_the_worker_consumes(
    overlay: Manifests, topics: Manifests, clean_worker_env: pytest.MonkeyPatch
) -> None:
    deployment = _deployment(overlay)
    env = container_env(overlay, deployment)
    settings = settings_from_env(env, clean_worker_env)
    scaled = overlay.one("ScaledObject", "session-worker")["spec"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    meta: dict[str, Any] = trigger["metadata"]
    resolved = {
        key.removesuffix("FromEnv"): env[value]
        for key, value in meta.items()
        if key.endswith("Env")
    }
    assert resolved["bootstrapServers"] == settings.bootstrap_servers
    assert resolved["consumerGroup"] == settings.group_id
    assert resolved["topic"] == settings.input_topic
    assert meta["allowIdleConsumers"] == "false", "never more consumers than partitions"
    assert meta["ensureEvenDistributionOfPartitions"] == "true"
    assert settings.sasl_mechanism is not None
    assert meta["sasl"] == settings.sasl_mechanism.value.lower().replace("-sha-", "_sha")
    assert meta["tls"] == "enable"
    auth = overlay.one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    secrets = {(r["parameter"], r["name"]) for r in auth["spec"]["secretTargetRef"]}
    assert {("username", "session-worker-kafka"), ("password", "session-worker-kafka")} <= secrets
    assert ("ca", KAFKA_SECRET) in secrets
    keys = {r["parameter"]: r["key"] for r in auth["spec"]["secretTargetRef"]}
    assert keys == {"username": "username", "password": "password", "ca": "ssl.truststore.crt"}


def test_keda_threshold_follows_the_commit_interval(
    overlay: Manifests, clean_worker_env: pytest.MonkeyPatch
) -> None:
    """KEDA sees committed lag: a worker keeping up at rate r carries r x commit interval / 2
    of it on average, so that at the planned rate is one replica's worth of lag."""
    settings = settings_from_env(container_env(overlay, _deployment(overlay)), clean_worker_env)
    (trigger,) = overlay.one("ScaledObject", "session-worker")["spec"]["triggers"]
    expected = WORKER_RATE_EV_S * settings.commit_interval_s / 2
    assert int(trigger["metadata"]["lagThreshold"]) == round(expected)


def test_network_policy_admits_only_what_the_worker_needs(
    overlay: Manifests, clean_worker_env: pytest.MonkeyPatch
) -> None:
    deployment = _deployment(overlay)
    settings = settings_from_env(container_env(overlay, deployment), clean_worker_env)
    policy = overlay.one("NetworkPolicy", "session-worker")["spec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"], "default deny both ways"
    (ingress,) = policy["ingress"]
    assert [p["port"] for p in ingress["ports"]] == ["metrics"]
    (source,) = ingress["from"]
    assert source == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    monitor = overlay.one("PodMonitor", "session-worker")["spec"]
    assert {e["port"] for e in monitor["podMetricsEndpoints"]} == {"metrics"}
    egress_ports = {
        (port["port"], port.get("protocol", "TCP"))
        for rule in policy["egress"]
        for port in rule["ports"]
    }
    kafka_ports = {
        (int(address.rpartition(":")[2]), "TCP")
        for address in settings.bootstrap_servers.split(",")
    }
    assert egress_ports == kafka_ports | {(53, "UDP"), (53, "TCP")}
    for rule in policy["egress"]:
        assert rule["to"], "every egress rule names its peers"


def _input_partitions(overlay: Manifests, topics: Manifests) -> int:
    input_topic = config_map_env(overlay, _deployment(overlay))["WORKER_INPUT_TOPIC"]
    topic = next(t for t in topics.of_kind("KafkaTopic") if t["spec"]["topicName"] == input_topic)
    partitions: int = topic["spec"]["partitions"]
    return partitions


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in sorted(units, key=len, reverse=True):
        if duration.endswith(unit):
            return float(duration.removesuffix(unit)) * units[unit]
    raise AssertionError(f"not a Prometheus duration: {duration}")


def test_tools_render_every_kustomization(tools: Tools) -> None:
    """Each directory with a kustomization.yaml renders on its own (components excepted)."""
    from tests.deploy.conftest import K8S  # noqa: PLC0415

    for kustomization in K8S.rglob("kustomization.yaml"):
        directory = kustomization.parent
        if "components" in directory.parts:
            continue
        assert tools.render(directory), directory
