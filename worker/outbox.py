"""Records derived from input, held until the next checkpoint writes them. Pure data.

Grouping by input partition lets the exactly-once sink write each partition's records and
offsets in that partition's own transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple, Protocol

DLQ_REASON_HEADER: Final = "dlq.reason"
DLQ_ERROR_HEADER: Final = "dlq.error"
DLQ_TOPIC_HEADER: Final = "dlq.source.topic"
DLQ_PARTITION_HEADER: Final = "dlq.source.partition"
DLQ_OFFSET_HEADER: Final = "dlq.source.offset"
DLQ_TRUNCATED_HEADER: Final = "dlq.truncated"
"""Set on a dead letter whose value was cut to fit: the original value's size in bytes."""
DLQ_SHA256_HEADER: Final = "dlq.value.sha256"
"""Set with `dlq.truncated`: hex SHA-256 of the original (whole) value."""
DLQ_HEADERS: Final = frozenset(
    {
        DLQ_REASON_HEADER,
        DLQ_ERROR_HEADER,
        DLQ_TOPIC_HEADER,
        DLQ_PARTITION_HEADER,
        DLQ_OFFSET_HEADER,
        DLQ_TRUNCATED_HEADER,
        DLQ_SHA256_HEADER,
    }
)
MAX_ERROR_HEADER_BYTES: Final = 1000
MAX_REFUSED: Final = 1000
"""Records refused as invalid remembered at most (each is forgotten once left out)."""
BATCH_HEADER_BYTES: Final = 61
"""Kafka's record batch (v2) header; a record alone on the wire is one batch."""
VARINT_MAX_BYTES: Final = 5
"""Each length in a v2 record is a varint of at most this many bytes (timestamp: 10)."""


class InputRecord(Protocol):
    """The fields of an input record the runner uses (aiokafka's ConsumerRecord has them)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class Unwritten(NamedTuple):
    """A record a checkpoint gave up on: it can never be written (too large, refused as
    invalid), so retrying it would stall its partition for good."""

    record: OutRecord
    input_partition: int
    """The input partition it derives from (its offsets are committed regardless)."""
    reason: str
    """Short and bounded (a metric label): `too_large`, `invalid_record`."""


class CheckpointTimings(NamedTuple):
    """What a checkpoint took, and what it deliberately did not write."""

    publish_s: float
    """Until every record of the checkpoint was acknowledged."""
    commit_s: float
    unwritten: tuple[Unwritten, ...] = ()
    truncated: tuple[OutRecord, ...] = ()
    """Dead letters written with their value cut to fit (as written)."""


class OutRecord(NamedTuple):
    """A NamedTuple, not a frozen dataclass: one is built per snapshot, and a frozen
    dataclass's __init__ (object.__setattr__ per field) costs three times as much."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None
    """Explicit target partition (changelog); None lets the producer hash the key."""


def dead_letter(
    dlq_topic: str,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: tuple[tuple[str, bytes], ...],
    reason: str,
    detail: str,
) -> OutRecord:
    """The input record unchanged, plus headers naming why and where it came from."""
    return OutRecord(
        dlq_topic,
        key,
        value,
        (
            *headers,
            (DLQ_REASON_HEADER, reason.encode()),
            (DLQ_ERROR_HEADER, detail.encode()[:MAX_ERROR_HEADER_BYTES]),
            (DLQ_TOPIC_HEADER, source_topic.encode()),
            (DLQ_PARTITION_HEADER, str(partition).encode()),
            (DLQ_OFFSET_HEADER, str(offset).encode()),
        ),
    )


def record_size(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]]
) -> int:
    """Upper bound of the bytes of one record alone in a v2 batch, as the producer's request
    size and the broker's `max.message.bytes` count it (every varint at its longest)."""
    size = BATCH_HEADER_BYTES + 1 + 10 + 4 * VARINT_MAX_BYTES  # attributes, timestamp, lengths
    size += len(key or b"") + len(value or b"") + VARINT_MAX_BYTES  # + header count
    for name, header in headers:
        size += 2 * VARINT_MAX_BYTES + len(name.encode()) + len(header or b"")
    return size


def fit_dead_letter(record: OutRecord, limit: int) -> OutRecord | None:
    """`record` if it fits `limit` bytes; else with its value cut to fit, and headers naming
    the original size and hash. None when even an empty value does not fit (the key and
    headers alone are over the limit): such a record cannot be written at all."""
    if record_size(record.key, record.value, record.headers) <= limit:
        return record
    value = record.value or b""
    headers = (
        *record.headers,
        (DLQ_TRUNCATED_HEADER, str(len(value)).encode()),
        (DLQ_SHA256_HEADER, hashlib.sha256(value).hexdigest().encode()),
    )
    room = limit - record_size(record.key, b"", headers)
    if room < 0:
        return None
    return record._replace(value=value[:room], headers=headers)


@dataclass(slots=True)
class Outbox:
    """Pending records per input partition, and the next input offset of each partition."""

    records: dict[int, list[OutRecord]] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)

    def add(self, input_partition: int, record: OutRecord) -> None:
        self.records.setdefault(input_partition, []).append(record)

    def __len__(self) -> int:
        return sum(len(r) for r in self.records.values())

    def partitions(self) -> set[int]:
        return set(self.records) | set(self.offsets)

    def then(self, newer: Outbox) -> Outbox:
        """This outbox followed by `newer` (a failed checkpoint is retried with what came since)."""
        merged = Outbox({p: list(rs) for p, rs in self.records.items()}, dict(self.offsets))
        for partition, records in newer.records.items():
            merged.records.setdefault(partition, []).extend(records)
        merged.offsets.update(newer.offsets)
        return merged

    def without(self, partitions: Sequence[int]) -> Outbox:
        """A copy that leaves out what `partitions` owe (already written and committed)."""
        return Outbox(
            {p: rs for p, rs in self.records.items() if p not in partitions},
            {p: o for p, o in self.offsets.items() if p not in partitions},
        )

    def drop_partitions(self, partitions: Sequence[int]) -> None:
        """Forget what a revoked partition still owed: its new owner redoes it from the commit."""
        for partition in partitions:
            self.records.pop(partition, None)
            self.offsets.pop(partition, None)


