"""The input: a group consumer with manual commits and rebalance callbacks (KafkaSource)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaConnectionError, KafkaError

from worker.kafka.clients import (
    CONNECT_TIMEOUT_S,
    client_backoff_options,
    client_options,
    pace_metadata_updates,
    start_failure,
)
from worker.outbox import InputRecord
from worker.settings import Settings

log = logging.getLogger(__name__)


COMMITTED_TIMEOUT_S: Final = 10.0
"""How long a rebalance waits for the committed offsets before restoring from the changelog."""


class RebalanceHandler(Protocol):
    async def on_revoked(self, partitions: list[int]) -> None: ...
    async def on_assigned(self, partitions: list[int]) -> None: ...


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, handler: RebalanceHandler) -> None:
        self._handler = handler

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._handler.on_revoked(sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._handler.on_assigned(sorted(tp.partition for tp in assigned))


INPUT_FETCH: Final = {
    "max_partition_fetch_bytes": 4 * 1024 * 1024,
    "fetch_max_bytes": 16 * 1024 * 1024,
    "fetch_min_bytes": 64 * 1024,
    "fetch_max_wait_ms": 100,
}
"""The input consumer's fetch sizes. At a steady live load the broker answers a fetch as
soon as any record arrives (Kafka's default `fetch.min.bytes` is 1): ~100 small fetches a
second, each a request built and a response parsed in Python. Waiting for 64 KiB, or at
most 100 ms, halves the consumer's CPU per event at 10-20k events/s (a bare consumer:
10.3 -> 5.5 µs at 10k, 5.6 -> 4.8 at 20k; docs/performance.md) and delays an event by at
most 100 ms (~30 ms at 10k events/s of ~200 B), against a publish interval of 1 s. A
backlog fills 64 KiB at once: catching up is not slowed."""
POSITION_TIMEOUT_S: Final = 1.0
"""A position is known in memory once a partition was fetched from; this bounds the rare
wait for an offset reset (the partition counts as behind meanwhile)."""


class KafkaSource:
    """The input topic in a consumer group, with manual commits."""

    def __init__(self, settings: Settings) -> None:
        self._topic = settings.input_topic
        self._consumer = AIOKafkaConsumer(
            **client_options(settings),
            **client_backoff_options(),
            group_id=settings.group_id,
            group_instance_id=settings.group_instance_id or None,
            session_timeout_ms=round(settings.session_timeout_s * 1000),
            # Members notice a rebalance at their next heartbeat: keep it short (<= 3 s).
            heartbeat_interval_ms=round(min(3.0, settings.session_timeout_s / 3) * 1000),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **INPUT_FETCH,
            isolation_level="read_committed",
        )
        pace_metadata_updates(self._consumer._client)
        self._max_records = settings.max_poll_records
        self._next_offsets: dict[TopicPartition, int] = {}
        """Per partition, the next offset to hand out (for the backlogs)."""

    async def start(self, handler: RebalanceHandler) -> None:
        self._consumer.subscribe([self._topic], listener=_Listener(handler))
        try:
            await asyncio.wait_for(self._consumer.start(), CONNECT_TIMEOUT_S)
        except (TimeoutError, KafkaConnectionError) as error:
            raise start_failure("consumer", error) from error

    async def fetch(self, timeout_s: float) -> list[InputRecord]:
        batches = await self._consumer.getmany(
            timeout_ms=max(0, round(timeout_s * 1000)), max_records=self._max_records
        )
        for tp, batch in batches.items():
            self._next_offsets[tp] = batch[-1].offset + 1
        await self._settle_positions()
        if len(batches) == 1:
            return list(next(iter(batches.values())))
        return [record for batch in batches.values() for record in batch]

    async def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit `next offset to read` per partition."""
        await self._consumer.commit({TopicPartition(self._topic, p): o for p, o in offsets.items()})

    def assignment(self) -> list[int]:
        return sorted(tp.partition for tp in self._consumer.assignment())

    async def _settle_positions(self) -> None:
        """Where the last record handed out leaves a partition short of its end (or none was
        handed out since the assignment), take the consumer's position instead: it also
        steps over transaction markers and aborted records, which no record shows, so a
        quiet transactional partition is not "behind" for ever. Answered from memory."""
        consumer = self._consumer
        for tp in consumer.assignment():
            end = self._end_offset(tp)
            if end is None or self._next_offsets.get(tp, -1) >= end:
                continue
            try:
                async with asyncio.timeout(POSITION_TIMEOUT_S):
                    self._next_offsets[tp] = await consumer.position(tp)
            except (TimeoutError, KafkaError):
                continue

    def _end_offset(self, tp: TopicPartition) -> int | None:
        """The end the brokers last reported (the last stable offset: only committed
        transactions are read); None before the first fetch response. No request is made."""
        end: int | None = self._consumer.last_stable_offset(tp)
        if end is None or end < 0:
            end = self._consumer.highwater(tp)
        return end

    def _backlog_of(self, tp: TopicPartition) -> int | None:
        fetched = self._next_offsets.get(tp)
        end = self._end_offset(tp)
        if fetched is None or end is None:
            return None
        return max(0, end - fetched)

    def backlog(self) -> int:
        """Records after the last one handed out, over the assigned partitions whose end is
        known (see `partition_backlog`). No request is made."""
        return sum(self._backlog_of(tp) or 0 for tp in self._consumer.assignment())

    def partition_backlog(self, partition: int) -> int | None:
        """Records of `partition` after the last one handed out, up to the end reported by
        its latest fetch response; None while unknown (not assigned, or not fetched from
        since the assignment). No request is made: this runs at every publish slice."""
        tp = TopicPartition(self._topic, partition)
        if tp not in self._consumer.assignment():
            return None
        return self._backlog_of(tp)

    async def committed(self, partitions: Sequence[int]) -> dict[int, int | None]:
        """The group's committed offset of each partition (None: never committed), asked of
        the group coordinator; empty if it cannot tell in time (aiokafka retries retriable
        errors without end), and the runner then restores from the changelog."""
        wanted = [TopicPartition(self._topic, p) for p in partitions]
        try:
            offsets = await asyncio.wait_for(
                asyncio.gather(*(self._consumer.committed(tp) for tp in wanted)),
                COMMITTED_TIMEOUT_S,
            )
        except (KafkaError, TimeoutError) as error:
            log.warning("committed offsets unavailable", extra={"error": str(error) or "timeout"})
            return {}
        return {tp.partition: offset for tp, offset in zip(wanted, offsets, strict=True)}

    async def lag(self) -> dict[int, int]:
        """Records between our position and the end, per assigned partition."""
        assigned = list(self._consumer.assignment())
        if not assigned:
            return {}
        ends = await self._consumer.end_offsets(assigned)
        lags = {}
        for tp in assigned:
            try:
                position = await self._consumer.position(tp)
            except KafkaError:
                continue
            lags[tp.partition] = max(0, ends[tp] - position)
        return lags

    async def stop(self) -> None:
        await self._consumer.stop()
