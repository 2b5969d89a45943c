"""The tick's shortcut for settled sessions changes nothing a tick returns.

`SessionStore` skips rebuilding sessions whose snapshot can no longer change (ended with
empty rate windows, inactive, or without a segment yet). Each
scenario runs twice, with the shortcut and with it disabled, and every tick's result
(snapshot payloads, changelog, evictions, tombstones) and the exported numbers must match.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.unit.builders import (
    DEFAULT_RULES,
    SID,
    T0,
    Json,
    decode,
    ended,
    ingested,
    seg_ts,
    segments,
    started,
)
from worker.metrics import SessionCollector
from worker.publisher import Rendered, render_snapshot
from worker.rules import Rules
from worker.state import SessionState
from worker.store import SessionStore

Ticked = tuple[list[tuple[str, bytes]], list[str], list[str], list[str], object]
STEP = 1_000
RETENTION = DEFAULT_RULES.retention_ms


class _NeverSettled(set[str]):
    """Disables the shortcut: nothing is ever remembered as settled."""

    def add(self, element: str) -> None:
        pass


def run(
    bodies: list[Json], ticks: list[int], settle: bool, between: Callable[..., None] | None = None
) -> list[Ticked]:
    store = SessionStore(DEFAULT_RULES)
    if not settle:
        store._settled = _NeverSettled()
    for body in bodies:
        store.apply(decode(body), 0)
    collector = SessionCollector(list, 0)
    seen: list[Ticked] = []
    for index, now in enumerate(ticks):
        if between is not None:
            between(store, index)
        result = store.tick(now)
        collector.published(result)
        state = store.live.get(SID)
        seen.append(
            (
                [(s.session_id, s.payload) for s in result.snapshots],
                [s.session_id for s in result.changed],
                [s.session_id for s in result.evicted],
                [s.session_id for s in result.forgotten],
                None if state is None else collector.values.get(SID),
            )
        )
    return seen


def every_second(start: int, seconds: int) -> list[int]:
    return [start + n * STEP for n in range(seconds)]


def test_ended_session_until_eviction() -> None:
    bodies = [started(), *segments(5), ended(seg_ts(5))]
    ticks = every_second(seg_ts(5), 30) + [seg_ts(5) + RETENTION + n for n in range(3)]
    assert run(bodies, ticks, settle=True) == run(bodies, ticks, settle=False)


def test_timed_out_session_until_eviction() -> None:
    idle = DEFAULT_RULES.idle_timeout_ms
    bodies = [started(), *segments(2)]
    ticks = [seg_ts(1) + idle + n * STEP for n in range(15)]
    ticks += [ticks[-1] + RETENTION + n for n in range(3)]
    assert run(bodies, ticks, settle=True) == run(bodies, ticks, settle=False)


def test_ended_session_without_segments() -> None:
    bodies = [started(), ended(T0 + 10)]
    ticks = [*every_second(T0 + 10, 5), T0 + 10 + RETENTION + 1]
    assert run(bodies, ticks, settle=True) == run(bodies, ticks, settle=False)


@pytest.mark.parametrize("at_tick", [3, 15, 25])
def test_event_after_settling_is_published(at_tick: int) -> None:
    bodies = [*segments(3), ended(seg_ts(3))]
    ticks = every_second(seg_ts(3), 30)

    def late_event(store: SessionStore, index: int) -> None:
        if index == at_tick:
            store.apply(decode(ingested(7, ticks[index] - 1)), 0)

    assert run(bodies, ticks, True, late_event) == run(bodies, ticks, False, late_event)


def test_restored_session_is_republished() -> None:
    bodies = [*segments(3), ended(seg_ts(3))]
    ticks = every_second(seg_ts(3), 20)

    def restore(store: SessionStore, index: int) -> None:
        if index == 15:
            store.restore(store.live[SID], None)

    assert run(bodies, ticks, True, restore) == run(bodies, ticks, False, restore)
    assert run(bodies, ticks, True, restore)[15][0]  # republished after the restore


def test_the_shortcut_is_taken_once_the_windows_are_empty() -> None:
    store = SessionStore(DEFAULT_RULES)
    for body in [*segments(3), ended(seg_ts(3))]:
        store.apply(decode(body), 0)
    store.tick(seg_ts(3))
    assert SID not in store._settled  # rates still decaying: rebuilt every tick
    store.tick(seg_ts(3) + 20_000)
    assert SID in store._settled
    store.apply(decode(ingested(9)), 0)
    assert SID not in store._settled


# ---------------------------------------------------------------------------- inactive

INACTIVE_AFTER = DEFAULT_RULES.inactive_after_ms
IDLE = DEFAULT_RULES.idle_timeout_ms


def test_inactive_session_through_its_time_out_until_eviction() -> None:
    bodies = [started(), *segments(5)]
    ticks = every_second(seg_ts(4), 90)
    ticks += [seg_ts(4) + IDLE + n * STEP for n in range(-2, 3)]
    ticks += [seg_ts(4) + IDLE + RETENTION + n for n in range(3)]
    assert run(bodies, ticks, settle=True) == run(bodies, ticks, settle=False)


@pytest.mark.parametrize("at_tick", [30, 65, 80])
def test_a_source_segment_wakes_an_inactive_session_up(at_tick: int) -> None:
    bodies = [*segments(5)]
    ticks = every_second(seg_ts(4), 100)

    def resumed(store: SessionStore, index: int) -> None:
        if index == at_tick:
            store.apply(decode(ingested(5, ticks[index] - 1)), 0)

    settled = run(bodies, ticks, True, resumed)
    assert settled == run(bodies, ticks, False, resumed)
    assert settled[at_tick][0], "published again with the segment"


def test_inactive_sessions_are_not_rebuilt_and_not_republished() -> None:
    built: list[str] = []
    counting_on = [False]

    def counting(state: SessionState, now_ms: int, rules: Rules) -> Rendered:
        if counting_on[0]:
            built.append(state.session_id)
        return render_snapshot(state, now_ms, rules)

    store = SessionStore(DEFAULT_RULES, render=counting)
    for body in segments(5):
        store.apply(decode(body), 0)
    last = seg_ts(4)
    published = [len(store.tick(now).snapshots) for now in every_second(last, 75)]
    # Healthy, decaying rates, the stall issue once, then inactive once: then nothing.
    assert published[INACTIVE_AFTER // STEP + 1] == 1
    assert sum(published[INACTIVE_AFTER // STEP + 2 :]) == 0
    counting_on[0] = True
    for now in every_second(last + 80_000, 100):
        assert store.tick(now).snapshots == []
    assert built == []


def test_a_kept_inactive_session_is_not_republished_and_a_restored_one_once() -> None:
    store = SessionStore(DEFAULT_RULES)
    for body in segments(5):
        store.apply(decode(body), 2)
    inactive_at = seg_ts(4) + INACTIVE_AFTER + 1
    assert store.tick(inactive_at).snapshots[0].session["isHealthy"] is None

    store.adopt(store.take_partitions([2])[2])  # kept through a rebalance
    assert store.tick(inactive_at + STEP).snapshots == []
    assert SID in store._settled

    state = store.take_partitions([2])[2].live[0]
    store.restore(state, None)  # read back from the changelog: republished once
    assert len(store.tick(inactive_at + 2 * STEP).snapshots) == 1
    assert store.tick(inactive_at + 3 * STEP).snapshots == []
    assert SID in store._settled


def test_a_session_that_never_had_a_segment_settles_until_its_time_out() -> None:
    bodies = [started()]
    ticks = [*every_second(T0, 5), T0 + IDLE + 1, T0 + IDLE + RETENTION + 2]
    assert run(bodies, ticks, settle=True) == run(bodies, ticks, settle=False)
