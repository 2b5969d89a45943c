"""decode_fetch: a whole fetch validated at once gives exactly decode_event's verdicts."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import worker.events
from tests.unit.builders import (
    FAR_FUTURE,
    SID,
    T0,
    Json,
    ended,
    failed,
    ingested,
    profile,
    recording,
    started,
    transcoded,
)
from worker.events import FETCH_CHUNK, InvalidReason, InvalidRecord, decode_event, decode_fetch

Record = tuple[bytes, bytes | None]


def raw(body: Json) -> bytes:
    return json.dumps(body).encode()


VALID: list[Json] = [
    started(),
    started(profiles=[profile("720p")], kind="live", projectId="p"),
    ingested(1),
    ingested(2, sid="other"),
    transcoded(1),
    transcoded(2, transcode_time=1.5),
    failed(3),
    recording("ready", T0, recordingUrl="https://x/y.m3u8"),
    ended(T0 + 10),
]
INVALID: list[bytes] = [
    raw(started(profiles=[profile("720p", width="wide")])),  # invalid_metadata, folded too
    raw(started(kind=7, userId=["u"])),
    raw(transcoded(4, renditions={"720p": 1}) | {"renditions": [{"name": "a", "bytes": 1}] * 2}),
    raw(ingested(5) | {"seqNo": -1}),
    raw(ingested(6, ts=FAR_FUTURE + 3_600_000)),
    raw({"type": "segment.unknown", "sessionId": SID, "timestamp": T0}),
    raw({"sessionId": SID}),
    b"not json",
    b"",
    b" ",
    b"1",
    b"[]",
    b'"text"',
    b"null",
]
HOSTILE: list[bytes] = [
    # Fragments that shift a naive join of the values: each is invalid alone.
    b'{"a":[{}',
    b'{"a":{"b":{}',
    b"}]}",
    b"}}",
    b'{"a":"',
    b'"}',
    b'"},{"b":1}',
    b"},{",
    b"}\n,",
    b'{"type":"session.ended","sessionId":"sess-1","timestamp":1700000000000,"z":[[{}',
    b'{}]]},{"type":"session.ended","sessionId":"sess-1","timestamp":1700000000001}',
    b'{}}},"1":{"type":"session.ended","sessionId":"sess-1","timestamp":1700000000002}',
    b'{"a":"x\\',
    b'{"a":1}}',
    b'{"a":1},{"b":2}',
    raw(ingested(7)) + b"," + raw(ingested(8)),
    raw(ingested(9))[:-1],
    raw(ingested(10)) + b"}",
    b"\xff\xfe",
    b'{"a":"\xe9"}',
]


@st.composite
def values(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["valid", "invalid", "hostile", "slice", "joined"]))
    if kind == "valid":
        return raw(draw(st.sampled_from(VALID)))
    if kind == "invalid":
        return draw(st.sampled_from(INVALID))
    if kind == "hostile":
        return draw(st.sampled_from(HOSTILE))
    whole = raw(draw(st.sampled_from(VALID)))
    if kind == "slice":
        start = draw(st.integers(0, len(whole)))
        return whole[start : draw(st.integers(start, len(whole)))]
    separator = draw(st.sampled_from([b",", b"\n,", b"", b"}{", b"]", b"\n"]))
    return whole + separator + draw(st.sampled_from(HOSTILE + [raw(v) for v in VALID]))


def keys_for(value: bytes) -> st.SearchStrategy[bytes | None]:
    return st.sampled_from([None, SID.encode(), b"other", b"", value[:8]])


@st.composite
def fetches(draw: st.DrawFn) -> list[Record]:
    """Mostly valid values (the shared path), with a few others among them or none."""
    chosen = [raw(body) for body in draw(st.lists(st.sampled_from(VALID), max_size=40))]
    for value in draw(st.lists(values(), max_size=3)):
        chosen.insert(draw(st.integers(0, len(chosen))), value)
    return [(value, draw(keys_for(value))) for value in chosen]


def by_record(records: list[Record], now_ms: int) -> list[Event | InvalidRecord]:
    return [decode_event(value, key, now_ms) for value, key in records]


Event = worker.events.Event


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(records=fetches(), now_ms=st.sampled_from([FAR_FUTURE, T0, T0 - 400_000]))
def test_a_fetch_decodes_exactly_as_record_by_record(records: list[Record], now_ms: int) -> None:
    assert decode_fetch(records, now_ms) == by_record(records, now_ms)


def test_every_hostile_value_between_valid_ones_gets_its_own_verdict() -> None:
    for hostile in HOSTILE:
        records: list[Record] = [(raw(ingested(n)), SID.encode()) for n in range(3)]
        records.insert(1, (hostile, SID.encode()))
        decoded = decode_fetch(records, FAR_FUTURE)
        assert decoded == by_record(records, FAR_FUTURE), hostile
        assert isinstance(decoded[1], InvalidRecord), hostile


def test_a_pair_of_values_that_frame_each_other_is_two_invalid_records() -> None:
    # Joined as one array they read as two valid events (the count matches): alone, neither
    # is JSON.
    records: list[Record] = [(HOSTILE[9], SID.encode()), (HOSTILE[10], SID.encode())]
    assert [type(r) for r in decode_fetch(records, FAR_FUTURE)] == [InvalidRecord] * 2
    assert decode_fetch(records, FAR_FUTURE) == by_record(records, FAR_FUTURE)


def test_the_later_checks_hold_on_the_shared_path() -> None:
    records: list[Record] = [
        (raw(ingested(1)), b"someone-else"),
        (raw(ingested(2, ts=FAR_FUTURE + 3_600_000)), None),
        (raw(transcoded(3) | {"renditions": [{"name": "a", "bytes": 1}] * 2}), None),
        (raw(started(profiles=[profile("720p", fps="x")])), SID.encode()),
        (raw(ingested(4)), None),
    ]
    reasons = [
        r.reason if isinstance(r, InvalidRecord) else None
        for r in decode_fetch(records, FAR_FUTURE)
    ]
    assert reasons == [
        InvalidReason.KEY_MISMATCH,
        InvalidReason.FUTURE_TIMESTAMP,
        InvalidReason.SCHEMA,
        InvalidReason.INVALID_METADATA,
        None,
    ]
    assert decode_fetch(records, FAR_FUTURE) == by_record(records, FAR_FUTURE)


def count_record_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    calls: list[bytes] = []

    def counted(value: bytes, key: bytes | None, now_ms: int) -> Event | InvalidRecord:
        calls.append(value)
        return decode_event(value, key, now_ms)

    monkeypatch.setattr(worker.events, "decode_event", counted)
    return calls


def test_a_clean_fetch_is_validated_without_a_call_per_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records: list[Record] = [(raw(ingested(n)), SID.encode()) for n in range(2 * FETCH_CHUNK)]
    calls = count_record_calls(monkeypatch)
    assert decode_fetch(records, FAR_FUTURE) == by_record(records, FAR_FUTURE)
    assert calls == []


def test_a_bad_record_sends_only_its_chunk_record_by_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records: list[Record] = [(raw(ingested(n)), None) for n in range(3 * FETCH_CHUNK)]
    records[FETCH_CHUNK + 5] = (b'{"a":[{}', None)
    calls = count_record_calls(monkeypatch)
    decoded = decode_fetch(records, FAR_FUTURE)
    assert len(calls) == FETCH_CHUNK
    assert decoded == by_record(records, FAR_FUTURE)


def test_empty_and_single_record_fetches() -> None:
    assert decode_fetch([], T0) == []
    assert decode_fetch([(raw(ingested(1)), None)], FAR_FUTURE) == by_record(
        [(raw(ingested(1)), None)], FAR_FUTURE
    )
