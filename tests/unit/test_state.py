"""The fold (semantics.md): exact totals, idempotence, ordering, lastSeen/createdAt, metadata."""

from __future__ import annotations

import random

import orjson
import pytest

from tests.unit.builders import (
    PROFILES,
    SID,
    T0,
    Json,
    Totals,
    decode,
    ended,
    failed,
    fold_bodies,
    ingested,
    parse_all,
    profile,
    recording,
    render,
    seg_ts,
    segments,
    started,
    totals,
    transcoded,
)
from worker import state as state_module
from worker.changelog import encode_state
from worker.events import MAX_JSON_INT
from worker.rules import DEDUPE_WINDOW, MAX_RATE_ENTRIES, RECENT_SEGMENTS, Rules
from worker.state import (
    expire_windows,
    fold,
    new_session,
)
from worker.store import SessionStore

FIVE_SEGMENTS = Totals(
    source_segments=5,
    transcoded_segments=15,
    source_duration_s=10.0,
    transcoded_duration_s=30.0,
    source_bytes=5_000_000,
    transcoded_bytes=3_750_000,
    last_seen=seg_ts(4),
    created_at=seg_ts(0),
)


def test_new_session_is_empty() -> None:
    state = new_session(SID, 3, T0)
    assert (state.session_id, state.partition, state.created_at, state.last_activity) == (
        SID,
        3,
        T0,
        T0,
    )
    assert totals(state) == Totals(0, 0, 0.0, 0.0, 0, 0, None, T0)


# ------------------------------------------------------------------------------- totals


def test_in_order_totals_are_exact() -> None:
    assert totals(fold_bodies(segments(5))) == FIVE_SEGMENTS


def test_transcoded_totals_sum_over_renditions() -> None:
    state = fold_bodies(
        [
            ingested(0, duration=2.5, size=7),
            transcoded(0, duration=2.5, renditions={"a": 1, "b": 20, "c": 300, "d": 4000}),
        ]
    )
    assert totals(state) == Totals(1, 4, 2.5, 10.0, 7, 4321, seg_ts(0), seg_ts(0))


def test_durations_are_summed_exactly() -> None:
    # 0.1 + 0.1 + 0.1 is 0.30000000000000004 in floats: durations are summed as microseconds.
    bodies = [ingested(n, duration=0.1) for n in range(3)]
    bodies += [transcoded(n, duration=0.1, renditions={"a": 1}) for n in range(3)]
    state = fold_bodies(bodies)
    session = render(state, seg_ts(2))
    assert session["sourceSegmentsDuration"] == 0.3
    assert session["transcodedSegmentsDuration"] == 0.3
    assert state.source_duration_us == 300_000


def test_durations_with_milliseconds_are_exact() -> None:
    state = fold_bodies([ingested(n, duration=2.002) for n in range(5)])
    assert render(state, seg_ts(4))["sourceSegmentsDuration"] == 10.01


@pytest.mark.parametrize("seed", range(5))
def test_reordered_events_give_the_same_totals(seed: int) -> None:
    bodies = segments(5)
    random.Random(seed).shuffle(bodies)
    assert totals(fold_bodies(bodies)) == FIVE_SEGMENTS


def test_reversed_events_give_the_same_totals() -> None:
    assert totals(fold_bodies(segments(5)[::-1])) == FIVE_SEGMENTS


def test_duplicated_events_change_nothing() -> None:
    once = fold_bodies(segments(5))
    bodies = segments(5)
    twice = fold_bodies(bodies + bodies + bodies[::-1])
    assert totals(twice) == FIVE_SEGMENTS
    assert twice == once


def test_transcoded_before_its_ingested() -> None:
    state = fold_bodies([transcoded(0), transcoded(1)])
    assert totals(state) == Totals(0, 6, 0.0, 12.0, 0, 1_500_000, None, seg_ts(0) + 500)
    fold_bodies([ingested(0), ingested(1)], state)
    assert totals(state) == Totals(2, 6, 4.0, 12.0, 2_000_000, 1_500_000, seg_ts(1), seg_ts(0))


