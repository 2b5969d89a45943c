"""The loop folds on while a checkpoint is being written; commits stay ordered and complete."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from tests.fakes import FakeSink, FakeSource
from tests.unit.builders import SID, ingested
from tests.unit.test_runner import make_runner, record
from worker.outbox import CheckpointError, CheckpointTimings, Outbox


@dataclass
class GatedSink(FakeSink):
    """A sink whose checkpoints wait until released (acks that take a while)."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    started: int = 0
    commits: list[dict[int, int]] = field(default_factory=list)

    async def checkpoint(self, outbox: Outbox) -> CheckpointTimings:
        self.started += 1
        await self.gate.wait()
        self.commits.append(dict(outbox.offsets))
        return await super().checkpoint(outbox)


async def wait_for(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    async def poll() -> None:
        while not condition():  # noqa: ASYNC110  # fakes have no event to wait on
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout_s)


async def test_folding_goes_on_while_a_checkpoint_is_written() -> None:
    sink = GatedSink()
    source = FakeSource([[record(0, 0, ingested(0))]])
    runner = make_runner(sink, source=source)
    await runner.on_assigned([0])
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
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
    runner = make_runner(sink, source=FakeSource([[record(0, 0, ingested(0))]]))
    await runner.on_assigned([0])
    with pytest.raises(CheckpointError, match="fenced"):
        await asyncio.wait_for(runner.run(asyncio.Event()), 2)


async def test_cancelling_the_loop_cancels_the_checkpoint_in_flight() -> None:
    sink = GatedSink()
    runner = make_runner(sink, source=FakeSource([[record(0, 0, ingested(0))]]))
    await runner.on_assigned([0])
    task = asyncio.create_task(runner.run(asyncio.Event()))
    await wait_for(lambda: sink.started == 1)
    inflight = runner._inflight
    assert inflight is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert inflight.cancelled()
    assert sink.committed == {}
