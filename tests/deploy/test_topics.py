"""Strimzi KafkaTopic / KafkaUser resources against the worker's own topic rules."""

from __future__ import annotations

from typing import Any, Final

import pytest

from tests.deploy.support import Manifests, Obj, container_env, settings_from_env
from worker.kafka.topics import TOPIC_SETTINGS, topic_config, topic_specs
from worker.settings import Settings

DAY_MS: Final = 86_400_000


def _settings(overlay: Manifests, monkeypatch: pytest.MonkeyPatch) -> Settings:
    deployment = overlay.one("Deployment", "session-worker")
    return settings_from_env(container_env(overlay, deployment), monkeypatch)


def _topics(topics: Manifests) -> dict[str, Obj]:
    return {t["spec"]["topicName"]: t["spec"] for t in topics.of_kind("KafkaTopic")}


def _config(spec: Obj) -> dict[str, str]:
    config: dict[str, Any] = spec.get("config", {})
    return {key: str(value) for key, value in config.items()}


def test_topics_are_the_ones_the_worker_uses(
    topics: Manifests, overlay: Manifests, clean_worker_env: pytest.MonkeyPatch
) -> None:
    settings = _settings(overlay, clean_worker_env)
    expected = {
        settings.input_topic,
        settings.snapshot_topic,
        settings.changelog_topic_name,
        settings.dlq_topic,
    }
    assert set(_topics(topics)) == expected


def test_topics_carry_exactly_the_settings_the_worker_creates_them_with(
    topics: Manifests, overlay: Manifests, clean_worker_env: pytest.MonkeyPatch
) -> None:
    """One source of truth: worker/kafka/topics.py's table, which the worker (with
    WORKER_CREATE_TOPICS) and `topics create` use too."""
    settings = _settings(overlay, clean_worker_env)
    by_name = _topics(topics)
    specs = topic_specs(settings, 1)
    assert set(specs) == set(TOPIC_SETTINGS)
    for role, spec in specs.items():
        resource = by_name[spec.name]
        assert _config(resource) == topic_config(role, resource["replicas"]), role


def test_every_resource_names_its_cluster(topics: Manifests) -> None:
    clusters = {o["metadata"]["labels"]["strimzi.io/cluster"] for o in topics.objects}
    assert len(clusters) == 1
    for obj in topics.objects:
        assert obj["apiVersion"] == "kafka.strimzi.io/v1"
        assert obj["kind"] in ("KafkaTopic", "KafkaUser")
        assert obj["metadata"]["namespace"]


def test_changelog_is_co_partitioned_and_compacted(
    topics: Manifests, overlay: Manifests, clean_worker_env: pytest.MonkeyPatch
) -> None:
    settings = _settings(overlay, clean_worker_env)
    by_name = _topics(topics)
    changelog = by_name[settings.changelog_topic_name]
    assert changelog["partitions"] == by_name[settings.input_topic]["partitions"]
    assert _config(changelog)["cleanup.policy"] == "compact"


def test_snapshots_are_compacted(
    topics: Manifests, overlay: Manifests, clean_worker_env: pytest.MonkeyPatch
) -> None:
    snapshots = _topics(topics)[_settings(overlay, clean_worker_env).snapshot_topic]
    config = _config(snapshots)
    assert config["cleanup.policy"] == "compact"
    assert int(config["delete.retention.ms"]) >= DAY_MS


def test_input_and_dlq_retention(
    topics: Manifests, overlay: Manifests, clean_worker_env: pytest.MonkeyPatch
) -> None:
    settings = _settings(overlay, clean_worker_env)
    by_name = _topics(topics)
    for name, minimum_days in ((settings.input_topic, 1), (settings.dlq_topic, 7)):
        config = _config(by_name[name])
        assert config["cleanup.policy"] == "delete"
        assert int(config["retention.ms"]) >= minimum_days * DAY_MS, name


def test_durability(topics: Manifests) -> None:
    for name, spec in _topics(topics).items():
        min_isr = int(_config(spec)["min.insync.replicas"])
        assert spec["replicas"] >= 3, name
        assert 1 < min_isr < spec["replicas"], f"{name}: acks=all must survive one broker"
        assert spec["partitions"] >= 1


def test_user_may_do_what_the_worker_does(
    topics: Manifests, overlay: Manifests, clean_worker_env: pytest.MonkeyPatch
) -> None:
    settings = _settings(overlay, clean_worker_env)
    user = topics.one("KafkaUser")
    assert user["metadata"]["name"] == "session-worker"
    assert settings.sasl_mechanism is not None
    assert user["spec"]["authentication"]["type"] == settings.sasl_mechanism.value.lower()
    granted: dict[tuple[str, str, str], set[str]] = {}
    for acl in user["spec"]["authorization"]["acls"]:
        resource = acl["resource"]
        key = (resource["type"], resource.get("name", ""), resource.get("patternType", "literal"))
        granted.setdefault(key, set()).update(acl["operations"])
    needs = {
        ("topic", settings.input_topic, "literal"): {"Describe", "Read"},
        ("group", settings.group_id, "literal"): {"Describe", "Read"},
        ("topic", settings.snapshot_topic, "literal"): {"Describe", "Write"},
        ("topic", settings.changelog_topic_name, "literal"): {"Describe", "Read", "Write"},
        ("topic", settings.dlq_topic, "literal"): {"Describe", "Write"},
        # exactly_once: one transactional id per input partition, `<group>.<input>.<n>`
        (
            "transactionalId",
            f"{settings.group_id}.{settings.input_topic}.",
            "prefix",
        ): {"Describe", "Write"},
    }
    for resource, operations in needs.items():
        assert operations <= granted.get(resource, set()), resource
    assert not any("All" in ops or "Alter" in ops or "Delete" in ops for ops in granted.values())
