"""Every rendered custom resource against its operator's served CRD schema, strictly."""

from __future__ import annotations

import hashlib
from typing import Final

import pytest

from tests.deploy.crd_schema import CRDS, served_schemas, validation_errors
from tests.deploy.support import Manifests, Obj

CORE_GROUPS: Final = ("v1", "apps/v1", "policy/v1", "networking.k8s.io/v1")
"""Checked by kubernetes-validate in test_kubernetes.py instead."""


def custom_resources(manifests: Manifests) -> list[Obj]:
    return [o for o in manifests.objects if o["apiVersion"] not in CORE_GROUPS]


@pytest.mark.parametrize("variant", ["base", "overlay", "topics"])
def test_custom_resources_match_the_served_crds(
    variant: str, request: pytest.FixtureRequest
) -> None:
    manifests: Manifests = request.getfixturevalue(variant)
    resources = custom_resources(manifests)
    assert resources, f"{variant} renders no custom resource"
    errors = [error for obj in resources for error in validation_errors(obj)]
    assert not errors, "\n".join(errors)


def test_strimzi_resources_use_the_v1_api(topics: Manifests) -> None:
    """Strimzi 1.0 serves kafka.strimzi.io/v1 only; v1beta2 objects are rejected."""
    for obj in custom_resources(topics):
        assert obj["apiVersion"] == "kafka.strimzi.io/v1", obj["metadata"]["name"]


def test_the_validation_is_strict() -> None:
    """A misspelt field and a removed API version both fail (the check can fail)."""
    topic = {
        "apiVersion": "kafka.strimzi.io/v1",
        "kind": "KafkaTopic",
        "metadata": {"name": "t"},
        "spec": {"partitions": 1, "replicas": 3, "config": {"any.topic.config": "1"}},
    }
    assert validation_errors(topic) == []
    assert validation_errors({**topic, "spec": {"partition": 1}})
    assert validation_errors({**topic, "apiVersion": "kafka.strimzi.io/v1beta2"})
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": "m"},
        "spec": {"selector": {}, "podMetricsEndpoints": [{"port": "metrics", "intervall": "1m"}]},
    }
    assert validation_errors(monitor)


def test_vendored_crds_are_unchanged() -> None:
    """tests/deploy/crds/SHA256SUMS: the files are upstream's, byte for byte."""
    sums = (CRDS / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == len(list(CRDS.glob("*.yaml")))
    for line in sums:
        digest, name = line.split()
        assert hashlib.sha256((CRDS / name).read_bytes()).hexdigest() == digest, name
    kinds = {kind for _, kind in served_schemas()}
    expected = {"KafkaTopic", "KafkaUser", "PodMonitor", "PrometheusRule", "ScaledObject"}
    assert expected | {"TriggerAuthentication", "KafkaAccess"} <= kinds
