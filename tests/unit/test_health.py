"""Health rules (semantics.md): each issue appears with its sentence and clears again."""

from __future__ import annotations

import pytest

from tests.unit.builders import (
    DEFAULT_RULES,
    PROFILES,
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
    segment,
    segments,
    started,
    transcoded,
)
from worker.health import evaluate_issues, is_active, is_inactive, stall_threshold_ms
from worker.rules import Rules
from worker.state import SessionState
from worker.store import SessionStore

STALLED = "No source segments received for over 10s"
INACTIVE_AFTER = DEFAULT_RULES.inactive_after_ms


def health(state: SessionState, now: int, rules: Rules = DEFAULT_RULES) -> tuple[object, ...]:
    """(isHealthy, issues or the string 'omitted') as published."""
    session = render(state, now, rules)
    return session["isHealthy"], session.get("issues", "omitted")


def test_healthy_session() -> None:
    state = fold_bodies(segments(5))
    assert health(state, seg_ts(4) + 1000) == (True, [])
    assert is_active(state, seg_ts(4) + 1000, DEFAULT_RULES)


# ------------------------------------------------------------------------ not active


@pytest.mark.parametrize(
    "bodies",
    [
        [started()],
        [started(), recording("ready", T0)],
        [recording("waiting", T0)],
        [ended(T0)],
    ],
    ids=["started", "started+recording", "recording", "ended"],
)
def test_is_healthy_is_null_before_the_first_segment(bodies: list[Json]) -> None:
    state = fold_bodies(bodies)
    assert not is_active(state, T0, DEFAULT_RULES)
    assert health(state, T0 + 3_600_000) == (None, "omitted")
    assert evaluate_issues(state, T0 + 3_600_000, DEFAULT_RULES) is None


@pytest.mark.parametrize(
    "segment_event",
    [ingested(0), transcoded(0), failed(0)],
    ids=["ingested", "transcoded", "failed"],
)
def test_any_segment_event_makes_the_session_active(segment_event: Json) -> None:
    state = fold_bodies([started(), segment_event])
    assert is_active(state, seg_ts(0) + 1000, DEFAULT_RULES)
    assert health(state, seg_ts(0) + 1000)[0] is not None


def test_is_healthy_is_null_after_session_ended_even_with_problems() -> None:
    bodies = [started(profiles=PROFILES), *[ingested(n) for n in range(10)], failed(3)]
    bodies.append(transcoded(0, renditions={"720p": 1}, transcode_time=9.0))
    state = fold_bodies(bodies)
    assert health(state, seg_ts(9) + 60_000)[0] is False
    fold_bodies([ended(seg_ts(10))], state)
    assert not is_active(state, seg_ts(10), DEFAULT_RULES)
    assert health(state, seg_ts(9) + 60_000) == (None, "omitted")
    assert health(state, seg_ts(9) + 999_999_999) == (None, "omitted")


# ------------------------------------------------------------------------- stalled ingest


def test_stall_threshold_is_at_least_ten_seconds() -> None:
    assert stall_threshold_ms(fold_bodies(segments(3)), DEFAULT_RULES) == 10_000
    assert stall_threshold_ms(fold_bodies([transcoded(0)]), DEFAULT_RULES) == 10_000


def test_stall_threshold_is_three_times_the_median_recent_duration() -> None:
    assert stall_threshold_ms(fold_bodies([ingested(0, duration=5.0)]), DEFAULT_RULES) == 15_000
    durations = [2.0, 8.0, 8.0]
    state = fold_bodies([ingested(n, duration=d) for n, d in enumerate(durations)])
    assert stall_threshold_ms(state, DEFAULT_RULES) == 24_000
    state = fold_bodies([ingested(n, duration=d) for n, d in enumerate([2.0, 2.0, 8.0])])
    assert stall_threshold_ms(state, DEFAULT_RULES) == 10_000


def test_stall_threshold_uses_the_last_ten_durations() -> None:
    bodies = [ingested(n, duration=100.0) for n in range(5)]
    bodies += [ingested(n, duration=4.0) for n in range(5, 15)]
    assert stall_threshold_ms(fold_bodies(bodies), DEFAULT_RULES) == 12_000


