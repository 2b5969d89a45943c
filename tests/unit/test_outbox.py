"""Record sizes, dead-letter truncation and screening against topic limits: pure functions."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.outbox import (
    DLQ_SHA256_HEADER,
    DLQ_TRUNCATED_HEADER,
    OutRecord,
    RecordLimits,
    dead_letter,
    fit_dead_letter,
    record_size,
    screen,
)


def letter(value: bytes, key: bytes | None = b"session-1") -> OutRecord:
    return dead_letter(
        "events.dlq", "events", 3, 1234, key, value, (("trace", b"abc"),), "invalid_json", "bad"
    )


def test_record_size_is_an_upper_bound_of_the_producers_own_estimate() -> None:
    from aiokafka.record.default_records import DefaultRecordBatchBuilder  # noqa: PLC0415

    cases: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]] = [
        (None, None, []),
        (b"k", b"v" * 1000, [("a", b"b")]),
        (b"k" * 300, b"v" * 70_000, [("h" * 200, b"x" * 20_000), ("n", None)]),
    ]
    for key, value, headers in cases:
        theirs = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        assert theirs <= record_size(key, value, headers) <= theirs + 64


def test_a_dead_letter_that_fits_is_unchanged() -> None:
    record = letter(b"{not json")
    assert fit_dead_letter(record, 10_000) is record


def test_a_dead_letter_over_the_limit_is_cut_to_fit_with_size_and_hash_headers() -> None:
    value = b"{" + b"x" * 50_000
    fitted = fit_dead_letter(letter(value), 20_000)
    assert fitted is not None
    assert fitted.value is not None
    assert value.startswith(fitted.value)
    assert record_size(fitted.key, fitted.value, fitted.headers) <= 20_000
    assert record_size(fitted.key, fitted.value + b"x", fitted.headers) > 20_000, "cut no more"
    headers = dict(fitted.headers)
    assert headers[DLQ_TRUNCATED_HEADER] == b"50001"
    assert headers[DLQ_SHA256_HEADER] == hashlib.sha256(value).hexdigest().encode()
    assert headers["trace"] == b"abc"
    assert headers["dlq.source.offset"] == b"1234"
    assert fitted.key == b"session-1"


def test_a_dead_letter_whose_key_alone_is_over_the_limit_cannot_be_written() -> None:
    assert fit_dead_letter(letter(b"{", key=b"k" * 5000), 2000) is None


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=5000), st.binary(max_size=300), st.integers(min_value=0, max_value=8000))
def test_a_fitted_dead_letter_always_fits_or_is_refused(
    value: bytes, key: bytes, limit: int
) -> None:
    fitted = fit_dead_letter(letter(value, key), limit)
    if fitted is not None:
        assert record_size(fitted.key, fitted.value, fitted.headers) <= limit
        assert value.startswith(fitted.value or b"")


def test_screen_truncates_dead_letters_and_holds_back_other_oversized_records() -> None:
    limits = RecordLimits(request_max=1_000_000, topics={"sessions": 3000})
    limits.compacted.add("sessions")
    small = OutRecord("sessions", b"a", b"{}")
    big = OutRecord("sessions", b"b", b"x" * 5000)
    keyless = OutRecord("sessions", None, b"{}")
    dlq = letter(b"y" * 2_000_000)
    screened = screen({0: [small, big], 1: [dlq, keyless]}, limits, "events.dlq")
    assert next(r for r, _ in screened.accepted) == small
    assert [(u.record, u.input_partition, u.reason) for u in screened.unwritten] == [
        (big, 0, "too_large"),
        (keyless, 1, "invalid_record"),
    ]
    (truncated,) = screened.truncated
    assert [r for r, _ in screened.accepted][1] == truncated
    assert all(size <= limits.of(r.topic) for r, size in screened.accepted)


def test_limits_only_go_down_when_learning_from_a_refusal() -> None:
    limits = RecordLimits(request_max=1_000_000, topics={"sessions": 5000})
    assert limits.of("dlq") == 1_000_000
    limits.learn("sessions", 3000)
    assert limits.of("sessions") == 2999
    limits.learn("sessions", 10_000)
    assert limits.of("sessions") == 2999
    limits.learn("dlq", 2_000_000)
    assert limits.of("dlq") == 1_000_000


def test_a_batch_refused_as_invalid_isolates_its_partition_then_the_culprit_is_left_out() -> None:
    limits = RecordLimits(request_max=1_000_000)
    good, bad = OutRecord("dlq", b"a", b"{1"), OutRecord("dlq", b"b", b"{2")
    limits.refuse("dlq", 0, [good, bad])
    assert limits.isolated == {("dlq", 0)}, "records go one per batch there now"
    limits.refuse("dlq", 0, [bad])  # refused again, alone
    limits.written([("dlq", 0)])
    assert limits.isolated == set()
    screened = screen({0: [good, bad, good]}, limits, "dlq")
    assert [r for r, _ in screened.accepted] == [good, good]
    assert [(u.record, u.reason) for u in screened.unwritten] == [(bad, "invalid_record")]
    again = screen({0: [bad]}, limits, "dlq")
    assert again.unwritten == [], "forgotten once left out"


def test_a_refused_record_is_known_by_its_whole_value() -> None:
    limits = RecordLimits(request_max=1_000_000)
    limits.refuse("dlq", 0, [OutRecord("dlq", b"k", b"{aa")])
    assert not limits.take_refused("dlq", b"k", b"{ab"), "same size, other bytes"
    assert not limits.take_refused("sessions", b"k", b"{aa")
    assert limits.take_refused("dlq", b"k", b"{aa")