def test_failure_does_not_count_and_a_later_success_does() -> None:
    state = fold_bodies([ingested(0), failed(0)])
    assert totals(state) == Totals(1, 0, 2.0, 0.0, 1_000_000, 0, seg_ts(0), seg_ts(0))
    assert state.failures.items() == {0: (seg_ts(0) + 400, "GPU ran out of memory")}
    fold_bodies([transcoded(0, seg_ts(0) + 900)], state)
    assert totals(state) == Totals(1, 3, 2.0, 6.0, 1_000_000, 750_000, seg_ts(0), seg_ts(0))
    assert state.failures.items() == {}


def test_failure_after_a_success_is_history() -> None:
    state = fold_bodies([ingested(0), transcoded(0), failed(0, seg_ts(0) + 900)])
    assert state.failures.items() == {}
    assert state.transcoded_segments == 3


def test_newest_failure_of_a_seq_no_is_kept() -> None:
    state = fold_bodies([failed(0, T0 + 2, error="second"), failed(0, T0 + 1, error="first")])
    assert state.failures.items() == {0: (T0 + 2, "second")}


def test_retry_adds_only_the_missing_renditions() -> None:
    state = fold_bodies(
        [
            ingested(0),
            transcoded(0, renditions={"720p": 400_000}),
            transcoded(0, seg_ts(0) + 900),  # all three, 720p again
        ]
    )
    assert (state.transcoded_segments, state.transcoded_bytes) == (3, 750_000)
    assert state.transcoded_duration_us == 6_000_000
    assert state.transcodes.items()[0] == (None, ("360p", "480p", "720p"))


def test_rendition_names_are_remembered_sorted_whatever_their_order() -> None:
    ladder = {"720p": 1, "480p": 1, "360p": 1}
    first = fold_bodies([transcoded(0, renditions=ladder)])
    other = fold_bodies([transcoded(0, renditions=dict(reversed(ladder.items())), sid="s2")])
    assert first.transcodes.items()[0] == (None, ("360p", "480p", "720p"))
    # One tuple shared by every session with that ladder, whatever the order in the event.
    assert other.transcodes.items()[0][1] is first.transcodes.items()[0][1]


def test_recent_entries_behave_like_the_dicts_they_pack() -> None:
    """The packed recent durations and transcodes against the dict model they replace: a new
    seqNo goes last, a repeated one keeps its place, then the smallest seqNos are dropped."""
    rng = random.Random(5)
    ladders = [{"720p": 1, "360p": 1}, {"480p": 1}, {"720p": 1}]
    for _ in range(40):
        state = new_session(SID, 0, T0)
        durations: dict[int, float] = {}
        transcodes: dict[int, tuple[float | None, tuple[str, ...]]] = {}
        for _ in range(rng.randrange(1, 60)):
            seq_no = rng.randrange(40)
            if rng.random() < 0.5:
                duration = rng.choice([1.0, 2.0, 2.5])
                before = state.source_segments
                fold_bodies([ingested(seq_no, duration=duration)], state)
                if state.source_segments > before:  # new, not a duplicate
                    durations[seq_no] = duration
                    for old in sorted(durations)[: max(0, len(durations) - RECENT_SEGMENTS)]:
                        del durations[old]
            else:
                renditions = rng.choice(ladders)
                time = rng.choice([None, 0.5, 3.0])
                fold_bodies([transcoded(seq_no, renditions=renditions, transcode_time=time)], state)
                ratio = None if time is None else time / 2.0
                names = tuple(sorted(renditions))
                if seq_no in transcodes:
                    old_ratio, old_names = transcodes[seq_no]
                    names = tuple(sorted(set(names) | set(old_names)))
                    ratio = old_ratio if ratio is None else ratio
                transcodes[seq_no] = (ratio, names)
                for old in sorted(transcodes)[: max(0, len(transcodes) - RECENT_SEGMENTS)]:
                    del transcodes[old]
            assert list(state.durations.items().items()) == list(durations.items())
            assert list(state.transcodes.items().items()) == list(transcodes.items())


