"""The output: at-least-once and transactional sinks, and the batch writer they share
(partitioner, batches within each topic's record limit, refusals the limits learn from)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    CorruptRecordException,
    IllegalGenerationError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RebalanceInProgressError,
    RecordListTooLargeError,
    RecordTooLargeError,
    UnknownError,
)
from aiokafka.partitioner import murmur2

from worker.kafka.clients import (
    CONNECT_TIMEOUT_S,
    client_backoff_options,
    client_options,
    pace_metadata_updates,
    retriable,
    start_failure,
)
from worker.kafka.source import KafkaSource
from worker.kafka.topics import PRODUCER_MAX_REQUEST_BYTES, read_record_limits, refreshed_limits
from worker.outbox import (
    BATCH_HEADER_BYTES,
    CheckpointError,
    CheckpointTimings,
    Outbox,
    OutRecord,
    RecordLimits,
    Unwritten,
    screen,
)
from worker.settings import Settings

log = logging.getLogger(__name__)


def _checkpoint_result(
    publish_s: float,
    commit_s: float,
    unwritten: Sequence[Unwritten],
    truncated: Sequence[OutRecord],
) -> CheckpointTimings:
    return CheckpointTimings(publish_s, commit_s, tuple(unwritten), tuple(truncated))


class AtLeastOnceSink:
    """One idempotent producer; a checkpoint sends, awaits every ack, then commits offsets.
    Records the broker would refuse are held back (and reported), never sent; a batch the
    broker refuses all the same replaces the producer (its sequence is broken) and fails the
    checkpoint retriably, to be retried under the limits learned from the refusal."""

    def __init__(self, settings: Settings, source: KafkaSource) -> None:
        self._settings = settings
        self._source = source
        self._producer = self._new_producer()
        self.limits = RecordLimits(PRODUCER_MAX_REQUEST_BYTES)

    def _new_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            **client_options(self._settings),
            **client_backoff_options(),
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=512 * 1024,
            max_request_size=PRODUCER_MAX_REQUEST_BYTES,
        )
        pace_metadata_updates(producer.client)
        return producer

    async def start(self) -> None:
        try:
            await asyncio.wait_for(self._producer.start(), CONNECT_TIMEOUT_S)
        except (TimeoutError, KafkaConnectionError) as error:
            raise start_failure("producer", error) from error
        self.limits = await read_record_limits(self._settings)

    async def open_partitions(self, partitions: Sequence[int]) -> None:
        """Nothing per partition in this mode."""

    async def close_partitions(self, partitions: Sequence[int]) -> None:
        """Nothing per partition in this mode."""

    async def checkpoint(self, outbox: Outbox) -> CheckpointTimings:
        """Raises CheckpointError if any record sent is not acknowledged; then nothing is
        committed. Records held back are in the result: their offsets are committed."""
        started = time.monotonic()
        screened = screen(outbox.records, self.limits, self._settings.dlq_topic)
        try:
            await _send_all(self._producer, screened.accepted, self.limits)
        except BatchRefusedError as error:
            await self._replace_producer()
            raise CheckpointError(f"write failed: {error}", retriable=True) from error
        except KafkaError as error:
            raise CheckpointError(f"write failed: {error!r}", retriable=retriable(error)) from error
        acked = time.monotonic()
        if outbox.offsets:
            try:
                await self._source.commit(outbox.offsets)
            except (CommitFailedError, IllegalGenerationError, RebalanceInProgressError) as error:
                # The partitions moved on; their new owner resumes from the last commit, and
                # re-folding what we already wrote is harmless (the fold is idempotent).
                log.warning("offset commit lost to a rebalance", extra={"error": repr(error)})
            except KafkaError as error:
                raise CheckpointError(
                    f"commit failed: {error!r}", retriable=retriable(error)
                ) from error
        return _checkpoint_result(
            acked - started, time.monotonic() - acked, screened.unwritten, screened.truncated
        )

    async def _replace_producer(self) -> None:
        """A fresh producer (new id, fresh sequences) and the broker's current limits."""
        old, self._producer = self._producer, self._new_producer()
        with suppress(KafkaError):
            await old.stop()
        try:
            await asyncio.wait_for(self._producer.start(), CONNECT_TIMEOUT_S)
        except (TimeoutError, KafkaError) as error:
            raise CheckpointError(
                f"cannot restart the producer: {error!r}", retriable=False
            ) from error
        self.limits = await refreshed_limits(self._settings, self.limits)

    async def stop(self) -> None:
        await self._producer.stop()