class CheckpointError(Exception):
    """Records or offsets could not be written. Retriable: try again with the outbox less
    the input partitions in `committed` (the exactly-once sink commits partition by
    partition: those were written and committed before the failure, so a retry must not
    write them again). The sink never edits the outbox it was given.

    `unwritten` and `truncated`: what those committed partitions held back or cut, to be
    reported all the same."""

    def __init__(
        self,
        message: str,
        *,
        retriable: bool,
        unwritten: Sequence[Unwritten] = (),
        truncated: Sequence[OutRecord] = (),
        committed: Sequence[int] = (),
    ) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.committed = tuple(committed)
        self.unwritten = tuple(unwritten)
        self.truncated = tuple(truncated)


@dataclass(slots=True)
class RecordLimits:
    """The largest record each output topic takes: the smaller of the producer's request
    limit and the topic's `max.message.bytes` (read from the broker at startup, lowered when
    the broker refuses a batch the limits admitted, e.g. after the topic's limit changed)."""

    request_max: int
    topics: dict[str, int] = field(default_factory=dict)
    compacted: set[str] = field(default_factory=set)
    """Topics whose cleanup policy compacts: the broker refuses keyless records there."""

    def of(self, topic: str) -> int:
        return min(self.request_max, self.topics.get(topic, self.request_max))

    isolated: set[tuple[str, int]] = field(default_factory=set)
    """Topic-partitions whose records go one per batch: a batch there was refused as
    invalid, and alone each record shows whether it is the culprit."""
    refused: dict[tuple[str, bytes | None, int], bytes] = field(default_factory=dict)
    """Records refused as invalid on their own, by (topic, key, value size): the value's
    SHA-256. Each is left out of the retry that still holds it, then forgotten."""

    def learn(self, topic: str, refused_bytes: int) -> None:
        """The broker refused a batch of `refused_bytes` (upper bound) to `topic`."""
        self.topics[topic] = min(self.of(topic), refused_bytes - 1)

    def refuse(self, topic: str, partition: int, batch: Sequence[OutRecord]) -> None:
        """The broker refused a batch as invalid: isolate its partition, or if it held one
        record (`batch`: that record, else empty), remember that record as the culprit."""
        if len(batch) != 1:
            self.isolated.add((topic, partition))
            return
        if len(self.refused) >= MAX_REFUSED:
            self.refused.clear()
        value = batch[0].value or b""
        self.refused[topic, batch[0].key, len(value)] = hashlib.sha256(value).digest()

    def take_refused(self, topic: str, key: bytes | None, value: bytes | None) -> bool:
        """Whether this record was refused on its own (then forgotten: it is left out now)."""
        value = value or b""
        digest = self.refused.get((topic, key, len(value)))
        if digest is None or digest != hashlib.sha256(value).digest():
            return False
        del self.refused[topic, key, len(value)]
        return True

    def written(self, partitions: Iterable[tuple[str, int]]) -> None:
        """These topic-partitions were written: any isolation of them can end."""
        if self.isolated:
            self.isolated.difference_update(partitions)


class Screened(NamedTuple):
    """An outbox's records sorted into those to send (with their size) and those not to."""

    accepted: list[tuple[OutRecord, int]]
    unwritten: list[Unwritten]
    truncated: list[OutRecord]


def screen(records: dict[int, list[OutRecord]], limits: RecordLimits, dlq_topic: str) -> Screened:
    """Hold back what the broker would refuse, so one record never fails a whole write (nor
    breaks an idempotent producer's sequence): too-large dead letters are truncated to fit,
    other too-large records, keyless records to compacted topics and records the broker
    refused on their own are not written."""
    accepted: list[tuple[OutRecord, int]] = []
    unwritten: list[Unwritten] = []
    truncated: list[OutRecord] = []
    compacted, refused = limits.compacted, limits.refused
    topic_limits: dict[str, int] = {}
    bare = record_size(b"", b"", ())  # a record without headers: this plus key and value
    for partition, rs in records.items():
        for record in rs:
            topic, key, value, headers = record[:4]
            if (key is None and topic in compacted) or (
                refused and limits.take_refused(topic, key, value)
            ):
                unwritten.append(Unwritten(record, partition, "invalid_record"))
                continue
            limit = topic_limits.get(topic)
            if limit is None:
                limit = topic_limits[topic] = limits.of(topic)
            if headers:
                size = record_size(key, value, headers)
            else:  # the common case (snapshots, changelog), inlined: ~50k per checkpoint
                size = bare + (len(key) if key else 0) + (len(value) if value else 0)
            if size > limit:
                fitted = fit_dead_letter(record, limit) if topic == dlq_topic else None
                if fitted is None:
                    unwritten.append(Unwritten(record, partition, "too_large"))
                    continue
                truncated.append(fitted)
                accepted.append((fitted, record_size(fitted.key, fitted.value, fitted.headers)))
                continue
            accepted.append((record, size))
    return Screened(accepted, unwritten, truncated)
