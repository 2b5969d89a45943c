"""Topic specs and admin: the one table of topic settings per role (used by the worker when
it creates topics and by `topics create`), creating and describing topics, and the output
topics' record limits as the broker states them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from worker.kafka.clients import CONNECT_TIMEOUT_S, StartupError, client_options, with_admin
from worker.logs import held_back
from worker.outbox import RecordLimits
from worker.settings import Settings

log = logging.getLogger(__name__)


DESCRIBE_SETTLE_S: Final = 5.0
"""How long a just-created topic may take to be described with its partitions."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: Mapping[str, str]


HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
_COMPACTED: Final = {
    "cleanup.policy": "compact",
    # Let the cleaner compact right away, in hourly segments (the active segment is never
    # compacted), eagerly: a restore reads close to one record per live session.
    "min.compaction.lag.ms": "0",
    "segment.ms": str(HOUR_MS),
    "min.cleanable.dirty.ratio": "0.1",
    # Tombstones (evicted sessions) stay a day for readers and restores in flight.
    "delete.retention.ms": str(DAY_MS),
}
TOPIC_SETTINGS: Final[Mapping[str, Mapping[str, str]]] = {
    # Every event of a session has the same key: compaction would drop events. Seven days
    # leave room to recover from a long outage or to rebuild every Session by a replay.
    "input": {
        "cleanup.policy": "delete",
        "retention.ms": str(7 * DAY_MS),
        "max.message.bytes": "1048576",
    },
    "snapshots": _COMPACTED,
    "changelog": _COMPACTED,
    # Dead letters share keys (session ids): compaction would drop all but the newest.
    "dlq": {"cleanup.policy": "delete", "retention.ms": str(14 * DAY_MS)},
}
"""The one source of the topic settings per role: the worker creates topics with them,
`topics create` creates and checks them, and tests/deploy checks deploy/k8s/topics against
them (plus `min.insync.replicas`, from the replication factor)."""


def topic_config(role: str, replication: int) -> dict[str, str]:
    """The settings of a topic of `role` with `replication` replicas: `acks=all` writes
    survive the loss of one replica when there are three or more."""
    return {**TOPIC_SETTINGS[role], "min.insync.replicas": str(max(1, replication - 1))}


def topic_specs(settings: Settings, input_partitions: int) -> dict[str, TopicSpec]:
    """Every topic of the worker by role; outputs have the input's partition count (the
    changelog must)."""
    names = {
        "input": settings.input_topic,
        "snapshots": settings.snapshot_topic,
        "changelog": settings.changelog_topic_name,
        "dlq": settings.dlq_topic,
    }
    replication = settings.replication_factor
    return {
        role: TopicSpec(name, input_partitions, topic_config(role, replication))
        for role, name in names.items()
    }


def worker_topics(settings: Settings, input_partitions: int) -> list[TopicSpec]:
    """The output topics (snapshots, changelog, dead letters)."""
    specs = topic_specs(settings, input_partitions)
    return [specs["snapshots"], specs["changelog"], specs["dlq"]]


async def _create_missing(
    admin: AIOKafkaAdminClient, specs: Iterable[TopicSpec], replication: int
) -> tuple[list[str], dict[str, str]]:
    """Create the topics that do not exist yet: (names created, {name: why refused}).

    aiokafka reports per-topic failures in the response rather than raising; a topic that
    exists by now (another replica or tool won the race) is not a failure.
    """
    existing = set(await admin.list_topics())
    missing = [s for s in specs if s.name not in existing]
    if not missing:
        return [], {}
    response = await admin.create_topics(
        [NewTopic(s.name, s.partitions, replication, topic_configs=dict(s.config)) for s in missing]
    )
    refused: dict[str, str] = {}
    for name, error_code, *rest in response.topic_errors:
        if error_code not in (0, TopicAlreadyExistsError.errno):
            refused[name] = str(rest[0] if rest and rest[0] else f"error code {error_code}")
    return [s.name for s in missing if s.name not in refused], refused


