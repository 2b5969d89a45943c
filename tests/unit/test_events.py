"""events.md: every validation rule, with valid and invalid examples and the InvalidReason."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.builders import (
    FAR_FUTURE,
    SID,
    T0,
    Json,
    decode,
    encode,
    ended,
    failed,
    ingested,
    profile,
    recording,
    reject,
    started,
    transcoded,
)
from worker.events import (
    MAX_FUTURE_SKEW_MS,
    MAX_JSON_INT,
    InvalidReason,
    InvalidRecord,
    RecordingUpdated,
    SegmentFailed,
    SegmentIngested,
    SegmentTranscoded,
    SessionEnded,
    SessionStarted,
)
from worker.profiles import FfmpegProfile

SCHEMA = InvalidReason.SCHEMA
METADATA = InvalidReason.INVALID_METADATA


def without(body: Json, *names: str) -> Json:
    return {k: v for k, v in body.items() if k not in names}


def with_profile(**fields: Any) -> Json:
    return started(profiles=[profile("720p", **fields)])


def with_profile_missing(name: str) -> Json:
    return started(profiles=[without(profile("720p"), name)])


def with_spec_profile(**fields: Any) -> Json:
    return started(recordingSpec={"profiles": [profile("rec", **fields)]})


def with_spec_profile_missing(name: str) -> Json:
    return started(recordingSpec={"profiles": [without(profile("rec"), name)]})


# ---------------------------------------------------------------------------- valid shapes


def test_segment_ingested_parses_every_field() -> None:
    event = decode(
        b'{"type":"segment.ingested","sessionId":"de7818e7-610a-4057-8f6f-b785dc1e6f88",'
        b'"timestamp":1587667174725,"seqNo":42,"duration":2.002,"bytes":1048576}'
    )
    assert event == SegmentIngested(
        type="segment.ingested",
        session_id="de7818e7-610a-4057-8f6f-b785dc1e6f88",
        timestamp=1587667174725,
        seq_no=42,
        duration=2.002,
        bytes=1048576,
    )


def test_segment_transcoded_parses_renditions_and_transcode_time() -> None:
    event = decode(transcoded(3, T0, renditions={"720p": 10, "360p": 0}, transcode_time=0.5))
    assert isinstance(event, SegmentTranscoded)
    assert (event.seq_no, event.duration, event.transcode_time) == (3, 2.0, 0.5)
    assert [(r["name"], r["bytes"]) for r in event.renditions] == [("720p", 10), ("360p", 0)]


def test_transcode_time_is_optional() -> None:
    event = decode(transcoded(3))
    assert isinstance(event, SegmentTranscoded)
    assert event.transcode_time is None


def test_segment_failed_parses() -> None:
    event = decode(failed(9, T0, error="boom"))
    assert event == SegmentFailed(
        type="segment.failed", session_id=SID, timestamp=T0, seq_no=9, error="boom"
    )


def test_session_started_parses_every_field() -> None:
    body = started(
        name="Live show",
        parentId="stream-1",
        projectId="project-1",
        playbackId="pb1",
        record=True,
        recordingSpec={"profiles": [profile("rec", encoder="H.264")]},
        profiles=[profile("720p", fpsDen=1, quality=44, gop="2.0", profile="H264High")],
        kind="stream",
        userId="user-1",
    )
    event = decode(body)
    assert isinstance(event, SessionStarted)
    assert (event.name, event.parent_id, event.project_id, event.playback_id) == (
        "Live show",
        "stream-1",
        "project-1",
        "pb1",
    )
    assert (event.record, event.kind, event.user_id) == (True, "stream", "user-1")
    assert event.profiles == [
        FfmpegProfile(
            name="720p",
            width=1280,
            height=720,
            bitrate=3_000_000,
            fps=30,
            fps_den=1,
            quality=44,
            gop="2.0",
            profile="H264High",
        )
    ]
    assert event.recording_spec is not None
    assert event.recording_spec.profiles == [
        FfmpegProfile(
            name="rec", width=1280, height=720, bitrate=3_000_000, fps=30, encoder="H.264"
        )
    ]


def test_session_started_needs_only_a_name() -> None:
    event = decode(started())
    assert isinstance(event, SessionStarted)
    assert event.name == "show"
    assert event.profiles is None
    assert event.recording_spec is None
    assert event.record is None


@pytest.mark.parametrize("status", ["waiting", "ready", "failed", "deleted", "none"])
def test_recording_updated_accepts_every_status(status: str) -> None:
    event = decode(recording(status, T0))
    assert isinstance(event, RecordingUpdated)
    assert event.status == status
    assert (event.recording_url, event.mp4_url) == (None, None)


def test_recording_updated_urls() -> None:
    event = decode(
        recording("ready", T0, recordingUrl="https://r/i.m3u8", mp4Url="https://r/v.mp4")
    )
    assert isinstance(event, RecordingUpdated)
    assert (event.recording_url, event.mp4_url) == ("https://r/i.m3u8", "https://r/v.mp4")


def test_session_ended_parses() -> None:
    assert decode(ended(T0)) == SessionEnded(type="session.ended", session_id=SID, timestamp=T0)


VALID_EDGES = [
    pytest.param(ingested(1, sid="a" * 128), id="sessionId 128 chars"),
    pytest.param(ingested(1, sid="x"), id="sessionId 1 char"),
    pytest.param(ingested(1, sid="AZaz09._:-"), id="sessionId every allowed char class"),
    pytest.param(ingested(1, ts=1), id="timestamp 1"),
    pytest.param(ingested(0), id="seqNo 0"),
    pytest.param(ingested(MAX_JSON_INT, T0), id="seqNo 2**53-1"),
    pytest.param(ingested(1, duration=600), id="duration 600"),
    pytest.param(ingested(1, duration=600.0), id="duration 600.0"),
    pytest.param(ingested(1, duration=0.001), id="duration tiny"),
    pytest.param(ingested(1, duration=2), id="duration integer"),
    pytest.param(ingested(1, size=0), id="bytes 0"),
    pytest.param(transcoded(1, duration=600), id="transcoded duration 600"),
    pytest.param(transcoded(1, renditions={"a": 0}), id="one rendition of 0 bytes"),
    pytest.param(transcoded(1, transcode_time=0), id="transcodeTime 0"),
    pytest.param(failed(1, error="e"), id="error 1 char"),
    pytest.param(failed(1, error="e" * 1000), id="error 1000 chars"),
    pytest.param(started(name="n"), id="name 1 char"),
    pytest.param(started(name="n" * 500), id="name 500 chars"),
    pytest.param(started(profiles=[]), id="profiles empty"),
    pytest.param(with_profile(width=128, height=128), id="profile 128x128"),
    pytest.param(with_profile(bitrate=400), id="profile bitrate 400"),
    pytest.param(with_profile(fps=0), id="profile fps 0"),
    pytest.param(with_profile(quality=0), id="profile quality 0"),
    pytest.param(with_profile(encoder="H.264"), id="profile encoder H.264"),
    pytest.param(with_profile(profile="H264Baseline"), id="profile H264Baseline"),
    pytest.param(with_profile(profile="H264Main"), id="profile H264Main"),
    pytest.param(with_profile(profile="H264ConstrainedHigh"), id="profile H264ConstrainedHigh"),
    pytest.param(with_spec_profile(), id="recordingSpec profile"),
    pytest.param(with_spec_profile(encoder="H.264", fpsDen=1, quality=0), id="spec full"),
    pytest.param(started(recordingSpec={"profiles": []}), id="recordingSpec no profiles"),
    pytest.param(recording("ready", T0, recordingUrl="u", mp4Url="m"), id="recording urls"),
    # Bounds (events.md): every string and list at its limit.
    pytest.param(started(parentId="p" * 128), id="parentId 128 chars"),
    pytest.param(started(projectId="p" * 128), id="projectId 128 chars"),
    pytest.param(started(playbackId="p" * 128), id="playbackId 128 chars"),
    pytest.param(started(kind="k" * 64), id="kind 64 chars"),
    pytest.param(started(userId="u" * 128), id="userId 128 chars"),
    pytest.param(started(profiles=[profile(f"p{i}") for i in range(32)]), id="32 profiles"),
    pytest.param(
        started(recordingSpec={"profiles": [profile(f"p{i}") for i in range(32)]}),
        id="32 recordingSpec profiles",
    ),
    pytest.param(with_profile(gop="g" * 64), id="gop 64 chars"),
    pytest.param(with_profile(width=MAX_JSON_INT, bitrate=MAX_JSON_INT), id="ints 2**53-1"),
    pytest.param(transcoded(1, renditions={f"r{i}": 1 for i in range(32)}), id="32 renditions"),
    pytest.param(transcoded(1, renditions={"r" * 500: 1}), id="rendition name 500 chars"),
    pytest.param(
        recording("ready", T0, recordingUrl="u" * 2048, mp4Url="m" * 2048), id="urls 2048 chars"
    ),
]


@pytest.mark.parametrize("body", VALID_EDGES)
def test_valid_edge_cases_are_accepted(body: Json) -> None:
    event = decode(body)
    assert event.type == body["type"]
    assert event.timestamp == body["timestamp"]
    assert event.session_id == body["sessionId"]


# -------------------------------------------------------------------------- invalid records


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b'{"type":', b"not json", b"\xff\xfe", b'{"a":1,}', b'{"a":1}{'],
    ids=["empty", "open brace", "truncated", "text", "not utf-8", "trailing comma", "two values"],
)
def test_bad_json_is_invalid_json(raw: bytes) -> None:
    assert reject(raw).reason is InvalidReason.INVALID_JSON


@pytest.mark.parametrize(
    "raw", [b"[1]", b'"x"', b"null", b"42", b"true", b"[]"], ids=lambda r: r.decode()
)
def test_json_that_is_not_an_object_is_not_an_object(raw: bytes) -> None:
    invalid = reject(raw)
    assert invalid.reason is InvalidReason.NOT_AN_OBJECT
    assert invalid.detail == "value is not a JSON object"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({**ingested(1), "type": "segment.deleted"}, id="unknown name"),
        pytest.param({**ingested(1), "type": "Segment.Ingested"}, id="wrong case"),
        pytest.param({**ingested(1), "type": ""}, id="empty"),
        pytest.param({**ingested(1), "type": 5}, id="not a string"),
        pytest.param(without(ingested(1), "type"), id="missing"),
    ],
)
def test_unknown_or_missing_type_is_unknown_type(body: Json) -> None:
    assert reject(body).reason is InvalidReason.UNKNOWN_TYPE


INVALID_SCHEMA = [
    # sessionId
    pytest.param(without(ingested(1), "sessionId"), "sessionId", id="sessionId missing"),
    pytest.param(ingested(1, sid=""), "sessionId", id="sessionId empty"),
    pytest.param(ingested(1, sid="a" * 129), "sessionId", id="sessionId 129 chars"),
    pytest.param(ingested(1, sid="a b"), "sessionId", id="sessionId space"),
    pytest.param(ingested(1, sid="a/b"), "sessionId", id="sessionId slash"),
    pytest.param(ingested(1, sid="caf\u00e9"), "sessionId", id="sessionId non-ascii"),
    pytest.param(ingested(1, sid="abc\n"), "sessionId", id="sessionId trailing newline"),
    pytest.param({**ingested(1), "sessionId": 5}, "sessionId", id="sessionId number"),
    # timestamp
    pytest.param(without(ingested(1), "timestamp"), "timestamp", id="timestamp missing"),
    pytest.param(ingested(1, ts=0), "timestamp", id="timestamp 0"),
    pytest.param(ingested(1, ts=-5), "timestamp", id="timestamp negative"),
    pytest.param({**ingested(1), "timestamp": 1.5}, "timestamp", id="timestamp fraction"),
    pytest.param({**ingested(1), "timestamp": float(T0)}, "timestamp", id="timestamp float"),
    pytest.param({**ingested(1), "timestamp": str(T0)}, "timestamp", id="timestamp string"),
    pytest.param({**ingested(1), "timestamp": True}, "timestamp", id="timestamp bool"),
    pytest.param({**ended(T0), "timestamp": None}, "timestamp", id="timestamp null"),
    # seqNo
    pytest.param(without(ingested(1), "seqNo"), "seqNo", id="seqNo missing"),
    pytest.param(ingested(-1), "seqNo", id="seqNo negative"),
    pytest.param({**ingested(1), "seqNo": 1.5}, "seqNo", id="seqNo fraction"),
    pytest.param({**ingested(1), "seqNo": 2.0}, "seqNo", id="seqNo float"),
    pytest.param({**ingested(1), "seqNo": "3"}, "seqNo", id="seqNo string"),
    pytest.param(ingested(MAX_JSON_INT + 1, T0), "seqNo", id="seqNo beyond 2**53-1"),
    pytest.param(transcoded(-1), "seqNo", id="transcoded seqNo negative"),
    pytest.param(failed(-1), "seqNo", id="failed seqNo negative"),
    pytest.param({**failed(1), "seqNo": 1.5}, "seqNo", id="failed seqNo float"),
    # duration
    pytest.param(without(ingested(1), "duration"), "duration", id="duration missing"),
    pytest.param(ingested(1, duration=0), "duration", id="duration 0"),
    pytest.param(ingested(1, duration=-2.0), "duration", id="duration negative"),
    pytest.param(ingested(1, duration=600.001), "duration", id="duration over 600"),
    pytest.param(ingested(1, duration=601), "duration", id="duration 601"),
    pytest.param(ingested(1, duration="2.0"), "duration", id="duration string"),  # type: ignore[arg-type]
    pytest.param(ingested(1, duration=True), "duration", id="duration bool"),
    pytest.param(transcoded(1, duration=0), "duration", id="transcoded duration 0"),
    pytest.param(transcoded(1, duration=600.5), "duration", id="transcoded duration over 600"),
    pytest.param(without(transcoded(1), "duration"), "duration", id="transcoded no duration"),
    # bytes
    pytest.param(without(ingested(1), "bytes"), "bytes", id="bytes missing"),
    pytest.param(ingested(1, size=-1), "bytes", id="bytes negative"),
    pytest.param({**ingested(1), "bytes": 1.5}, "bytes", id="bytes fraction"),
    pytest.param({**ingested(1), "bytes": "5"}, "bytes", id="bytes string"),
    pytest.param(ingested(1, size=MAX_JSON_INT + 1), "bytes", id="bytes beyond 2**53-1"),
    # renditions
    pytest.param(without(transcoded(1), "renditions"), "renditions", id="renditions missing"),
    pytest.param(transcoded(1, renditions={}), "renditions", id="renditions empty"),
    pytest.param({**transcoded(1), "renditions": {}}, "renditions", id="renditions object"),
    pytest.param(
        {**transcoded(1), "renditions": [{"name": "a", "bytes": 1}, {"name": "a", "bytes": 2}]},
        "renditions: rendition names must be unique ('a' repeats)",
        id="renditions duplicate names",
    ),
    pytest.param(transcoded(1, renditions={"a": -1}), "renditions.0.bytes", id="rendition bytes<0"),
    pytest.param(
        {**transcoded(1), "renditions": [{"name": "a"}]}, "renditions.0.bytes", id="no bytes"
    ),
    pytest.param(
        {**transcoded(1), "renditions": [{"name": "a", "bytes": 1.5}]},
        "renditions.0.bytes",
        id="rendition bytes float",
    ),
    pytest.param(
        {**transcoded(1), "renditions": [{"bytes": 1}]}, "renditions.0.name", id="no name"
    ),
    pytest.param(transcoded(1, renditions={"": 1}), "renditions.0.name", id="rendition name ''"),
    pytest.param(
        {**transcoded(1), "renditions": [1]}, "renditions.0", id="rendition not an object"
    ),
    # transcodeTime
    pytest.param(transcoded(1, transcode_time=-0.1), "transcodeTime", id="transcodeTime negative"),
    pytest.param(
        {**transcoded(1), "transcodeTime": "1"}, "transcodeTime", id="transcodeTime string"
    ),
    # error
    pytest.param(failed(1, error=""), "error", id="error empty"),
    pytest.param(failed(1, error="e" * 1001), "error", id="error 1001 chars"),
    pytest.param(without(failed(1), "error"), "error", id="error missing"),
    pytest.param({**failed(1), "error": 5}, "error", id="error number"),
    # recording.updated
    pytest.param(recording("done", T0), "status", id="status not in enum"),
    pytest.param(recording("Ready", T0), "status", id="status wrong case"),
    pytest.param(without(recording("ready", T0), "status"), "status", id="status missing"),
    pytest.param(recording("ready", T0, recordingUrl=5), "recordingUrl", id="recordingUrl number"),
    # session.started
    pytest.param(without(started(), "name"), "name", id="name missing"),
    pytest.param(started(name=""), "name", id="name empty"),
    pytest.param(started(name="n" * 501), "name", id="name 501 chars"),
    pytest.param(started(name=None), "name", id="name null"),
    # bounds
    pytest.param(
        transcoded(1, renditions={f"r{i}": 1 for i in range(33)}), "renditions", id="33 renditions"
    ),
    pytest.param(transcoded(1, renditions={"r" * 501: 1}), "renditions.0.name", id="name 501"),
    pytest.param(
        recording("ready", T0, recordingUrl="u" * 2049), "recordingUrl", id="recordingUrl 2049"
    ),
    pytest.param(recording("ready", T0, mp4Url="m" * 2049), "mp4Url", id="mp4Url 2049"),
]


@pytest.mark.parametrize(("body", "where"), INVALID_SCHEMA)
def test_rule_violations_are_schema_violations(body: Json, where: str) -> None:
    invalid = reject(body)
    assert invalid.reason is InvalidReason.SCHEMA
    assert invalid.detail.startswith(where), invalid.detail


# ------------------------------------------------------------ invalid optional metadata

INVALID_METADATA = [
    pytest.param(started(record="true"), "record", id="record string"),
    pytest.param(started(record=1), "record", id="record number"),
    pytest.param(started(parentId=5), "parentId", id="parentId number"),
    pytest.param(started(parentId="p" * 129), "parentId", id="parentId 129 chars"),
    pytest.param(started(projectId="p" * 129), "projectId", id="projectId 129 chars"),
    pytest.param(started(playbackId="p" * 129), "playbackId", id="playbackId 129 chars"),
    pytest.param(started(kind="k" * 65), "kind", id="kind 65 chars"),
    pytest.param(started(userId="u" * 129), "userId", id="userId 129 chars"),
    pytest.param(started(userId=["u"]), "userId", id="userId list"),
    pytest.param(started(profiles={}), "profiles", id="profiles object"),
    pytest.param(
        started(profiles=[profile(f"p{i}") for i in range(33)]), "profiles", id="33 profiles"
    ),
    # FfmpegProfile inside session.started
    pytest.param(with_profile(width=127), "profiles.0.width", id="profile width 127"),
    pytest.param(with_profile(height=127), "profiles.0.height", id="profile height 127"),
    pytest.param(with_profile(width="1280"), "profiles.0.width", id="profile width string"),
    pytest.param(with_profile(width=1280.5), "profiles.0.width", id="profile width fraction"),
    pytest.param(with_profile(width=MAX_JSON_INT + 1), "profiles.0.width", id="width 2**53"),
    pytest.param(with_profile(bitrate=399), "profiles.0.bitrate", id="profile bitrate 399"),
    pytest.param(with_profile(fps=-1), "profiles.0.fps", id="profile fps negative"),
    pytest.param(with_profile(fpsDen=0), "profiles.0.fpsDen", id="profile fpsDen 0"),
    pytest.param(with_profile(quality=45), "profiles.0.quality", id="profile quality 45"),
    pytest.param(with_profile(quality=-1), "profiles.0.quality", id="profile quality -1"),
    pytest.param(with_profile(profile="H265Main"), "profiles.0.profile", id="profile H265Main"),
    pytest.param(with_profile(encoder="HEVC"), "profiles.0.encoder", id="profile encoder HEVC"),
    pytest.param(with_profile(encoder="VP9"), "profiles.0.encoder", id="profile encoder VP9"),
    pytest.param(with_profile(name=""), "profiles.0.name", id="profile name empty"),
    pytest.param(with_profile(name="n" * 501), "profiles.0.name", id="profile name 501"),
    pytest.param(with_profile(gop="g" * 65), "profiles.0.gop", id="gop 65 chars"),
    pytest.param(with_profile(gop=-1), "profiles.0.gop", id="gop negative"),
    pytest.param(with_profile(gop=True), "profiles.0.gop", id="gop bool"),
    pytest.param(with_profile(gop=[2]), "profiles.0.gop", id="gop list"),
    pytest.param(with_profile(gop=1e300), "profiles.0.gop", id="gop huge"),
    pytest.param(with_profile_missing("name"), "profiles.0.name", id="profile without name"),
    pytest.param(with_profile_missing("width"), "profiles.0.width", id="profile without width"),
    pytest.param(with_profile_missing("height"), "profiles.0.height", id="profile without height"),
    pytest.param(
        with_profile_missing("bitrate"), "profiles.0.bitrate", id="profile without bitrate"
    ),
    pytest.param(with_profile_missing("fps"), "profiles.0.fps", id="profile without fps"),
    # recordingSpec: FfmpegProfile too (no TranscodeProfile in the seed's SDK)
    pytest.param(
        started(recordingSpec={"profiles": [{"bitrate": 1_000_000}]}),
        "recordingSpec.profiles.0.name",
        id="spec profile with only a bitrate",
    ),
    pytest.param(
        with_spec_profile(encoder="HEVC"),
        "recordingSpec.profiles.0.encoder",
        id="spec encoder HEVC",
    ),
    pytest.param(
        with_spec_profile(encoder="VP8"), "recordingSpec.profiles.0.encoder", id="spec VP8"
    ),
    pytest.param(
        with_spec_profile_missing("width"),
        "recordingSpec.profiles.0.width",
        id="spec profile without width",
    ),
    pytest.param(
        with_spec_profile(profile="VP9Main"),
        "recordingSpec.profiles.0.profile",
        id="spec profile enum",
    ),
    pytest.param(
        started(recordingSpec={"profiles": [profile(f"p{i}") for i in range(33)]}),
        "recordingSpec.profiles",
        id="spec 33 profiles",
    ),
    pytest.param(started(recordingSpec={}), "recordingSpec.profiles", id="recordingSpec empty"),
    pytest.param(started(recordingSpec=[]), "recordingSpec", id="recordingSpec array"),
]


def partial(body: Json, key: bytes | None = None, now: int = FAR_FUTURE) -> InvalidRecord:
    """Decode a payload whose optional metadata is invalid: dead-lettered AND applied."""
    invalid = reject(body, key, now)
    assert invalid.reason is METADATA, invalid
    assert invalid.event is not None
    return invalid


@pytest.mark.parametrize(("body", "where"), INVALID_METADATA)
def test_invalid_optional_metadata_is_applied_without_the_field(body: Json, where: str) -> None:
    invalid = partial(body)
    field = where.split(".", maxsplit=1)[0]
    assert invalid.detail.startswith(f"applied without {field}: {where}"), invalid.detail
    # The event is the rest of the record, exactly as if the field had not been sent.
    assert invalid.event == decode(without(body, field))


def test_every_bad_field_is_named_and_dropped_and_the_good_ones_kept() -> None:
    body = started(
        name="Show",
        parentId="stream-1",
        projectId="p" * 129,
        record=True,
        kind="stream",
        profiles=[profile("720p"), profile("360p", width=100)],
        recordingSpec={"profiles": [{"bitrate": 400, "encoder": "HEVC"}]},
    )
    invalid = partial(body)
    assert invalid.detail.startswith("applied without projectId, recordingSpec, profiles: ")
    for path in ("projectId", "profiles.1.width", "recordingSpec.profiles.0.encoder"):
        assert f"; {path}: " in invalid.detail or f": {path}: " in invalid.detail, path
    event = invalid.event
    assert event is not None
    assert (event.name, event.parent_id, event.record, event.kind) == (
        "Show",
        "stream-1",
        True,
        "stream",
    )
    assert (event.project_id, event.profiles, event.recording_spec) == (None, None, None)


def test_metadata_under_its_python_name_is_dropped_alike() -> None:
    """populate_by_name also reads `parent_id`: its faults must not lose the event either."""
    invalid = partial(started(parent_id=5, recording_spec={"profiles": [{"bitrate": 400}]}))
    assert invalid.detail.startswith("applied without parent_id, recording_spec: ")
    assert invalid.event == decode(started())


def test_invalid_metadata_detail_names_each_field_even_with_many_faults() -> None:
    bad_ladder = [profile(f"p{i}", width=1, height=1, bitrate=1) for i in range(32)]
    invalid = partial(started(profiles=bad_ladder, userId="u" * 200))
    assert invalid.detail.startswith("applied without profiles, userId: ")  # model order
    assert "userId: " in invalid.detail
    assert "profiles.0.width: " in invalid.detail
    assert invalid.detail.count("; ") == 7  # at most 8 faults


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(started(name="", projectId=5), SCHEMA, id="bad name"),
        pytest.param({**started(projectId=5), "timestamp": 0}, SCHEMA, id="bad timestamp"),
        pytest.param({**started(projectId=5), "sessionId": "a b"}, SCHEMA, id="bad sessionId"),
        pytest.param(without(started(projectId=5), "name"), SCHEMA, id="no name"),
    ],
)
def test_invalid_required_fields_still_reject_the_whole_event(
    body: Json, reason: InvalidReason
) -> None:
    invalid = reject(body)
    assert (invalid.reason, invalid.event) == (reason, None)


def test_key_and_clock_rules_hold_for_a_partly_applied_event() -> None:
    body = started(projectId=5, ts=NOW + 300_001)
    assert reject(body, now=NOW).reason is InvalidReason.FUTURE_TIMESTAMP
    assert reject(body, key=b"other").reason is InvalidReason.KEY_MISMATCH
    assert reject(body, key=b"other").event is None
    assert partial(body, key=SID.encode()).event is not None


def test_bad_optional_fields_of_other_events_are_schema_violations() -> None:
    invalid = reject(recording("ready", T0, recordingUrl=5))
    assert (invalid.reason, invalid.event) == (SCHEMA, None)
    assert reject(transcoded(1, transcode_time=-1)).event is None


# ------------------------------------------------------------------------------------ gop


@pytest.mark.parametrize(
    ("gop", "published"),
    [
        ("2.0", "2.0"),  # strings pass through as sent
        ("intra", "intra"),
        ("", ""),
        (2, "2"),
        (0, "0"),
        (2.0, "2"),  # one JSON number, like JSON.stringify prints it
        (2.5, "2.5"),
        (0.1, "0.1"),
        (1.001, "1.001"),
        (MAX_JSON_INT, str(MAX_JSON_INT)),
    ],
)
def test_gop_numbers_are_published_as_their_decimal_string(gop: Any, published: str) -> None:
    event = decode(with_profile(gop=gop))
    assert isinstance(event, SessionStarted)
    assert event.profiles is not None
    assert event.profiles[0].gop == published


def test_gop_number_text_reads_back_as_the_same_number() -> None:
    for value in (0.5, 1 / 3, 2.002, 1e-7, 123456.789):
        event = decode(with_profile(gop=value))
        assert isinstance(event, SessionStarted)
        assert event.profiles is not None
        gop = event.profiles[0].gop
        assert gop is not None
        assert float(gop) == value


@pytest.mark.parametrize(
    ("names", "repeated"),
    [(["a", "b", "a"], "a"), (["720p", "480p", "360p", "480p"], "480p"), (["x", "x"], "x")],
)
def test_duplicate_rendition_names_are_schema_violations(names: list[str], repeated: str) -> None:
    body = {**transcoded(1), "renditions": [{"name": n, "bytes": 1} for n in names]}
    invalid = reject(body)
    assert invalid.reason is InvalidReason.SCHEMA
    assert invalid.detail == f"renditions: rendition names must be unique ({repeated!r} repeats)"


def test_duplicate_rendition_names_are_checked_before_the_key_and_the_clock() -> None:
    body = {**transcoded(1, ts=NOW + 10**9), "renditions": [{"name": "a", "bytes": 1}] * 2}
    assert reject(body, key=b"other", now=NOW).reason is InvalidReason.SCHEMA


def test_other_schema_problems_are_reported_before_duplicate_names() -> None:
    body = {**transcoded(1, duration=0), "renditions": [{"name": "a", "bytes": 1}] * 2}
    assert reject(body).detail.startswith("duration:")


def test_distinct_rendition_names_differing_only_in_case_are_accepted() -> None:
    body = {**transcoded(1), "renditions": [{"name": "a", "bytes": 1}, {"name": "A", "bytes": 2}]}
    event = decode(body)
    assert isinstance(event, SegmentTranscoded)
    assert [r["name"] for r in event.renditions] == ["a", "A"]


def test_schema_detail_names_at_most_three_problems() -> None:
    body = {**ingested(1), "seqNo": -1, "duration": 0, "bytes": -1, "timestamp": 0}
    invalid = reject(body)
    assert invalid.reason is InvalidReason.SCHEMA
    assert invalid.detail.count(": ") == 3
    assert invalid.detail.split("; ")[0].startswith("timestamp:")


# ------------------------------------------------------------------------------ record key


def test_key_equal_to_session_id_is_accepted() -> None:
    assert decode(ingested(1), key=SID.encode()).session_id == SID


def test_absent_key_is_accepted() -> None:
    assert decode(ingested(1), key=None).session_id == SID


@pytest.mark.parametrize(
    "key", [b"other", b"", b"sess-1 ", b"SESS-1"], ids=["other", "empty", "space", "case"]
)
def test_key_differing_from_session_id_is_key_mismatch(key: bytes) -> None:
    invalid = reject(ingested(1), key=key)
    assert invalid.reason is InvalidReason.KEY_MISMATCH
    assert repr(key) in invalid.detail
    assert repr(SID) in invalid.detail


def test_schema_is_checked_before_the_key() -> None:
    assert reject(ingested(-1), key=b"other").reason is InvalidReason.SCHEMA


# ----------------------------------------------------------------------- future timestamps

NOW = T0 + 1_000_000


def test_exactly_five_minutes_ahead_is_accepted() -> None:
    assert MAX_FUTURE_SKEW_MS == 300_000
    assert decode(ingested(1, ts=NOW + 300_000), now=NOW).timestamp == NOW + 300_000


def test_more_than_five_minutes_ahead_is_future_timestamp() -> None:
    invalid = reject(ingested(1, ts=NOW + 300_001), now=NOW)
    assert invalid.reason is InvalidReason.FUTURE_TIMESTAMP
    assert invalid.detail == f"timestamp {NOW + 300_001} is 300001 ms ahead of the worker"


@pytest.mark.parametrize("body", [started(), ended(T0), recording("ready", T0), failed(1, T0)])
def test_future_rule_applies_to_every_type(body: Json) -> None:
    too_late = {**body, "timestamp": NOW + 300_001}
    assert reject(too_late, now=NOW).reason is InvalidReason.FUTURE_TIMESTAMP


def test_events_from_the_past_are_accepted() -> None:
    assert decode(ingested(1, ts=1), now=NOW).timestamp == 1


def test_key_mismatch_is_reported_before_a_future_timestamp() -> None:
    invalid = reject(ingested(1, ts=NOW + 10**9), key=b"x", now=NOW)
    assert invalid.reason is InvalidReason.KEY_MISMATCH


# ------------------------------------------------------------------ forward compatibility


def test_unknown_extra_fields_are_ignored() -> None:
    body = ingested(1, codec="h264", nested={"a": [1, 2]}, nothing=None)
    assert decode(body) == decode(ingested(1))


def test_unknown_fields_inside_renditions_and_profiles_are_ignored() -> None:
    body = transcoded(1)
    body["renditions"][0]["codec"] = "h264"
    assert decode(body) == decode(transcoded(1))
    with_extra = started(profiles=[profile("720p", future="x")])
    assert decode(with_extra) == decode(started(profiles=[profile("720p")]))


def test_session_ended_ignores_extra_fields() -> None:
    assert decode(ended(T0, reason="done", seqNo=4)) == decode(ended(T0))


def test_builders_produce_json_the_decoder_accepts() -> None:
    for body in (started(), ingested(0), transcoded(0), failed(0), recording("ready", T0)):
        assert decode(encode(body)).type == body["type"]
