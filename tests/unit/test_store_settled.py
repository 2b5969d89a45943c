"""The tick's shortcut for settled sessions changes nothing a tick returns.

`SessionStore` skips rebuilding ended sessions whose snapshot can no longer change. Each
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
    seen: list[Ticked] = []
    for index, now in enumerate(ticks):
        if between is not None:
            between(store, index)
        result = store.tick(now)
        state = store.live.get(SID)
        seen.append(
            (
                [(s.session_id, s.payload) for s in result.snapshots],
                [s.session_id for s in result.changed],
                [s.session_id for s in result.evicted],
                [s.session_id for s in result.forgotten],
                None if state is None else state.exported,
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
