"""The partition clock: wall clock while caught up, event-time watermark while behind."""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.clock import PartitionClock, PartitionNows, everywhere

WALL = 1_700_000_600_000


@dataclass
class Scene:
    """A wall clock and per-partition backlogs the test moves by hand."""

    wall: int = WALL
    backlogs: dict[int, int | None] = field(default_factory=dict)
    asked: list[int] = field(default_factory=list)

    def wall_ms(self) -> int:
        return self.wall

    def backlog_of(self, partition: int) -> int | None:
        self.asked.append(partition)
        return self.backlogs.get(partition)

    def clock(self) -> PartitionClock:
        return PartitionClock(self.wall_ms, self.backlog_of)


def test_caught_up_is_the_wall_clock_whatever_the_watermark() -> None:
    scene = Scene(backlogs={0: 0})
    clock = scene.clock()
    clock.observe({0: WALL - 900_000})
    assert clock.caught_up(0)
    assert clock.now(0) == WALL
    scene.wall += 1_000
    assert clock.now(0) == WALL + 1_000


def test_behind_is_the_newest_event_time_folded_from_the_partition() -> None:
    scene = Scene(backlogs={0: 1})
    clock = scene.clock()
    clock.observe({0: WALL - 15_000})
    clock.observe({0: WALL - 16_000})  # older: the watermark only grows
    assert clock.watermark(0) == WALL - 15_000
    assert not clock.caught_up(0)
    assert clock.now(0) == WALL - 15_000
    scene.wall += 60_000  # the wall clock moving changes nothing while behind
    assert clock.now(0) == WALL - 15_000
    clock.observe({0: WALL - 14_000})
    assert clock.now(0) == WALL - 14_000


def test_an_unknown_backlog_counts_as_behind() -> None:
    scene = Scene(backlogs={0: None})
    clock = scene.clock()
    clock.observe({0: WALL - 30_000})
    assert clock.now(0) == WALL - 30_000
    assert clock.now(5) == WALL  # nothing folded from it: nothing to judge there


def test_partitions_keep_their_own_time() -> None:
    scene = Scene(backlogs={0: 0, 1: 5_000, 2: 1})
    clock = scene.clock()
    clock.observe({0: WALL - 1_000, 1: WALL - 40_000, 2: WALL - 20_000})
    assert [clock.now(p) for p in (0, 1, 2)] == [WALL, WALL - 40_000, WALL - 20_000]


def test_a_watermark_ahead_of_the_wall_clock_is_not_used() -> None:
    """One producer with a fast clock must not age every other session of its partition."""
    scene = Scene(backlogs={0: 3})
    clock = scene.clock()
    clock.observe({0: WALL + 120_000})
    assert clock.now(0) == WALL


def test_catching_up_hands_over_to_the_wall_clock_and_back() -> None:
    scene = Scene(backlogs={0: 10_000})
    clock = scene.clock()
    clock.observe({0: WALL - 20_000})
    assert clock.now(0) == WALL - 20_000
    scene.backlogs[0] = 0
    assert clock.now(0) == WALL
    # A consumer that could not fetch for a while falls behind again: the partition's time
    # steps back to the moments of its backlog rather than showing our lag as an outage.
    scene.backlogs[0] = 700
    assert clock.now(0) == WALL - 20_000


def test_nows_reads_the_wall_clock_once_and_each_backlog_once_per_tick() -> None:
    scene = Scene(backlogs={0: 0, 1: 2})
    clock = scene.clock()
    clock.observe({1: WALL - 9_000})
    nows = clock.nows()
    scene.wall += 500  # read once, when the tick began
    assert (nows[0], nows[1], nows[0], nows[1]) == (WALL, WALL - 9_000, WALL, WALL - 9_000)
    assert scene.asked == [0, 1]
    assert clock.nows()[0] == WALL + 500


def test_last_is_what_the_latest_tick_judged_a_partition_at() -> None:
    scene = Scene(backlogs={0: 4})
    clock = scene.clock()
    assert clock.last(0) == WALL  # never judged: the wall clock
    clock.observe({0: WALL - 5_000})
    assert clock.nows()[0] == WALL - 5_000
    clock.observe({0: WALL - 1_000})
    assert clock.last(0) == WALL - 5_000  # until the next tick
    assert clock.now(0) == WALL - 1_000
    assert clock.last(0) == WALL - 1_000


def test_partition_nows_computes_on_first_use_only() -> None:
    calls: list[int] = []

    def now_of(partition: int) -> int:
        calls.append(partition)
        return partition * 10

    nows = PartitionNows(now_of)
    assert (nows[3], nows[3], nows[4]) == (30, 30, 40)
    assert calls == [3, 4]
    assert everywhere(7)[123] == 7
