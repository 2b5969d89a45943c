"""Failures: immutable, newest (ts, error) per seqNo, pruned below the health window."""

from __future__ import annotations

import pytest

from worker.parts.failures import NO_FAILURES, Failures


def test_with_failure_keeps_the_newest_per_seq_no() -> None:
    failures = NO_FAILURES.with_failure(3, 10, "b").with_failure(4, 11, "x")
    assert failures.with_failure(3, 9, "z") is failures  # older: unchanged
    assert failures.with_failure(3, 12, "a").items() == {3: (12, "a"), 4: (11, "x")}
    assert NO_FAILURES.items() == {}


def test_without_and_newer_than() -> None:
    failures = Failures.of({3: (1, "a"), 7: (2, "b"), 9: (3, "c")})
    assert failures.without(5) is failures
    assert list(failures.without(7).items()) == [3, 9]
    assert failures.newer_than(2) is failures
    assert list(failures.newer_than(7).items()) == [9]
    assert failures.newest_seq_no(4) == 9
    assert failures.newest_seq_no(12) == 12
    assert NO_FAILURES.newest_seq_no(4) == 4


def test_wire_round_trips_in_both_formats() -> None:
    failures = Failures.of({3: (1, "a"), 7: (2, "b")})
    assert failures.to_wire() == (3, 1, "a", 7, 2, "b")
    assert Failures.from_wire(list(failures.to_wire())) == failures
    assert failures.to_wire_v1() == [[3, 1, "a"], [7, 2, "b"]]
    assert Failures.from_wire_v1(failures.to_wire_v1()) == failures


def test_from_wire_of_none_is_the_shared_empty_value_and_junk_is_refused() -> None:
    assert Failures.from_wire([]) is NO_FAILURES
    for junk in (None, 0):
        with pytest.raises(TypeError):
            Failures.from_wire(junk)  # type: ignore[arg-type]
