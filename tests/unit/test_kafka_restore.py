"""The restore keeps only the latest value of each key as it reads."""

from __future__ import annotations

from worker.kafka.restore import LatestValues, keep_latest


def test_later_values_replace_earlier_ones_across_batches() -> None:
    latest: LatestValues = {}
    keep_latest(latest, [(b"a", b"1"), (b"b", b"1"), (b"a", b"2")])
    keep_latest(latest, [(b"b", b"2"), (b"c", b"1")])
    assert latest == {b"a": b"2", b"b": b"2", b"c": b"1"}


def test_a_tombstone_deletes_and_a_later_value_brings_the_key_back() -> None:
    latest: LatestValues = {}
    keep_latest(latest, [(b"a", b"1"), (b"b", b"1"), (b"a", None)])
    assert latest == {b"b": b"1"}
    keep_latest(latest, [(b"a", b"3"), (b"b", None), (b"never", None)])
    assert latest == {b"a": b"3"}


def test_keyless_records_are_ignored() -> None:
    latest: LatestValues = {}
    keep_latest(latest, [(None, b"x"), (None, None), (b"a", b"1")])
    assert latest == {b"a": b"1"}
