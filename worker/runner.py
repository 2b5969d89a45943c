"""The consume loop: fetch -> decode -> fold -> (every publish interval) publish -> (every
commit interval) checkpoint.

Every publish interval the snapshots that visibly changed are written. Every commit interval
a checkpoint also writes the changelog states of the sessions that changed since the last
one and the pending dead letters, waits for all their acks, and only then commits the input
offsets (in exactly-once mode every publish is such a checkpoint, in one transaction per
partition). Snapshots may run ahead of the committed state; after a crash the fold replays
from the commit and, being idempotent, ends at the same snapshots. While the consumer is far
behind, snapshots wait for the checkpoints: a backlog's intermediate snapshots are stale on
arrival, and building them every second would slow the catch-up several-fold.
Rebalance callbacks and the loop share one lock, so a revoke never interleaves with a
half-processed batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Protocol

from worker.changelog import ChangelogFormatError, decode_state, encode_state
from worker.clock import PartitionClock
from worker.events import InvalidRecord, decode_event
from worker.metrics import WorkerMetrics
from worker.outbox import (
    CheckpointError,
    CheckpointTimings,
    InputRecord,
    Outbox,
    OutRecord,
    dead_letter,
)
from worker.state import SessionState
from worker.store import PartitionSessions, SessionStore, TickResult, slot_of
from worker.unwritable import report_given_up

log = logging.getLogger(__name__)


class Source(Protocol):
    async def fetch(self, timeout_s: float) -> Sequence[InputRecord]: ...
    def backlog(self) -> int:
        """Records known to wait after what was fetched, over the assigned partitions."""
        ...

    def partition_backlog(self, partition: int) -> int | None:
        """Records known to wait after what was fetched from `partition` (no request); None
        while unknown (no fetch response since it was assigned)."""
        ...

    async def committed(self, partitions: Sequence[int]) -> dict[int, int | None]:
        """The group's committed offset of each partition, asked of the coordinator (None:
        never committed); a partition it could not tell is left out."""
        ...


class Sink(Protocol):
    async def open_partitions(self, partitions: Sequence[int]) -> None: ...
    async def close_partitions(self, partitions: Sequence[int]) -> None: ...
    async def checkpoint(self, outbox: Outbox) -> CheckpointTimings:
        """Write every record and commit the offsets; raise (and commit nothing) on failure.
        A record that can never be written is not a failure: it is left out and returned
        in `unwritten` (too-large dead letters are cut to fit and returned in `truncated`)."""
        ...


@dataclass(frozen=True, slots=True)
class OutputTopics:
    snapshots: str
    changelog: str
    dead_letters: str


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    """What one write sends, and what it reports once written."""

    outbox: Outbox
    result: TickResult
    pending: dict[str, int]
    """First folded event's Kafka timestamp per session published, since its last publish."""
    commits: bool
    """A checkpoint (changelog, dead letters, offsets), not only a publish of snapshots."""


@dataclass(frozen=True, slots=True)
class _Parked:
    """A revoked partition's sessions, kept until the rebalance ends: if the partition
    comes back and its committed offset is still the one they match, they are current."""

    committed: int | None
    sessions: PartitionSessions


@dataclass(slots=True)
class _Round:
    """A checkpoint spread over the slices of one commit interval: slice i also writes the
    changelog records of changelog slot i's changed sessions, and the last one commits the
    offsets captured when the round began. Each session's record is encoded after that
    capture, so it holds everything the committed offsets cover."""

    captured: Outbox
    """Dead letters and next input offsets as of the start of the round."""
    next_slot: int = 0


