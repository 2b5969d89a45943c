"""The runner judges each session at the `now` of its input partition (semantics.md)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from tests.fakes import FakeClock, FakeSource
from tests.unit.builders import SID, T0, fold_bodies, ingested, seg_ts, segments, transcoded
from tests.unit.runtime.harness import Harness, make_runner, record
from worker.changelog import encode_state
from worker.rules import Rules
from worker.runtime import ChangelogRecords

LATE_WALL = T0 + 15 * 60_000
"""The wall clock of a worker that comes back 15 minutes after the events below."""


def backlog_runner(behind: dict[int, int | None], rules: Rules | None = None) -> Harness:
    return make_runner(
        source=FakeSource(behind=behind), clock=FakeClock(wall_ms=LATE_WALL), rules=rules
    )


async def published(h: Harness) -> dict[str, dict[str, Any]]:
    """The snapshots a publish of every session writes now, by session."""
    before = len(h.sink.written)
    await h.runner.publish()
    return {
        (r.key or b"").decode(): orjson.loads(r.value or b"")
        for box in h.sink.written[before:]
        for rs in box.records.values()
        for r in rs
        if r.topic == "snapshots"
    }


def fold_segments(h: Harness, partition: int, sid: str, count: int) -> None:
    bodies = [body for n in range(count) for body in (ingested(n, sid=sid), transcoded(n, sid=sid))]
    h.runner.fold([record(partition, n, body) for n, body in enumerate(bodies)])


async def test_a_backlog_is_judged_at_its_partition_watermark_not_the_wall_clock() -> None:
    h = backlog_runner({0: 5_000})
    await h.runner.on_assigned([0])
    fold_segments(h, 0, SID, 5)
    session = (await published(h))[SID]
    assert h.runner.clock.watermark(0) == max(b["timestamp"] for b in segments(5))
    assert session["isHealthy"] is True, session
    assert session["ingestRate"] > 0


async def test_each_partition_has_its_own_now() -> None:
    h = backlog_runner({0: 5_000, 1: 0})
    await h.runner.on_assigned([0, 1])
    fold_segments(h, 0, "behind", 5)
    fold_segments(h, 1, "caught-up", 5)
    sessions = await published(h)
    assert sessions["behind"]["isHealthy"] is True
    # Caught up, the wall clock rules: 15 minutes without a segment is inactive.
    assert sessions["caught-up"]["isHealthy"] is None
    assert sessions["caught-up"]["ingestRate"] == 0


async def test_once_caught_up_the_wall_clock_takes_over() -> None:
    h = backlog_runner({0: 5_000})
    await h.runner.on_assigned([0])
    fold_segments(h, 0, SID, 5)
    assert (await published(h))[SID]["isHealthy"] is True
    h.source.behind[0] = 0
    session = (await published(h))[SID]
    assert (session["isHealthy"], session["ingestRate"]) == (None, 0)
    assert h.runner.clock.last(0) == LATE_WALL


async def test_restored_sessions_are_judged_where_they_left_off_until_fetched() -> None:
    state = fold_bodies(segments(5))
    changelog: ChangelogRecords = {0: {SID.encode(): encode_state(state, None, 10)}}
    h = make_runner(
        changelog=changelog, source=FakeSource(behind={0: None}), clock=FakeClock(LATE_WALL)
    )
    await h.runner.on_assigned([0])
    assert h.runner.clock.watermark(0) == state.last_activity
    session = (await published(h))[SID]
    assert (session["isHealthy"], session["issues"]) == (True, [])


async def test_a_time_out_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    h = backlog_runner({0: 0}, Rules(idle_timeout_ms=60 * 60_000))
    runner = h.runner
    await runner.on_assigned([0])
    runner.fold([record(0, 0, ingested(0))])
    assert (await published(h))[SID]["isHealthy"] is None  # inactive at the wall clock
    h.clock.wall = seg_ts(0) + 60 * 60_000 + 1
    with caplog.at_level(logging.INFO, logger="worker.runner"):
        assert await published(h) == {}, "the inactive snapshot is already the final one"
    assert runner.store.live[SID].timed_out
    lines = [r for r in caplog.records if r.getMessage() == "session timed out"]
    assert [getattr(r, "session", None) for r in lines] == [SID]
    samples = {s.name: s.value for m in runner.metrics.timed_out.collect() for s in m.samples}
    assert samples["session_worker_sessions_timed_out_total"] == 1
