"""One contract, every sink: the same cases run against the in-memory FakeSink of the unit
tests and against AtLeastOnceSink and TransactionalSink on a real broker, so the fake the
runner's tests rely on behaves as the real sinks do.

Each backend has the same four topics (2 partitions each) and reports what a read_committed
reader sees and what the group has committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import suppress
from typing import Protocol

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.fakes import FakeBroker, FakeSink, FakeTopic
from tests.integration.helpers import Topics
from worker.kafka.readers import scan_topic
from worker.kafka.sinks import AtLeastOnceSink, TransactionalSink, key_hash
from worker.kafka.source import KafkaSource
from worker.kafka.topics import (
    TopicSpec,
    create_topic_specs,
    describe_layouts,
    topic_specs,
    wait_until_served,
)
from worker.outbox import (
    DLQ_TRUNCATED_HEADER,
    CheckpointError,
    CheckpointTimings,
    Outbox,
    OutRecord,
    Unwritten,
    dead_letter,
)
from worker.settings import ProcessingGuarantee, Settings

PARTITIONS = 2
LIMIT = 2000
"""A topic's `max.message.bytes` in the cases about record limits."""
BIG = b"x" * 3000
"""A value no record of a topic limited to LIMIT can hold."""
COMMITTED_WAIT_S = 5.0
"""Longest wait for committed offsets to be the ones expected (see Backend.committed)."""
Written = tuple[int, bytes | None, bytes | None]
"""(partition, key, value) of a record a read_committed reader sees."""


class ContractSink(Protocol):
    """What the runner and the app use of a sink."""

    async def start(self) -> None: ...
    async def open_partitions(self, partitions: Sequence[int]) -> None: ...
    async def close_partitions(self, partitions: Sequence[int]) -> None: ...
    async def checkpoint(self, outbox: Outbox) -> CheckpointTimings: ...
    async def stop(self) -> None: ...


class Backend(Protocol):
    exactly_once: bool
    topics: Topics

    @property
    def sink(self) -> ContractSink: ...

    async def open(self, max_bytes: Mapping[str, int]) -> None:
        """Create the topics (`max_bytes`: `max.message.bytes` per role), start the sink and
        open input partitions 0 and 1."""

    async def committed(self, expected: Mapping[int, int]) -> dict[int, int]:
        """The group's committed offsets (partitions never committed left out), once they
        are `expected` or, failing that, after a few seconds: a transaction's offsets are
        visible once its markers are written, a moment after it committed."""

    async def written(self, topic: str) -> list[Written]: ...

    async def lower_limit(self, role: str, max_bytes: int) -> None:
        """Lower a topic's `max.message.bytes` after the sink read it (an operator did)."""

    async def close(self) -> None: ...


def _names(topics: Topics) -> dict[str, str]:
    return {
        "input": topics.input,
        "snapshots": topics.snapshots,
        "changelog": topics.changelog,
        "dlq": topics.dlq,
    }


class FakeBackend:
    def __init__(self, topics: Topics, exactly_once: bool) -> None:
        self.exactly_once = exactly_once
        self.topics = topics
        self.broker = FakeBroker()
        self.sink = FakeSink(transactional=exactly_once, broker=self.broker, dlq_topic=topics.dlq)

    async def open(self, max_bytes: Mapping[str, int]) -> None:
        for role, name in _names(self.topics).items():
            compacted = role in ("snapshots", "changelog")
            self.broker.topics[name] = FakeTopic(PARTITIONS, max_bytes.get(role), compacted)
        await self.sink.start()
        await self.sink.open_partitions([0, 1])

    async def committed(self, expected: Mapping[int, int]) -> dict[int, int]:
        return dict(self.sink.committed)

    async def written(self, topic: str) -> list[Written]:
        return [(p, r.key, r.value) for p, r in self.broker.topic(topic).log]

    async def lower_limit(self, role: str, max_bytes: int) -> None:
        self.broker.topic(_names(self.topics)[role]).max_bytes = max_bytes

    async def close(self) -> None:
        await self.sink.stop()


class _NoRebalance:
    async def on_revoked(self, partitions: list[int]) -> None:
        """Nothing to do: the cases own both partitions throughout."""

    async def on_assigned(self, partitions: list[int]) -> None:
        """Nothing to do: the cases own both partitions throughout."""