async def create_topics(
    admin: AIOKafkaAdminClient, specs: Iterable[TopicSpec], replication: int
) -> list[str]:
    """Create the topics that do not exist yet; return their names. Raises StartupError."""
    created, refused = await _create_missing(admin, specs, replication)
    if refused:
        reasons = "; ".join(f"{name}: {why}" for name, why in refused.items())
        raise StartupError(f"cannot create topics: {reasons}")
    return created


async def ensure_topics(settings: Settings, specs: Iterable[TopicSpec]) -> list[str]:
    """Create whichever of `specs` do not exist; return the names created."""
    return await with_admin(
        settings, lambda admin: create_topics(admin, specs, settings.replication_factor)
    )


async def partition_count(admin: AIOKafkaAdminClient, topic: str) -> int | None:
    described = await admin.describe_topics([topic])
    for entry in described:
        if entry.get("topic") == topic and entry.get("error_code", 0) == 0:
            return len(entry.get("partitions", []))
    return None


async def settled_partition_count(admin: AIOKafkaAdminClient, topic: str) -> int | None:
    """`partition_count`, asked again for a while: just after a topic is created (by us or a
    replica starting alongside) the broker may not describe it yet."""
    deadline = time.monotonic() + DESCRIBE_SETTLE_S
    while True:
        count = await partition_count(admin, topic)
        if count is not None or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.2)


async def wait_until_served(settings: Settings, topics: Mapping[str, int]) -> None:
    """Wait until the broker serves every partition of just-created `topics`.

    Metadata names a leader as soon as a topic exists, but for a few hundred ms the broker
    may still refuse requests for its partitions with NotLeaderForPartition, which aiokafka
    logs as an ERROR when the restore asks the changelog for offsets. So ask for the end
    offsets here, with the client's log lines held back; give up quietly after
    DESCRIBE_SETTLE_S (the restore retries anyway).
    """
    probe = AIOKafkaConsumer(**client_options(settings), group_id=None, enable_auto_commit=False)
    partitions = [TopicPartition(name, p) for name, count in topics.items() for p in range(count)]
    with held_back():
        try:
            await asyncio.wait_for(probe.start(), CONNECT_TIMEOUT_S)
            await asyncio.wait_for(probe.end_offsets(partitions), DESCRIBE_SETTLE_S)
        except (TimeoutError, KafkaError) as error:
            log.debug("new topics not served yet", extra={"error": repr(error)})
        finally:
            await probe.stop()


async def prepare_topics(settings: Settings) -> int:
    """Ensure the input exists (or create it) and the output topics exist; return partitions."""

    async def prepare(admin: AIOKafkaAdminClient) -> int:
        input_created = False
        if settings.input_topic not in set(await admin.list_topics()):
            if not settings.create_topics:
                raise StartupError(f"input topic {settings.input_topic!r} does not exist")
            spec = topic_specs(settings, settings.topic_partitions)["input"]
            input_created = bool(await create_topics(admin, [spec], settings.replication_factor))
        partitions = await settled_partition_count(admin, settings.input_topic)
        if partitions is None:
            raise StartupError(f"cannot describe input topic {settings.input_topic!r}")
        outputs = worker_topics(settings, partitions)
        existing = set(await admin.list_topics())
        missing = [spec.name for spec in outputs if spec.name not in existing]
        if missing and not settings.create_topics:
            raise StartupError(
                f"missing topics {', '.join(missing)} (create them, e.g. with "
                "`session-worker topics create`, or allow WORKER_CREATE_TOPICS)"
            )
        created = await create_topics(admin, outputs, settings.replication_factor)
        for name in created:
            log.info("created topic", extra={"topic": name, "partitions": partitions})
        if created or input_created:
            new = [*created, *([settings.input_topic] if input_created else [])]
            await wait_until_served(settings, dict.fromkeys(new, partitions))
        changelog = settings.changelog_topic_name
        changelog_partitions = await settled_partition_count(admin, changelog)
        if changelog_partitions != partitions:
            # Partition p of the changelog must hold the state of input partition p.
            raise StartupError(
                f"changelog topic {changelog!r} has {changelog_partitions} partitions but the "
                f"input {settings.input_topic!r} has {partitions}: they must match"
            )
        return partitions

    return await with_admin(settings, prepare)


