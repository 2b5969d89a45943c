"""`now` per input partition (semantics.md, "The clock"): the wall clock while the worker is
caught up on a partition, that partition's event-time watermark while it is behind.

So consumer lag never looks like an outage: while a backlog is folded, every session is
judged at the newest event time folded from its partition, which is what a replay of the
same events shows; once caught up, the wall clock takes over and a stream that really
stopped is seen within an interval.

Caught up means a backlog of 0 records against the end offset the brokers reported in the
partition's latest fetch response (cached by the consumer, no extra request): the records
that arrived since are the "give or take one fetch". No larger tolerance: N records waiting
span N / rate seconds of event time, minutes on a quiet partition, and judging at the wall
clock while they wait would show exactly the false stall this clock exists to prevent;
judging at the watermark a fetch too long only trails the wall clock by the fetch latency.

Pure: fed the newest event timestamps and asked each partition's backlog through an
injected function; the wall clock is injected too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping


class PartitionNows(dict[int, int]):
    """One tick's `now` per partition, each computed on first use (then the same all tick)."""

    __slots__ = ("_now_of",)

    def __init__(self, now_of: Callable[[int], int]) -> None:
        super().__init__()
        self._now_of = now_of

    def __missing__(self, partition: int) -> int:
        now = self[partition] = self._now_of(partition)
        return now


def everywhere(now_ms: int) -> PartitionNows:
    """The same `now` for every partition (stream time in replays, tests, benchmarks)."""
    return PartitionNows(lambda _: now_ms)


class PartitionClock:
    """Answers `now(partition)`. It may step back when a caught-up partition falls behind
    (a consumer that could not fetch for a while): the sessions then show the moments of
    the backlog again, as the spec asks, rather than an outage that was only our lag."""

    def __init__(self, wall_ms: Callable[[], int], backlog_of: Callable[[int], int | None]) -> None:
        """`backlog_of(partition)`: records waiting after the last one handed out, None while
        unknown (no fetch response yet since the partition was assigned): then it is behind."""
        self._wall_ms = wall_ms
        self._backlog_of = backlog_of
        self._watermarks: dict[int, int] = {}
        self._last: dict[int, int] = {}
        """The `now` last answered per partition (see `last`)."""

    def observe(self, newest: Mapping[int, int]) -> None:
        """Fold the newest event timestamp seen per partition into its watermark. Kept for
        the process's life (a few ints per partition), so sessions kept through a rebalance
        find their partition's time again."""
        watermarks = self._watermarks
        for partition, timestamp in newest.items():
            if timestamp > watermarks.get(partition, timestamp - 1):
                watermarks[partition] = timestamp

    def watermark(self, partition: int) -> int | None:
        return self._watermarks.get(partition)

    def caught_up(self, partition: int) -> bool:
        return self._backlog_of(partition) == 0

    def now(self, partition: int) -> int:
        return self._now_at(partition, self._wall_ms())

    def nows(self) -> PartitionNows:
        """`now` of every partition for one tick, against one reading of the wall clock."""
        wall = self._wall_ms()
        return PartitionNows(lambda partition: self._now_at(partition, wall))

    def last(self, partition: int) -> int:
        """The `now` the latest tick judged the partition at (the wall clock if none did):
        what the published snapshots show, for views that rebuild one between ticks."""
        last = self._last.get(partition)
        return self._wall_ms() if last is None else last

    def _now_at(self, partition: int, wall: int) -> int:
        now = wall
        if not self.caught_up(partition):
            watermark = self._watermarks.get(partition)
            # Never ahead of the wall clock: one producer's fast clock must not age the rest.
            if watermark is not None and watermark < wall:
                now = watermark
        self._last[partition] = now
        return now
