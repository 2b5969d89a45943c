"""In-memory stand-ins of the runtime's ports (the Kafka source and sinks) and a clock,
shared by every test that needs them.

`FakeSink` is held to the same contract as the real sinks: tests/integration/
test_sink_contract.py runs the same cases against it and against AtLeastOnceSink and
TransactionalSink on a real broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.unit.builders import T0
from worker.kafka.sinks import key_hash
from worker.kafka.topics import PRODUCER_MAX_REQUEST_BYTES
from worker.outbox import (
    CheckpointError,
    CheckpointTimings,
    InputRecord,
    Outbox,
    OutRecord,
    RecordLimits,
    Unwritten,
    screen,
)


class FakeClock:
    """A monotonic clock (seconds) and a wall clock (ms) that move only when told."""

    def __init__(self, wall_ms: int = T0 + 10_000, monotonic_s: float = 1_000.0) -> None:
        self.wall = wall_ms
        self.seconds = monotonic_s

    def monotonic(self) -> float:
        return self.seconds

    def wall_ms(self) -> int:
        return self.wall

    def advance(self, seconds: float) -> None:
        """Both clocks move on by `seconds`."""
        self.seconds += seconds
        self.wall += round(seconds * 1000)


@dataclass
class FakeRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    topic: str = "events"
    timestamp: int = T0
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass
class FakeSource:
    batches: list[list[InputRecord]] = field(default_factory=list)
    waiting: int = 0
    """What `backlog` reports: records the broker holds beyond the batches."""
    group_offsets: dict[int, int] | None = None
    """The group's committed offsets (`make_runner` shares the sink's); None: unavailable."""
    behind: dict[int, int | None] = field(default_factory=dict)
    """What `partition_backlog` reports for partitions not caught up."""
    clock: FakeClock | None = None
    """If set, a fetch that finds no batch waits its whole timeout on this clock."""
    fetches: int = 0

    async def fetch(self, timeout_s: float) -> Sequence[InputRecord]:
        self.fetches += 1
        await asyncio.sleep(0)
        if self.batches:
            return self.batches.pop(0)
        if self.clock is not None:
            self.clock.advance(timeout_s)
        return []

    def backlog(self) -> int:
        return self.waiting

    def partition_backlog(self, partition: int) -> int | None:
        """Every partition caught up, unless `behind` says otherwise (None: unknown)."""
        return self.behind.get(partition, 0)

    async def committed(self, partitions: Sequence[int]) -> dict[int, int | None]:
        if self.group_offsets is None:
            return {}
        return {p: self.group_offsets.get(p) for p in partitions}


@dataclass
class FakeTopic:
    """One topic as the fake broker keeps it."""

    partitions: int = 1
    max_bytes: int | None = None
    """Its `max.message.bytes`: a batch holding a larger record is refused (None: no limit)."""
    compacted: bool = False
    log: list[tuple[int, OutRecord]] = field(default_factory=list)
    """(partition, record) in the order written."""


@dataclass
class FakeBroker:
    topics: dict[str, FakeTopic] = field(default_factory=dict)

    def topic(self, name: str) -> FakeTopic:
        return self.topics.setdefault(name, FakeTopic())

    def limits(self) -> RecordLimits:
        """What the real sinks read from the broker at start (`read_record_limits`)."""
        limits = RecordLimits(PRODUCER_MAX_REQUEST_BYTES)
        for name, topic in self.topics.items():
            if topic.max_bytes is not None:
                limits.topics[name] = topic.max_bytes
            if topic.compacted:
                limits.compacted.add(name)
        return limits


@dataclass
class FakeSink:
    """Writes to a FakeBroker as the Kafka sinks write to Kafka: records screened against the
    limits read at `start` (held back and reported when the broker would refuse them); a
    batch the broker refuses all the same fails the checkpoint retriably, and the limits are
    read again. Transactional: each input partition's records and offset in one step, the
    partitions committed before a failure stay committed (and leave the outbox). Can also be
    told to fail (`fail_next`)."""

    written: list[Outbox] = field(default_factory=list)
    """The outboxes of the checkpoints that succeeded (per partition when transactional)."""
    committed: dict[int, int] = field(default_factory=dict)
    fail_next: list[CheckpointError] = field(default_factory=list)
    opened: set[int] = field(default_factory=set)
    transactional: bool = False
    broker: FakeBroker = field(default_factory=FakeBroker)
    dlq_topic: str = "dlq"
    limits: RecordLimits = field(default_factory=lambda: RecordLimits(PRODUCER_MAX_REQUEST_BYTES))
    _spread: int = field(default=0, init=False, repr=False)

    async def start(self) -> None:
        self.limits = self.broker.limits()

    async def stop(self) -> None:
        self.opened.clear()

    async def open_partitions(self, partitions: Sequence[int]) -> None:
        self.opened |= set(partitions)

    async def close_partitions(self, partitions: Sequence[int]) -> None:
        self.opened -= set(partitions)

    async def checkpoint(self, outbox: Outbox) -> CheckpointTimings:
        if self.fail_next:
            raise self.fail_next.pop(0)
        if self.transactional:
            return self._transactions(outbox)
        screened = screen(outbox.records, self.limits, self.dlq_topic)
        batches, refusals = self._batches(screened.accepted)
        for (topic, partition), records in batches.items():
            if (topic, partition) not in refusals:  # the other batches are written
                self.broker.topic(topic).log.extend((partition, r) for r in records)
        if refusals:
            self._read_limits_again()
            raise CheckpointError(f"write failed: {sorted(refusals)}", retriable=True)
        self.written.append(outbox)
        self.committed.update(outbox.offsets)
        return CheckpointTimings(0.0, 0.0, tuple(screened.unwritten), tuple(screened.truncated))

    def _transactions(self, outbox: Outbox) -> CheckpointTimings:
        unwritten: list[Unwritten] = []
        truncated: list[OutRecord] = []
        committed: list[int] = []
        for partition in sorted(outbox.partitions()):
            if partition not in self.opened:
                raise RuntimeError(f"no transactional producer for owned partition {partition}")
            records = {partition: outbox.records.get(partition, [])}
            screened = screen(records, self.limits, self.dlq_topic)
            batches, refusals = self._batches(screened.accepted)
            if refusals:  # the transaction aborts: nothing of this partition is visible
                self._read_limits_again()
                raise CheckpointError(
                    f"transaction on partition {partition} failed: {sorted(refusals)}",
                    retriable=True,
                    unwritten=unwritten,
                    truncated=truncated,
                    committed=committed,
                )
            for (topic, target), written in batches.items():
                self.broker.topic(topic).log.extend((target, r) for r in written)
            offsets = {p: o for p, o in outbox.offsets.items() if p == partition}
            self.committed.update(offsets)
            self.written.append(Outbox(records, offsets))
            committed.append(partition)  # a retry must not write it again
            unwritten.extend(screened.unwritten)
            truncated.extend(screened.truncated)
        return CheckpointTimings(0.0, 0.0, tuple(unwritten), tuple(truncated))

    def _batches(
        self, accepted: Sequence[tuple[OutRecord, int]]
    ) -> tuple[dict[tuple[str, int], list[OutRecord]], set[tuple[str, int]]]:
        """Records by target topic-partition (placed as the real sinks place them), and the
        topic-partitions whose batch the broker refuses (a record over its limit)."""
        batches: dict[tuple[str, int], list[OutRecord]] = {}
        refusals: set[tuple[str, int]] = set()
        for record, size in accepted:
            topic = self.broker.topic(record.topic)
            partition = record.partition
            if partition is None and record.key is None:
                self._spread += 1
                partition = self._spread % topic.partitions
            elif partition is None and record.key is not None:
                partition = key_hash(record.key) % topic.partitions
            assert partition is not None
            batches.setdefault((record.topic, partition), []).append(record)
            if topic.max_bytes is not None and size > topic.max_bytes:
                refusals.add((record.topic, partition))
        return batches, refusals

    def _read_limits_again(self) -> None:
        """After a refusal: the broker's current limits, never above what was known."""
        fresh = self.broker.limits()
        for topic in set(fresh.topics) | set(self.limits.topics):
            fresh.topics[topic] = min(fresh.of(topic), self.limits.of(topic))
        self.limits = fresh

    def topics_written(self) -> list[str]:
        return [r.topic for box in self.written for rs in box.records.values() for r in rs]
