"""Kafka adapter: the only module that imports aiokafka.

It offers the runner small things: an input `KafkaSource` (group consumer, manual commits,
rebalance callbacks), a `KafkaSink` (snapshots, changelog, dead letters; delivery futures
awaited at checkpoints), changelog restore, and topic setup.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    CorruptRecordException,
    IllegalGenerationError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RebalanceInProgressError,
    RecordListTooLargeError,
    RecordTooLargeError,
    RequestTimedOutError,
    TopicAlreadyExistsError,
    UnknownError,
)
from aiokafka.partitioner import murmur2

from worker.logs import held_back
from worker.outbox import (
    BATCH_HEADER_BYTES,
    CheckpointError,
    CheckpointTimings,
    InputRecord,
    Outbox,
    OutRecord,
    RecordLimits,
    Unwritten,
    screen,
)
from worker.settings import SecurityProtocol, Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

CONNECT_TIMEOUT_S: Final = 15.0
"""Startup gives up on an unreachable broker after this long, with one clear error."""
COMMITTED_TIMEOUT_S: Final = 10.0
"""How long a rebalance waits for the committed offsets before restoring from the changelog."""
DESCRIBE_SETTLE_S: Final = 5.0
"""How long a just-created topic may take to be described with its partitions."""


KafkaClientError = KafkaError
"""Base of every Kafka client error, named here so no other module imports aiokafka."""


RETRY_BACKOFF_MS: Final = 500
"""Pause before a client retries a failed request (fetch, metadata, coordinator; aiokafka's
default is 100): while a broker is down, fewer attempts, log lines and CPU."""


METADATA_BACKOFF_MAX_S: Final = 2.0
"""Longest pause between failed metadata updates: how late, at worst, a client notices that
the broker is back."""


def client_backoff_options() -> dict[str, Any]:
    """Retry pacing of every client (see RETRY_BACKOFF_MS)."""
    return {"retry_backoff_ms": RETRY_BACKOFF_MS}


def backoff_s(failures: int, base_s: float, cap_s: float) -> float:
    """Exponential backoff: base, 2 x base, 4 x base, ... up to cap (0 before a failure)."""
    if failures <= 0:
        return 0.0
    return float(min(cap_s, base_s * 2 ** min(failures - 1, 32)))


def pace_metadata_updates(
    client: Any, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
) -> None:
    """Make an aiokafka client wait between failed metadata updates.

    aiokafka retries a failed update as soon as anyone asks, and its fetcher and sender ask
    in a loop while a partition has no known leader: with the broker down that was ~7,000
    attempts (and two ERROR lines each) per second and a whole core. aiokafka has no option
    for it (no reconnect backoff), so the client's update is wrapped: after n failures in a
    row it reports the failure only after `backoff_s(n)`, which paces every waiter.
    """
    update = client._metadata_update
    failures = 0

    async def paced(cluster_metadata: Any, topics: Any) -> bool:
        nonlocal failures
        updated = bool(await update(cluster_metadata, topics))
        failures = 0 if updated else failures + 1
        await sleep(backoff_s(failures, RETRY_BACKOFF_MS / 1000, METADATA_BACKOFF_MAX_S))
        return updated

    client._metadata_update = paced


class StartupError(RuntimeError):
    """A problem an operator must fix (unreachable broker, missing topic, bad setting)."""


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection and security options shared by every client; secrets stay in memory only."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol.value,
    }
    if settings.security_protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL):
        options["ssl_context"] = tls_context(settings)
    if settings.security_protocol in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL):
        if settings.sasl_mechanism is None or settings.sasl_username is None:
            raise StartupError("SASL needs WORKER_SASL_MECHANISM and WORKER_SASL_USERNAME")
        password = settings.sasl_password
        # aiokafka takes the SCRAM credentials in its `sasl_plain_*` options too.
        options.update(
            sasl_mechanism=settings.sasl_mechanism.value,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=password.get_secret_value() if password else "",
        )
    return options


def tls_context(settings: Settings) -> ssl.SSLContext:
    """Verifying client context: the CA file (else the system store), optional client cert.

    Raises StartupError naming the file that cannot be loaded (never a password)."""
    try:
        context = ssl.create_default_context(cafile=settings.ssl_cafile)
    except (OSError, ssl.SSLError) as error:
        raise StartupError(f"cannot load ssl_cafile {settings.ssl_cafile}: {error}") from error
    context.check_hostname = settings.ssl_check_hostname
    if settings.ssl_certfile:
        key_password = settings.ssl_key_password
        try:
            context.load_cert_chain(
                settings.ssl_certfile,
                settings.ssl_keyfile,
                key_password.get_secret_value() if key_password else None,
            )
        except (OSError, ssl.SSLError) as error:
            files = ", ".join(str(f) for f in (settings.ssl_certfile, settings.ssl_keyfile) if f)
            raise StartupError(f"cannot load the client certificate ({files}): {error}") from error
    return context


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: Mapping[str, str]


def worker_topics(settings: Settings, input_partitions: int) -> list[TopicSpec]:
    """Output topics; the changelog must have exactly the input's partition count."""
    compacted = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
    # Dead letters share keys (session ids): compaction would drop all but the newest.
    dead_letters = {"cleanup.policy": "delete", "retention.ms": str(14 * 86_400_000)}
    return [
        TopicSpec(settings.snapshot_topic, input_partitions, compacted),
        TopicSpec(settings.changelog_topic_name, input_partitions, compacted),
        TopicSpec(settings.dlq_topic, input_partitions, dead_letters),
    ]


