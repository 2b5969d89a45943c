"""RecentDurations and RecentTranscodes: the newest RECENT_SEGMENTS, and what health reads."""

from __future__ import annotations

import statistics

import pytest

from worker.parts.recent import NO_RATIO, RecentDurations, RecentTranscodes
from worker.rules import RECENT_SEGMENTS

ABC = ("a", "b", "c")


def test_durations_keep_the_newest_seq_nos() -> None:
    durations = RecentDurations()
    for seq_no in [5, 3, *range(6, 6 + RECENT_SEGMENTS)]:
        durations.add(seq_no, seq_no / 2)
    durations.add(0, 9.0)  # older than all of a full window: not kept
    assert len(durations) == RECENT_SEGMENTS
    assert list(durations.items()) == list(range(6, 6 + RECENT_SEGMENTS))


def test_median_duration_is_the_statistics_median() -> None:
    durations = RecentDurations()
    assert durations.median_duration() == 0.0
    values = [2.0, 1.5, 4.0, 2.5]
    for seq_no, value in enumerate(values):
        durations.add(seq_no, value)
        assert durations.median_duration() == statistics.median(values[: seq_no + 1])


def test_durations_wire_round_trip_keeps_the_first_place_and_last_value() -> None:
    durations = RecentDurations({1: 2.0, 2: 3.0})
    assert durations.to_wire() == [(1, 2.0), (2, 3.0)]
    assert RecentDurations.from_wire([[1, 9.0], [2, 3.0], [1, 2.0]]) == durations


def test_transcodes_merge_a_retry_and_drop_the_oldest_when_full() -> None:
    transcodes = RecentTranscodes()
    transcodes.add(1, NO_RATIO, ("a",))
    transcodes.add(1, 0.5, ("b",))  # a retry: names united, the ratio it has kept
    assert transcodes.items() == {1: (0.5, ("a", "b"))}
    for seq_no in range(2, 2 + RECENT_SEGMENTS):
        transcodes.add(seq_no, NO_RATIO, ABC)
    assert list(transcodes.items()) == list(range(2, 2 + RECENT_SEGMENTS))
    assert len(transcodes.names()) == RECENT_SEGMENTS


def test_mean_ratio_skips_transcodes_without_a_time() -> None:
    transcodes = RecentTranscodes()
    transcodes.add(1, NO_RATIO, ABC)
    assert transcodes.mean_ratio() is None
    transcodes.add(2, 1.0, ABC)
    transcodes.add(3, 2.0, ABC)
    assert transcodes.mean_ratio() == 1.5


def test_missing_names_any_entry_lacks() -> None:
    expected = frozenset(ABC)
    transcodes = RecentTranscodes({1: (None, ABC), 2: (None, ABC)})
    assert not transcodes.missing(expected)
    transcodes.add(3, NO_RATIO, ("a",))
    assert transcodes.missing(expected) == {"b", "c"}
    assert RecentTranscodes().missing(expected) == frozenset()


def test_transcodes_wire_round_trips_in_both_formats() -> None:
    one_name = RecentTranscodes({1: (0.5, ABC), 2: (None, ABC)})
    assert one_name.to_wire() == ([1, 2], [0.5, None], [ABC], None)
    mixed = RecentTranscodes({1: (0.5, ABC), 2: (None, ("a",))})
    assert mixed.to_wire() == ([1, 2], [0.5, None], [ABC, ("a",)], [0, 1])
    for transcodes in (one_name, mixed):
        assert RecentTranscodes.from_wire(*transcodes.to_wire()) == transcodes
        assert RecentTranscodes.from_wire_v1(transcodes.to_wire_v1()) == transcodes


def test_transcodes_from_wire_reads_a_repeated_seq_no_as_a_dict_did() -> None:
    transcodes = RecentTranscodes.from_wire([1, 2, 1], [0.5, None, 0.25], [ABC], None)
    assert transcodes.items() == {1: (0.25, ABC), 2: (None, ABC)}


def test_transcodes_from_wire_refuses_lists_of_other_lengths() -> None:
    cases: list[tuple[list[int], list[float | None], list[int] | None]] = [
        ([1, 2], [0.5], None),
        ([1, 2], [0.5, 0.5], [0]),
    ]
    for seq_nos, ratios, index in cases:
        with pytest.raises(ValueError, match="zip"):
            RecentTranscodes.from_wire(seq_nos, ratios, [ABC], index)


def test_transcodes_from_wire_reads_only_null_ratios_as_no_ratio() -> None:
    """Ratios are interleaved by slices: a null there is a transcode without a time, a null
    seqNo is still refused."""
    transcodes = RecentTranscodes.from_wire([1, 2, 3], [None, 0.5, None], [ABC], None)
    assert transcodes.items() == {1: (None, ABC), 2: (0.5, ABC), 3: (None, ABC)}
    with pytest.raises(TypeError):
        RecentTranscodes.from_wire([1, None], [0.5, None], [ABC], None)  # type: ignore[list-item]
