"""What each write sends and what it reports: the outbox of dead letters and offsets, the
changelog records owed per slot, tombstones, the round's captured offsets, a failed write's
records (sent again first), the committed offsets, and the counting of what was written.

No clock reads but the injected wall clock (for the end-to-end latency); no Kafka types.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from worker.events import InvalidRecord
from worker.metrics import WorkerMetrics
from worker.outbox import CheckpointError, CheckpointTimings, InputRecord, Outbox, OutRecord
from worker.outbox import dead_letter as make_dead_letter
from worker.runtime.ports import LOGGER_NAME, ChangelogEncoder, OutputTopics, Sink, WallClockMs
from worker.runtime.schedule import Step
from worker.state import SessionState
from worker.store import TickResult, slot_of
from worker.unwritable import report_given_up

log = logging.getLogger(LOGGER_NAME)


@dataclass(frozen=True, slots=True)
class Write:
    """What one write sends, and what it reports once written."""

    outbox: Outbox
    result: TickResult
    pending: dict[str, int]
    """First folded event's Kafka timestamp per session published, since its last publish."""
    commits: bool
    """A checkpoint (changelog, dead letters, offsets), not only a publish of snapshots."""


class Checkpoints:
    """Everything owed to Kafka between checkpoints, and the writing of it."""

    def __init__(
        self,
        topics: OutputTopics,
        metrics: WorkerMetrics,
        changelog_slots: int,
        encode_changelog: ChangelogEncoder,
        evicted: dict[str, tuple[SessionState, int]],
        wall_ms: WallClockMs,
    ) -> None:
        self.topics = topics
        self.metrics = metrics
        self.changelog_slots = changelog_slots
        self._encode = encode_changelog
        self._evicted = evicted
        """The store's archive: an evicted session's record says when it was evicted."""
        self._wall_ms = wall_ms
        self.outbox = Outbox()
        """Dead letters and input offsets since the last checkpoint (the fold adds to it)."""
        self.first_pending_ms: dict[str, int] = {}
        """Per session folded since its last publish: its first event's Kafka timestamp."""
        self.committed: dict[int, int | None] = {}
        """Per assigned partition, its committed offset as known here: read at assignment,
        then set by each of our commits. The sessions match it after a checkpoint."""
        self._captured: Outbox | None = None
        """The round in progress: dead letters and offsets as of its start, which its last
        slice commits. Each changelog record is encoded after that capture, so it holds
        everything the committed offsets cover."""
        self._retry: Outbox | None = None
        """A failed write's records: written first by the next write, so nothing overtakes
        them (a stale snapshot or changelog record after a newer one would win compaction)."""
        self._unsaved: list[dict[str, SessionState]] = [{} for _ in range(changelog_slots)]
        """Per changelog slot, the sessions changed since their last changelog record."""
        self._forgotten: dict[str, SessionState] = {}
        """Sessions past their TTL since the last checkpoint: their tombstones are due."""

    @property
    def failed(self) -> bool:
        """The last write failed: its records wait to be sent again."""
        return self._retry is not None

    def dead_letter(self, record: InputRecord, invalid: InvalidRecord) -> None:
        """Hold an invalid record's dead letter for the next checkpoint, logged and counted."""
        reason = invalid.reason.value
        log.warning(
            "invalid event dead-lettered",
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "reason": reason,
                "detail": invalid.detail,
            },
        )
        letter = make_dead_letter(
            self.topics.dead_letters,
            record.topic,
            record.partition,
            record.offset,
            record.key,
            record.value,
            tuple(record.headers),
            reason,
            invalid.detail,
        )
        self.outbox.add(record.partition, letter)
        self.metrics.invalid.labels(reason).inc()

    def prepare(self, step: Step, result: TickResult) -> Write:
        """Move what `step` sends into an outbox (no I/O): the changed snapshots of `result`
        after any failed write's records, then for a round's slice its changelog slot, and
        for a checkpoint the rest (every owed record, tombstones, dead letters, offsets)."""
        self._remember(result)
        pending = self._take_pending(result, every=step.slot is None)
        outbox = self._take_retry()
        topic = self.topics.snapshots
        for snapshot in result.snapshots:
            outbox.add(
                snapshot.partition, OutRecord(topic, snapshot.session_id.encode(), snapshot.payload)
            )
        if step.begins_round:
            self._captured, self.outbox = self.outbox, Outbox()
        if step.slot is None:
            if step.commits:
                if self._captured is not None:
                    outbox, self._captured = outbox.then(self._captured), None
                outbox, self.outbox = outbox.then(self.outbox), Outbox()
                for slot in range(self.changelog_slots):
                    self._add_changelog(outbox, slot)
                self._add_tombstones(outbox)
            return Write(outbox, result, pending, step.commits)
        if step.changelog_slot is not None:
            self._add_changelog(outbox, step.changelog_slot)
        if not step.commits:
            return Write(outbox, result, pending, commits=False)
        captured, self._captured = self._captured, None
        self._add_tombstones(outbox)
        if captured is not None:  # (not truthiness: an outbox of offsets only has no length)
            outbox = outbox.then(captured)
        return Write(outbox, result, pending, commits=True)

    def drop_partitions(self, partitions: list[int]) -> None:
        """Forget what is owed for revoked partitions (after their checkpoint); a failed
        write's records too: the new owner redoes them from the committed offsets."""
        self.outbox.drop_partitions(partitions)
        if self._retry is not None:
            self._retry.drop_partitions(partitions)
        for partition in partitions:
            self.committed.pop(partition, None)

    async def write(self, sink: Sink, write: Write) -> CheckpointTimings | None:
        """Write and count; None if it failed retriably (it is sent again first next time).
        Raises CheckpointError when it cannot be retried."""
        outbox = write.outbox
        written = Counter(r.topic for rs in outbox.records.values() for r in rs)
        try:
            timings = (
                await sink.checkpoint(outbox)
                if outbox.records or outbox.offsets
                else CheckpointTimings(0.0, 0.0)  # a slice in which nothing changed
            )
        except CheckpointError as error:
            report_given_up(self.metrics, self.topics, error.unwritten, error.truncated)
            if not error.retriable:
                raise
            # Nothing else was committed: the next write sends the rest again, first.
            log.warning("checkpoint failed; will retry", extra={"error": str(error)})
            self.metrics.checkpoint_failures.inc()
            self.committed.update((p, o) for p, o in outbox.offsets.items() if p in error.committed)
            # (prepared outboxes took the previous retry in)
            self._retry = outbox.without(error.committed) if error.committed else outbox
            self.first_pending_ms = {**self.first_pending_ms, **write.pending}
            return None
        report_given_up(self.metrics, self.topics, timings.unwritten, timings.truncated)
        metrics, topics = self.metrics, self.topics
        if outbox.records:
            metrics.publish_latency.observe(timings.publish_s)
        if outbox.offsets:
            metrics.commit_latency.observe(timings.commit_s)
            self.committed.update(outbox.offsets)
        written.subtract(u.record.topic for u in timings.unwritten)
        metrics.snapshots.inc(written[topics.snapshots])
        metrics.changelog_records.inc(written[topics.changelog])
        metrics.dead_letters.inc(written[topics.dead_letters])
        if write.commits:
            metrics.checkpoints.inc()
        self._observe_end_to_end(write)
        return timings

    def _take_pending(self, result: TickResult, every: bool) -> dict[str, int]:
        if every:
            pending, self.first_pending_ms = self.first_pending_ms, {}
            return pending
        waiting = self.first_pending_ms
        return {
            s.session_id: ms
            for s in result.snapshots
            if (ms := waiting.pop(s.session_id, None)) is not None
        }

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

    def _add_changelog(self, outbox: Outbox, slot: int) -> None:
        """The latest state of each session of `slot` changed since its last record."""
        states, self._unsaved[slot] = self._unsaved[slot], {}
        evicted = self._evicted
        offsets = self.outbox.offsets  # for diagnosis: where the input was read up to
        if self._captured is not None:
            offsets = {**self._captured.offsets, **offsets}
        for state in states.values():
            archived = evicted.get(state.session_id)
            payload = self._encode(
                state, archived[1] if archived else None, offsets.get(state.partition)
            )
            outbox.add(state.partition, self._changelog_record(state, payload))

    def _add_tombstones(self, outbox: Outbox) -> None:
        forgotten, self._forgotten = self._forgotten, {}
        for state in forgotten.values():
            outbox.add(state.partition, self._changelog_record(state, None))

    def _changelog_record(self, state: SessionState, payload: bytes | None) -> OutRecord:
        key = state.session_id.encode()
        return OutRecord(self.topics.changelog, key, payload, partition=state.partition)

    def _observe_end_to_end(self, write: Write) -> None:
        """Latency of the first event folded since the last publish, for each session
        published; sessions without a visible change published nothing and are not counted."""
        now_ms = self._wall_ms()
        pending = write.pending
        self.metrics.end_to_end_latency.observe_many(
            [
                max(0, now_ms - produced_ms) / 1000
                for snapshot in write.result.snapshots
                if (produced_ms := pending.get(snapshot.session_id)) is not None and produced_ms > 0
            ]
        )