def test_a_repeated_transcode_keeps_its_names_and_ratio() -> None:
    state = fold_bodies([transcoded(0, transcode_time=1.0)])
    fold_bodies([transcoded(0, seg_ts(0) + 900)], state)  # same names, no transcodeTime
    assert state.transcodes.items()[0] == (0.5, ("360p", "480p", "720p"))


def test_sessions_with_the_same_recent_renditions_share_one_names_tuple() -> None:
    first, second = fold_bodies(segments(3)), fold_bodies(segments(3))
    assert len(first.transcodes.names()) == 3
    assert first.transcodes.names() is second.transcodes.names()
    mixed = fold_bodies([*segments(2), transcoded(2, renditions={"240p": 1})])
    assert mixed.transcodes.names()[-1] == ("240p",), "a run of different names is not shared"


def test_the_rendition_name_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "MAX_SHARED_VALUES", 2)
    state = fold_bodies(
        [transcoded(n, renditions={f"r{n}": 1, f"q{n}": 1, "a": 1}) for n in range(5)]
    )
    assert len(state_module._names_by_arrival) <= 2
    assert [names for _, names in state.transcodes.items().values()] == [
        ("a", f"q{n}", f"r{n}") for n in range(5)
    ]


def test_old_failures_are_pruned_as_newer_segments_arrive() -> None:
    state = fold_bodies([failed(0), failed(8), ingested(9)])
    assert set(state.failures.items()) == {0, 8}  # both among the newest RECENT_SEGMENTS seqNos
    fold_bodies([ingested(15)], state)
    assert set(state.failures.items()) == {8}


def test_profile_ladders_keep_only_the_fields_present() -> None:
    ladder = [profile("720p", fpsDen=1, gop="2.0"), profile("360p", quality=20)]
    state = fold_bodies([started(profiles=ladder)])
    assert state.meta.items()["profiles"] == (T0, ladder)


def test_totals_never_decrease() -> None:
    bodies = [
        *segments(8),
        failed(3),
        transcoded(2),
        ingested(1),
        started(T0 + 50, name="other"),
        recording("ready", T0 + 60),
        ended(seg_ts(9)),
        ingested(9),
        transcoded(9),
    ]
    random.Random(4).shuffle(bodies)
    state = new_session(SID, 0, T0)
    previous = totals(state)
    for event in parse_all(bodies):
        fold(state, event)
        current = totals(state)
        for name, before, after in zip(Totals._fields[:6], previous[:6], current[:6], strict=True):
            assert after >= before, name
        previous = current
    assert totals(state)[:6] == (9, 27, 18.0, 54.0, 9_000_000, 6_750_000)


def test_seq_no_below_the_dedupe_window_is_late_and_not_counted() -> None:
    state = fold_bodies([ingested(DEDUPE_WINDOW), ingested(0), ingested(1)])
    assert state.source_segments == 2  # seqNo DEDUPE_WINDOW and 1; 0 is too old
    assert state.late_segments == 1
    fold_bodies([transcoded(DEDUPE_WINDOW), transcoded(0)], state)
    assert state.transcoded_segments == 3
    assert state.late_segments == 2


def test_a_huge_seq_no_jump_is_cheap_and_counted() -> None:
    # Shifting the dedupe bitmask by 2**53 would need petabytes: the window is cleared instead.
    state = fold_bodies(
        [
            ingested(0, T0),
            transcoded(0, T0),
            ingested(MAX_JSON_INT, T0 + 1),
            transcoded(MAX_JSON_INT, T0 + 1),
        ]
    )
    assert (state.source_segments, state.transcoded_segments) == (2, 6)
    assert state.source_mask == 1
    assert set(state.rendition_masks.items().values()) == {1}
    assert state.source_hwm == state.transcoded_hwm == MAX_JSON_INT
    assert len(encode_state(state, None, None)) < 4096


