"""The consume loop: fetch -> decode -> fold -> (when the schedule says) tick and write in
the background. It only sequences the parts: `Schedule` decides when, `Checkpoints` what is
written, `Recovery` how sessions come back after a rebalance (see docs/architecture.md).
Rebalance callbacks and the loop share one lock, so a revoke never interleaves with a
half-processed batch. Both clocks are injected: tests drive them, nothing sleeps for time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress

from worker.changelog import encode_state
from worker.clock import PartitionClock
from worker.metrics import WorkerMetrics
from worker.outbox import InputRecord
from worker.runtime.checkpoint import Checkpoints, Write
from worker.runtime.intake import fold_records
from worker.runtime.ports import (
    LOGGER_NAME,
    ChangelogEncoder,
    ChangelogReader,
    Monotonic,
    OutputTopics,
    Sink,
    Source,
    TickObserver,
    WallClockMs,
)
from worker.runtime.recovery import Recovery
from worker.runtime.schedule import Schedule, Step
from worker.store import SessionStore

log = logging.getLogger(LOGGER_NAME)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Runner:
    """Owns the store for the assigned partitions and drives it from Kafka."""

    def __init__(
        self,
        source: Source,
        sink: Sink,
        store: SessionStore,
        metrics: WorkerMetrics,
        read_changelog: ChangelogReader,
        topics: OutputTopics,
        publish_interval_s: float,
        clock_ms: WallClockMs = wall_clock_ms,
        commit_interval_s: float | None = None,
        catchup_backlog: int = 0,
        publish_slices: int = 1,
        encode_changelog: ChangelogEncoder = encode_state,
        monotonic: Monotonic = time.monotonic,
        observer: TickObserver | None = None,
    ) -> None:
        self.source, self.sink, self.store, self.metrics = source, sink, store, metrics
        self.monotonic = monotonic
        self.observer = observer
        """Told what each tick published (the per-session metrics)."""
        self.clock_ms = clock_ms
        """The wall clock."""
        self.schedule = Schedule(publish_interval_s, commit_interval_s, publish_slices, monotonic())
        self.catchup_backlog = catchup_backlog
        """Above this many waiting records, publish only with checkpoints; 0: always publish."""
        self.clock = PartitionClock(clock_ms, source.partition_backlog)
        """`now` per input partition: what each session is judged at (semantics.md)."""
        self.checkpoints = Checkpoints(
            topics,
            metrics,
            self.schedule.changelog_slots,
            encode_changelog,
            store.evicted,
            clock_ms,
        )
        self.recovery = Recovery(
            store, metrics, read_changelog, source.committed, self.clock.observe
        )
        self.lock = asyncio.Lock()
        self.assigned: list[int] = []
        self.ready = False
        self.last_progress = monotonic()
        self.last_tick_ms = clock_ms()
        """The wall clock at the latest tick (what the terminal view shows)."""
        self.events_folded = 0
        self.pause_hook: Callable[[], Awaitable[None]] | None = None
        """Test hook: awaited in the loop (lets a test simulate a stuck consume loop)."""
        self._late_reported = 0
        self._inflight: asyncio.Task[None] | None = None
        """The write in progress while the loop folds on (at most one)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then checkpoint once more. Raises on fatal errors."""
        try:
            await self._consume(stop)
        except asyncio.CancelledError:
            if self._inflight is not None:  # cancelled mid-flight: nothing more is written
                self._inflight.cancel()
            raise
        async with self.lock:
            await self.checkpoint()
            # Leaving the group does not call the revoke listener: say it ourselves.
            self.ready = False
            released, self.assigned = self.assigned, []
            if released:
                log.info("partitions revoked", extra={"partitions": released, "reason": "shutdown"})

    async def _consume(self, stop: asyncio.Event) -> None:
        schedule = self.schedule
        while not stop.is_set():
            if self.pause_hook is not None:
                await self.pause_hook()
            records = await self.source.fetch(schedule.wait_s(self.monotonic()))
            self.mark_progress()
            async with self.lock:
                if records:
                    self.fold(records)
                step = schedule.next(self.monotonic(), self.catching_up())
                if step is not None:
                    # Write in the background and keep folding meanwhile: the loop waits
                    # for a write's acks (and commit) only when the next one is due.
                    prepared = self._prepare(step)
                    await self._settle()
                    self._inflight = asyncio.create_task(self._write(prepared))
            # A fetch served from prefetched records need not yield: a long catch-up must
            # not starve the HTTP server (probes, scrapes) of the event loop.
            await asyncio.sleep(0)

    def catching_up(self) -> bool:
        """Far enough behind that publishing between checkpoints would only slow us down."""
        return 0 < self.catchup_backlog < self.source.backlog()

    def mark_progress(self) -> None:
        """The loop (or a restore) moved: what liveness watches."""
        self.last_progress = self.monotonic()
        self.metrics.last_progress.set(self.clock_ms() / 1000)

    def fold(self, records: Sequence[InputRecord]) -> None:
        """Decode and fold a batch; invalid records become dead letters. No I/O."""
        folded = fold_records(records, self.store, self.checkpoints, self.metrics, self.clock_ms())
        self.clock.observe(folded.newest)
        self.events_folded += folded.events

    async def checkpoint(self) -> None:
        """Publish what changed, persist state and dead letters, then commit offsets; returns
        when all of it (and any write still in flight) is done. Raises on fatal errors."""
        await self._settle()
        await self._write(self._prepare(self.schedule.tick_all(self.monotonic(), commits=True)))

    async def publish(self) -> None:
        """Publish every changed snapshot now, without a checkpoint (what a publish
        interval does between checkpoints); returns once written."""
        await self._settle()
        await self._write(self._prepare(self.schedule.tick_all(self.monotonic(), commits=False)))

    async def _settle(self) -> None:
        """Wait for the write in flight, if any; its fatal error is raised here."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            await inflight

    def _prepare(self, step: Step) -> Write:
        """Tick the step's sessions and move what is due into an outbox (no I/O)."""
        slots = self.schedule.slices
        nows = self.clock.nows()
        self.last_tick_ms = self.clock_ms()
        result = (
            self.store.tick(nows) if step.slot is None else self.store.tick(nows, step.slot, slots)
        )
        for state in result.timed_out:
            idle_s = self.store.rules.idle_timeout_ms / 1000
            log.info(
                "session timed out", extra={"session": state.session_id, "idle_timeout_s": idle_s}
            )
        self.metrics.timed_out.inc(len(result.timed_out))
        if self.observer is not None:
            self.observer.published(result)
        return self.checkpoints.prepare(step, result)

    async def _write(self, write: Write) -> None:
        if await self.checkpoints.write(self.sink, write) is None:
            return  # failed retriably: sent again first by the next write
        late = self.store.late_segments
        self.metrics.late_segments.inc(late - self._late_reported)
        self._late_reported = late
        self.metrics.sessions.set(len(self.store))
        evicted = write.result.evicted
        for state in evicted:
            log.debug("session evicted", extra={"session": state.session_id})
        if evicted:  # one line per write, not one per session (hundreds at a time)
            log.info("sessions evicted", extra={"count": len(evicted)})

    async def on_revoked(self, partitions: list[int]) -> None:
        """Checkpoint everything owned, then set the revoked partitions' sessions aside: the
        eager protocol revokes every partition at each rebalance, and most come back."""
        async with self.lock:
            self.ready = False
            await self.checkpoint()
            checkpoints = self.checkpoints
            # After a failed checkpoint nothing is kept: the new owner redoes it.
            committed = {} if checkpoints.failed else checkpoints.committed
            taken = self.recovery.park(partitions, committed)
            checkpoints.drop_partitions(partitions)
            await self.sink.close_partitions(partitions)
            self.assigned = [p for p in self.assigned if p not in partitions]
            self.metrics.assigned.set(len(self.assigned))
            self.metrics.sessions.set(len(self.store))
            for partition in partitions:
                with suppress(KeyError):
                    self.metrics.lag.remove(str(partition))
            if partitions:  # the first join revokes nothing: not worth a line
                log.info("partitions revoked", extra={"partitions": partitions, "sessions": taken})

    async def on_assigned(self, partitions: list[int]) -> None:
        """Take back the parked sessions of partitions nobody committed since they were
        revoked; rebuild the other newly assigned partitions' sessions from the changelog."""
        async with self.lock:
            self.ready = False
            self.metrics.rebalances.inc()
            new = [p for p in partitions if p not in self.assigned]
            started = self.monotonic()
            await self.sink.open_partitions(new)
            kept = await self.recovery.take_back(new, self.checkpoints.committed)
            restored = await self.recovery.restore([p for p in new if p not in kept])
            elapsed = self.monotonic() - started
            self.metrics.restore_duration.observe(elapsed)
            self.assigned = sorted(partitions)
            self.metrics.assigned.set(len(self.assigned))
            self.metrics.sessions.set(len(self.store))
            if self.observer is not None:
                self.observer.retain(self.store.live)
            self.ready = True
            extra = {
                "restored": restored,
                "kept": sum(kept.values()),
                "restore_s": round(elapsed, 3),
            }
            log.info("partitions assigned", extra={"partitions": partitions, **extra})
