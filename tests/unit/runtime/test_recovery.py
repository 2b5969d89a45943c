"""The recovery part alone: parking, take-back and restore into a store."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from tests.unit.builders import decode, fold_bodies, ingested, segments
from worker.changelog import encode_state
from worker.metrics import WorkerMetrics
from worker.rules import Rules
from worker.runtime import ChangelogRecords
from worker.runtime.recovery import Recovery
from worker.store import SessionStore


class Parts:
    """A recovery over a store, with a changelog and group offsets the test sets."""

    def __init__(self) -> None:
        self.store = SessionStore(Rules())
        self.changelog: ChangelogRecords = {}
        self.group: dict[int, int | None] | None = {}
        self.times: list[dict[int, int]] = []
        self.recovery = Recovery(
            self.store,
            WorkerMetrics(CollectorRegistry()),
            self.read_changelog,
            self.read_committed,
            lambda newest: self.times.append(dict(newest)),
        )

    async def read_changelog(self, partitions: Sequence[int]) -> ChangelogRecords:
        return {p: self.changelog.get(p, {}) for p in partitions}

    async def read_committed(self, partitions: Sequence[int]) -> dict[int, int | None]:
        group = self.group
        return {} if group is None else {p: group[p] for p in partitions if p in group}

    def fold(self, sid: str, partition: int) -> None:
        self.store.apply(decode(ingested(0, sid=sid)), partition)


async def test_restore_loads_the_latest_states_and_sets_the_partition_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    parts = Parts()
    state = fold_bodies(segments(3))
    parts.changelog = {
        2: {b"x": b"garbage", state.session_id.encode(): encode_state(state, None, 7)}
    }
    with caplog.at_level(logging.ERROR):
        assert await parts.recovery.restore([2]) == 1
    assert parts.store.get(state.session_id) is not None
    assert parts.times == [{2: state.last_activity}]
    assert [r.getMessage() for r in caplog.records] == ["unreadable changelog record skipped"]
    assert await parts.recovery.restore([]) == 0


async def test_parked_sessions_come_back_only_with_an_unchanged_committed_offset() -> None:
    parts = Parts()
    parts.fold("a", 0)
    parts.fold("b", 1)
    parts.fold("c", 2)
    committed: dict[int, int | None] = {0: 5, 1: 5}  # partition 2: offset unknown
    assert parts.recovery.park([0, 1, 2], committed) == 3
    assert len(parts.store) == 0
    assert parts.recovery.parked == [0, 1]
    parts.group = {0: 5, 1: 9, 2: None}  # another member committed partition 1 meanwhile
    known: dict[int, int | None] = {}
    kept = await parts.recovery.take_back([0, 1, 2], known)
    assert kept == {0: 1}
    assert [s.session_id for s in parts.store.live.values()] == ["a"]
    assert known == {0: 5, 1: 9, 2: None}
    assert parts.recovery.parked == [], "what was not taken back is dropped"


async def test_nothing_is_taken_back_when_the_coordinator_does_not_answer() -> None:
    parts = Parts()
    parts.fold("a", 0)
    parts.recovery.park([0], {0: 5})
    parts.group = None
    assert await parts.recovery.take_back([0], {}) == {}
    assert len(parts.store) == 0