# ------------------------------------------------------------------ lastSeen, createdAt


def test_last_seen_is_the_newest_ingested_timestamp() -> None:
    state = fold_bodies([ingested(3, T0 + 3000), ingested(1, T0 + 1000)])
    assert state.last_seen == T0 + 3000


@pytest.mark.parametrize(
    "body",
    [
        transcoded(5, T0 + 9_000),
        failed(5, T0 + 9_000),
        started(T0 + 9_000),
        recording("ready", T0 + 9_000),
        ended(T0 + 9_000),
    ],
    ids=["transcoded", "failed", "started", "recording", "ended"],
)
def test_last_seen_does_not_move_on_other_events(body: Json) -> None:
    state = fold_bodies([ingested(0, T0 + 1000), body])
    assert state.last_seen == T0 + 1000
    assert render(state, T0 + 9_000)["lastSeen"] == T0 + 1000


def test_last_seen_is_omitted_before_the_first_ingested() -> None:
    state = fold_bodies([started(), transcoded(0)])
    assert state.last_seen is None
    assert "lastSeen" not in render(state, T0)


@pytest.mark.parametrize(
    "earliest",
    [
        started(T0 - 5),
        ingested(0, T0 - 5),
        transcoded(0, T0 - 5),
        failed(0, T0 - 5),
        recording("none", T0 - 5),
        ended(T0 - 5),
    ],
    ids=["started", "ingested", "transcoded", "failed", "recording", "ended"],
)
def test_created_at_is_the_minimum_over_all_events(earliest: Json) -> None:
    state = fold_bodies([ingested(1, T0 + 2000), earliest, started(T0 + 10)])
    assert state.created_at == T0 - 5
    assert render(state, T0)["createdAt"] == T0 - 5


# ----------------------------------------------------------------------------- metadata


def test_session_started_sets_metadata() -> None:
    state = fold_bodies(
        [
            started(
                name="Live",
                parentId="p",
                projectId="proj",
                playbackId="pb",
                record=False,
                kind="stream",
                userId="u",
                profiles=PROFILES,
                recordingSpec={"profiles": PROFILES[:1]},
            )
        ]
    )
    session = render(state, T0)
    assert session == {
        "id": SID,
        "name": "Live",
        "sourceSegments": 0,
        "transcodedSegments": 0,
        "sourceSegmentsDuration": 0.0,
        "transcodedSegmentsDuration": 0.0,
        "sourceBytes": 0,
        "transcodedBytes": 0,
        "ingestRate": 0.0,
        "outgoingRate": 0.0,
        "isHealthy": None,
        "createdAt": T0,
        "kind": "stream",
        "userId": "u",
        "parentId": "p",
        "projectId": "proj",
        "record": False,
        "playbackId": "pb",
        "profiles": PROFILES,
        "recordingSpec": {"profiles": PROFILES[:1]},
    }


@pytest.mark.parametrize("newer_first", [False, True])
def test_session_started_is_last_write_wins_per_field(newer_first: bool) -> None:
    older = started(T0, name="old", parentId="p-old", projectId="proj-old", profiles=PROFILES)
    newer = started(T0 + 10, name="new", parentId="p-new")
    state = fold_bodies([newer, older] if newer_first else [older, newer])
    session = render(state, T0 + 10)
    assert session["name"] == "new"
    assert session["parentId"] == "p-new"
    assert session["projectId"] == "proj-old"  # the newer one lacks it: the older still sets it
    assert session["profiles"] == PROFILES
    assert session["createdAt"] == T0


def test_name_defaults_to_the_session_id() -> None:
    assert render(fold_bodies([ingested(0)]), T0)["name"] == SID


