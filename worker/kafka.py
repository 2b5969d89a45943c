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
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    ProducerFenced,
    RebalanceInProgressError,
    RequestTimedOutError,
    TopicAlreadyExistsError,
)
from aiokafka.partitioner import murmur2

from worker.logs import held_back
from worker.outbox import CheckpointError, CheckpointTimings, InputRecord, Outbox, OutRecord
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


class AtLeastOnceSink:
    """One idempotent producer; a checkpoint sends, awaits every ack, then commits offsets."""

    def __init__(self, settings: Settings, source: KafkaSource) -> None:
        self._source = source
        self._producer = AIOKafkaProducer(
            **client_options(settings),
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=512 * 1024,
        )

    async def start(self) -> None:
        try:
            await asyncio.wait_for(self._producer.start(), CONNECT_TIMEOUT_S)
        except (TimeoutError, KafkaConnectionError) as error:
            raise StartupError(f"cannot start producer: {error or 'timed out'}") from error

    async def open_partitions(self, partitions: Sequence[int]) -> None:
        """Nothing per partition in this mode."""

    async def close_partitions(self, partitions: Sequence[int]) -> None:
        """Nothing per partition in this mode."""

    async def checkpoint(self, outbox: Outbox) -> CheckpointTimings:
        """Raises CheckpointError if any record is not acknowledged; then nothing is committed."""
        started = time.monotonic()
        try:
            await _send_all(self._producer, [r for rs in outbox.records.values() for r in rs])
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
        return CheckpointTimings(acked - started, time.monotonic() - acked)

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


async def _send_all(producer: AIOKafkaProducer, records: Sequence[OutRecord]) -> None:
    """Write `records` and wait for every ack; raises KafkaError if any write fails.

    Uses the batch API: one future per topic-partition batch instead of one per record
    (a checkpoint writes tens of thousands of records). Keyed records without an explicit
    partition go where the default partitioner would put them; keyless ones use `send`.
    """
    batches: dict[tuple[str, int], Any] = {}
    layouts: dict[str, list[int]] = {}
    futures = []
    for r in records:
        partition = r.partition
        if partition is None:
            if r.key is None:
                futures.append(await producer.send(r.topic, value=r.value, headers=list(r.headers)))
                continue
            layout = layouts.get(r.topic)
            if layout is None:
                layout = layouts[r.topic] = sorted(await producer.partitions_for(r.topic))
            partition = layout[_key_hash(r.key) % len(layout)]
        headers = list(r.headers) if r.headers else _NO_HEADERS  # the builder wants a list
        batch = batches.get((r.topic, partition))
        if batch is None:
            batch = batches[r.topic, partition] = producer.create_batch()
        elif batch.append(key=r.key, value=r.value, timestamp=None, headers=headers):
            continue
        else:  # full: send it and start the next one (the first record always fits)
            futures.append(await producer.send_batch(batch, r.topic, partition=partition))
            batch = batches[r.topic, partition] = producer.create_batch()
        batch.append(key=r.key, value=r.value, timestamp=None, headers=headers)
    for (topic, partition), batch in batches.items():
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    if futures:
        await asyncio.gather(*futures)


class TransactionalSink:
    """Exactly-once: per input partition, one transactional producer whose transaction holds
    that partition's snapshots, changelog records, dead letters and its input offset.

    aiokafka cannot fence zombies by consumer-group generation, so the transactional id is
    derived from the partition: a new owner's `init_transactions` fences the previous one.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producers: dict[int, AIOKafkaProducer] = {}

    def transactional_id(self, partition: int) -> str:
        s = self._settings
        return f"{s.group_id}.{s.input_topic}.{partition}"

    async def start(self) -> None:
        """Producers start per partition, on assignment."""

    async def open_partitions(self, partitions: Sequence[int]) -> None:
        for partition in partitions:
            if partition in self._producers:
                continue
            producer = AIOKafkaProducer(
                **client_options(self._settings),
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                transactional_id=self.transactional_id(partition),
            )
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
        for partition in sorted(outbox.partitions()):  # drops each one as it commits
            producer = self._producers.get(partition)
            if producer is None:
                raise RuntimeError(f"no transactional producer for owned partition {partition}")
            try:
                async with producer.transaction():
                    await _send_all(producer, outbox.records.get(partition, []))
                    offset = outbox.offsets.get(partition)
                    if offset is not None:
                        await producer.send_offsets_to_transaction(
                            {TopicPartition(topic, partition): offset}, group
                        )
                outbox.drop_partitions([partition])  # done: a retry must not write it again
            except KafkaError as error:
                # Fenced means another worker owns the partition now: stop, do not retry.
                raise CheckpointError(
                    f"transaction on partition {partition} failed: {error!r}",
                    retriable=_retriable(error) and not isinstance(error, ProducerFenced),
                ) from error
        return CheckpointTimings(time.monotonic() - started, 0.0)

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
