"""The checkpoint part alone: what each step's outbox holds, rounds, retries, drops."""

from __future__ import annotations

import orjson
from prometheus_client import CollectorRegistry

from tests.fakes import FakeSink
from tests.unit.builders import T0, decode, ingested
from tests.unit.runtime.harness import TOPICS
from worker.changelog import decode_state, encode_state
from worker.metrics import WorkerMetrics
from worker.outbox import CheckpointError, Outbox
from worker.rules import Rules
from worker.runtime.checkpoint import Checkpoints, Write
from worker.runtime.schedule import Step
from worker.store import SessionStore, slot_of

NOW = T0 + 10_000


class Bench:
    """A store and its checkpoints, folded into and ticked by hand."""

    def __init__(self, changelog_slots: int = 1) -> None:
        self.store = SessionStore(Rules())
        self.checkpoints = Checkpoints(
            TOPICS,
            WorkerMetrics(CollectorRegistry()),
            changelog_slots,
            encode_state,
            self.store.evicted,
            lambda: NOW,
        )
        self.sink = FakeSink()

    def fold(self, offset: int, body: dict[str, object], partition: int = 0) -> None:
        self.store.apply(decode(body), partition)
        self.checkpoints.outbox.offsets[partition] = offset + 1

    def prepare(self, step: Step, slots: int = 1) -> Write:
        slot = step.slot
        result = self.store.tick(NOW) if slot is None else self.store.tick(NOW, slot, slots)
        return self.checkpoints.prepare(step, result)

    async def write(self, step: Step, slots: int = 1) -> Write:
        write = self.prepare(step, slots)
        await self.checkpoints.write(self.sink, write)
        return write


def of_topic(box: Outbox, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    return [(r.key, r.value) for rs in box.records.values() for r in rs if r.topic == topic]


async def test_a_round_spreads_the_changelog_over_its_slices_and_commits_what_it_captured() -> None:
    bench = Bench(changelog_slots=8)
    for n in range(12):
        bench.fold(n, ingested(0, sid=f"s{n}"))
    for slot in range(4):  # an ordinary round of slices: snapshots only
        await bench.write(Step(slot, commits=False), slots=4)
    assert all(box.offsets == {} for box in bench.sink.written)
    keys = [k or b"" for box in bench.sink.written for k, _ in of_topic(box, "snapshots")]
    assert sorted(keys) == sorted(f"s{n}".encode() for n in range(12))
    before = len(bench.sink.written)
    later = next(f"s{n}" for n in range(12) if slot_of(f"s{n}", 8) != 0)
    """A session whose changelog slot comes after the round began."""
    for n in range(8):
        step = Step(n % 4, commits=n == 7, begins_round=n == 0, changelog_slot=n)
        await bench.write(step, slots=4)
        if n == 0:
            bench.fold(12, ingested(1, sid=later))  # after the capture
    round_writes = bench.sink.written[before:]
    changelog = [of_topic(box, "changelog") for box in round_writes]
    assert sum(map(len, changelog)) == 12, "each session once, in its slot"
    assert sum(1 for keys in changelog if keys) >= 2, "spread over several slices"
    offsets = [box.offsets for box in round_writes]  # (a slice with nothing sends nothing)
    assert offsets == [{}] * (len(offsets) - 1) + [{0: 12}]
    (value,) = [value for keys in changelog for key, value in keys if key == later.encode()]
    assert decode_state(value or b"", 0).state.source_segments == 2, "more, never less"
    assert bench.checkpoints.outbox.offsets == {0: 13}, "after the capture: the next round's"


async def test_a_failed_write_is_sent_again_before_anything_newer() -> None:
    bench = Bench()
    bench.sink.fail_next.append(CheckpointError("broker away", retriable=True))
    ids = [f"s{n}" for n in range(64)]
    sids = [s for s in ids if slot_of(s, 2) == 0][:3] + [s for s in ids if slot_of(s, 2) == 1][:3]
    for n, sid in enumerate(sids):
        bench.fold(n, ingested(0, sid=sid))
    await bench.write(Step(0, commits=False), slots=2)  # fails
    assert bench.sink.written == []
    assert bench.checkpoints.failed
    for n, sid in enumerate(sids):
        bench.fold(n + 6, ingested(1, sid=sid))
    await bench.write(Step(1, commits=False), slots=2)
    await bench.write(Step(0, commits=False), slots=2)
    await bench.write(Step(None, commits=True))
    counts = [
        (key or b"", orjson.loads(value or b"")["sourceSegments"])
        for box in bench.sink.written
        for key, value in of_topic(box, "snapshots")
    ]
    for key in {key for key, _ in counts}:
        mine = [n for k, n in counts if k == key]
        assert mine == sorted(mine), f"{key!r}: an older snapshot came after a newer one"
    slot_0 = sorted(sid.encode() for sid in sids[:3])
    assert sorted(k for k, n in counts if n == 1) == slot_0, "the failed write went out later"
    assert bench.sink.committed == {0: 12}


async def test_partitions_committed_before_a_failure_are_not_written_again() -> None:
    """The exactly-once sink commits partition by partition and says which did before one
    failed: the retry leaves those out, and their offsets count as committed."""
    bench = Bench()
    bench.sink.fail_next.append(CheckpointError("p1 aborted", retriable=True, committed=[0]))
    bench.fold(4, ingested(0, sid="a"), partition=0)
    bench.fold(8, ingested(0, sid="b"), partition=1)
    failed = await bench.write(Step(None, commits=True))
    assert failed.outbox.partitions() == {0, 1}, "the sink's outbox is left as it was"
    assert bench.checkpoints.committed == {0: 5}
    await bench.write(Step(None, commits=True))
    (retried,) = bench.sink.written
    assert retried.partitions() == {1}
    assert [key for key, _ in of_topic(retried, "snapshots")] == [b"b"]
    assert bench.checkpoints.committed == {0: 5, 1: 9}


async def test_a_publish_owes_the_changelog_to_the_next_checkpoint() -> None:
    bench = Bench()
    bench.fold(0, ingested(0))
    await bench.write(Step(None, commits=False))
    assert of_topic(bench.sink.written[0], "changelog") == []
    assert bench.sink.committed == {}
    await bench.write(Step(None, commits=True))
    assert len(of_topic(bench.sink.written[1], "changelog")) == 1
    assert of_topic(bench.sink.written[1], "snapshots") == [], "unchanged since the publish"
    assert bench.sink.committed == {0: 1}
    assert bench.checkpoints.committed == {0: 1}


async def test_revoked_partitions_are_dropped_from_what_is_owed_and_the_retry() -> None:
    bench = Bench()
    bench.sink.fail_next.append(CheckpointError("broker away", retriable=True))
    bench.fold(0, ingested(0, sid="a"), partition=0)
    bench.fold(0, ingested(0, sid="b"), partition=1)
    await bench.write(Step(None, commits=True))  # fails: held for a retry
    bench.checkpoints.drop_partitions([1])
    await bench.write(Step(None, commits=True))
    (box,) = bench.sink.written
    assert set(box.records) == {0}
    assert bench.sink.committed == {0: 1}
    assert not bench.checkpoints.failed