async def _with_admin(
    settings: Settings, action: Callable[[AIOKafkaAdminClient], Awaitable[T]]
) -> T:
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(admin.start(), CONNECT_TIMEOUT_S)
    except (TimeoutError, KafkaConnectionError) as error:
        await admin.close()
        where = f"cannot connect to Kafka at {settings.bootstrap_servers}"
        if isinstance(error, TimeoutError):
            raise StartupError(f"{where}: no answer within {CONNECT_TIMEOUT_S:.0f}s") from error
        raise StartupError(where) from error
    try:
        return await action(admin)
    finally:
        await admin.close()


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
    return await _with_admin(
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
            spec = TopicSpec(settings.input_topic, settings.topic_partitions, {})
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

    return await _with_admin(settings, prepare)


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
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=16 * 1024 * 1024,
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
            raise StartupError(f"cannot start consumer: {error or 'timed out'}") from error

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
            raise StartupError(f"cannot start producer: {error or 'timed out'}") from error
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
            raise CheckpointError(
                f"write failed: {error!r}", retriable=_retriable(error)
            ) from error
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
                    f"commit failed: {error!r}", retriable=_retriable(error)
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


def _retriable(error: KafkaError) -> bool:
    return bool(getattr(error, "retriable", False)) or isinstance(
        error, KafkaTimeoutError | KafkaConnectionError | RequestTimedOutError
    )


KEY_HASH_CACHE_SIZE: Final = 1 << 18
"""Keys whose murmur2 hash is remembered (aiokafka's is pure Python, ~10 us per key): more
than the sessions one worker holds, and at most ~30 MB (cleared when full)."""
_key_hashes: dict[bytes, int] = {}
_NO_HEADERS: Final[list[tuple[str, bytes]]] = []


def _key_hash(key: bytes) -> int:
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
                partition = layout[_key_hash(r.key) % len(layout)]
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
        for partition in sorted(outbox.partitions()):  # drops each one as it commits
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
                outbox.drop_partitions([partition])  # done: a retry must not write it again
            except BatchRefusedError as error:
                await self._reopen(partition)
                raise CheckpointError(
                    f"transaction on partition {partition} failed: {error}",
                    retriable=True,
                    unwritten=unwritten,
                    truncated=truncated,
                ) from error
            except KafkaError as error:
                # Fenced means another worker owns the partition now: stop, do not retry.
                raise CheckpointError(
                    f"transaction on partition {partition} failed: {error!r}",
                    retriable=_retriable(error) and not isinstance(error, ProducerFenced),
                    unwritten=unwritten,
                    truncated=truncated,
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
                f"cannot reopen the producer of partition {partition}: {error!r}",
                retriable=False,
            ) from error
        self.limits = await refreshed_limits(self._settings, self.limits)

    async def stop(self) -> None:
        await self.close_partitions(list(self._producers))


async def read_partitions(
    settings: Settings,
    topic: str,
    partitions: Sequence[int],
    on_batch: Callable[[], object] | None = None,
) -> dict[int, list[tuple[bytes | None, bytes | None]]]:
    """Read the given partitions of `topic` from the beginning to their current end."""
    result: dict[int, list[tuple[bytes | None, bytes | None]]] = {p: [] for p in partitions}
    if not partitions:
        return result
    reader = AIOKafkaConsumer(
        **client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
        isolation_level="read_committed",
    )
    pace_metadata_updates(reader._client)
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        ends = await reader.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        for tp in tps:
            if tp in remaining and await reader.position(tp) >= ends[tp]:
                remaining.discard(tp)
        while remaining:
            batches = await reader.getmany(*remaining, timeout_ms=500, max_records=20_000)
            if on_batch is not None:
                on_batch()  # a long restore is progress, not a stuck worker
            for tp, records in batches.items():
                result[tp.partition].extend((r.key, r.value) for r in records)
            for tp in list(remaining):
                if await reader.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await reader.stop()
    return result


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


# --- Operator tools (tail, topics, dlq): group-less reads and cluster topic layout ---

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
            raise StartupError(f"cannot start consumer: {error or 'timed out'}") from error
        self._started = True
        count = await _with_admin(self._settings, lambda admin: partition_count(admin, self.topic))
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
    await _with_admin(settings, lambda admin: admin.list_topics())


async def describe_layouts(
    settings: Settings, wanted: Mapping[str, Iterable[str]]
) -> dict[str, TopicLayout]:
    """Partitions and the given config keys of each named topic; missing topics are left out."""

    # Imported here so the admin additions stay in this appended section of the module.
    from aiokafka.admin.config_resource import (  # noqa: PLC0415
        ConfigResource,
        ConfigResourceType,
    )

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

    return await _with_admin(settings, describe)


async def create_topic_specs(
    settings: Settings, specs: Sequence[TopicSpec], replication: int
) -> dict[str, str]:
    """Create the given topics; return an error message per topic the broker refused."""
    if not specs:
        return {}

    async def create(admin: AIOKafkaAdminClient) -> dict[str, str]:
        return (await _create_missing(admin, specs, replication))[1]

    return await _with_admin(settings, create)