KEY_HASH_CACHE_SIZE: Final = 1 << 18
"""Keys whose murmur2 hash is remembered (aiokafka's is pure Python, ~10 us per key): more
than the sessions one worker holds, and at most ~30 MB (cleared when full)."""
_key_hashes: dict[bytes, int] = {}
_NO_HEADERS: Final[list[tuple[str, bytes]]] = []


def key_hash(key: bytes) -> int:
    """The default partitioner's hash of a key (partition = hash % partition count)."""
    cached = _key_hashes.get(key)
    if cached is None:
        if len(_key_hashes) >= KEY_HASH_CACHE_SIZE:
            _key_hashes.clear()
        cached = _key_hashes[key] = murmur2(key) & 0x7FFFFFFF
    return cached


SIZE_REFUSALS: Final = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)
"""The broker (or producer) refused a batch for its size: no retry of the same batch helps."""
INVALID_REFUSALS: Final = (CorruptRecordException, UnknownError)
"""The broker refused a batch's content (INVALID_RECORD has no class in aiokafka and comes
as UnknownError): sent again one record per batch, a record refused alone is left out."""
BROKEN_BY_REFUSAL: Final = (*SIZE_REFUSALS, *INVALID_REFUSALS, OutOfOrderSequenceNumber)
"""Seen after a refused batch: an idempotent producer's sequence for that partition is then
broken for good (every later batch fails out of order), so the producer must be replaced."""


class BatchRefusedError(KafkaError):  # type: ignore[misc]
    """The broker refused a batch the limits admitted; the limits learned from it."""

    retriable = True


@dataclass(slots=True)
class _Batch:
    """One batch being filled: the builder, its size so far (upper bound), how many records
    it holds and the first (the culprit when a batch of one is refused)."""

    builder: Any
    used: int
    first: OutRecord
    count: int = 1


async def _send_all(
    producer: AIOKafkaProducer, records: Sequence[tuple[OutRecord, int]], limits: RecordLimits
) -> None:
    """Write `records` (each with its `record_size`) and wait for every ack; raises KafkaError
    if any write fails, BatchRefusedError if the broker refused a batch for its size or
    content (`limits` then learned from it).

    Uses the batch API: one future per topic-partition batch instead of one per record
    (a checkpoint writes tens of thousands of records), each batch within its topic's limit.
    Keyed records without an explicit partition go where the default partitioner would put
    them; keyless ones are spread round-robin.
    """
    open_batches: dict[tuple[str, int], _Batch] = {}
    layouts: dict[str, list[int]] = {}
    sent: list[tuple[str, int, _Batch, Any]] = []
    caps: dict[str, int] = {}
    isolated = limits.isolated
    spread = 0
    for r, size in records:
        partition = r.partition
        if partition is None:
            layout = layouts.get(r.topic)
            if layout is None:
                layout = layouts[r.topic] = sorted(await producer.partitions_for(r.topic))
            if r.key is None:
                spread += 1
                partition = layout[spread % len(layout)]
            else:
                partition = layout[key_hash(r.key) % len(layout)]
        headers = list(r.headers) if r.headers else _NO_HEADERS  # the builder wants a list
        grows = size - BATCH_HEADER_BYTES
        batch = open_batches.get((r.topic, partition))
        if batch is not None and (
            batch.used + grows > (caps.get(r.topic) or caps.setdefault(r.topic, limits.of(r.topic)))
            or (isolated and (r.topic, partition) in isolated)
            or not batch.builder.append(key=r.key, value=r.value, timestamp=None, headers=headers)
        ):  # full: send it and start the next one (the first record always fits)
            future = await producer.send_batch(batch.builder, r.topic, partition=partition)
            sent.append((r.topic, partition, batch, future))
            batch = None
        if batch is None:
            batch = _Batch(producer.create_batch(), size, r)
            batch.builder.append(key=r.key, value=r.value, timestamp=None, headers=headers)
            open_batches[r.topic, partition] = batch
        else:
            batch.used += grows
            batch.count += 1
    for (topic, partition), batch in open_batches.items():
        future = await producer.send_batch(batch.builder, topic, partition=partition)
        sent.append((topic, partition, batch, future))
    results = await asyncio.gather(*(future for *_, future in sent), return_exceptions=True)
    refusals = []
    for (topic, partition, batch, _), result in zip(sent, results, strict=True):
        if isinstance(result, SIZE_REFUSALS):
            limits.learn(topic, batch.used)
        elif isinstance(result, INVALID_REFUSALS):
            limits.refuse(topic, partition, [batch.first] if batch.count == 1 else [])
        if isinstance(result, BROKEN_BY_REFUSAL):
            refusals.append(f"{topic}: batch of {batch.used} bytes refused: {result!r}")
    if refusals:
        raise BatchRefusedError(refusals[0])
    for result in results:
        if isinstance(result, BaseException):
            raise result
    limits.written((topic, partition) for topic, partition, *_ in sent)