def test_stall_appears_after_the_threshold_and_names_it_not_the_silence() -> None:
    state = fold_bodies(segments(5))
    last = seg_ts(4)
    assert health(state, last + 10_000) == (True, [])
    # The same text for as long as it holds: a stalled session is not republished per tick.
    for silence in (10_001, 14_999, 31_000, INACTIVE_AFTER):
        assert health(state, last + silence) == (False, [STALLED]), silence


def test_stall_threshold_follows_long_segments() -> None:
    state = fold_bodies([ingested(0, duration=5.0), transcoded(0, duration=5.0)])
    assert health(state, seg_ts(0) + 15_000) == (True, [])
    assert health(state, seg_ts(0) + 15_001) == (
        False,
        ["No source segments received for over 15s"],
    )


def test_a_threshold_with_a_fraction_is_named_exactly() -> None:
    state = fold_bodies([ingested(0, duration=4.1), transcoded(0, duration=4.1)])
    assert health(state, seg_ts(0) + 12_301) == (
        False,
        ["No source segments received for over 12.3s"],
    )


def test_stall_clears_when_a_segment_arrives() -> None:
    state = fold_bodies(segments(5))
    now = seg_ts(4) + 30_000
    assert health(state, now) == (False, [STALLED])
    fold_bodies([ingested(5, now - 1_000), transcoded(5, now - 500)], state)
    assert health(state, now) == (True, [])


def test_stall_only_transcoded_events_counts_from_the_first_segment_event() -> None:
    state = fold_bodies([transcoded(0, T0)])
    assert health(state, T0 + 10_000) == (True, [])
    assert health(state, T0 + 12_000) == (False, [STALLED])


def test_other_events_do_not_reset_the_stall() -> None:
    state = fold_bodies(segments(1))
    fold_bodies([transcoded(0, seg_ts(0) + 20_000), started(seg_ts(0) + 20_000)], state)
    assert health(state, seg_ts(0) + 20_000) == (False, [STALLED])


# ---------------------------------------------------------------------- transcode errors


def ten_with_failures(*failures: Json) -> SessionState:
    """Ingest seqNo 0..9; transcode every seqNo not failed below."""
    failed_seq_nos = {f["seqNo"] for f in failures}
    bodies = [ingested(n) for n in range(10)]
    bodies += [transcoded(n) for n in range(10) if n not in failed_seq_nos]
    return fold_bodies([*bodies, *failures])


NOW_10 = seg_ts(9) + 1_000


def test_one_failure_is_an_issue_naming_the_error() -> None:
    state = ten_with_failures(failed(7, error="GPU ran out of memory"))
    assert health(state, NOW_10) == (
        False,
        ["1 segment failed to transcode in the last 10: GPU ran out of memory"],
    )


def test_failures_are_counted_and_the_last_error_named() -> None:
    state = ten_with_failures(failed(7, error="boom 7"), failed(8, error="boom 8"))
    assert health(state, NOW_10) == (
        False,
        ["2 segments failed to transcode in the last 10: boom 8"],
    )


def test_the_last_error_is_the_newest_by_timestamp() -> None:
    state = ten_with_failures(
        failed(8, T0 + 1, error="older"), failed(7, seg_ts(9), error="newest")
    )
    assert health(state, NOW_10)[1] == ["2 segments failed to transcode in the last 10: newest"]


def test_failure_issue_clears_when_retries_succeed() -> None:
    state = ten_with_failures(failed(7, error="boom 7"), failed(8, error="boom 8"))
    fold_bodies([transcoded(7, seg_ts(9) + 100)], state)
    assert health(state, NOW_10) == (
        False,
        ["1 segment failed to transcode in the last 10: boom 8"],
    )
    fold_bodies([transcoded(8, seg_ts(9) + 200)], state)
    assert health(state, NOW_10) == (True, [])


def test_failure_issue_clears_when_it_leaves_the_last_ten_seq_nos() -> None:
    state = ten_with_failures(failed(0, error="old"))
    assert health(state, NOW_10)[1] == ["1 segment failed to transcode in the last 10: old"]
    fold_bodies(segment(10), state)
    assert health(state, seg_ts(10) + 1_000) == (True, [])


