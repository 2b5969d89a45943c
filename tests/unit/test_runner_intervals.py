"""Publishing every publish interval, checkpointing every commit interval, catching up."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping, Sequence

import orjson

from tests.fakes import FakeRecord, FakeSink, FakeSource
from tests.unit.builders import SID, T0, ended, ingested, started
from tests.unit.test_runner import make_runner, record
from tests.unit.test_runner_pipelined import wait_for
from worker.changelog import decode_state, encode_state_v1
from worker.outbox import CheckpointError, InputRecord, Outbox
from worker.rules import Rules
from worker.store import TickResult, slot_of


def topics(sink: FakeSink, index: int) -> list[str]:
    return sorted(r.topic for rs in sink.written[index].records.values() for r in rs)


async def test_a_publish_between_checkpoints_writes_snapshots_only_and_commits_nothing() -> None:
    sink = FakeSink()
    runner = make_runner(sink, commit_interval_s=60.0)
    await runner.on_assigned([0])
    runner._process([record(0, 0, started()), FakeRecord(0, 1, b"k", b"{")])
    await runner._write(runner._prepare_all(commits=False))
    assert topics(sink, 0) == ["snapshots"]
    assert sink.written[0].offsets == {}
    assert sink.committed == {}
    runner._process([record(0, 2, ingested(0))])
    await runner._write(runner._prepare_all(commits=False))
    await runner.checkpoint()
    # The checkpoint saves what changed since the last one, once per session, with the dead
    # letter held since offset 1, and commits past everything folded.
    assert topics(sink, 2) == ["changelog", "dlq"]
    assert sink.committed == {0: 3}


async def test_the_changelog_record_written_at_a_checkpoint_is_the_latest_state() -> None:
    sink = FakeSink()
    runner = make_runner(sink, commit_interval_s=60.0)
    await runner.on_assigned([0])
    runner._process([record(0, 0, ingested(0))])
    await runner._write(runner._prepare_all(commits=False))
    runner._process([record(0, 1, ingested(1))])
    await runner._write(runner._prepare_all(commits=False))
    await runner.checkpoint()
    changelog = [r for r in sink.written[-1].records[0] if r.topic == "changelog"]
    assert len(changelog) == 1
    assert decode_state(changelog[0].value or b"", 0).state.source_segments == 2


async def test_a_session_forgotten_between_checkpoints_gets_only_its_tombstone() -> None:
    sink = FakeSink()
    now = [T0 + 10_000]
    rules = Rules(retention_ms=1_000, evicted_ttl_ms=1_000)
    runner = make_runner(sink, commit_interval_s=60.0)
    runner.store.rules = rules
    runner.clock_ms = lambda: now[0]
    await runner.on_assigned([0])
    runner._process([record(0, 0, started()), record(0, 1, ended(T0 + 1))])
    for step in range(4):  # publish, evict after retention, forget after the TTL
        now[0] += 1_500 * step
        await runner._write(runner._prepare_all(commits=False))
    assert SID not in runner.store.live
    assert SID not in runner.store.evicted
    await runner.checkpoint()
    changelog = [r for r in sink.written[-1].records[0] if r.topic == "changelog"]
    assert [(r.key, r.value) for r in changelog] == [(SID.encode(), None)]


async def test_the_loop_publishes_every_interval_and_commits_every_commit_interval() -> None:
    sink = FakeSink()
    source = FakeSource([[record(0, 0, ingested(0))]])
    runner = make_runner(sink, source=source, commit_interval_s=0.5)
    await runner.on_assigned([0])
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await wait_for(lambda: any("snapshots" in topics(sink, i) for i in range(len(sink.written))))
    assert sink.committed == {}, "the first publish comes well before the first commit"
    await wait_for(lambda: sink.committed == {0: 1})
    stop.set()
    await asyncio.wait_for(task, 2)


async def test_while_catching_up_snapshots_wait_for_the_checkpoint() -> None:
    sink = FakeSink()
    source = FakeSource([[record(0, 0, ingested(0))]], waiting=1_000)
    runner = make_runner(sink, source=source, commit_interval_s=0.3, catchup_backlog=100)
    await runner.on_assigned([0])
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await wait_for(lambda: bool(sink.written))
    # No publish-only write happened before it: the first write is the checkpoint itself.
    assert sorted(set(topics(sink, 0))) == ["changelog", "snapshots"]
    assert sink.written[0].offsets == {0: 1}
    source.waiting = 0  # caught up: publishing every interval resumes
    source.batches.append([record(0, 1, ingested(1))])
    await wait_for(lambda: any(topics(sink, i) == ["snapshots"] for i in range(len(sink.written))))
    stop.set()
    await asyncio.wait_for(task, 2)


async def test_catching_up_needs_more_waiting_records_than_the_threshold() -> None:
    runner = make_runner(FakeSink(), source=FakeSource(waiting=100), catchup_backlog=100)
    assert not runner.catching_up()
    runner.source = FakeSource(waiting=101)
    assert runner.catching_up()
    runner.catchup_backlog = 0  # disabled
    assert not runner.catching_up()


def test_the_commit_interval_is_never_shorter_than_the_publish_interval() -> None:
    runner = make_runner(FakeSink(), commit_interval_s=0.001)
    assert runner.commit_interval_s == runner.publish_interval_s
    assert make_runner(FakeSink()).commit_interval_s == runner.publish_interval_s


async def test_slices_spread_the_sessions_and_publish_each_at_most_once_per_interval() -> None:
    sink = FakeSink()
    bodies = [ingested(0, sid=f"s{n}") for n in range(24)]
    source = FakeSource([[record(0, n, body) for n, body in enumerate(bodies)]])
    runner = make_runner(sink, source=source, publish_slices=4, commit_interval_s=60.0)
    runner.publish_interval_s = 0.4
    await runner.on_assigned([0])
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await wait_for(lambda: len(published(sink)) == 24, timeout_s=3)
    stop.set()
    await asyncio.wait_for(task, 2)
    writes = [box for box in sink.written if snapshot_keys(box)]
    assert len(writes) >= 2, "the sessions went out in several slices"
    assert sorted(published(sink)) == sorted(f"s{n}".encode() for n in range(24))


def snapshot_keys(box: Outbox) -> list[bytes]:
    return [r.key or b"" for rs in box.records.values() for r in rs if r.topic == "snapshots"]


def published(sink: FakeSink) -> list[bytes]:
    return [key for box in sink.written for key in snapshot_keys(box)]


async def test_a_round_spreads_the_changelog_over_its_slices_and_commits_what_it_captured() -> None:
    sink = FakeSink()
    # 4 slices per 0.01 s publish interval, a commit every 0.02 s: 8 changelog slots.
    runner = make_runner(sink, publish_slices=4, commit_interval_s=0.02)
    assert runner.changelog_slots == 8
    await runner.on_assigned([0])
    runner._process([record(0, n, ingested(0, sid=f"s{n}")) for n in range(12)])
    for slot in range(4):  # an ordinary round: snapshots only
        await runner._write(runner._prepare_slice(slot))
    assert all(box.offsets == {} for box in sink.written)
    assert sorted(published(sink)) == sorted(f"s{n}".encode() for n in range(12))
    runner._begin_round()
    runner._process([record(0, 12, ingested(1, sid="s0"))])  # after the capture
    written_before = len(sink.written)
    for n in range(8):
        assert runner._round is not None, "the round lasts one slice per changelog slot"
        await runner._write(runner._prepare_slice(n % 4))
    assert runner._round is None
    round_writes = sink.written[written_before:]
    changelog_per_write = [
        [r.key for rs in box.records.values() for r in rs if r.topic == "changelog"]
        for box in round_writes
    ]
    assert sum(map(len, changelog_per_write)) == 12, "each session once, in its slot"
    assert sum(1 for keys in changelog_per_write if keys) >= 2, "spread over several slices"
    assert [box.offsets for box in round_writes] == [{}] * (len(round_writes) - 1) + [{0: 12}]
    s0 = next(
        decode_state(r.value or b"", 0).state
        for box in round_writes
        for rs in box.records.values()
        for r in rs
        if r.topic == "changelog" and r.key == b"s0"
    )
    assert s0.source_segments == 2, "encoded after the capture: it may hold more, never less"


async def test_a_failed_write_is_sent_again_before_anything_newer() -> None:
    sink = FakeSink(fail_next=[CheckpointError("broker away", retriable=True)])
    runner = make_runner(sink, publish_slices=2, commit_interval_s=60.0)
    await runner.on_assigned([0])
    runner._process([record(0, n, ingested(0, sid=f"s{n}")) for n in range(6)])
    await runner._write(runner._prepare_slice(0))  # fails
    assert sink.written == []
    runner._process([record(0, n + 6, ingested(1, sid=f"s{n}")) for n in range(6)])
    await runner._write(runner._prepare_slice(1))
    await runner._write(runner._prepare_slice(0))
    await runner.checkpoint()
    counts = [
        (r.key or b"", orjson.loads(r.value or b"")["sourceSegments"])
        for box in sink.written
        for rs in box.records.values()
        for r in rs
        if r.topic == "snapshots"
    ]
    for key in {key for key, _ in counts}:
        mine = [n for k, n in counts if k == key]
        assert mine == sorted(mine), f"{key!r}: an older snapshot came after a newer one"
    slot_0 = [f"s{n}".encode() for n in range(6) if slot_of(f"s{n}", 2) == 0]
    assert sorted(k for k, n in counts if n == 1) == slot_0, "the failed write went out later"


async def test_the_changelog_encoder_is_the_one_configured() -> None:
    sink = FakeSink()
    runner = make_runner(sink, encode_changelog=encode_state_v1)
    await runner.on_assigned([0])
    runner._process([record(0, 0, ingested(0))])
    await runner.checkpoint()
    changelog = [r.value or b"" for r in sink.written[-1].records[0] if r.topic == "changelog"]
    assert [orjson.loads(value)["v"] for value in changelog] == [1]
    assert decode_state(changelog[0], 0).state.source_segments == 1


class EndlessSource(FakeSource):
    """Every fetch brings a new segment for each of a few sessions: all change all the time."""

    def __init__(self, sessions: int) -> None:
        super().__init__()
        self.sessions, self.seq_no, self.offset = sessions, 0, 0

    async def fetch(self, timeout_s: float) -> Sequence[InputRecord]:
        await asyncio.sleep(0.005)
        self.seq_no += 1
        batch = []
        for n in range(self.sessions):
            batch.append(record(0, self.offset, ingested(self.seq_no, sid=f"s{n}")))
            self.offset += 1
        return batch


async def test_no_session_is_refreshed_twice_within_an_interval_by_the_loop() -> None:
    interval = 0.2
    runner = make_runner(FakeSink(), source=EndlessSource(16), publish_slices=4)
    runner.publish_interval_s = interval
    refreshed: dict[str, list[float]] = {}
    tick = runner.store.tick

    def timed_tick(now: int | Mapping[int, int], slot: int = 0, slots: int = 1) -> TickResult:
        result = tick(now, slot, slots)
        for snapshot in result.snapshots:
            refreshed.setdefault(snapshot.session_id, []).append(time.monotonic())
        return result

    runner.store.tick = timed_tick  # type: ignore[method-assign]
    await runner.on_assigned([0])
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await asyncio.sleep(1.5)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert len(refreshed) == 16
    for session_id, times in refreshed.items():
        gaps = [b - a for a, b in itertools.pairwise(times[:-1])]  # the last: shutdown's
        assert len(gaps) >= 3, session_id
        assert min(gaps) >= interval, (session_id, gaps)
