"""The loop folds on while a checkpoint is being written; commits stay ordered and complete."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from tests.fakes import FakeClock, FakeSink, FakeSource
from tests.unit.builders import SID, ingested
from tests.unit.runtime.harness import make_runner, record, wait_for
from worker.outbox import CheckpointError, CheckpointTimings, Outbox


@dataclass
class GatedSink(FakeSink):
    """A sink whose checkpoints wait until released (acks that take a while)."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    started: int = 0
    cancelled: int = 0
    commits: list[dict[int, int]] = field(default_factory=list)

    async def checkpoint(self, outbox: Outbox) -> CheckpointTimings:
        self.started += 1
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.commits.append(dict(outbox.offsets))
        return await super().checkpoint(outbox)


async def test_folding_goes_on_while_a_checkpoint_is_written() -> None:
    sink = GatedSink()
    # Time moves only when the test says: an empty fetch waits on a clock of its own.
    source = FakeSource([[record(0, 0, ingested(0))]], clock=FakeClock())
    h = make_runner(sink, source=source)
    runner = h.runner
    await runner.on_assigned([0])
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await wait_for(lambda: runner.events_folded == 1)
    h.clock.advance(0.01)  # the first publish (a checkpoint: one interval for both) is due
    await wait_for(lambda: sink.started == 1)
    source.batches.append([record(0, 1, ingested(1))])
    # The first checkpoint is still unacknowledged, yet the next record is folded.
    await wait_for(lambda: runner.store.live[SID].source_segments == 2)
    assert sink.committed == {}
    assert sink.started == 1  # and no second checkpoint overtakes the first
    sink.gate.set()
    stop.set()
    await asyncio.wait_for(task, 15)
    assert sink.commits[0] == {0: 1}
    assert sink.committed == {0: 2}
    assert [c[0] for c in sink.commits if 0 in c] == sorted(c[0] for c in sink.commits if 0 in c)


async def test_a_fatal_error_in_the_background_stops_the_loop() -> None:
    sink = FakeSink(fail_next=[CheckpointError("fenced", retriable=False)])
    h = make_runner(sink, source=FakeSource([[record(0, 0, ingested(0))]]))
    await h.runner.on_assigned([0])
    with pytest.raises(CheckpointError, match="fenced"):
        await asyncio.wait_for(h.runner.run(asyncio.Event()), 15)


async def test_cancelling_the_loop_cancels_the_checkpoint_in_flight() -> None:
    sink = GatedSink()
    h = make_runner(sink, source=FakeSource([[record(0, 0, ingested(0))]]))
    await h.runner.on_assigned([0])
    task = asyncio.create_task(h.runner.run(asyncio.Event()))
    await wait_for(lambda: sink.started == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: sink.cancelled == 1)
    assert sink.committed == {}
