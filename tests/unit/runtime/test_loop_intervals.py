"""Publishing every publish interval, checkpointing every commit interval, catching up: the
loop on a fake clock (a fetch that finds nothing waits its timeout on that clock)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence

import orjson

from tests.fakes import FakeClock, FakeRecord, FakeSink, FakeSource
from tests.unit.builders import SID, T0, ended, ingested, started
from tests.unit.runtime.harness import make_runner, record, records_of, topics, wait_for
from worker.changelog import decode_state, encode_state_v1
from worker.outbox import InputRecord, Outbox
from worker.rules import Rules
from worker.runtime import Runner
from worker.store import SessionStore, TickResult


async def test_a_publish_between_checkpoints_writes_snapshots_only_and_commits_nothing() -> None:
    h = make_runner(commit_interval_s=60.0)
    runner, sink = h.runner, h.sink
    await runner.on_assigned([0])
    runner.fold([record(0, 0, started()), FakeRecord(0, 1, b"k", b"{")])
    await runner.publish()
    assert topics(sink.written[0]) == ["snapshots"]
    assert sink.written[0].offsets == {}
    assert sink.committed == {}
    runner.fold([record(0, 2, ingested(0))])
    await runner.publish()
    await runner.checkpoint()
    # The checkpoint saves what changed since the last one, once per session, with the dead
    # letter held since offset 1, and commits past everything folded.
    assert topics(sink.written[2]) == ["changelog", "dlq"]
    assert sink.committed == {0: 3}


async def test_the_changelog_record_written_at_a_checkpoint_is_the_latest_state() -> None:
    h = make_runner(commit_interval_s=60.0)
    runner = h.runner
    await runner.on_assigned([0])
    runner.fold([record(0, 0, ingested(0))])
    await runner.publish()
    runner.fold([record(0, 1, ingested(1))])
    await runner.publish()
    await runner.checkpoint()
    changelog = [r for r in h.sink.written[-1].records[0] if r.topic == "changelog"]
    assert len(changelog) == 1
    assert decode_state(changelog[0].value or b"", 0).state.source_segments == 2


async def test_a_session_forgotten_between_checkpoints_gets_only_its_tombstone() -> None:
    rules = Rules(retention_ms=1_000, evicted_ttl_ms=1_000)
    h = make_runner(commit_interval_s=60.0, rules=rules)
    runner = h.runner
    await runner.on_assigned([0])
    runner.fold([record(0, 0, started()), record(0, 1, ended(T0 + 1))])
    for step in range(4):  # publish, evict after retention, forget after the TTL
        h.clock.wall += 1_500 * step
        await runner.publish()
    assert SID not in runner.store.live
    assert SID not in runner.store.evicted
    await runner.checkpoint()
    changelog = [r for r in h.sink.written[-1].records[0] if r.topic == "changelog"]
    assert [(r.key, r.value) for r in changelog] == [(SID.encode(), None)]


async def run_until(runner: Runner, condition: object, timeout_s: float = 15.0) -> None:
    """Run the loop until `condition()` holds, then stop it (with its final checkpoint)."""
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await wait_for(condition, timeout_s)  # type: ignore[arg-type]
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_the_loop_publishes_every_interval_and_commits_every_commit_interval() -> None:
    h = make_runner(commit_interval_s=0.5)
    h.source.batches.append([record(0, 0, ingested(0))])
    start = h.clock.monotonic()
    await h.runner.on_assigned([0])
    first_publish: list[float] = []
    commit: list[float] = []

    def seen() -> bool:
        if not first_publish and any("snapshots" in topics(box) for box in h.sink.written):
            first_publish.append(h.clock.monotonic() - start)
            assert h.sink.committed == {}, "the first publish comes well before the commit"
        if not commit and h.sink.committed == {0: 1}:
            commit.append(h.clock.monotonic() - start)
        return bool(commit)

    await run_until(h.runner, seen)
    assert first_publish[0] < 0.5 <= commit[0]


async def test_while_catching_up_snapshots_wait_for_the_checkpoint() -> None:
    source = FakeSource([[record(0, 0, ingested(0))]], waiting=1_000)
    h = make_runner(source=source, commit_interval_s=0.3, catchup_backlog=100)
    runner, sink = h.runner, h.sink
    await runner.on_assigned([0])
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await wait_for(lambda: bool(sink.written))
    # No publish-only write happened before it: the first write is the checkpoint itself.
    assert sorted(set(topics(sink.written[0]))) == ["changelog", "snapshots"]
    assert sink.written[0].offsets == {0: 1}
    source.waiting = 0  # caught up: publishing every interval resumes
    source.batches.append([record(0, 1, ingested(1))])
    await wait_for(lambda: any(topics(box) == ["snapshots"] for box in sink.written))
    stop.set()
    await asyncio.wait_for(task, 15)


async def test_catching_up_needs_more_waiting_records_than_the_threshold() -> None:
    h = make_runner(source=FakeSource(waiting=100), catchup_backlog=100)
    assert not h.runner.catching_up()
    h.source.waiting = 101
    assert h.runner.catching_up()
    h.runner.catchup_backlog = 0  # disabled
    assert not h.runner.catching_up()


def test_the_commit_interval_is_never_shorter_than_the_publish_interval() -> None:
    runner = make_runner(commit_interval_s=0.001).runner
    assert runner.schedule.commit_interval_s == runner.schedule.publish_interval_s == 0.01
    assert make_runner().runner.schedule.commit_interval_s == 0.01


def snapshot_keys(box: Outbox) -> list[bytes]:
    return [r.key or b"" for rs in box.records.values() for r in rs if r.topic == "snapshots"]


def published(sink: FakeSink) -> list[bytes]:
    return [key for box in sink.written for key in snapshot_keys(box)]


async def test_slices_spread_the_sessions_and_publish_each_at_most_once_per_interval() -> None:
    bodies = [ingested(0, sid=f"s{n}") for n in range(24)]
    source = FakeSource([[record(0, n, body) for n, body in enumerate(bodies)]])
    h = make_runner(source=source, publish_slices=4, commit_interval_s=60.0, publish_interval_s=0.4)
    await h.runner.on_assigned([0])
    await run_until(h.runner, lambda: len(published(h.sink)) == 24)
    writes = [box for box in h.sink.written if snapshot_keys(box)]
    assert len(writes) >= 2, "the sessions went out in several slices"
    assert sorted(published(h.sink)) == sorted(f"s{n}".encode() for n in range(24))


async def test_the_changelog_encoder_is_the_one_configured() -> None:
    h = make_runner(encode_changelog=encode_state_v1)
    await h.runner.on_assigned([0])
    h.runner.fold([record(0, 0, ingested(0))])
    await h.runner.checkpoint()
    changelog = [value or b"" for _, value in records_of(h.sink, "changelog")]
    assert [orjson.loads(value)["v"] for value in changelog] == [1]
    assert decode_state(changelog[0], 0).state.source_segments == 1


class EndlessSource(FakeSource):
    """Every fetch brings a new segment for each of a few sessions, and takes 5 ms on the
    fake clock: all sessions change all the time."""

    def __init__(self, sessions: int, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.sessions, self.seq_no, self.offset = sessions, 0, 0

    async def fetch(self, timeout_s: float) -> Sequence[InputRecord]:
        await asyncio.sleep(0)
        assert self.clock is not None
        self.clock.advance(min(timeout_s, 0.005))
        self.seq_no += 1
        batch = []
        for n in range(self.sessions):
            batch.append(record(0, self.offset, ingested(self.seq_no, sid=f"s{n}")))
            self.offset += 1
        return batch


class TimedStore(SessionStore):
    """Notes, per session, the fake-clock time of each tick that published it."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(Rules())
        self.clock = clock
        self.refreshed: dict[str, list[float]] = {}

    def tick(self, now: int | Mapping[int, int], slot: int = 0, slots: int = 1) -> TickResult:
        result = super().tick(now, slot, slots)
        for snapshot in result.snapshots:
            self.refreshed.setdefault(snapshot.session_id, []).append(self.clock.monotonic())
        return result


async def test_no_session_is_refreshed_twice_within_an_interval_by_the_loop() -> None:
    interval = 0.2
    clock = FakeClock(wall_ms=T0 + 3_600_000)  # every segment of the run is in its past
    store = TimedStore(clock)
    source = EndlessSource(16, clock)
    h = make_runner(
        source=source, clock=clock, store=store, publish_slices=4, publish_interval_s=interval
    )
    await h.runner.on_assigned([0])
    start = clock.monotonic()
    await run_until(h.runner, lambda: clock.monotonic() - start >= 1.5)
    assert len(store.refreshed) == 16
    for session_id, times in store.refreshed.items():
        gaps = [b - a for a, b in itertools.pairwise(times[:-1])]  # the last: shutdown's
        assert len(gaps) >= 3, session_id
        assert min(gaps) >= interval - 1e-9, (session_id, gaps)