def test_recording_status_only_when_record_is_true() -> None:
    assert "recordingStatus" not in render(fold_bodies([started()]), T0)
    assert "recordingStatus" not in render(fold_bodies([started(record=False)]), T0)
    not_recorded = fold_bodies([started(record=False), recording("ready", T0 + 1)])
    assert "recordingStatus" not in render(not_recorded, T0)
    assert render(fold_bodies([started(record=True)]), T0)["recordingStatus"] == "waiting"


def test_record_can_be_switched_by_a_newer_started() -> None:
    state = fold_bodies([started(T0, record=True), started(T0 + 1, record=False)])
    session = render(state, T0)
    assert session["record"] is False
    assert "recordingStatus" not in session


def test_recording_updated_sets_status_and_urls() -> None:
    state = fold_bodies(
        [
            started(record=True),
            recording("ready", T0 + 5, recordingUrl="https://r/i.m3u8", mp4Url="https://r/v.mp4"),
        ]
    )
    session = render(state, T0)
    assert (session["recordingStatus"], session["recordingUrl"], session["mp4Url"]) == (
        "ready",
        "https://r/i.m3u8",
        "https://r/v.mp4",
    )


@pytest.mark.parametrize("seed", range(6))
def test_recording_is_last_write_wins_per_field_in_any_order(seed: int) -> None:
    bodies = [
        started(record=True),
        recording("waiting", T0 + 1, recordingUrl="u1"),
        recording("ready", T0 + 2, recordingUrl="u2", mp4Url="m2"),
        recording("deleted", T0 + 3),  # status only: the URLs are kept
    ]
    random.Random(seed).shuffle(bodies)
    session = render(fold_bodies(bodies), T0)
    assert (session["recordingStatus"], session["recordingUrl"], session["mp4Url"]) == (
        "none",  # deleted, as published (session.md)
        "u2",
        "m2",
    )


def test_an_older_recording_update_does_not_override_the_status() -> None:
    state = fold_bodies(
        [started(record=True), recording("failed", T0 + 9), recording("ready", T0 + 1)]
    )
    assert render(state, T0)["recordingStatus"] == "failed"


@pytest.mark.parametrize("record", [None, False])
def test_recording_is_published_only_when_record_is_true(record: bool | None) -> None:
    start = started(T0 - 1) if record is None else started(T0 - 1, record=record)
    state = fold_bodies([start, recording("ready", T0, recordingUrl="u", mp4Url="m")])
    session = render(state, T0)
    assert {"recordingStatus", "recordingUrl", "mp4Url"}.isdisjoint(session)
    # Kept meanwhile: a later `record: true` shows them.
    session = render(fold_bodies([started(T0 + 1, record=True)], state), T0)
    assert (session["recordingStatus"], session["recordingUrl"], session["mp4Url"]) == (
        "ready",
        "u",
        "m",
    )


def test_session_ended_keeps_the_earliest_end() -> None:
    state = fold_bodies([ended(T0 + 9), ended(T0 + 3), ended(T0 + 5)])
    assert state.ended_at == T0 + 3


# -------------------------------------------------------------------------- rate windows


def test_expire_windows_drops_only_entries_that_can_never_count_again() -> None:
    state = fold_bodies([ingested(n, T0 + n * 1000) for n in range(5)])
    expire_windows(state, T0 + 12_000, 10_000)  # window start T0 + 2000 is excluded
    assert state.ingest.items() == [(T0 + 3000, 1_000_000), (T0 + 4000, 1_000_000)]
    assert state.source_bytes == 5_000_000


def test_rate_windows_are_capped() -> None:
    state = fold_bodies([ingested(n, T0 + n) for n in range(MAX_RATE_ENTRIES + 50)])
    assert len(state.ingest.items()) == MAX_RATE_ENTRIES
    assert state.ingest.items()[0] == (
        T0 + 50,
        1_000_000,
    )  # the oldest were dropped
    assert state.ingest.items()[-1] == (T0 + MAX_RATE_ENTRIES + 49, 1_000_000)