def test_failure_of_a_seq_no_ahead_of_ingest_counts() -> None:
    state = fold_bodies([*segments(3), failed(3, error="early")])
    assert health(state, seg_ts(3)) == (
        False,
        ["1 segment failed to transcode in the last 10: early"],
    )


# ------------------------------------------------------------------ slower than real time


def test_slow_transcoding_names_the_ratio() -> None:
    state = fold_bodies(segments(3, transcode_time=3.0))
    assert health(state, seg_ts(2) + 1_000) == (
        False,
        ["Transcoding is slower than real time (1.50x segment duration)"],
    )


def test_real_time_exactly_is_not_slow() -> None:
    state = fold_bodies(segments(3, transcode_time=2.0))
    assert health(state, seg_ts(2) + 1_000) == (True, [])


def test_slowness_is_the_mean_over_the_last_ten_transcodes() -> None:
    state = fold_bodies([*segment(0, transcode_time=20.0), *segments(9, 1, transcode_time=1.0)])
    # (10.0 + 9 * 0.5) / 10
    assert health(state, seg_ts(9) + 1_000) == (
        False,
        ["Transcoding is slower than real time (1.45x segment duration)"],
    )
    fold_bodies(segment(10, transcode_time=1.0), state)
    assert health(state, seg_ts(10) + 1_000) == (True, [])


def test_transcodes_without_transcode_time_are_not_judged() -> None:
    state = fold_bodies([*segment(0, transcode_time=4.0), *segments(5, 1)])
    assert health(state, seg_ts(5) + 1_000)[1] == [
        "Transcoding is slower than real time (2.00x segment duration)"
    ]


# ------------------------------------------------------------------------- lagging


def test_transcode_lag_over_five_segments() -> None:
    state = fold_bodies([*[ingested(n) for n in range(7)], transcoded(0)])
    assert health(state, seg_ts(6)) == (False, ["Transcoding is 6 segments behind ingest"])


def test_transcode_lag_of_five_segments_is_fine() -> None:
    state = fold_bodies([*[ingested(n) for n in range(6)], transcoded(0)])
    assert health(state, seg_ts(5)) == (True, [])


def test_lag_without_any_transcode_counts_from_before_seq_no_zero() -> None:
    assert health(fold_bodies([ingested(n) for n in range(5)]), seg_ts(4)) == (True, [])
    state = fold_bodies([ingested(n) for n in range(6)])
    assert health(state, seg_ts(5)) == (False, ["Transcoding is 6 segments behind ingest"])


def test_lag_clears_when_transcoding_catches_up() -> None:
    state = fold_bodies([*[ingested(n) for n in range(7)], transcoded(0)])
    fold_bodies([transcoded(1)], state)
    assert health(state, seg_ts(6)) == (True, [])


# ------------------------------------------------------------------ missing renditions


def test_missing_renditions_are_named() -> None:
    bodies = [started(profiles=PROFILES), *segments(3), ingested(3)]
    state = fold_bodies([*bodies, transcoded(3, renditions={"720p": 1})])
    assert health(state, seg_ts(3) + 1_000) == (
        False,
        ["Missing renditions in recent segments: 360p, 480p"],
    )


def test_missing_renditions_clear_when_a_retry_delivers_them() -> None:
    bodies = [started(profiles=PROFILES), *segments(3), ingested(3)]
    state = fold_bodies([*bodies, transcoded(3, renditions={"720p": 1})])
    fold_bodies([transcoded(3, seg_ts(3) + 900, renditions={"480p": 1, "360p": 1})], state)
    assert health(state, seg_ts(3) + 1_000) == (True, [])


def test_missing_renditions_clear_after_ten_complete_segments() -> None:
    bodies = [started(profiles=PROFILES), ingested(0), transcoded(0, renditions={"720p": 1})]
    state = fold_bodies(bodies)
    assert health(state, seg_ts(0) + 1_000)[0] is False
    fold_bodies(segments(9, 1), state)
    assert health(state, seg_ts(9) + 1_000)[0] is False
    fold_bodies(segment(10), state)
    assert health(state, seg_ts(10) + 1_000) == (True, [])


