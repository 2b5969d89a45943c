"""Changelog codec: exact round trips, format errors, idempotence across a restart."""

from __future__ import annotations

import dataclasses
import random

import orjson
import pytest

from tests.unit.builders import (
    DEFAULT_RULES,
    PROFILES,
    SID,
    T0,
    Json,
    ended,
    failed,
    fold_bodies,
    ingested,
    parse_all,
    recording,
    render,
    seg_ts,
    segments,
    started,
    totals,
    transcoded,
)
from worker.changelog import (
    FORMAT_VERSION,
    ChangelogEntry,
    ChangelogFormatError,
    decode_state,
    encode_state,
)
from worker.state import SessionState, new_session
from worker.store import SessionStore


def rich_bodies() -> list[Json]:
    """Every kind of state: metadata, recording, failures, ratios, partial renditions."""
    return [
        started(
            T0,
            name="Live",
            parentId="p",
            projectId="proj",
            playbackId="pb",
            record=True,
            kind="stream",
            userId="u",
            profiles=[*PROFILES, {**PROFILES[0], "name": "1080p", "fpsDen": 1, "quality": 3}],
            recordingSpec={"profiles": [{"bitrate": 400, "encoder": "HEVC"}]},
        ),
        started(T0 + 5, name="Live (renamed)"),
        *segments(12, transcode_time=1.234),
        ingested(12, duration=2.002, size=123),
        transcoded(12, duration=2.002, renditions={"720p": 7}),
        ingested(13),
        failed(13, error="decoder crashed: \u00e9\u4e2d\U0001f600"),
        ingested(14),
        recording("ready", T0 + 9, recordingUrl="https://r/i.m3u8", mp4Url="https://r/v.mp4"),
        recording("deleted", T0 + 10),
    ]


def rich_state() -> SessionState:
    state = fold_bodies(rich_bodies())
    state.partition = 3
    return state


def round_trip(state: SessionState, evicted_at: int | None = None) -> ChangelogEntry:
    return decode_state(encode_state(state, evicted_at, 41), state.partition)


def test_round_trip_equals_the_original_state() -> None:
    state = rich_state()
    # Guard: the fixture really exercises every part of the state.
    assert state.failures
    assert state.meta
    assert state.recording
    assert state.ingest_window
    assert len(state.rendition_masks) == 3
    assert any(r is not None for r, _ in state.recent_transcodes.values())
    entry = round_trip(state)
    assert entry.state == state
    assert (entry.evicted_at, entry.source_offset) == (None, 41)


def test_round_trip_of_an_ended_timed_out_evicted_state() -> None:
    state = rich_state()
    state.ended_at, state.timed_out = T0 + 99, True
    entry = round_trip(state, evicted_at=T0 + 1_000)
    assert entry.state == state
    assert entry.evicted_at == T0 + 1_000


def test_round_trip_of_a_new_session() -> None:
    state = new_session(SID, 0, T0)
    assert round_trip(state).state == state


def test_round_trip_uses_the_given_partition() -> None:
    payload = encode_state(rich_state(), None, None)
    entry = decode_state(payload, 5)
    assert entry.state.partition == 5
    assert entry.source_offset is None


def test_runtime_only_fields_are_not_persisted() -> None:
    store = SessionStore(DEFAULT_RULES)
    for event in parse_all(rich_bodies()):
        store.apply(event, 3)
    store.tick(seg_ts(14))
    state = store.live[SID]
    assert state.published_hash is not None
    assert state.exported is not None
    restored = round_trip(state).state
    assert (restored.published_hash, restored.exported) == (None, None)
    assert restored == dataclasses.replace(state, published_hash=None, exported=None)


def test_round_trip_renders_the_same_session() -> None:
    state = rich_state()
    now = seg_ts(14) + 1_000
    assert render(round_trip(state).state, now) == render(state, now)


def test_record_is_versioned_json() -> None:
    body = orjson.loads(encode_state(rich_state(), None, 7))
    assert body["v"] == FORMAT_VERSION == 1
    assert (body["id"], body["offset"], body["evictedAt"]) == (SID, 7, None)


# ------------------------------------------------------------------------ format errors


def valid_body() -> Json:
    body: Json = orjson.loads(encode_state(rich_state(), None, 1))
    return body


