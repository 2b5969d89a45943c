"""Micro-benchmark: the worker's own CPU per event at a steady live load, without Kafka.

    .venv/bin/python -m bench.pipeline [--rate 10000] [--seconds 20] [--runs 3] [--profile]

The real `Runner` loop (fetch, decode, fold, slices of the publish interval, checkpoints
with the changelog, the per-session metrics observer) runs on a simulated clock over
`bench.load`'s live traffic: each fetch hands out the records of the next 10 ms (what a
consumer sees at this rate) and moves the clock on by 10 ms, so `rate` events arrive per
simulated second and every session is refreshed once per publish interval, as in a soak.
The sink keeps nothing. What this leaves out is aiokafka (fetch requests, record
unpacking, producing) and the event loop's I/O: the latency section's soak measures those
too. Only the loop's run after `WARM_S` simulated seconds is timed (CPU time); prints µs
per event, min and median of the runs, as JSON. A steady-load change shows here within a
few percent, where a soak on a shared two-core machine varies by 10-20%.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
import uvloop
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry

from bench.load import TICK_MS, plan_live
from worker.metrics import SessionCollector, WorkerMetrics
from worker.outbox import CheckpointTimings, InputRecord, Outbox
from worker.rules import Rules
from worker.runtime import OutputTopics, Runner
from worker.runtime.ports import ChangelogRecords
from worker.store import SessionStore
from worker.tuning import tune_runtime

START_MS = 1_700_000_000_000
WARM_S = 15
"""Simulated seconds folded before the timing starts: rate windows and masks fill up."""
PARTITIONS = 6
TOPIC = "events"


@dataclass(slots=True)
class _Clock:
    wall_ms: int = START_MS
    seconds: float = 1_000.0

    def monotonic(self) -> float:
        return self.seconds

    def now_ms(self) -> int:
        return self.wall_ms

    def advance_ms(self, ms: int) -> None:
        self.wall_ms += ms
        self.seconds += ms / 1000


class _Source:
    """Each fetch: the next 10 ms of records, the clock moved on by 10 ms; then `done`."""

    def __init__(self, ticks: list[list[InputRecord]], clock: _Clock, done: asyncio.Event):
        self._ticks, self._clock, self._done = ticks, clock, done
        self._next = 0
        self.timed_from = -1.0
        """CPU time when the warm-up ended (set by the fetch that crosses it)."""
        self.timed_to = -1.0

    async def fetch(self, timeout_s: float) -> Sequence[InputRecord]:
        if self._next == WARM_S * 1000 // TICK_MS:
            self.timed_from = time.process_time()
        if self._next >= len(self._ticks):
            if not self._done.is_set():
                self.timed_to = time.process_time()  # not the final checkpoint
            self._done.set()
            return []
        records = self._ticks[self._next]
        self._next += 1
        self._clock.advance_ms(TICK_MS)
        return records

    def backlog(self) -> int:
        return 0

    def partition_backlog(self, partition: int) -> int | None:
        return 0

    async def committed(self, partitions: Sequence[int]) -> dict[int, int | None]:
        return dict.fromkeys(partitions)


class _NullSink:
    """Counts the records it is given per topic and keeps none."""

    def __init__(self) -> None:
        self.written: Counter[str] = Counter()

    async def open_partitions(self, partitions: Sequence[int]) -> None: ...
    async def close_partitions(self, partitions: Sequence[int]) -> None: ...
    async def checkpoint(self, outbox: Outbox) -> CheckpointTimings:
        self.written.update(r.topic for rs in outbox.records.values() for r in rs)
        return CheckpointTimings(0.0, 0.0)


async def _no_changelog(partitions: Sequence[int]) -> ChangelogRecords:
    return {}


def records(rate: float, seconds: float) -> tuple[list[list[InputRecord]], int]:
    """The consumer records of each 10 ms of `seconds` (warm-up included), and how many
    events fall after the warm-up."""
    ticks = plan_live(rate, WARM_S + seconds, PARTITIONS, START_MS)
    offsets = [0] * PARTITIONS
    out: list[list[InputRecord]] = []
    for index, tick in enumerate(ticks):
        batch: list[InputRecord] = []
        for partition, key, value in tick:
            stamp = START_MS + index * TICK_MS
            size_k, size_v = len(key), len(value)
            record = ConsumerRecord(
                TOPIC, partition, offsets[partition], stamp, 0, key, value, None, size_k, size_v, ()
            )
            batch.append(record)
            offsets[partition] += 1
        out.append(batch)
    timed = sum(len(batch) for batch in out[WARM_S * 1000 // TICK_MS :])
    return out, timed


@dataclass(frozen=True, slots=True)
class Run:
    us_per_event: float
    """CPU µs per event of the loop after the warm-up (not its final checkpoint)."""
    events_folded: int
    written: dict[str, int]
    """Records handed to the sink, per topic (the final checkpoint's included)."""


async def run_once(ticks: list[list[InputRecord]], timed_events: int) -> Run:
    """The loop over `ticks` on the simulated clock."""
    clock = _Clock()
    done = asyncio.Event()
    source = _Source(ticks, clock, done)
    sink = _NullSink()
    store = SessionStore(Rules())
    collector = SessionCollector(lambda: list(store.live.values()), 10_000)
    runner = Runner(
        source,
        sink,
        store,
        WorkerMetrics(CollectorRegistry()),
        _no_changelog,
        OutputTopics("sessions", "changelog", "dlq"),
        publish_interval_s=1.0,
        clock_ms=clock.now_ms,
        commit_interval_s=5.0,
        monotonic=clock.monotonic,
        observer=collector,
    )
    await runner.on_assigned(list(range(PARTITIONS)))
    await runner.run(done)
    us = (source.timed_to - source.timed_from) / timed_events * 1e6
    return Run(us, runner.events_folded, dict(sink.written))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__)
    parser.add_argument("--rate", type=float, default=10_000, help="events per second")
    parser.add_argument("--seconds", type=float, default=20, help="timed simulated seconds")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile one run instead")
    args = parser.parse_args(argv)
    ticks, timed = records(args.rate, args.seconds)
    tune_runtime()  # as `session-worker run` does
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        uvloop.run(run_once(ticks, timed))
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        return
    runs = [uvloop.run(run_once(ticks, timed)).us_per_event for _ in range(args.runs)]
    result = {
        "rate": args.rate,
        "events_timed": timed,
        "us_per_event_min": round(min(runs), 2),
        "us_per_event_median": round(statistics.median(runs), 2),
    }
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
