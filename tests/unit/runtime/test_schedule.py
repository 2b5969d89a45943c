"""The schedule alone: what is due at which `now` (no clock, no loop)."""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest

from worker.runtime.schedule import Schedule, Step


def steps(
    schedule: Schedule, until: float, every: float = 0.001, catching_up: bool = False
) -> list[tuple[float, Step]]:
    """Ask the schedule every `every` seconds from 0 to `until`: the steps with their time."""
    out: list[tuple[float, Step]] = []
    for n in range(round(until / every) + 1):
        now = n * every
        step = schedule.next(now, catching_up)
        if step is not None:
            out.append((now, step))
    return out


def test_one_slice_publishes_every_interval_and_checkpoints_every_commit_interval() -> None:
    schedule = Schedule(1.0, 5.0, slices=1, now=0.0)
    assert schedule.next(0.999, catching_up=False) is None
    due = steps(schedule, 10.0)
    assert [step.slot for _, step in due] == [None] * 10
    assert [round(t, 3) for t, step in due if step.commits] == [5.0, 10.0]
    assert all(not step.commits for t, step in due if round(t, 3) not in (5.0, 10.0))


def test_without_a_commit_interval_every_publish_is_a_checkpoint() -> None:
    schedule = Schedule(1.0, None, slices=1, now=0.0)
    assert schedule.commit_interval_s == 1.0
    assert all(step.commits for _, step in steps(schedule, 3.0))
    assert Schedule(1.0, 0.1, slices=1, now=0.0).commit_interval_s == 1.0


def test_the_fetch_waits_until_the_next_slice_at_most() -> None:
    schedule = Schedule(1.0, 5.0, slices=10, now=0.0)
    assert schedule.wait_s(0.04) == pytest.approx(0.06)
    assert schedule.wait_s(0.2) == 0.0
    assert Schedule(2.0, 5.0, slices=1, now=0.0).wait_s(0.0) == 0.5


def test_catching_up_skips_the_publishes_and_keeps_the_checkpoints() -> None:
    schedule = Schedule(1.0, 5.0, slices=10, now=0.0)
    due = steps(schedule, 10.0, catching_up=True)
    assert [(round(t, 3), step) for t, step in due] == [
        (5.0, Step(None, commits=True)),
        (10.0, Step(None, commits=True)),
    ]


def test_slices_visit_each_slot_once_per_interval_in_turn() -> None:
    schedule = Schedule(1.0, 60.0, slices=4, now=0.0)
    due = steps(schedule, 3.0)
    assert [step.slot for _, step in due][:8] == [0, 1, 2, 3, 0, 1, 2, 3]
    times: dict[int | None, list[float]] = defaultdict(list)
    for t, step in due:
        times[step.slot].append(t)
    for slot, seen in times.items():
        assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(seen)), slot


def test_a_late_slice_does_not_refresh_a_slot_within_its_interval() -> None:
    schedule = Schedule(1.0, 60.0, slices=2, now=0.0)
    assert schedule.next(0.5, False) == Step(0, commits=False)
    assert schedule.next(1.4, False) == Step(1, commits=False)  # late
    assert schedule.next(1.45, False) is None, "slot 0 was refreshed at 0.5: not before 1.5"
    assert schedule.next(1.5, False) == Step(0, commits=False)


def test_a_round_writes_one_changelog_slot_per_slice_and_its_last_commits() -> None:
    schedule = Schedule(1.0, 2.0, slices=4, now=0.0)
    assert schedule.changelog_slots == 8
    due = [step for _, step in steps(schedule, 4.5)]
    begins = [n for n, step in enumerate(due) if step.begins_round]
    first = due[begins[0] : begins[0] + 8]
    assert [step.changelog_slot for step in first] == list(range(8))
    assert [step.commits for step in first] == [False] * 7 + [True]
    assert all(step.changelog_slot is None for step in due[: begins[0]])


def test_checkpointing_everything_ends_the_round_in_progress() -> None:
    schedule = Schedule(1.0, 2.0, slices=4, now=0.0)
    steps(schedule, 2.3)
    assert schedule.in_round
    assert schedule.tick_all(2.3, commits=True) == Step(None, commits=True)
    assert not schedule.in_round
    assert schedule.next(2.31, False) is None, "every slot was just refreshed"