PRODUCER_MAX_REQUEST_BYTES: Final = 1_048_576
"""The producers' `max_request_size` (aiokafka's default, stated): no record above it is sent."""
LIMIT_CONFIGS: Final = ("max.message.bytes", "cleanup.policy")


async def read_record_limits(settings: Settings) -> RecordLimits:
    """The output topics' record limits as the broker states them; the producer's limit
    alone (with a warning) when they cannot be read (e.g. no DescribeConfigs permission)."""
    limits = RecordLimits(PRODUCER_MAX_REQUEST_BYTES)
    names = (settings.snapshot_topic, settings.changelog_topic_name, settings.dlq_topic)
    try:
        layouts = await describe_layouts(settings, dict.fromkeys(names, LIMIT_CONFIGS))
    except (KafkaError, StartupError, TimeoutError) as error:
        log.warning("topic record limits unavailable", extra={"error": repr(error)})
        return limits
    for name, layout in layouts.items():
        raw = layout.config.get("max.message.bytes", "")
        if raw.isdigit():
            limits.topics[name] = int(raw)
        if "compact" in layout.config.get("cleanup.policy", ""):
            limits.compacted.add(name)
    return limits


async def refreshed_limits(settings: Settings, learned: RecordLimits) -> RecordLimits:
    """After a refused batch: the broker's current limits, never above what was learned."""
    fresh = await read_record_limits(settings)
    for topic in set(fresh.topics) | set(learned.topics):
        fresh.topics[topic] = min(fresh.of(topic), learned.of(topic))
    return fresh


@dataclass(frozen=True, slots=True)
class TopicLayout:
    """An existing topic as the cluster describes it."""

    partitions: int
    config: Mapping[str, str]
    """Only the keys that were asked for (absent when the broker does not report one)."""
    replication: int = 1
    """Replicas of its least replicated partition."""


async def probe_broker(settings: Settings) -> None:
    """Connect and list the topics once; raises StartupError when Kafka does not answer."""
    await with_admin(settings, lambda admin: admin.list_topics())


async def describe_layouts(
    settings: Settings, wanted: Mapping[str, Iterable[str]]
) -> dict[str, TopicLayout]:
    """Partitions and the given config keys of each named topic; missing topics are left out."""

    async def describe(admin: AIOKafkaAdminClient) -> dict[str, TopicLayout]:
        existing = set(await admin.list_topics())
        names = [name for name in wanted if name in existing]
        if not names:
            return {}
        described = {
            entry["topic"]: entry.get("partitions", [])
            for entry in await admin.describe_topics(names)
            if entry.get("error_code", 0) == 0
        }
        counts = {name: len(partitions) for name, partitions in described.items()}
        replication = {
            name: min((len(p.get("replicas", [])) for p in partitions), default=0)
            for name, partitions in described.items()
        }
        resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        configs: dict[str, dict[str, str]] = {name: {} for name in names}
        for response in await admin.describe_configs(resources):
            for error_code, _, _, name, entries in response.resources:
                if error_code == 0 and name in configs:
                    keys = set(wanted[name])
                    configs[name] = {e[0]: e[1] for e in entries if e[0] in keys}
        return {
            name: TopicLayout(counts[name], configs[name], replication[name])
            for name in names
            if name in counts
        }

    return await with_admin(settings, describe)


async def create_topic_specs(
    settings: Settings, specs: Sequence[TopicSpec], replication: int
) -> dict[str, str]:
    """Create the given topics; return an error message per topic the broker refused. Returns
    once the broker describes the created ones (a describe right after a creation may not
    see them yet, and the caller checks what it made)."""
    if not specs:
        return {}

    async def create(admin: AIOKafkaAdminClient) -> dict[str, str]:
        created, refused = await _create_missing(admin, specs, replication)
        for name in created:
            await settled_partition_count(admin, name)
        return refused

    return await with_admin(settings, create)