def test_unknown_version_is_refused() -> None:
    payload = orjson.dumps({**valid_body(), "v": 2})
    with pytest.raises(ChangelogFormatError, match=r"^unsupported changelog format 2$"):
        decode_state(payload, 0)


def test_missing_version_is_refused() -> None:
    body = valid_body()
    del body["v"]
    with pytest.raises(ChangelogFormatError, match="unsupported changelog format None"):
        decode_state(orjson.dumps(body), 0)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"[1]",
        b"null",
        b"42",
        b'"v"',
        b'{"v":1}',
        encode_state(new_session(SID, 0, T0), None, None)[:-5],
    ],
    ids=["empty", "text", "binary", "array", "null", "number", "string", "only v", "truncated"],
)
def test_corrupt_bytes_raise_format_errors(payload: bytes) -> None:
    with pytest.raises(ChangelogFormatError, match="corrupt changelog record"):
        decode_state(payload, 0)


@pytest.mark.parametrize(
    "field",
    [
        "id",
        "totals",
        "source",
        "transcoded",
        "meta",
        "recording",
        "ingestWindow",
        "failures",
        "evictedAt",
        "offset",
    ],
)
def test_missing_fields_raise_format_errors(field: str) -> None:
    body = valid_body()
    del body[field]
    with pytest.raises(ChangelogFormatError, match="corrupt changelog record"):
        decode_state(orjson.dumps(body), 0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("totals", [1, 2]),
        ("source", [5, "not hex"]),
        ("transcoded", [5, {"720p": "zz"}]),
        ("meta", {"name": 5}),
        ("ingestWindow", [[1, 2, 3]]),
        ("failures", [[1, 2]]),
        ("recentTranscodes", [1]),
        ("totals", None),
    ],
    ids=[
        "short totals",
        "bad mask",
        "bad rendition mask",
        "bad meta",
        "window",
        "failure",
        "rt",
        "null",
    ],
)
def test_malformed_fields_raise_format_errors(field: str, value: object) -> None:
    with pytest.raises(ChangelogFormatError, match="corrupt changelog record"):
        decode_state(orjson.dumps({**valid_body(), field: value}), 0)


# ------------------------------------------------------------ idempotence across restarts


def restart(state: SessionState) -> SessionState:
    return round_trip(state).state


def test_replaying_applied_events_after_a_restore_changes_nothing() -> None:
    bodies = rich_bodies()
    before = rich_state()
    restored = restart(before)
    fold_bodies(bodies, restored)  # the whole input again (uncommitted offsets)
    assert restored == before
    random.Random(1).shuffle(bodies)
    fold_bodies(bodies, restored)
    assert restored == before


@pytest.mark.parametrize("split", [0, 1, 10, 25, 30, 36])
def test_restart_at_any_point_gives_the_uninterrupted_result(split: int) -> None:
    bodies = [*rich_bodies(), ingested(15), transcoded(15), ended(seg_ts(16))]
    uninterrupted = fold_bodies(bodies)
    first = fold_bodies(bodies[: max(split, 1)])
    # Crash, restore, then redeliver from an older offset: everything since the start.
    resumed = fold_bodies(bodies, restart(first))
    assert resumed == uninterrupted
    assert totals(resumed) == totals(uninterrupted)
    now = seg_ts(16) + 5_000
    assert render(resumed, now) == render(uninterrupted, now)


def test_restore_twice_is_the_same_as_once() -> None:
    state = rich_state()
    assert restart(restart(state)) == state
    assert encode_state(restart(state), None, 41) == encode_state(state, None, 41)


def test_store_restore_then_redelivery_publishes_the_same_snapshot() -> None:
    events = parse_all(rich_bodies())
    live = SessionStore(DEFAULT_RULES)
    for event in events:
        live.apply(event, 3)
    now = seg_ts(14) + 500
    published = live.tick(now).snapshots[0].payload

    recovered = SessionStore(DEFAULT_RULES)
    recovered.restore(round_trip(live.live[SID]).state, None)
    for event in events[-5:]:
        recovered.apply(event, 3)
    snapshots = recovered.tick(now).snapshots
    assert [s.payload for s in snapshots] == [published]