# ------------------------------------------------------------------------- memory bound

SEGMENTS_100K = 100_000
CHANGELOG_BOUND = 8 * 1024
"""Measured ~2.5 KiB for a session with 3 renditions, profiles and failures."""
FLOOD_CHANGELOG_BOUND = 40 * 1024
"""Both rate windows full (MAX_RATE_ENTRIES each) when nothing expires them: measured ~26 KiB."""


def test_folding_100k_segments_of_one_session_stays_bounded() -> None:
    rules = Rules()
    store = SessionStore(rules)
    store.apply(decode(started(T0, profiles=PROFILES, record=True)), 0)
    ingested_template = decode(ingested(0))
    transcoded_template = decode(transcoded(0, transcode_time=0.5))
    failed_template = decode(failed(0))
    state = store.live[SID]
    largest_record = 0
    for seq_no in range(SEGMENTS_100K):
        at = seg_ts(seq_no)
        # model_copy keeps the test fast; the templates themselves were validated.
        store.apply(ingested_template.model_copy(update={"seq_no": seq_no, "timestamp": at}), 0)
        if seq_no % 997 == 0:
            failure = {"seq_no": seq_no, "timestamp": at + 300}
            store.apply(failed_template.model_copy(update=failure), 0)
        if seq_no % 997 != 0 or seq_no % 2 == 0:  # every other failure is retried
            update = {"seq_no": seq_no, "timestamp": at + 600}
            store.apply(transcoded_template.model_copy(update=update), 0)
        if seq_no % 500 == 0:
            store.tick(at + 700)  # the runner ticks every second; often enough here
            largest_record = max(largest_record, len(encode_state(state, None, seq_no)))
        assert len(state.ingest.items()) <= MAX_RATE_ENTRIES
        assert len(state.outgoing.items()) <= MAX_RATE_ENTRIES
    store.tick(seg_ts(SEGMENTS_100K - 1) + 700)

    failed_unretried = len([s for s in range(0, SEGMENTS_100K, 997) if s % 2 == 1])
    assert state.source_segments == SEGMENTS_100K
    assert state.transcoded_segments == 3 * (SEGMENTS_100K - failed_unretried)
    assert state.source_bytes == SEGMENTS_100K * 1_000_000
    assert len(state.durations.items()) == RECENT_SEGMENTS
    assert len(state.transcodes.items()) == RECENT_SEGMENTS
    assert len(state.failures.items()) <= RECENT_SEGMENTS
    masks = state.rendition_masks.items()
    assert set(masks) == {"720p", "480p", "360p"}
    assert all(m.bit_length() <= DEDUPE_WINDOW for m in masks.values())
    assert state.source_mask.bit_length() <= DEDUPE_WINDOW
    assert len(state.ingest.items()) <= 6  # 10 s of 2 s segments
    assert len(state.outgoing.items()) <= 6
    assert set(state.meta.items()) == {"name", "record", "profiles"}
    largest_record = max(largest_record, len(encode_state(state, None, SEGMENTS_100K)))
    assert largest_record < CHANGELOG_BOUND
    assert len(orjson.dumps(render(state, seg_ts(SEGMENTS_100K)))) < 2048


def test_a_flood_without_ticks_is_still_bounded() -> None:
    state = new_session(SID, 0, T0)
    ingested_template = decode(ingested(0))
    transcoded_template = decode(transcoded(0, transcode_time=0.5))
    for seq_no in range(5 * MAX_RATE_ENTRIES):
        update = {"seq_no": seq_no, "timestamp": T0 + seq_no}
        fold(state, ingested_template.model_copy(update=update))
        fold(state, transcoded_template.model_copy(update=update))
    assert len(state.ingest.items()) == MAX_RATE_ENTRIES
    assert len(state.outgoing.items()) == MAX_RATE_ENTRIES
    assert len(encode_state(state, None, 0)) < FLOOD_CHANGELOG_BOUND
