"""Changelog codec: exact round trips (formats 1 and 2), format errors, idempotence across a
restart."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
from tests.unit.test_session_reference import RULES, varied_states
from worker.changelog import (
    COLUMNS,
    FORMAT_VERSION,
    ChangelogEntry,
    ChangelogFormatError,
    decode_state,
    encode_state,
    encode_state_v1,
)
from worker.parts.masks import RenditionMasks
from worker.profiles import is_recording_spec
from worker.session import Session, build_session, encode_session
from worker.state import (
    SessionState,
    new_session,
)
from worker.store import SessionStore


def encode_v1(state: SessionState, evicted_at: int | None, source_offset: int | None) -> bytes:
    """Format 1 as the first version wrote it (frozen): still read for rolling upgrades."""
    return orjson.dumps(
        {
            "v": 1,
            "id": state.session_id,
            "offset": source_offset,
            "evictedAt": evicted_at,
            "createdAt": state.created_at,
            "lastActivity": state.last_activity,
            "lastSeen": state.last_seen,
            "firstSegmentAt": state.first_segment_at,
            "totals": [
                state.source_segments,
                state.source_duration_us,
                state.source_bytes,
                state.transcoded_segments,
                state.transcoded_duration_us,
                state.transcoded_bytes,
                state.late_segments,
            ],
            "source": [state.source_hwm, format(state.source_mask, "x")],
            "transcoded": [
                state.transcoded_hwm,
                {name: format(mask, "x") for name, mask in state.rendition_masks.items().items()},
            ],
            "ingestWindow": state.ingest.items(),
            "outgoingWindow": state.outgoing.items(),
            "recentDurations": list(state.durations.items().items()),
            "recentTranscodes": [[s, r, n] for s, (r, n) in state.transcodes.items().items()],
            "failures": [[s, ts, err] for s, (ts, err) in state.failures.items().items()],
            "meta": state.meta.items(),
            "recording": state.recording,
            "endedAt": state.ended_at,
            "timedOut": state.timed_out,
        }
    )


Encoder = Callable[[SessionState, int | None, int | None], bytes]
ENCODERS = [pytest.param(encode_state, id="v2"), pytest.param(encode_v1, id="v1")]


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
            recordingSpec={"profiles": [{**PROFILES[0], "encoder": "H.264", "gop": "2"}]},
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


def round_trip(
    state: SessionState, evicted_at: int | None = None, encode: Encoder = encode_state
) -> ChangelogEntry:
    return decode_state(encode(state, evicted_at, 41), state.partition)


@pytest.mark.parametrize("encode", ENCODERS)
def test_round_trip_equals_the_original_state(encode: Encoder) -> None:
    state = rich_state()
    # Guard: the fixture really exercises every part of the state.
    assert state.failures
    assert state.meta
    assert state.recording
    assert state.ingest
    assert len(state.rendition_masks.items()) == 3
    assert any(r is not None for r, _ in state.transcodes.items().values())
    entry = round_trip(state, encode=encode)
    assert entry.state == state
    assert (entry.evicted_at, entry.source_offset) == (None, 41)


@pytest.mark.parametrize("encode", ENCODERS)
def test_round_trip_of_an_ended_timed_out_evicted_state(encode: Encoder) -> None:
    state = rich_state()
    state.ended_at, state.timed_out = T0 + 99, True
    entry = round_trip(state, evicted_at=T0 + 1_000, encode=encode)
    assert entry.state == state
    assert entry.evicted_at == T0 + 1_000


@pytest.mark.parametrize("encode", ENCODERS)
def test_round_trip_of_a_new_session(encode: Encoder) -> None:
    state = new_session(SID, 0, T0)
    assert round_trip(state, encode=encode).state == state


def shared_values(state: SessionState) -> list[int]:
    """Identities of the values the fold shares between sessions."""
    names = [id(names) for names in state.transcodes.names()]
    ladders = [id(v) for v in (state.meta.profiles, state.meta.recording_spec) if v is not None]
    return names + ladders


@pytest.mark.parametrize("encode", ENCODERS)
def test_varied_states_round_trip_with_their_shared_values(encode: Encoder) -> None:
    states = varied_states(300, seed=11)
    assert any(len(set(map(id, shared_values(s)))) > 2 for s in states)  # mixed name tuples
    for index, state in enumerate(states):
        evicted_at = None if index % 3 else T0 + index
        entry = decode_state(encode(state, evicted_at, index), state.partition)
        assert entry.state == state
        assert (entry.evicted_at, entry.source_offset) == (evicted_at, index)
        # Decoding shares the same tuples and ladders as the fold, not equal copies.
        assert shared_values(entry.state) == shared_values(state)


def full_masks_state() -> SessionState:
    """A long stream: masks of the whole dedupe window, all ones but a few holes."""
    state = rich_state()
    state.source_hwm, state.transcoded_hwm = 5_000, 4_999
    state.source_mask = (1 << 1024) - 1
    state.rendition_masks = RenditionMasks.of(
        {
            "720p": (1 << 1024) - 1 - (1 << 3) - (1 << 1_000),
            "480p": (1 << 1024) - 1,
            "360p": 1 << 1_023,
            "240p": 1,
        }
    )
    return state


@pytest.mark.parametrize("encode", ENCODERS)
def test_round_trip_of_full_masks(encode: Encoder) -> None:
    state = full_masks_state()
    assert round_trip(state, encode=encode).state == state


def test_format_2_is_smaller_than_format_1() -> None:
    for state in [rich_state(), full_masks_state(), *varied_states(50)]:
        assert len(encode_state(state, None, 1)) < len(encode_v1(state, None, 1))


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
    restored = round_trip(state).state
    assert restored.published_hash is None
    assert restored == dataclasses.replace(state, published_hash=None)


def test_round_trip_renders_the_same_session() -> None:
    state = rich_state()
    now = seg_ts(14) + 1_000
    assert render(round_trip(state).state, now) == render(state, now)


def test_record_is_versioned_json() -> None:
    body = orjson.loads(encode_state(rich_state(), None, 7))
    assert body["v"] == FORMAT_VERSION == 2
    assert body["s"][:3] == [SID, 7, None]


# ------------------------------------------------------------------------ format errors


def valid_body() -> Json:
    """A format 1 body (the malformed-field cases below name its keys)."""
    body: Json = orjson.loads(encode_v1(rich_state(), None, 1))
    return body


@pytest.mark.parametrize("version", [0, 3, "2", None])
def test_unknown_version_is_refused(version: object) -> None:
    payload = orjson.dumps({**valid_body(), "v": version})
    with pytest.raises(ChangelogFormatError, match=rf"^unsupported changelog format {version!r}$"):
        decode_state(payload, 0)


def test_missing_version_is_refused() -> None:
    body = orjson.loads(encode_state(rich_state(), None, 1))
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
        b'{"v":2}',
        b'{"v":2,"s":null}',
        b'{"v":2,"s":[]}',
        b'{"v":2,"s":"' + b"x" * 31 + b'"}',
        encode_state(new_session(SID, 0, T0), None, None)[:-5],
        encode_v1(new_session(SID, 0, T0), None, None)[:-5],
    ],
    ids=[
        "empty",
        "text",
        "binary",
        "array",
        "null",
        "number",
        "string",
        "only v1",
        "only v2",
        "null v2",
        "empty v2",
        "string v2",
        "truncated",
        "truncated v1",
    ],
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


V2_FIELDS = {"renditions": 20, "ingest": 21, "durations": 23, "names": 25, "index": 26}


@pytest.mark.parametrize(
    ("position", "value"),
    [
        (17, 1025),  # source mask longer than the dedupe window: refused, not allocated
        (17, 10**12),
        (17, -1),
        (18, "zz"),
        (18, "1" + "0" * 300),  # a hole above the mask's length
        (V2_FIELDS["renditions"], ["720p", 3]),
        (V2_FIELDS["renditions"], ["720p", 3, 7]),
        (V2_FIELDS["ingest"], [1, 2, 3]),
        (V2_FIELDS["ingest"], ["1", 2]),
        (V2_FIELDS["durations"], [[1], 2.0]),
        (V2_FIELDS["names"], []),
        (V2_FIELDS["names"], [5]),
        (V2_FIELDS["index"], [9] * 10),
        (V2_FIELDS["index"], [0]),
        (27, [13, 1]),
        (28, [1, 2]),
        (29, 5),
    ],
)
def test_malformed_v2_fields_raise_format_errors(position: int, value: object) -> None:
    body = orjson.loads(encode_state(rich_state(), None, 1))
    body["s"][position] = value
    with pytest.raises(ChangelogFormatError, match="corrupt changelog record"):
        decode_state(orjson.dumps(body), 0)


def test_v2_record_of_another_length_is_refused() -> None:
    body = orjson.loads(encode_state(rich_state(), None, 1))
    for items in (body["s"][:-1], [*body["s"], None]):
        with pytest.raises(ChangelogFormatError, match="corrupt changelog record"):
            decode_state(orjson.dumps({"v": 2, "s": items}), 0)


JUNK: list[Any] = [None, True, -1, 0, 2**63 - 1, 1e300, 1.5, "", "x", [], [1, "a"], {}, {"a": [1]}]


DAMAGE_SOURCES: Final = [rich_state(), full_masks_state(), *varied_states(20, seed=3)]


@pytest.mark.parametrize("encode", ENCODERS)
@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    which=st.integers(0, len(DAMAGE_SOURCES) - 1),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=4),
    keep=st.floats(0, 1),
)
def test_damaged_records_decode_or_raise_format_errors(
    encode: Encoder, which: int, flips: list[tuple[float, int]], keep: float
) -> None:
    """Never another exception: bytes flipped anywhere, then the record cut anywhere."""
    damaged = bytearray(encode(DAMAGE_SOURCES[which], None, 1))
    for where, byte in flips:
        damaged[int(where * len(damaged))] = byte
    with contextlib.suppress(ChangelogFormatError):
        decode_state(bytes(damaged[: round(keep * len(damaged))]), 0)


@pytest.mark.parametrize("encode", ENCODERS)
def test_junk_in_any_field_decodes_or_raises_format_errors(encode: Encoder) -> None:
    """Never another exception: every junk value in every field."""
    payloads = []
    for state in DAMAGE_SOURCES:
        payload = encode(state, None, 1)
        body = orjson.loads(payload)
        fields: list[Any] = list(body["s"]) if "s" in body else list(body)
        for position in range(len(fields)):
            for junk in JUNK:
                if "s" in body:
                    items = list(body["s"])
                    items[position] = junk
                    payloads.append(orjson.dumps({"v": 2, "s": items}))
                else:
                    payloads.append(orjson.dumps({**body, fields[position]: junk}))
    for payload in payloads:
        with contextlib.suppress(ChangelogFormatError):
            decode_state(payload, 0)


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


def test_the_v1_writer_writes_what_older_workers_read() -> None:
    for state in [rich_state(), full_masks_state(), *varied_states(50)]:
        assert encode_state_v1(state, 5, 41) == encode_v1(state, 5, 41)


def test_a_v1_record_restores_to_the_v2_record_of_the_same_state() -> None:
    """Rolling upgrade: what an older worker wrote is rewritten in format 2 unchanged."""
    state = rich_state()
    restored = decode_state(encode_v1(state, None, 41), state.partition).state
    assert encode_state(restored, None, 41) == encode_state(state, None, 41)


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


FROZEN_RECORDS: Final = Path(__file__).parent / "data" / "changelog_frozen.json"
"""Records written by the code before the compact in-memory state (formats 2 and 1), with a
sha256 of the sessions that code published from them. Never regenerate: they pin that
records already in changelog topics still decode into the same state."""


def _as_written_now(record: bytes) -> tuple[bytes, bool]:
    """`record` as this version writes it back, and whether the 2026-12 contract publishes
    its state differently: a TranscodeProfile recording spec is dropped on restore, recording
    URLs show only when `record` is true, and `deleted` is published as `none`."""
    body = orjson.loads(record)
    fields = body["s"] if "s" in body else [body["meta"], body["recording"]]  # v2 or v1
    meta, recording = fields[-2], fields[-1]
    spec = meta.get("recording_spec")
    legacy_spec = spec is not None and not is_recording_spec(spec[1])
    if legacy_spec:
        del meta["recording_spec"]
    recorded = meta.get("record", [0, None])[1] is True
    changed = recording is not None and (
        (not recorded and recording[2:] != [None, None]) or (recorded and recording[1] == "deleted")
    )
    return orjson.dumps(body), legacy_spec or changed


def test_frozen_records_decode_into_the_same_state() -> None:
    records = orjson.loads(FROZEN_RECORDS.read_bytes())
    assert len(records) > 50
    pinned = 0
    for record in records:
        v2, v1 = record["v2"].encode(), record["v1"].encode()
        entry = decode_state(v2, record["partition"])
        assert decode_state(v1, record["partition"]) == entry
        state = entry.state
        # Re-encoding writes the very same bytes, in both formats: nothing was lost but what
        # the 2026-12 contract forbids.
        (v2_now, changed), (v1_now, _) = _as_written_now(v2), _as_written_now(v1)
        assert encode_state(state, entry.evicted_at, entry.source_offset) == v2_now
        assert encode_state_v1(state, entry.evicted_at, entry.source_offset) == v1_now
        payloads = [
            encode_session(build_session(state, now, rules))
            for now in record["nows"]
            for rules in RULES
        ]
        for payload in payloads:
            Session.model_validate_json(payload)
        if not changed:  # the rest publishes exactly what the code that wrote it published
            digest = hashlib.sha256(b"\n".join(payloads)).hexdigest()
            assert digest == record["sessions_sha256"]
            pinned += 1
    assert pinned >= 20, "the frozen records still pin the published bytes"


def test_columns_name_every_state_field_once_and_groups_in_index_order() -> None:
    """The one table both formats are generated from: every field of the state but the
    runtime ones is a column, and the columns of a format 1 group come in index order."""
    names = [column.name for column in COLUMNS]
    runtime = {"partition", "published_hash", "exported", "version", "refresh"}
    state_fields = {f.name for f in dataclasses.fields(SessionState)} - runtime
    assert sorted(names) == sorted(state_fields | {"source_offset", "evicted_at"})
    groups: dict[str, list[int]] = {}
    for column in COLUMNS:
        key, _, index = column.v1.partition(".")
        if index:
            groups.setdefault(key, []).append(int(index))
    assert groups == {"totals": list(range(7)), "source": [0, 1], "transcoded": [0, 1]}
