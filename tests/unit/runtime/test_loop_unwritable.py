"""What a sink gives up on is counted and logged, and the offsets still move on."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from tests.fakes import FakeRecord, FakeSink
from tests.unit.builders import ingested, started
from tests.unit.runtime.harness import make_runner, record
from worker.outbox import (
    CheckpointError,
    CheckpointTimings,
    Outbox,
    OutRecord,
    RecordLimits,
    screen,
)


@dataclass
class LimitedSink(FakeSink):
    """Screens each outbox as the Kafka sinks do, against small limits."""

    limit: int = 2000

    async def checkpoint(self, outbox: Outbox) -> CheckpointTimings:
        limits = RecordLimits(request_max=self.limit)
        screened = screen(outbox.records, limits, "dlq")
        timings = await super().checkpoint(outbox)
        return timings._replace(
            unwritten=tuple(screened.unwritten), truncated=tuple(screened.truncated)
        )


async def test_unwritable_records_are_counted_logged_and_the_offsets_committed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = LimitedSink(limit=300)  # neither the snapshot nor the changelog record fits
    runner = make_runner(sink).runner
    await runner.on_assigned([0])
    runner.fold([record(0, 5, started()), record(0, 6, ingested(0))])
    with caplog.at_level(logging.WARNING):
        await runner.checkpoint()
    assert sink.committed == {0: 7}
    unwritable = runner.metrics.unwritable.labels("snapshots", "too_large")._value.get()
    assert unwritable == 1
    assert runner.metrics.unwritable.labels("changelog", "too_large")._value.get() == 1
    assert runner.metrics.snapshots._value.get() == 0, "not counted as published"
    (line, *_) = [
        r for r in caplog.records if r.getMessage() == "record cannot be written; skipped"
    ]
    assert line.levelno == logging.ERROR
    assert line.source_partition == 0  # type: ignore[attr-defined]


async def test_a_truncated_dead_letter_is_logged_with_its_source(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = LimitedSink(limit=2000)
    runner = make_runner(sink).runner
    await runner.on_assigned([0])
    runner.fold([FakeRecord(2, 9, b"k", b"{" + b"x" * 5000)])
    with caplog.at_level(logging.WARNING):
        await runner.checkpoint()
    assert runner.metrics.truncated_dead_letters._value.get() == 1
    assert runner.metrics.dead_letters._value.get() == 1
    (line,) = [r for r in caplog.records if r.getMessage() == "dead letter truncated to fit"]
    assert (line.source_partition, line.source_offset) == (2, 9)  # type: ignore[attr-defined]
    assert line.original_bytes == 5001  # type: ignore[attr-defined]


async def test_a_failed_write_still_reports_what_its_committed_part_gave_up() -> None:
    sink = FakeSink()
    runner = make_runner(sink).runner
    await runner.on_assigned([0])
    runner.fold([record(0, 1, started())])
    given_up = screen({0: [OutRecord("elsewhere", b"k", b"x" * 500)]}, RecordLimits(100), "dlq")
    sink.fail_next.append(
        CheckpointError("partition 1 failed", retriable=True, unwritten=given_up.unwritten)
    )
    await runner.checkpoint()
    assert runner.metrics.unwritable.labels("other", "too_large")._value.get() == 1