@pytest.mark.parametrize("profiles", [None, []], ids=["no profiles", "empty profiles"])
def test_without_profiles_no_rendition_is_missing(profiles: list[Json] | None) -> None:
    first = started() if profiles is None else started(profiles=profiles)
    state = fold_bodies([first, ingested(0), transcoded(0, renditions={"x": 1})])
    assert health(state, seg_ts(0) + 1_000) == (True, [])


def test_profiles_set_after_the_segments_still_judge_them() -> None:
    state = fold_bodies([ingested(0), transcoded(0, renditions={"720p": 1})])
    fold_bodies([started(seg_ts(0) + 900, profiles=PROFILES)], state)
    assert health(state, seg_ts(0) + 1_000)[1] == [
        "Missing renditions in recent segments: 360p, 480p"
    ]


# --------------------------------------------------------------------- several at once


def test_every_issue_at_once_in_rule_order() -> None:
    bodies = [started(profiles=PROFILES), *[ingested(n) for n in range(8)]]
    bodies += [transcoded(0, renditions={"720p": 1}, transcode_time=4.0), failed(1, error="bad")]
    state = fold_bodies(bodies)
    assert health(state, seg_ts(7) + 20_000) == (
        False,
        [
            STALLED,
            "1 segment failed to transcode in the last 10: bad",
            "Transcoding is slower than real time (2.00x segment duration)",
            "Transcoding is 7 segments behind ingest",
            "Missing renditions in recent segments: 360p, 480p",
        ],
    )


def test_thresholds_are_configurable() -> None:
    rules = Rules(stall_min_ms=1_000, slow_transcode_ratio=2.0, max_transcode_lag_segments=1)
    state = fold_bodies([*[ingested(n) for n in range(3)], transcoded(0, transcode_time=3.0)])
    assert health(state, seg_ts(2) + 6_001, rules) == (
        False,
        ["No source segments received for over 6s", "Transcoding is 2 segments behind ingest"],
    )


# ---------------------------------------------------------------------------- inactive


def test_inactive_after_the_period_without_source_segments() -> None:
    state = fold_bodies([started(profiles=PROFILES), *segments(5), failed(5, error="bad")])
    last = seg_ts(4)
    assert health(state, last + INACTIVE_AFTER)[0] is False  # stalled, still judged
    assert is_active(state, last + INACTIVE_AFTER, DEFAULT_RULES)
    for later in (INACTIVE_AFTER + 1, 10 * INACTIVE_AFTER, DEFAULT_RULES.idle_timeout_ms):
        assert is_inactive(state, last + later, DEFAULT_RULES)
        assert not is_active(state, last + later, DEFAULT_RULES)
        assert health(state, last + later) == (None, "omitted")
        assert evaluate_issues(state, last + later, DEFAULT_RULES) is None


def test_inactive_shows_rates_of_zero_even_within_a_longer_rate_window() -> None:
    rules = Rules(rate_window_ms=60_000, inactive_after_ms=15_000)
    state = fold_bodies(segments(5))
    at = seg_ts(4) + 15_000
    assert render(state, at, rules)["ingestRate"] > 0
    session = render(state, at + 1, rules)
    assert (session["ingestRate"], session["outgoingRate"], session["isHealthy"]) == (0, 0, None)


def test_only_a_newer_source_segment_makes_an_inactive_session_active_again() -> None:
    state = fold_bodies(segments(5))
    now = seg_ts(4) + INACTIVE_AFTER + 5_000
    fold_bodies([transcoded(4, now - 1_000), started(now - 1_000), ingested(3, seg_ts(3))], state)
    assert health(state, now) == (None, "omitted")
    fold_bodies([ingested(5, now - 1_000)], state)
    assert health(state, now) == (True, [])


def test_a_session_of_transcodes_only_goes_inactive_from_its_first_segment_event() -> None:
    state = fold_bodies([transcoded(0, T0), transcoded(1, T0 + 50_000)])
    assert health(state, T0 + INACTIVE_AFTER)[0] is False
    assert health(state, T0 + INACTIVE_AFTER + 1) == (None, "omitted")