class KafkaBackend:
    """The real sink, with the input consumer of the group whose offsets it commits."""

    def __init__(self, topics: Topics, exactly_once: bool) -> None:
        self.exactly_once = exactly_once
        self.topics = topics
        guarantee = (
            ProcessingGuarantee.EXACTLY_ONCE if exactly_once else ProcessingGuarantee.AT_LEAST_ONCE
        )
        self.settings = Settings(
            bootstrap_servers=topics.bootstrap,
            input_topic=topics.input,
            snapshot_topic=topics.snapshots,
            dlq_topic=topics.dlq,
            group_id=topics.group,
            processing_guarantee=guarantee,
        )
        self.source = KafkaSource(self.settings)
        self.sink: AtLeastOnceSink | TransactionalSink = (
            TransactionalSink(self.settings)
            if exactly_once
            else AtLeastOnceSink(self.settings, self.source)
        )
        self.configs: dict[str, dict[str, str]] = {}

    async def open(self, max_bytes: Mapping[str, int]) -> None:
        specs = topic_specs(self.settings, PARTITIONS)
        for role, limit in max_bytes.items():
            config = {**specs[role].config, "max.message.bytes": str(limit)}
            specs[role] = TopicSpec(specs[role].name, PARTITIONS, config)
        self.configs = {spec.name: dict(spec.config) for spec in specs.values()}
        assert await create_topic_specs(self.settings, list(specs.values()), 1) == {}
        await wait_until_served(self.settings, {spec.name: PARTITIONS for spec in specs.values()})
        await self.source.start(_NoRebalance())
        async with asyncio.timeout(60):  # the group's first assignment
            while self.source.assignment() != [0, 1]:
                await self.source.fetch(0.2)
        await self.sink.start()
        await self.sink.open_partitions([0, 1])

    async def committed(self, expected: Mapping[int, int]) -> dict[int, int]:
        found: dict[int, int] = {}
        with suppress(TimeoutError):
            async with asyncio.timeout(COMMITTED_WAIT_S):
                while True:
                    offsets = await self.source.committed([0, 1])
                    assert offsets, "the coordinator answered"
                    found = {p: o for p, o in offsets.items() if o is not None}
                    if found == expected:
                        break
                    await asyncio.sleep(0.05)
        return found

    async def written(self, topic: str) -> list[Written]:
        return [(r.partition, r.key, r.value) for r in await scan_topic(self.settings, topic)]

    async def lower_limit(self, role: str, max_bytes: int) -> None:
        name = _names(self.topics)[role]
        config = {**self.configs[name], "max.message.bytes": str(max_bytes)}
        admin = AIOKafkaAdminClient(bootstrap_servers=self.topics.bootstrap)
        await admin.start()
        try:
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, config)])
        finally:
            await admin.close()
        async with asyncio.timeout(30):  # until the broker states it
            while True:
                layouts = await describe_layouts(self.settings, {name: ["max.message.bytes"]})
                if layouts[name].config.get("max.message.bytes") == str(max_bytes):
                    return
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        await self.sink.stop()
        await self.source.stop()


BACKENDS = [
    "fake-at_least_once",
    "fake-exactly_once",
    pytest.param("kafka-at_least_once", marks=pytest.mark.integration),
    pytest.param("kafka-exactly_once", marks=pytest.mark.integration),
]
TRANSACTIONAL = [
    "fake-exactly_once",
    pytest.param("kafka-exactly_once", marks=pytest.mark.integration),
]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    kind, guarantee = str(request.param).split("-")
    exactly_once = guarantee == "exactly_once"
    made: Backend
    if kind == "kafka":
        made = KafkaBackend(Topics(request.getfixturevalue("kafka_bootstrap")), exactly_once)
    else:
        made = FakeBackend(Topics("in-memory"), exactly_once)
    try:
        yield made
    finally:
        await made.close()


def snapshot(topics: Topics, key: str, value: bytes = b"{}") -> OutRecord:
    return OutRecord(topics.snapshots, key.encode(), value)


def changelog(topics: Topics, key: str, partition: int) -> OutRecord:
    return OutRecord(topics.changelog, key.encode(), b"state of " + key.encode(), (), partition)


def seen(record: OutRecord, partitions: int = PARTITIONS) -> Written:
    """Where a reader finds `record`: its named partition, else its key's (the default
    partitioner's, pinned in tests/unit/test_kafka_partitioner.py)."""
    assert record.key is not None
    partition = record.partition
    if partition is None:
        partition = key_hash(record.key) % partitions
    return (partition, record.key, record.value)


