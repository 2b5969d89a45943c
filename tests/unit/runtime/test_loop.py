"""The runner against in-memory fakes: checkpoint order, retries, revoke and restore."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
import pytest

from tests.fakes import FakeClock, FakeRecord, FakeSink, FakeSource
from tests.unit.builders import SID, T0, ended, fold_bodies, ingested, started
from tests.unit.runtime.harness import make_runner, record, records_of, wait_for
from worker.changelog import decode_state, encode_state
from worker.kafka.restore import keep_latest
from worker.metrics import SessionCollector
from worker.outbox import CheckpointError, InputRecord
from worker.rules import Rules
from worker.runtime import ChangelogRecords


async def test_checkpoint_writes_snapshot_changelog_and_dead_letter_before_committing() -> None:
    h = make_runner()
    await h.runner.on_assigned([0])
    h.runner.fold(
        [record(0, 5, started()), record(0, 6, ingested(0)), FakeRecord(0, 7, b"k", b"{")]
    )
    assert h.sink.committed == {}, "nothing commits before a checkpoint"
    await h.runner.checkpoint()
    assert sorted(h.sink.topics_written()) == ["changelog", "dlq", "snapshots"]
    assert h.sink.committed == {0: 8}


async def test_invalid_metadata_is_dead_lettered_and_the_rest_of_the_event_folded() -> None:
    h = make_runner()
    runner = h.runner
    await runner.on_assigned([0])
    bad_ladder = [{"name": "720p", "width": 1, "height": 720, "bitrate": 400, "fps": 30}]
    runner.fold([record(0, 3, started(parentId="stream-1", profiles=bad_ladder))])
    meta = runner.store.live[SID].meta
    assert (meta.name, meta.parent_id, meta.profiles) == ("show", "stream-1", None)
    await runner.checkpoint()
    (letter,) = [r for box in h.sink.written for r in box.records[0] if r.topic == "dlq"]
    assert dict(letter.headers)["dlq.reason"] == b"invalid_metadata"
    assert runner.metrics.invalid.labels("invalid_metadata")._value.get() == 1
    assert runner.metrics.events.labels("session.started")._value.get() == 1


async def test_failed_checkpoint_commits_nothing_and_is_retried_with_later_records() -> None:
    sink = FakeSink(fail_next=[CheckpointError("broker away", retriable=True)])
    runner = make_runner(sink).runner
    await runner.on_assigned([0])
    runner.fold([record(0, 0, ingested(0))])
    await runner.checkpoint()
    assert sink.committed == {}
    runner.fold([record(0, 1, ingested(1))])
    await runner.checkpoint()
    assert sink.committed == {0: 2}
    snapshots = [r for r in sink.written[0].records[0] if r.topic == "snapshots"]
    assert len(snapshots) == 2, "the first snapshot is written again, then the newer one"
    assert orjson.loads(snapshots[-1].value or b"")["sourceSegments"] == 2


async def test_non_retriable_checkpoint_failure_stops_the_worker() -> None:
    runner = make_runner(FakeSink(fail_next=[CheckpointError("fenced", retriable=False)])).runner
    runner.fold([record(0, 0, ingested(0))])
    with pytest.raises(CheckpointError):
        await runner.checkpoint()


async def test_revoke_checkpoints_then_forgets_the_partition() -> None:
    h = make_runner()
    runner = h.runner
    await runner.on_assigned([0, 1])
    runner.fold([record(0, 0, ingested(0, sid="a")), record(1, 0, ingested(0, sid="b"))])
    await runner.on_revoked([1])
    assert h.sink.committed == {0: 1, 1: 1}
    assert runner.store.get("b") is None
    assert runner.store.get("a") is not None
    assert runner.assigned == [0]
    assert h.sink.opened == {0}


async def test_assignment_restores_latest_changelog_state_and_skips_tombstones() -> None:
    first = make_runner().runner
    await first.on_assigned([3])
    first.fold([record(3, 0, ingested(0, sid="kept")), record(3, 1, ingested(1, sid="kept"))])
    first.fold([record(3, 2, ingested(0, sid="gone"))])
    await first.checkpoint()
    kept = first.store.get("kept")
    assert kept is not None
    latest: dict[bytes, bytes] = {}
    keep_latest(
        latest, [(b"kept", encode_state(kept, None, 2)), (b"gone", b"stale"), (b"gone", None)]
    )
    changelog: ChangelogRecords = {3: latest}
    second = make_runner(FakeSink(), changelog).runner
    await second.on_assigned([3])
    assert second.ready
    restored = second.store.get("kept")
    assert restored is not None
    assert decode_state(encode_state(restored, None, 2), 3).state.source_segments == 2
    assert second.store.get("gone") is None
    # Redelivered input after the restore changes nothing: the fold is idempotent.
    second.fold([record(3, 1, ingested(1, sid="kept"))])
    assert second.store.get("kept").source_segments == 2  # type: ignore[union-attr]


async def test_run_stops_on_event_with_a_final_checkpoint() -> None:
    h = make_runner(commit_interval_s=60.0)
    h.source.batches.append([record(0, 0, ingested(0))])
    await h.runner.on_assigned([0])
    stop = asyncio.Event()
    task = asyncio.create_task(h.runner.run(stop))
    await wait_for(lambda: h.source.fetches >= 3)
    assert h.sink.committed == {}, "the commit interval is a minute away"
    stop.set()
    await asyncio.wait_for(task, 15)
    assert h.sink.committed == {0: 1}
    assert not h.runner.ready


class EagerSource(FakeSource):
    """Hands out its batches without ever yielding to the event loop (a fetch served from
    a prefetched buffer does the same)."""

    async def fetch(self, timeout_s: float) -> Sequence[InputRecord]:
        self.fetches += 1
        if self.batches:
            return self.batches.pop(0)
        assert self.clock is not None
        self.clock.advance(timeout_s)
        return []


async def test_the_loop_yields_to_other_tasks_between_batches() -> None:
    """A long catch-up (every fetch brings records) leaves the event loop to the others:
    the HTTP server answers while the backlog is being folded."""
    source = EagerSource([[record(0, n, ingested(n))] for n in range(50)])
    h = make_runner(source=source, commit_interval_s=60.0)
    await h.runner.on_assigned([0])
    folded_seen: list[int] = []

    async def other_task() -> None:
        while len(folded_seen) < 5:
            folded_seen.append(h.runner.events_folded)
            await asyncio.sleep(0)

    stop = asyncio.Event()
    task = asyncio.create_task(h.runner.run(stop))
    await asyncio.wait_for(other_task(), 15)
    stop.set()
    await asyncio.wait_for(task, 15)
    assert folded_seen[-1] < 50, "the other task ran while batches were still being folded"


async def test_evicted_session_is_tombstoned_in_the_changelog_after_its_ttl() -> None:
    clock = FakeClock(wall_ms=T0)
    h = make_runner(clock=clock, rules=Rules(retention_ms=1_000, evicted_ttl_ms=5_000))
    runner = h.runner
    await runner.on_assigned([0])
    runner.fold([record(0, 0, ingested(0)), record(0, 1, ended(T0 + 100))])
    await runner.checkpoint()  # final snapshot published
    clock.wall = T0 + 2_000
    await runner.checkpoint()  # evicted: its state stays in the changelog
    assert runner.store.get(SID) is None
    clock.wall = T0 + 8_000
    await runner.checkpoint()  # forgotten: tombstone
    changelog = records_of(h.sink, "changelog")
    assert changelog[-1][1] is None
    assert decode_state(changelog[-2][1] or b"", 0).evicted_at == T0 + 2_000


async def test_segments_older_than_the_dedupe_window_are_counted_as_late() -> None:
    runner = make_runner().runner
    await runner.on_assigned([0])
    runner.fold(
        [record(0, 0, ingested(2000, T0)), record(0, 1, ingested(10)), record(0, 2, ingested(11))]
    )
    await runner.checkpoint()
    runner.fold([record(0, 3, ingested(12))])
    await runner.checkpoint()
    late = runner.metrics.late_segments._value.get()  # the counter's current value
    assert late == 3
    assert runner.store.get(SID).source_segments == 1  # type: ignore[union-attr]


def snapshots_written(sink: FakeSink) -> int:
    return sink.topics_written().count("snapshots")


async def test_a_partition_given_back_unchanged_keeps_its_sessions_without_a_restore() -> None:
    h = make_runner()
    runner, sink = h.runner, h.sink
    await runner.on_assigned([0, 1])
    runner.fold([record(0, 0, ingested(0, sid="a")), record(1, 0, ingested(0, sid="b"))])
    await runner.checkpoint()
    before, published = runner.store.get("a"), snapshots_written(sink)
    await runner.on_revoked([0, 1])  # eager rebalance: everything is revoked first
    assert runner.store.get("a") is None
    await runner.on_assigned([0, 1])  # ... and comes back; nobody committed in between
    assert h.changelog_reads == [[0, 1]], "only the first assignment read the changelog"
    assert runner.store.get("a") is before, "the same state, not a copy rebuilt from records"
    assert runner.metrics.kept_sessions._value.get() == 2
    await runner.checkpoint()
    assert snapshots_written(sink) == published, "a kept session is not republished unchanged"
    runner.fold([record(0, 1, ingested(1, sid="a"))])
    await runner.checkpoint()
    assert runner.store.get("a").source_segments == 2  # type: ignore[union-attr]
    assert sink.committed == {0: 2, 1: 1}


async def test_a_partition_committed_by_another_member_meanwhile_is_restored() -> None:
    # Another member owned partition 0 for a while: it folded seqNo 1 and committed.
    newer = fold_bodies([ingested(0), ingested(1)])
    h = make_runner(changelog={0: {SID.encode(): encode_state(newer, None, 2)}})
    runner = h.runner
    await runner.on_assigned([0])
    runner.fold([record(0, 0, ingested(0))])
    await runner.on_revoked([0])
    h.sink.committed[0] = 2
    await runner.on_assigned([0])
    assert runner.store.get(SID).source_segments == 2  # type: ignore[union-attr]
    assert runner.metrics.kept_sessions._value.get() == 0


async def test_a_failed_revoke_checkpoint_or_unknown_offsets_keep_nothing() -> None:
    for failure in ("checkpoint", "offsets"):
        h = make_runner()
        runner = h.runner
        await runner.on_assigned([0])
        runner.fold([record(0, 0, ingested(0))])
        if failure == "checkpoint":
            h.sink.fail_next.append(CheckpointError("broker away", retriable=True))
        else:
            h.source.group_offsets = None  # the coordinator did not answer
        await runner.on_revoked([0])
        await runner.on_assigned([0])
        assert h.changelog_reads == [[0], [0]], failure
        assert runner.store.get(SID) is None, "rebuilt from the (empty) changelog, not kept"


async def test_parked_partitions_that_went_elsewhere_are_forgotten() -> None:
    h = make_runner()
    runner = h.runner
    await runner.on_assigned([0, 1])
    runner.fold([record(0, 0, ingested(0, sid="a")), record(1, 0, ingested(0, sid="b"))])
    await runner.on_revoked([0, 1])
    await runner.on_assigned([1])  # partition 0 went to another member
    assert runner.store.get("a") is None
    assert runner.store.get("b") is not None
    await runner.on_revoked([1])
    await runner.on_assigned([0, 1])  # 0 comes back later, its offset unchanged: restored anyway
    assert h.changelog_reads == [[0, 1], [0]]
    assert runner.store.get("a") is None
    assert runner.store.get("b") is not None


async def test_the_metrics_collector_gets_what_each_tick_published() -> None:
    collector = SessionCollector(list, 100)
    h = make_runner(observer=collector)
    runner = h.runner
    await runner.on_assigned([0, 1])
    runner.fold([record(0, 0, ingested(0, sid="a")), record(1, 0, ingested(0, sid="b"))])
    assert collector.values == {}, "folded, not yet published"
    await runner.checkpoint()
    assert {sid: v.source_segments for sid, v in collector.values.items()} == {"a": 1, "b": 1}
    await runner.on_revoked([0, 1])
    await runner.on_assigned([1])  # partition 0 went to another member
    assert set(collector.values) == {"b"}
