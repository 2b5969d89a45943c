"""Records derived from input, held until the next checkpoint writes them. Pure data.

Grouping by input partition lets the exactly-once sink write each partition's records and
offsets in that partition's own transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple, Protocol

DLQ_REASON_HEADER: Final = "dlq.reason"
DLQ_ERROR_HEADER: Final = "dlq.error"
DLQ_TOPIC_HEADER: Final = "dlq.source.topic"
DLQ_PARTITION_HEADER: Final = "dlq.source.partition"
DLQ_OFFSET_HEADER: Final = "dlq.source.offset"
DLQ_HEADERS: Final = frozenset(
    {DLQ_REASON_HEADER, DLQ_ERROR_HEADER, DLQ_TOPIC_HEADER, DLQ_PARTITION_HEADER, DLQ_OFFSET_HEADER}
)
MAX_ERROR_HEADER_BYTES: Final = 1000


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


class CheckpointTimings(NamedTuple):
    publish_s: float
    """Until every record of the checkpoint was acknowledged."""
    commit_s: float


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

    def drop_partitions(self, partitions: Sequence[int]) -> None:
        """Forget what a revoked partition still owed: its new owner redoes it from the commit."""
        for partition in partitions:
            self.records.pop(partition, None)
            self.offsets.pop(partition, None)


class CheckpointError(Exception):
    """Records or offsets could not be written. Retriable: try again with the same outbox."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable
