"""The Session snapshot (session.md): exact output, pydantic model, JSON Schema, rates."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from tests.unit.builders import (
    DEFAULT_RULES,
    PROFILES,
    SEGMENT_MS,
    SID,
    T0,
    Json,
    decode,
    ended,
    failed,
    fold_bodies,
    ingested,
    recording,
    render,
    seg_ts,
    segments,
    started,
    transcoded,
)
from worker.rules import Rules
from worker.session import Session, encode_session
from worker.state import SessionState
from worker.store import SessionStore

SPEC_EXAMPLE: Json = {
    # session.md's example, verbatim.
    "id": "de7818e7-610a-4057-8f6f-b785dc1e6f88",
    "name": "test_session",
    "kind": "stream",
    "lastSeen": 1587667174725,
    "sourceSegments": 1,
    "transcodedSegments": 3,
    "sourceSegmentsDuration": 2.0,
    "transcodedSegmentsDuration": 6.0,
    "sourceBytes": 1048576,
    "transcodedBytes": 1572864,
    "ingestRate": 104857.6,
    "outgoingRate": 157286.4,
    "isHealthy": True,
    "issues": [],
    "createdAt": 1587667172725,
    "parentId": "aac12556-4d65-4d34-9fb6-d1f0985eb0a9",
    "record": False,
    "playbackId": "eaw4nk06ts2d0mzb",
}

FULL_START = started(
    name="Live show",
    parentId="stream-1",
    projectId="project-1",
    playbackId="pb1",
    record=True,
    kind="stream",
    userId="user-1",
    profiles=[*PROFILES[:2], {**PROFILES[2], "fpsDen": 1, "quality": 20, "profile": "H264Main"}],
    recordingSpec={"profiles": [PROFILES[0], {**PROFILES[1], "encoder": "H.264", "gop": "2"}]},
)


def assert_valid(session: Json, schema: Draft202012Validator) -> None:
    """Valid for the pydantic model, the JSON Schema, and as JSON (no nulls but isHealthy)."""
    Session.model_validate(session)
    Session.model_validate_json(encode_session(session))
    errors = [e.message for e in schema.iter_errors(session)]
    assert errors == []
    assert [k for k, v in session.items() if v is None and k != "isHealthy"] == []


def full_state() -> SessionState:
    bodies = [
        FULL_START,
        *segments(5),
        ingested(5),
        failed(5, error="decoder crashed"),
        recording(
            "ready", seg_ts(5) + 900, recordingUrl="https://r/i.m3u8", mp4Url="https://r/v.mp4"
        ),
    ]
    return fold_bodies(bodies)


def test_full_session_output_is_exact(schema: Draft202012Validator) -> None:
    session = render(full_state(), seg_ts(5) + 1_000)
    assert session == {
        "id": SID,
        "name": "Live show",
        "lastSeen": seg_ts(5),
        "sourceSegments": 6,
        "transcodedSegments": 15,
        "sourceSegmentsDuration": 12.0,
        "transcodedSegmentsDuration": 30.0,
        "sourceBytes": 6_000_000,
        "transcodedBytes": 3_750_000,
        # (seg_ts(5) + 1000 - 10000, seg_ts(5) + 1000]: ingested 1..5, transcoded 1..4 (+500)
        "ingestRate": 500_000.0,
        "outgoingRate": 300_000.0,
        "isHealthy": False,
        "issues": ["1 segment failed to transcode in the last 10: decoder crashed"],
        "createdAt": T0,
        "kind": "stream",
        "userId": "user-1",
        "parentId": "stream-1",
        "projectId": "project-1",
        "record": True,
        "playbackId": "pb1",
        "profiles": FULL_START["profiles"],
        "recordingSpec": FULL_START["recordingSpec"],
        "recordingStatus": "ready",
        "recordingUrl": "https://r/i.m3u8",
        "mp4Url": "https://r/v.mp4",
    }
    assert_valid(session, schema)


def test_minimal_session_omits_unknown_fields(schema: Draft202012Validator) -> None:
    session = render(fold_bodies([transcoded(0, T0)]), T0)
    assert session == {
        "id": SID,
        "name": SID,
        "sourceSegments": 0,
        "transcodedSegments": 3,
        "sourceSegmentsDuration": 0.0,
        "transcodedSegmentsDuration": 6.0,
        "sourceBytes": 0,
        "transcodedBytes": 750_000,
        "ingestRate": 0.0,
        "outgoingRate": 75_000.0,
        "isHealthy": True,
        "issues": [],
        "createdAt": T0,
    }
    assert_valid(session, schema)


@pytest.mark.parametrize(
    "bodies",
    [
        [started()],
        [FULL_START],
        [*segments(3), ended(seg_ts(3))],
        [FULL_START, *segments(3), ended(seg_ts(3)), recording("deleted", seg_ts(4))],
        [ingested(0)],
        [failed(0)],
        [ingested(0), transcoded(0, renditions={"x": 0}, transcode_time=9.0)],
    ],
    ids=["started", "full started", "ended", "ended and recorded", "ingested", "failed", "slow"],
)
def test_snapshots_validate_against_model_and_schema(
    bodies: list[Json], schema: Draft202012Validator
) -> None:
    state = fold_bodies(bodies)
    for now in (T0, seg_ts(3), seg_ts(3) + 60_000):
        assert_valid(render(state, now), schema)


def test_spec_example_validates(schema: Draft202012Validator) -> None:
    assert_valid(SPEC_EXAMPLE, schema)
    session = Session.model_validate(SPEC_EXAMPLE)
    dumped = session.model_dump(by_alias=True, exclude_none=True)
    assert dumped == SPEC_EXAMPLE


def test_model_and_schema_reject_unknown_fields(schema: Draft202012Validator) -> None:
    extra = {**SPEC_EXAMPLE, "bogus": 1}
    with pytest.raises(ValidationError, match="bogus"):
        Session.model_validate(extra)
    assert not schema.is_valid(extra)


def with_changes(**changes: Any) -> Json:
    changed = copy.deepcopy(SPEC_EXAMPLE)
    for name, value in changes.items():
        if value is ...:
            del changed[name]
        else:
            changed[name] = value
    return changed


@pytest.mark.parametrize(
    "instance",
    [
        pytest.param(with_changes(lastSeen=None), id="lastSeen null"),
        pytest.param(with_changes(parentId=None), id="parentId null"),
        pytest.param(with_changes(issues=None), id="issues null"),
        pytest.param(with_changes(id=...), id="no id"),
        pytest.param(with_changes(name=...), id="no name"),
        pytest.param(with_changes(isHealthy=...), id="no isHealthy"),
        pytest.param(with_changes(sourceSegments=-1), id="negative count"),
        pytest.param(with_changes(sourceSegments=1.5), id="fractional count"),
        pytest.param(with_changes(sourceBytes="1"), id="bytes as string"),
        pytest.param(with_changes(ingestRate=-0.1), id="negative rate"),
        pytest.param(with_changes(isHealthy="yes"), id="isHealthy string"),
        pytest.param(with_changes(issues=["x"]), id="healthy with issues"),
        pytest.param(with_changes(isHealthy=False), id="unhealthy without issues"),
        pytest.param(with_changes(isHealthy=None), id="null with issues"),
        pytest.param(with_changes(issues=...), id="healthy without issues"),
        pytest.param(with_changes(record=True, recordingStatus="done"), id="status enum"),
        pytest.param(with_changes(record=True, recordingStatus="deleted"), id="status deleted"),
        pytest.param(with_changes(recordingStatus="ready"), id="status without record"),
        pytest.param(with_changes(recordingUrl="u"), id="recordingUrl without record"),
        pytest.param(with_changes(record=False, mp4Url="u"), id="mp4Url when not recorded"),
        pytest.param(with_changes(projectId="p" * 129), id="projectId 129"),
        pytest.param(with_changes(profiles=[PROFILES[0]] * 33), id="33 profiles"),
        pytest.param(
            with_changes(profiles=[{**PROFILES[0], "gop": 2}]), id="gop number (published text)"
        ),
        pytest.param(with_changes(id="a b"), id="bad id"),
        pytest.param(with_changes(profiles=[{**PROFILES[0], "width": 127}]), id="width 127"),
        pytest.param(with_changes(profiles=[{**PROFILES[0], "bitrate": 399}]), id="bitrate 399"),
        pytest.param(with_changes(profiles=[{**PROFILES[0], "encoder": "HEVC"}]), id="HEVC"),
        pytest.param(with_changes(profiles=[{**PROFILES[0], "profile": "H265"}]), id="profile"),
        pytest.param(with_changes(profiles=[{**PROFILES[0], "quality": 45}]), id="quality 45"),
        pytest.param(with_changes(profiles=[{**PROFILES[0], "fpsDen": 0}]), id="fpsDen 0"),
        pytest.param(with_changes(profiles=[{"name": "a", "bitrate": 400}]), id="no width"),
        pytest.param(with_changes(profiles=[{**PROFILES[0], "x": 1}]), id="profile extra"),
        pytest.param(with_changes(recordingSpec={"profiles": [{}]}), id="spec profile empty"),
        pytest.param(
            with_changes(recordingSpec={"profiles": [{"bitrate": 400}]}),
            id="spec TranscodeProfile of only a bitrate",
        ),
        pytest.param(
            with_changes(recordingSpec={"profiles": [{**PROFILES[0], "encoder": "HEVC"}]}),
            id="spec encoder HEVC",
        ),
        pytest.param(with_changes(recordingSpec={}), id="spec without profiles"),
    ],
)
def test_schema_rejects_what_session_md_forbids(
    instance: Json, schema: Draft202012Validator
) -> None:
    assert not schema.is_valid(instance)


@pytest.mark.parametrize(
    "instance",
    [
        with_changes(isHealthy=None, issues=...),
        with_changes(isHealthy=False, issues=["No source segments received for 14s"]),
        with_changes(lastSeen=...),
        with_changes(record=True, recordingStatus="waiting"),
        with_changes(record=True, recordingStatus="none", recordingUrl="u", mp4Url="m"),
        with_changes(profiles=PROFILES),
        with_changes(profiles=[{**PROFILES[0], "gop": "2.5", "encoder": "H.264"}] * 32),
        with_changes(recordingSpec={"profiles": [{**PROFILES[0], "encoder": "H.264"}]}),
    ],
    ids=[
        "inactive",
        "unhealthy",
        "no lastSeen",
        "recording",
        "recording urls",
        "profiles",
        "32 profiles",
        "recordingSpec",
    ],
)
def test_schema_accepts_what_session_md_allows(
    instance: Json, schema: Draft202012Validator
) -> None:
    assert schema.is_valid(instance)


@pytest.mark.parametrize(
    "instance",
    [
        pytest.param(with_changes(record=True, recordingStatus="deleted"), id="deleted"),
        pytest.param(with_changes(recordingUrl="u"), id="url without record"),
        pytest.param(with_changes(record=False, recordingStatus="none"), id="status unrecorded"),
        pytest.param(with_changes(recordingSpec={"profiles": [{"bitrate": 400}]}), id="spec"),
        pytest.param(with_changes(profiles=[{**PROFILES[0], "encoder": "HEVC"}]), id="HEVC"),
        pytest.param(with_changes(profiles=[PROFILES[0]] * 33), id="33 profiles"),
    ],
)
def test_the_model_rejects_what_the_sdk_cannot_decode(instance: Json) -> None:
    with pytest.raises(ValidationError):
        Session.model_validate(instance)


@pytest.mark.parametrize(
    ("status", "published"),
    [
        ("waiting", "waiting"),
        ("ready", "ready"),
        ("failed", "failed"),
        ("deleted", "none"),
        ("none", "none"),
    ],
)
def test_every_input_recording_status_publishes_an_sdk_status(
    status: str, published: str, schema: Draft202012Validator
) -> None:
    state = fold_bodies([started(record=True), recording(status, T0 + 1, recordingUrl="u")])
    session = render(state, T0 + 1)
    assert (session["recordingStatus"], session["recordingUrl"]) == (published, "u")
    assert_valid(session, schema)


def test_encode_session_is_compact_json() -> None:
    session = render(fold_bodies(segments(1)), T0)
    payload = encode_session(session)
    assert orjson.loads(payload) == session
    assert payload.startswith(b'{"id":"sess-1","name":"sess-1","lastSeen":')


# ----------------------------------------------------------------------------------- rates

SEGMENT_BYTES = 1_000_000


def steady(count: int) -> list[Json]:
    """2 s segments of 1,000,000 bytes, transcoded into 750,000 bytes 500 ms later."""
    return segments(count)


def test_steady_stream_ingest_rate_is_exact() -> None:
    state = fold_bodies(steady(30))
    last = seg_ts(29)
    session = render(state, last)
    # (last - 10 s, last] holds 5 source segments: 5 MB / 10 s.
    assert session["ingestRate"] == 500_000.0
    # Transcodes are stamped +500 ms: seqNo 24..28 now (29's is ahead), 25..29 500 ms later.
    assert session["outgoingRate"] == 375_000.0
    assert render(state, last + 500)["outgoingRate"] == 375_000.0
    assert render(state, last + 501)["outgoingRate"] == 375_000.0


def test_rate_window_is_half_open() -> None:
    state = fold_bodies(steady(30))
    last = seg_ts(29)
    # seqNo 25 is stamped last - 8000; it leaves the window when now - 10000 reaches it.
    assert render(state, last + 1_999)["ingestRate"] == 500_000.0
    assert render(state, last + 2_000)["ingestRate"] == 400_000.0
    assert render(state, last + 9_999)["ingestRate"] == 100_000.0
    assert render(state, last + 10_000)["ingestRate"] == 0.0


def test_rate_ignores_events_stamped_after_now() -> None:
    state = fold_bodies([ingested(0, T0), ingested(1, T0 + 5_000)])
    assert render(state, T0 + 4_999)["ingestRate"] == 100_000.0


def test_rate_window_is_configurable() -> None:
    state = fold_bodies(steady(30))
    rules = Rules(rate_window_ms=4_000)
    # (last - 4 s, last]: seqNo 28 and 29.
    assert render(state, seg_ts(29), rules)["ingestRate"] == 500_000.0


def test_duplicates_do_not_inflate_rates() -> None:
    bodies = steady(6)
    state = fold_bodies(bodies + bodies)
    assert render(state, seg_ts(5))["ingestRate"] == 500_000.0


def test_rates_decay_to_exactly_zero_after_the_stream_stops() -> None:
    store = SessionStore(DEFAULT_RULES)
    for body in steady(30):
        store.apply(decode(body), 0)
    last = seg_ts(29)
    rates = []
    last_published: list[dict[str, Any]] = []
    for now in range(last + 500, last + 11_000, 1_000):
        for snapshot in store.tick(now).snapshots:
            rates.append((now - last, snapshot.session["ingestRate"]))
            last_published.append(snapshot.session)
    assert rates[0] == (500, 500_000.0)
    assert rates[-1] == (10_500, 0.0)
    assert [r for _, r in rates] == sorted((r for _, r in rates), reverse=True)
    assert store.live[SID].ingest.items() == []
    assert store.live[SID].outgoing.items() == []
    # From here on nothing visible changes (rates 0, the stall issue's text stays): no snapshot.
    assert store.tick(last + 30_000).snapshots == []
    assert (rates[-1][1], last_published[-1]["isHealthy"]) == (0.0, False)


def test_ended_stream_rates_decay_within_one_window() -> None:
    store = SessionStore(DEFAULT_RULES)
    for body in [*steady(5), ended(seg_ts(5))]:
        store.apply(decode(body), 0)
    first = store.tick(seg_ts(4) + 500).snapshots[0].session
    assert (first["ingestRate"], first["isHealthy"]) == (500_000.0, None)
    last = store.tick(seg_ts(4) + 500 + 10 * SEGMENT_MS // 2).snapshots[0].session
    assert (last["ingestRate"], last["outgoingRate"]) == (0.0, 0.0)