async def test_writes_every_record_and_commits_the_offsets(backend: Backend) -> None:
    t = backend.topics
    await backend.open({})
    letter = dead_letter(t.dlq, t.input, 1, 4, b"s-bad", b"{", (), "invalid_json", "bad")
    records = {
        0: [snapshot(t, "s-a"), changelog(t, "s-a", 0), snapshot(t, "s-b")],
        1: [snapshot(t, "s-c"), changelog(t, "s-c", 1), letter],
    }
    outbox = Outbox({p: list(rs) for p, rs in records.items()}, {0: 3, 1: 5})
    result = await backend.sink.checkpoint(outbox)
    assert (result.unwritten, result.truncated) == ((), ())
    assert await backend.committed({0: 3, 1: 5}) == {0: 3, 1: 5}
    every = [r for rs in records.values() for r in rs]
    for topic in (t.snapshots, t.changelog, t.dlq):
        expected = sorted(seen(r) for r in every if r.topic == topic)
        assert sorted(await backend.written(topic)) == expected, topic


async def test_a_record_too_large_for_its_topic_is_reported_unwritten_and_offsets_commit(
    backend: Backend,
) -> None:
    t = backend.topics
    await backend.open({"snapshots": LIMIT, "dlq": LIMIT})
    small, big = snapshot(t, "s-small"), snapshot(t, "s-big", BIG)
    letter = dead_letter(t.dlq, t.input, 0, 9, b"s-bad", BIG, (), "invalid_json", "bad")
    outbox = Outbox({0: [small, big, letter, changelog(t, "s-small", 0)]}, {0: 10})
    result = await backend.sink.checkpoint(outbox)
    assert result.unwritten == (Unwritten(big, 0, "too_large"),)
    (cut,) = result.truncated  # a dead letter is cut to fit instead
    assert dict(cut.headers)[DLQ_TRUNCATED_HEADER] == str(len(BIG)).encode()
    assert await backend.committed({0: 10}) == {0: 10}
    assert await backend.written(t.snapshots) == [seen(small)]
    assert await backend.written(t.dlq) == [seen(cut)]


async def test_nothing_commits_when_a_write_fails_retriably_and_the_retry_does(
    backend: Backend,
) -> None:
    t = backend.topics
    await backend.open({})
    await backend.lower_limit("snapshots", LIMIT)  # the sink still holds the old limit
    small, big = snapshot(t, "s-small"), snapshot(t, "s-big", BIG)
    outbox = Outbox({0: [small, big], 1: [changelog(t, "s-c", 1)]}, {0: 4, 1: 2})
    with pytest.raises(CheckpointError) as failed:
        await backend.sink.checkpoint(outbox)
    assert failed.value.retriable
    assert await backend.committed({}) == {}
    result = await backend.sink.checkpoint(outbox)  # the runner retries the same outbox
    assert result.unwritten == (Unwritten(big, 0, "too_large"),)
    assert await backend.committed({0: 4, 1: 2}) == {0: 4, 1: 2}
    found = await backend.written(t.snapshots)
    assert set(found) == {seen(small)}
    if backend.exactly_once:
        assert found == [seen(small)], "nothing written twice"


@pytest.mark.parametrize("backend", TRANSACTIONAL, indirect=True)
async def test_a_failed_partition_transaction_keeps_the_others_and_its_retry_duplicates_nothing(
    backend: Backend,
) -> None:
    t = backend.topics
    await backend.open({})
    await backend.lower_limit("snapshots", LIMIT)
    first = [snapshot(t, "s-a"), changelog(t, "s-a", 0)]
    small, big, state = snapshot(t, "s-b"), snapshot(t, "s-big", BIG), changelog(t, "s-b", 1)
    outbox = Outbox({0: list(first), 1: [small, big, state]}, {0: 7, 1: 9})
    with pytest.raises(CheckpointError) as failed:
        await backend.sink.checkpoint(outbox)
    assert failed.value.retriable
    assert failed.value.committed == (0,)
    assert outbox.partitions() == {0, 1}, "the sink leaves the outbox alone"
    assert await backend.committed({0: 7}) == {0: 7}, "partition 0's transaction committed"
    assert await backend.written(t.snapshots) == [seen(first[0])]
    assert await backend.written(t.changelog) == [seen(first[1])]
    result = await backend.sink.checkpoint(outbox.without(failed.value.committed))
    assert result.unwritten == (Unwritten(big, 1, "too_large"),)
    assert await backend.committed({0: 7, 1: 9}) == {0: 7, 1: 9}
    assert sorted(await backend.written(t.snapshots)) == sorted([seen(first[0]), seen(small)])
    assert sorted(await backend.written(t.changelog)) == sorted([seen(first[1]), seen(state)])