def test_the_inactive_period_is_configurable() -> None:
    rules = Rules(inactive_after_ms=15_000)
    state = fold_bodies(segments(5))
    assert health(state, seg_ts(4) + 15_000, rules) == (False, [STALLED])
    assert health(state, seg_ts(4) + 15_001, rules) == (None, "omitted")


# -------------------------------------------------------------------------- time-outs


def timed_out_store() -> tuple[SessionStore, int]:
    store = SessionStore(DEFAULT_RULES)
    for body in segments(5):
        store.apply(decode(body), 0)
    last_activity = seg_ts(4) + 500
    assert store.tick(last_activity).snapshots[0].session["isHealthy"] is True
    assert store.tick(last_activity + INACTIVE_AFTER).snapshots[0].session["isHealthy"] is None
    now = last_activity + DEFAULT_RULES.idle_timeout_ms + 1
    result = store.tick(now)
    assert [s.session_id for s in result.timed_out] == [SID]
    assert result.snapshots == [], "already inactive: the same snapshot, not published again"
    assert [s.session_id for s in result.changed] == [SID], "the changelog records the end"
    return store, now


def test_idle_session_times_out_with_is_healthy_null() -> None:
    store, now = timed_out_store()
    state = store.live[SID]
    assert state.timed_out
    assert state.ended_at == now
    assert not is_active(state, now, DEFAULT_RULES)
    assert health(state, now) == (None, "omitted")
    assert health(state, now + 10**9) == (None, "omitted")


def test_idle_exactly_the_timeout_is_not_timed_out() -> None:
    store = SessionStore(DEFAULT_RULES)
    for body in segments(5):
        store.apply(decode(body), 0)
    now = seg_ts(4) + 500 + DEFAULT_RULES.idle_timeout_ms
    result = store.tick(now)
    assert not store.live[SID].timed_out
    assert result.timed_out == []
    assert result.snapshots[0].session["isHealthy"] is None  # inactive long since


def test_a_time_out_before_the_inactive_period_is_published() -> None:
    rules = Rules(idle_timeout_ms=20_000)
    store = SessionStore(rules)
    for body in segments(5):
        store.apply(decode(body), 0)
    assert store.tick(seg_ts(4) + 15_000).snapshots[0].session["issues"] == [STALLED]
    result = store.tick(seg_ts(4) + 30_000)
    assert [s.session_id for s in result.timed_out] == [SID]
    assert [s.session["isHealthy"] for s in result.snapshots] == [None]
    assert "issues" not in result.snapshots[0].session


def test_timed_out_session_is_revived_by_a_new_segment() -> None:
    store, now = timed_out_store()
    store.apply(decode(ingested(5, now + 1_000)), 0)
    store.apply(decode(transcoded(5, now + 1_500)), 0)
    state = store.live[SID]
    assert (state.timed_out, state.ended_at) == (False, None)
    result = store.tick(now + 2_000)
    session = result.snapshots[0].session
    assert (session["isHealthy"], session["issues"], session["sourceSegments"]) == (True, [], 6)


def test_timed_out_session_that_then_ends_is_not_judged() -> None:
    store, now = timed_out_store()
    store.apply(decode(ended(now + 5)), 0)
    state = store.live[SID]
    assert (state.timed_out, state.ended_at) == (False, now + 5)
    assert health(state, now + 10) == (None, "omitted")


def test_a_failure_pushed_out_by_a_retried_later_seq_no_stays_out_in_any_order() -> None:
    """Found by hypothesis: the 'last 10' window must not depend on a failure that a
    later transcode cancels (failed 0, then failed 10 + transcoded 10, in any order)."""
    old, retried, success = failed(0, seg_ts(0)), failed(10, seg_ts(10)), transcoded(10, seg_ts(10))
    now = seg_ts(20)
    results = [
        render(fold_bodies(order), now).get("issues")
        for order in ([old, success, retried], [old, retried, success], [retried, success, old])
    ]
    assert all(r == results[0] for r in results), results
    assert not any("failed to transcode" in issue for issue in results[0] or [])
