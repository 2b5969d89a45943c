"""Shared fakes for the runtime's ports: a source, a sink and a clock, all in memory.

One place for them, so every test drives the runner the same way (and a sink contract
suite can run its cases against `FakeSink` and the Kafka sinks alike).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from worker.outbox import CheckpointError, CheckpointTimings, InputRecord, Outbox

T0_MS = 1_700_000_000_000
"""The builders' stream start (tests.unit.builders.T0)."""


class FakeClock:
    """A monotonic clock (seconds) and a wall clock (ms) that move only when told."""

    def __init__(self, wall_ms: int = T0_MS + 10_000, monotonic_s: float = 1_000.0) -> None:
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
    timestamp: int = T0_MS
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass
class FakeSource:
    batches: list[list[InputRecord]] = field(default_factory=list)
    waiting: int = 0
    """What `backlog` reports: records the broker holds beyond the batches."""
    group_offsets: dict[int, int] | None = None
    """The group's committed offsets (often the sink's `committed`); None: unavailable."""
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
class FakeSink:
    """Records what a checkpoint wrote and committed; can be told to fail."""

    written: list[Outbox] = field(default_factory=list)
    committed: dict[int, int] = field(default_factory=dict)
    fail_next: list[CheckpointError] = field(default_factory=list)
    opened: set[int] = field(default_factory=set)

    async def open_partitions(self, partitions: Sequence[int]) -> None:
        self.opened |= set(partitions)

    async def close_partitions(self, partitions: Sequence[int]) -> None:
        self.opened -= set(partitions)

    async def checkpoint(self, outbox: Outbox) -> CheckpointTimings:
        if self.fail_next:
            raise self.fail_next.pop(0)
        self.written.append(outbox)
        self.committed.update(outbox.offsets)
        return CheckpointTimings(0.0, 0.0)

    def topics_written(self) -> list[str]:
        return [r.topic for box in self.written for rs in box.records.values() for r in rs]