ChangelogRecords = dict[int, dict[bytes, bytes]]
"""The latest changelog value of each live session key, per partition (tombstoned keys absent)."""
ChangelogReader = Callable[[Sequence[int]], Awaitable[ChangelogRecords]]
ChangelogEncoder = Callable[[SessionState, int | None, int | None], bytes]


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
        clock_ms: Callable[[], int] = wall_clock_ms,
        commit_interval_s: float | None = None,
        catchup_backlog: int = 0,
        publish_slices: int = 1,
        encode_changelog: ChangelogEncoder = encode_state,
    ) -> None:
        self.source = source
        self.sink = sink
        self.store = store
        self.metrics = metrics
        self._read_changelog = read_changelog
        self.topics = topics
        self.publish_interval_s = publish_interval_s
        self.commit_interval_s = max(publish_interval_s, commit_interval_s or publish_interval_s)
        """None or the publish interval: every publish is a checkpoint (exactly-once mode)."""
        self.catchup_backlog = catchup_backlog
        """Above this many waiting records, publish only with checkpoints; 0: always publish."""
        self.publish_slices = publish_slices
        """Each interval's publishing is cut into this many slices, each refreshing one slot
        of the sessions: the loop stops for a fraction of the work at a time, which keeps
        the event-to-snapshot latency near the interval (1: one tick of all sessions)."""
        self._slot_ticked = [0.0] * publish_slices
        """When each slot was last refreshed (monotonic): its next refresh waits at least
        one interval from then, so a session publishes at most once per interval."""
        self.clock_ms = clock_ms
        """The wall clock."""
        # Late-bound (so the lambdas): tests swap `clock_ms` and `source` of a built runner.
        self.clock = PartitionClock(
            lambda: self.clock_ms(),  # noqa: PLW0108
            lambda partition: self.source.partition_backlog(partition),  # noqa: PLW0108
        )
        """`now` per input partition: what each session is judged at (semantics.md)."""
        self._encode_changelog = encode_changelog
        self.lock = asyncio.Lock()
        self.assigned: list[int] = []
        self.ready = False
        self.last_progress = time.monotonic()
        self.last_tick_ms = clock_ms()
        self.events_folded = 0
        self.pause_hook: Callable[[], Awaitable[None]] | None = None
        """Test hook: awaited in the loop (lets a test simulate a stuck consume loop)."""
        self._outbox = Outbox()
        """Dead letters and input offsets since the last checkpoint."""
        self._retry: Outbox | None = None
        """A failed write's records: written first by the next write, so nothing overtakes
        them (a stale snapshot or changelog record after a newer one would win compaction)."""
        self._round: _Round | None = None
        self.changelog_slots = max(
            1, round(self.commit_interval_s * publish_slices / publish_interval_s)
        )
        """Slices per commit interval: a round encodes one changelog slot per slice, so the
        changelog work is spread evenly over the interval (50 at the defaults)."""
        self._unsaved: list[dict[str, SessionState]] = [{} for _ in range(self.changelog_slots)]
        """Per changelog slot, the sessions changed since their last changelog record."""
        self._forgotten: dict[str, SessionState] = {}
        """Sessions past their TTL since the last checkpoint: their tombstones are due."""
        self._committed: dict[int, int | None] = {}
        """Per assigned partition, its committed offset as known here: read at assignment,
        then set by each of our commits. The sessions match it after a checkpoint."""
        self._parked: dict[int, _Parked] = {}
        """Partitions revoked by the rebalance in progress, with their sessions."""
        self._first_pending_ms: dict[str, int] = {}
        self._late_reported = 0
        self._inflight: asyncio.Task[None] | None = None
        """The checkpoint being written and committed while the loop folds on (at most one)."""

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
        slices = self.publish_slices
        slice_s = self.publish_interval_s / slices
        next_slice = time.monotonic() + slice_s
        next_commit = time.monotonic() + self.commit_interval_s
        slot = 0
        while not stop.is_set():
            if self.pause_hook is not None:
                await self.pause_hook()
            wait_s = min(max(0.0, next_slice - time.monotonic()), 0.5)
            records = await self.source.fetch(wait_s)
            self.mark_progress()
            async with self.lock:
                if records:
                    self._process(records)
                now = time.monotonic()
                commit_due = now >= next_commit
                slice_due = now >= next_slice
                catching_up = self.catching_up()
                if catching_up or slices == 1:
                    # One tick of every session: per interval, or only with the checkpoints
                    # while catching up (a backlog's snapshots are stale on arrival).
                    if not (commit_due or (slice_due and not catching_up)):
                        if slice_due:  # skipped while catching up: look again a slice later
                            next_slice = now + slice_s
                        continue
                    prepared = self._prepare_all(commits=commit_due)
                    if commit_due:
                        next_commit = now + self.commit_interval_s
                    slot = 0
                    next_slice = self._slot_ticked[0] + self.publish_interval_s
                elif not slice_due:
                    continue
                else:
                    if commit_due and self._round is None:
                        self._begin_round()
                        next_commit = now + self.commit_interval_s
                    prepared = self._prepare_slice(slot)
                    # On the schedule, not `now + slice`: a late slice does not delay the
                    # rest of the round; each slot still waits an interval since its last.
                    slot = (slot + 1) % slices
                    next_slice = max(
                        next_slice + slice_s, self._slot_ticked[slot] + self.publish_interval_s
                    )
                # Write in the background and keep folding meanwhile: the loop waits for
                # a write's acks (and commit) only when the next one is due.
                await self._settle()
                self._inflight = asyncio.create_task(self._write(prepared))

    def catching_up(self) -> bool:
        """Far enough behind that publishing between checkpoints would only slow us down."""
        return 0 < self.catchup_backlog < self.source.backlog()

    def mark_progress(self) -> None:
        """The loop (or a restore) moved: what liveness watches."""
        self.last_progress = time.monotonic()
        self.metrics.last_progress.set(time.time())

    def _process(self, records: Sequence[InputRecord]) -> None:
        now_ms = self.clock_ms()
        store, metrics, pending = self.store, self.metrics, self._first_pending_ms
        offsets = self._outbox.offsets
        folded_by_type: dict[str, int] = {}
        newest: dict[int, int] = {}  # per partition: its event-time watermark, for the clock
        for record in records:
            offsets[record.partition] = record.offset + 1
            value = record.value
            if value is None:
                metrics.tombstones.inc()
                continue
            decoded = decode_event(value, record.key, now_ms)
            if isinstance(decoded, InvalidRecord):
                self._dead_letter(record, decoded)
                if decoded.event is None:
                    continue
                decoded = decoded.event  # invalid_metadata: the valid part is folded too
            state = store.apply(decoded, record.partition)
            timestamp = decoded.timestamp
            if timestamp > newest.get(record.partition, timestamp - 1):
                newest[record.partition] = timestamp
            folded_by_type[decoded.type] = folded_by_type.get(decoded.type, 0) + 1
            if state.session_id not in pending:
                pending[state.session_id] = record.timestamp
        self.clock.observe(newest)
        for event_type, count in folded_by_type.items():
            metrics.events.labels(event_type).inc(count)
            self.events_folded += count

    def _dead_letter(self, record: InputRecord, invalid: InvalidRecord) -> None:
        log.warning(
            "invalid event dead-lettered",
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "reason": invalid.reason.value,
                "detail": invalid.detail,
            },
        )
        self._outbox.add(
            record.partition,
            dead_letter(
                self.topics.dead_letters,
                record.topic,
                record.partition,
                record.offset,
                record.key,
                record.value,
                tuple(record.headers),
                invalid.reason.value,
                invalid.detail,
            ),
        )
        self.metrics.invalid.labels(invalid.reason.value).inc()

    async def checkpoint(self) -> None:
        """Publish what changed, persist state and dead letters, then commit offsets; returns
        when all of it (and any write still in flight) is done. Raises on fatal errors."""
        await self._settle()
        await self._write(self._prepare_all(commits=True))

    async def _settle(self) -> None:
        """Wait for the checkpoint in flight, if any; its fatal error is raised here."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            await inflight

    def _prepare_all(self, commits: bool) -> _Checkpoint:
        """Tick every session and move what is due into an outbox (no I/O): the changed
        snapshots, and for a checkpoint also every pending changelog record and tombstone,
        the dead letters and the input offsets (finishing any round in progress)."""
        result, pending, outbox = self._publish(None)
        if not commits:
            return _Checkpoint(outbox, result, pending, commits=False)
        if self._round is not None:
            outbox, self._round = outbox.then(self._round.captured), None
        outbox, self._outbox = outbox.then(self._outbox), Outbox()
        for slot in range(self.changelog_slots):
            self._add_changelog(outbox, slot)
        self._add_tombstones(outbox)
        return _Checkpoint(outbox, result, pending, commits=True)

    def _prepare_slice(self, slot: int) -> _Checkpoint:
        """Tick the sessions of `slot`; their changed snapshots go out, and during a round
        their changelog records too (and the round's checkpoint with its last slice)."""
        result, pending, outbox = self._publish(slot)
        round_ = self._round
        if round_ is None:
            return _Checkpoint(outbox, result, pending, commits=False)
        self._add_changelog(outbox, round_.next_slot)
        round_.next_slot += 1
        if round_.next_slot < self.changelog_slots:
            return _Checkpoint(outbox, result, pending, commits=False)
        self._round = None
        self._add_tombstones(outbox)
        return _Checkpoint(outbox.then(round_.captured), result, pending, commits=True)

    def _publish(self, slot: int | None) -> tuple[TickResult, dict[str, int], Outbox]:
        """Tick one slot (None: every session) and start an outbox with its changed
        snapshots, after any failed write's records; note the changelog records now owed.
        Also returns the first-event times of the sessions published (for the latency)."""
        nows = self.clock.nows()
        self.last_tick_ms = self.clock_ms()
        if slot is None:
            result = self.store.tick(nows)
            self._slot_ticked = [time.monotonic()] * self.publish_slices
            pending, self._first_pending_ms = self._first_pending_ms, {}
        else:
            result = self.store.tick(nows, slot, self.publish_slices)
            self._slot_ticked[slot] = time.monotonic()
            waiting = self._first_pending_ms
            pending = {
                s.session_id: ms
                for s in result.snapshots
                if (ms := waiting.pop(s.session_id, None)) is not None
            }
        self._remember(result)
        for state in result.timed_out:
            log.info(
                "session timed out",
                extra={
                    "session": state.session_id,
                    "idle_timeout_s": self.store.rules.idle_timeout_ms / 1000,
                },
            )
        self.metrics.timed_out.inc(len(result.timed_out))
        return result, pending, self._add_snapshots(self._take_retry(), result)

    def _begin_round(self) -> None:
        """Capture the dead letters and offsets the round's last slice will commit."""
        self._round = _Round(self._outbox)
        self._outbox = Outbox()

    def _take_retry(self) -> Outbox:
        retry, self._retry = self._retry, None
        return Outbox() if retry is None else retry

    def _remember(self, result: TickResult) -> None:
        """Note whose changelog record or tombstone the next checkpoint owes."""
        unsaved, forgotten, slots = self._unsaved, self._forgotten, self.changelog_slots
        for state in result.changed:
            unsaved[slot_of(state.session_id, slots)][state.session_id] = state
            forgotten.pop(state.session_id, None)  # alive again after it was forgotten
        for state in result.forgotten:
            forgotten[state.session_id] = state
            unsaved[slot_of(state.session_id, slots)].pop(state.session_id, None)

    def _add_snapshots(self, outbox: Outbox, result: TickResult) -> Outbox:
        topic = self.topics.snapshots
        for snapshot in result.snapshots:
            outbox.add(
                snapshot.partition, OutRecord(topic, snapshot.session_id.encode(), snapshot.payload)
            )
        return outbox

    def _add_changelog(self, outbox: Outbox, slot: int) -> None:
        """The latest state of each session of `slot` changed since its last record."""
        states, self._unsaved[slot] = self._unsaved[slot], {}
        evicted = self.store.evicted
        offsets = self._outbox.offsets  # for diagnosis: where the input was read up to
        if self._round is not None:
            offsets = {**self._round.captured.offsets, **offsets}
        for state in states.values():
            archived = evicted.get(state.session_id)
            payload = self._encode_changelog(
                state, archived[1] if archived else None, offsets.get(state.partition)
            )
            outbox.add(
                state.partition, self._changelog_record(state.partition, state.session_id, payload)
            )

    def _add_tombstones(self, outbox: Outbox) -> None:
        forgotten, self._forgotten = self._forgotten, {}
        for state in forgotten.values():
            outbox.add(
                state.partition, self._changelog_record(state.partition, state.session_id, None)
            )

    async def _write(self, checkpoint: _Checkpoint) -> None:
        outbox, result = checkpoint.outbox, checkpoint.result
        # Counted before writing: the exactly-once sink drops each partition once committed.
        written = Counter(r.topic for rs in outbox.records.values() for r in rs)
        try:
            timings = (
                await self.sink.checkpoint(outbox)
                if outbox.records or outbox.offsets
                else CheckpointTimings(0.0, 0.0)  # a slice in which nothing changed
            )
        except CheckpointError as error:
            report_given_up(self.metrics, self.topics, error.unwritten, error.truncated)
            if not error.retriable:
                raise
            # Nothing was committed: the next write sends all of it again, first.
            log.warning("checkpoint failed; will retry", extra={"error": str(error)})
            self.metrics.checkpoint_failures.inc()
            self._retry = outbox  # (prepared outboxes took the previous retry in)
            self._first_pending_ms = {**self._first_pending_ms, **checkpoint.pending}
            return
        report_given_up(self.metrics, self.topics, timings.unwritten, timings.truncated)
        metrics = self.metrics
        if outbox.records:
            metrics.publish_latency.observe(timings.publish_s)
        if outbox.offsets:
            metrics.commit_latency.observe(timings.commit_s)
            self._committed.update(outbox.offsets)
        written.subtract(u.record.topic for u in timings.unwritten)
        metrics.snapshots.inc(written[self.topics.snapshots])
        metrics.changelog_records.inc(written[self.topics.changelog])
        metrics.dead_letters.inc(written[self.topics.dead_letters])
        if checkpoint.commits:
            metrics.checkpoints.inc()
        late = self.store.late_segments
        metrics.late_segments.inc(late - self._late_reported)
        self._late_reported = late
        metrics.sessions.set(len(self.store))
        self._observe_end_to_end([s.session_id for s in result.snapshots], checkpoint.pending)
        for state in result.evicted:
            log.debug("session evicted", extra={"session": state.session_id})
        if result.evicted:  # one line per write, not one per session (hundreds at a time)
            log.info("sessions evicted", extra={"count": len(result.evicted)})

    def _changelog_record(
        self, partition: int, session_id: str, payload: bytes | None
    ) -> OutRecord:
        return OutRecord(self.topics.changelog, session_id.encode(), payload, partition=partition)

    def _observe_end_to_end(self, published: list[str], pending: dict[str, int]) -> None:
        """Latency of the first event folded since the last checkpoint, for each session
        published; sessions without a visible change published nothing and are not counted."""
        now_ms = wall_clock_ms()
        for session_id in published:
            produced_ms = pending.get(session_id)
            if produced_ms is not None and produced_ms > 0:
                self.metrics.end_to_end_latency.observe(max(0, now_ms - produced_ms) / 1000)

    async def on_revoked(self, partitions: list[int]) -> None:
        """Checkpoint everything owned, then set the revoked partitions' sessions aside: the
        eager protocol revokes every partition at each rebalance, and most come back."""
        async with self.lock:
            self.ready = False
            await self.checkpoint()
            self._outbox.drop_partitions(partitions)
            checkpointed = self._retry is None
            if self._retry is not None:  # the checkpoint failed: the new owner redoes it
                self._retry.drop_partitions(partitions)
            taken = 0
            for partition, sessions in self.store.take_partitions(partitions).items():
                taken += len(sessions.live)
                if checkpointed and partition in self._committed:
                    # They match the offset committed: kept if it is unchanged on return.
                    self._parked[partition] = _Parked(self._committed[partition], sessions)
                self._committed.pop(partition, None)
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
            started = time.monotonic()
            await self.sink.open_partitions(new)
            kept = await self._take_back(new)
            restored = await self.restore([p for p in new if p not in kept])
            elapsed = time.monotonic() - started
            self.metrics.restore_duration.observe(elapsed)
            self.assigned = sorted(partitions)
            self.metrics.assigned.set(len(self.assigned))
            self.metrics.sessions.set(len(self.store))
            self.ready = True
            log.info(
                "partitions assigned",
                extra={
                    "partitions": partitions,
                    "restored": restored,
                    "kept": sum(kept.values()),
                    "restore_s": round(elapsed, 3),
                },
            )

    async def _take_back(self, partitions: Sequence[int]) -> dict[int, int]:
        """Adopt the parked sessions of each partition that came back with the committed
        offset they match (nobody committed it since: they are current, no changelog read);
        the rest are dropped. Returns the sessions kept per partition adopted."""
        parked, self._parked = self._parked, {}
        committed = await self.source.committed(partitions) if partitions else {}
        self._committed.update(committed)
        kept: dict[int, int] = {}
        for partition in partitions:
            entry = parked.get(partition)
            if entry is None or partition not in committed:
                continue
            if committed[partition] == entry.committed:
                self.store.adopt(entry.sessions)
                kept[partition] = len(entry.sessions)
        self.metrics.kept_sessions.inc(sum(kept.values()))
        return kept

    async def restore(self, partitions: Sequence[int]) -> int:
        """Load the latest changelog state of every session of `partitions`."""
        if not partitions:
            return 0
        by_partition = await self._read_changelog(partitions)
        count = 0
        for partition, latest in by_partition.items():
            newest = -1
            for key, value in latest.items():
                try:
                    entry = decode_state(value, partition)
                except ChangelogFormatError as error:
                    log.error(
                        "unreadable changelog record skipped",
                        extra={"key": key.decode(errors="replace"), "error": str(error)},
                    )
                    continue
                self.store.restore(entry.state, entry.evicted_at)
                newest = max(newest, entry.state.last_activity)
                count += 1
            # Until its first records are folded, the partition's time is where the
            # restored sessions left off (not the wall clock: a backlog may wait).
            if newest >= 0:
                self.clock.observe({partition: newest})
        self.metrics.restored_sessions.inc(count)
        return count
