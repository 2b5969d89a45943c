"""A runner built on the shared fakes, driven by a fake clock, and the records it folds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from tests.fakes import FakeClock, FakeRecord, FakeSink, FakeSource
from worker.metrics import WorkerMetrics
from worker.outbox import Outbox
from worker.rules import Rules
from worker.runtime import ChangelogRecords, OutputTopics, Runner
from worker.store import SessionStore

TOPICS = OutputTopics("snapshots", "changelog", "dlq")


def record(partition: int, offset: int, event: dict[str, object]) -> FakeRecord:
    return FakeRecord(partition, offset, str(event["sessionId"]).encode(), orjson.dumps(event))


@dataclass
class Harness:
    """What `make_runner` built around the runner, for the test to drive and inspect."""

    runner: Runner
    sink: FakeSink
    source: FakeSource
    clock: FakeClock
    changelog_reads: list[list[int]] = field(default_factory=list)


def make_runner(
    sink: FakeSink | None = None,
    changelog: ChangelogRecords | None = None,
    source: FakeSource | None = None,
    *,
    clock: FakeClock | None = None,
    rules: Rules | None = None,
    store: SessionStore | None = None,
    publish_interval_s: float = 0.01,
    **options: Any,
) -> Harness:
    """A runner on fakes: the source shares the sink's committed offsets and the clock."""
    sink = FakeSink() if sink is None else sink
    clock = FakeClock() if clock is None else clock
    if source is None:
        source = FakeSource(group_offsets=sink.committed)
    if source.clock is None:
        source.clock = clock
    reads: list[list[int]] = []
    box: list[Runner] = []

    async def read_changelog(partitions: Sequence[int]) -> ChangelogRecords:
        assert not box[0].ready, "readiness must drop while restoring"
        reads.append(list(partitions))
        return {p: (changelog or {}).get(p, {}) for p in partitions}

    runner = Runner(
        source,
        sink,
        store if store is not None else SessionStore(rules or Rules()),
        WorkerMetrics(CollectorRegistry()),
        read_changelog,
        TOPICS,
        publish_interval_s=publish_interval_s,
        clock_ms=clock.wall_ms,
        monotonic=clock.monotonic,
        **options,
    )
    box.append(runner)
    return Harness(runner, sink, source, clock, reads)


async def wait_for(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """Until `condition` holds (a bound for a hung test, not a timing assertion)."""

    async def poll() -> None:
        while not condition():  # noqa: ASYNC110  # fakes have no event to wait on
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout_s)


def records_of(sink: FakeSink, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of every record written to `topic`, in order."""
    return [
        (r.key, r.value)
        for box in sink.written
        for rs in box.records.values()
        for r in rs
        if r.topic == topic
    ]


def topics(box: Outbox) -> list[str]:
    return sorted(r.topic for rs in box.records.values() for r in rs)
