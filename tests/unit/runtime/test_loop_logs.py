"""What the runner logs: a summary line for many evictions, the details at DEBUG."""

from __future__ import annotations

import logging

import pytest

from tests.fakes import FakeClock
from tests.unit.builders import T0, ended, ingested
from tests.unit.runtime.harness import make_runner, record
from worker.rules import Rules


async def test_evictions_are_one_info_line_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(wall_ms=T0)
    runner = make_runner(clock=clock, rules=Rules(retention_ms=1_000)).runner
    await runner.on_assigned([0])
    ids = [f"s{n}" for n in range(5)]
    runner.fold(
        [record(0, n, ingested(0, sid=sid)) for n, sid in enumerate(ids)]
        + [record(0, 10 + n, ended(T0 + 100, sid=sid)) for n, sid in enumerate(ids)]
    )
    await runner.checkpoint()
    clock.wall = T0 + 2_000
    with caplog.at_level(logging.DEBUG, logger="worker.runner"):
        await runner.checkpoint()  # all five are evicted at once

    evictions = [r for r in caplog.records if "evicted" in r.getMessage()]
    info = [r for r in evictions if r.levelno == logging.INFO]
    assert [(r.getMessage(), r.__dict__["count"]) for r in info] == [("sessions evicted", 5)]
    debug = sorted(r.__dict__["session"] for r in evictions if r.levelno == logging.DEBUG)
    assert debug == ids
