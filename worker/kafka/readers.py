"""Clients for the tools (demo traffic, DLQ replay, tail, tests, benchmarks): a plain keyed
producer and group-less topic readers that commit nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError

from worker.kafka.clients import (
    CONNECT_TIMEOUT_S,
    StartupError,
    client_options,
    start_failure,
    with_admin,
)
from worker.kafka.topics import partition_count
from worker.settings import Settings


class EventProducer:
    """A plain keyed producer for tools (demo traffic, DLQ replay, tests, benchmarks)."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        self._producer = AIOKafkaProducer(**client_options(settings), **{"linger_ms": 5, **options})

    async def start(self) -> None:
        await self._producer.start()

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue one record; `flush` waits for delivery."""
        await self._producer.send(
            topic, value=value, key=key, headers=list(headers or []), partition=partition
        )

    async def flush(self) -> None:
        await self._producer.flush()

    async def stop(self) -> None:
        await self._producer.stop()


TOOL_FETCH_BYTES: Final = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One record read back from a topic, with where it sits."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


class TopicReader:
    """Every partition of one topic, read without a consumer group (nothing is committed).

    `start` positions at the beginning or at the end and returns once positions are
    resolved, so a record produced after `start` returns is always seen. Partitions added
    later are not followed. `stop` is idempotent.
    """

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self._settings = settings
        self._consumer = AIOKafkaConsumer(
            **client_options(settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=TOOL_FETCH_BYTES,
            isolation_level="read_committed",
        )
        self._partitions: list[TopicPartition] = []
        self._ends: dict[TopicPartition, int] = {}
        self._started = False

    async def start(self, from_beginning: bool) -> None:
        """Raises StartupError when the broker is unreachable or the topic does not exist."""
        try:
            await asyncio.wait_for(self._consumer.start(), CONNECT_TIMEOUT_S)
        except (TimeoutError, KafkaConnectionError) as error:
            await self._consumer.stop()
            raise start_failure("consumer", error) from error
        self._started = True
        count = await with_admin(self._settings, lambda admin: partition_count(admin, self.topic))
        if not count:
            raise StartupError(f"topic {self.topic!r} does not exist")
        self._partitions = [TopicPartition(self.topic, p) for p in range(count)]
        self._consumer.assign(self._partitions)
        if from_beginning:
            await self._consumer.seek_to_beginning(*self._partitions)
        else:
            await self._consumer.seek_to_end(*self._partitions)
        for tp in self._partitions:  # resolve lazily reset positions now, not at first fetch
            await self._consumer.position(tp)
        self._ends = await self._consumer.end_offsets(self._partitions)

    @property
    def partitions(self) -> list[int]:
        return [tp.partition for tp in self._partitions]

    async def fetch(self, timeout_s: float) -> list[StoredRecord]:
        batches = await self._consumer.getmany(
            timeout_ms=max(0, round(timeout_s * 1000)), max_records=10_000
        )
        return [
            StoredRecord(
                r.topic,
                r.partition,
                r.offset,
                r.timestamp,
                r.key,
                r.value,
                tuple((name, bytes(value or b"")) for name, value in r.headers),
            )
            for batch in batches.values()
            for r in batch
        ]

    async def caught_up(self) -> bool:
        """True once every partition is read up to its end as of `start`."""
        for tp in self._partitions:
            if await self._consumer.position(tp) < self._ends[tp]:
                return False
        return True

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self._consumer.stop()


async def scan_topic(settings: Settings, topic: str) -> list[StoredRecord]:
    """Every record of `topic` from the beginning up to its end now, in partition order."""
    reader = TopicReader(settings, topic)
    found: list[StoredRecord] = []
    try:
        await reader.start(from_beginning=True)
        while not await reader.caught_up():
            found.extend(await reader.fetch(0.5))
    finally:
        await reader.stop()
    found.sort(key=lambda r: (r.partition, r.offset))
    return found