class TransactionalSink:
    """Exactly-once: per input partition, one transactional producer whose transaction holds
    that partition's snapshots, changelog records, dead letters and its input offset.

    aiokafka cannot fence zombies by consumer-group generation, so the transactional id is
    derived from the partition: a new owner's `init_transactions` fences the previous one.
    Records the broker would refuse are left out of the transaction (and reported); a batch
    refused all the same aborts it and replaces that partition's producer, and the retry
    leaves out what the refusal taught the limits.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producers: dict[int, AIOKafkaProducer] = {}
        self.limits = RecordLimits(PRODUCER_MAX_REQUEST_BYTES)

    def transactional_id(self, partition: int) -> str:
        s = self._settings
        return f"{s.group_id}.{s.input_topic}.{partition}"

    async def start(self) -> None:
        """Producers start per partition, on assignment; the limits are read now."""
        self.limits = await read_record_limits(self._settings)

    async def open_partitions(self, partitions: Sequence[int]) -> None:
        for partition in partitions:
            if partition in self._producers:
                continue
            producer = AIOKafkaProducer(
                **client_options(self._settings),
                **client_backoff_options(),
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                max_request_size=PRODUCER_MAX_REQUEST_BYTES,
                transactional_id=self.transactional_id(partition),
            )
            pace_metadata_updates(producer.client)
            await producer.start()
            self._producers[partition] = producer

    async def close_partitions(self, partitions: Sequence[int]) -> None:
        for partition in partitions:
            producer = self._producers.pop(partition, None)
            if producer is not None:
                await producer.stop()

    async def checkpoint(self, outbox: Outbox) -> CheckpointTimings:
        started = time.monotonic()
        topic, group = self._settings.input_topic, self._settings.group_id
        unwritten: list[Unwritten] = []
        truncated: list[OutRecord] = []
        committed: list[int] = []
        for partition in sorted(outbox.partitions()):
            producer = self._producers.get(partition)
            if producer is None:
                raise RuntimeError(f"no transactional producer for owned partition {partition}")
            records = {partition: outbox.records.get(partition, [])}
            screened = screen(records, self.limits, self._settings.dlq_topic)
            try:
                async with producer.transaction():
                    await _send_all(producer, screened.accepted, self.limits)
                    offset = outbox.offsets.get(partition)
                    if offset is not None:
                        await producer.send_offsets_to_transaction(
                            {TopicPartition(topic, partition): offset}, group
                        )
                committed.append(partition)  # a retry must not write it again
            except BatchRefusedError as error:
                await self._reopen(partition)
                raise CheckpointError(
                    f"transaction on partition {partition} failed: {error}",
                    retriable=True,
                    unwritten=unwritten,
                    truncated=truncated,
                    committed=committed,
                ) from error
            except KafkaError as error:
                # Fenced means another worker owns the partition now: stop, do not retry.
                raise CheckpointError(
                    f"transaction on partition {partition} failed: {error!r}",
                    retriable=retriable(error) and not isinstance(error, ProducerFenced),
                    unwritten=unwritten,
                    truncated=truncated,
                    committed=committed,
                ) from error
            unwritten.extend(screened.unwritten)
            truncated.extend(screened.truncated)
        return _checkpoint_result(time.monotonic() - started, 0.0, unwritten, truncated)

    async def _reopen(self, partition: int) -> None:
        """A fresh producer for `partition` (its sequence broke with the refused batch; the
        same transactional id fences the old one) and the broker's current limits."""
        with suppress(KafkaError):
            await self.close_partitions([partition])
        try:
            await self.open_partitions([partition])
        except KafkaError as error:
            raise CheckpointError(
                f"cannot reopen the producer of partition {partition}: {error!r}", retriable=False
            ) from error
        self.limits = await refreshed_limits(self._settings, self.limits)

    async def stop(self) -> None:
        await self.close_partitions(list(self._producers))
