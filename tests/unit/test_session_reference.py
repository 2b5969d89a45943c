"""build_session against a frozen copy of its straightforward first version.

The published bytes are a contract (key order included); the optimised `build_session`
and `evaluate_issues` must render exactly what the reference renders, on varied states.
`varied_states` is also used by the changelog round-trip tests.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.unit.builders import (
    PROFILES,
    RENDITION_BYTES,
    SID,
    T0,
    Json,
    ended,
    failed,
    fold_bodies,
    ingested,
    profile,
    recording,
    seg_ts,
    started,
    transcoded,
)
from worker.parts.rates import RateWindow
from worker.rules import Rules
from worker.session import build_session, encode_session
from worker.state import MICROS, SessionState

# ----------------------------------------------------------------- the frozen reference


def _reference_issues(state: SessionState, now_ms: int, rules: Rules) -> list[str] | None:
    if state.first_segment_at is None or state.ended_at is not None:
        return None  # no segment yet, ended or timed out
    if _inactive(state, now_ms, rules):
        return None
    found: list[str | None] = []
    reference = state.last_seen if state.last_seen is not None else state.first_segment_at
    durations = sorted(state.durations.items().values())
    middle = len(durations) // 2
    median = (
        0.0
        if not durations
        else durations[middle]
        if len(durations) % 2
        else (durations[middle - 1] + durations[middle]) / 2
    )
    threshold = max(rules.stall_min_ms, round(rules.stall_duration_factor * median * 1000))
    silent_ms = now_ms - reference
    if silent_ms > threshold:
        found.append(f"No source segments received for over {threshold / 1000:g}s")
    recent = state.recent_failures()
    if recent:
        _, last_error = max(recent.values())
        noun = "segment" if len(recent) == 1 else "segments"
        found.append(f"{len(recent)} {noun} failed to transcode in the last 10: {last_error}")
    ratios = [r for r, _ in state.transcodes.items().values() if r is not None]
    if ratios and sum(ratios) / len(ratios) > rules.slow_transcode_ratio:
        mean = sum(ratios) / len(ratios)
        found.append(f"Transcoding is slower than real time ({mean:.2f}x segment duration)")
    behind = state.source_hwm - state.transcoded_hwm
    if state.source_hwm >= 0 and behind > rules.max_transcode_lag_segments:
        found.append(f"Transcoding is {behind} segments behind ingest")
    configured = state.meta.items().get("profiles")
    if configured is not None and configured[1] and state.transcodes.items():
        expected = {p["name"] for p in configured[1]}
        missing: set[str] = set()
        for _, names in state.transcodes.items().values():
            missing |= expected.difference(names)
        if missing:
            found.append(f"Missing renditions in recent segments: {', '.join(sorted(missing))}")
    return [issue for issue in found if issue is not None]


_OPTIONAL_META = (
    ("kind", "kind"),
    ("userId", "user_id"),
    ("parentId", "parent_id"),
    ("projectId", "project_id"),
    ("record", "record"),
    ("playbackId", "playback_id"),
    ("profiles", "profiles"),
    ("recordingSpec", "recording_spec"),
)


def _window_bytes(window: RateWindow, now_ms: int, window_ms: int) -> int:
    """Bytes of the entries in (now - window, now], re-summed (the window keeps a running
    sum: this checks it)."""
    return sum(size for ts, size in window.items() if now_ms - window_ms < ts <= now_ms)


def _inactive(state: SessionState, now_ms: int, rules: Rules) -> bool:
    reference = state.last_seen if state.last_seen is not None else state.first_segment_at
    return reference is not None and now_ms - reference > rules.inactive_after_ms


def reference_session(state: SessionState, now_ms: int, rules: Rules) -> dict[str, Any]:
    name = state.meta.items().get("name")
    window_s = rules.rate_window_ms / 1000
    issues = _reference_issues(state, now_ms, rules)
    session: dict[str, Any] = {
        "id": state.session_id,
        "name": name[1] if name else state.session_id,
    }
    if state.last_seen is not None:
        session["lastSeen"] = state.last_seen
    session.update(
        sourceSegments=state.source_segments,
        transcodedSegments=state.transcoded_segments,
        sourceSegmentsDuration=state.source_duration_us / MICROS,
        transcodedSegmentsDuration=state.transcoded_duration_us / MICROS,
        sourceBytes=state.source_bytes,
        transcodedBytes=state.transcoded_bytes,
        ingestRate=0.0
        if _inactive(state, now_ms, rules)
        else _window_bytes(state.ingest, now_ms, rules.rate_window_ms) / window_s,
        outgoingRate=0.0
        if _inactive(state, now_ms, rules)
        else _window_bytes(state.outgoing, now_ms, rules.rate_window_ms) / window_s,
        isHealthy=None if issues is None else not issues,
    )
    if issues is not None:
        session["issues"] = issues
    session["createdAt"] = state.created_at
    for json_name, meta_name in _OPTIONAL_META:
        value = state.meta.items().get(meta_name)
        if value is not None:
            session[json_name] = value[1]
    record = state.meta.items().get("record")
    if record is not None and record[1] is True:
        status = "waiting"
        if state.recording is not None:
            _, status, url, mp4 = state.recording
            if url is not None:
                session["recordingUrl"] = url
            if mp4 is not None:
                session["mp4Url"] = mp4
        session["recordingStatus"] = "none" if status == "deleted" else status
    return session


# ------------------------------------------------------------------------ varied states

_NAMES = list(RENDITION_BYTES)


def _random_start(rng: random.Random, ts: int) -> Json:
    fields: Json = {}
    for name, value in [
        ("kind", "stream"),
        ("userId", "u-1"),
        ("parentId", "p-1"),
        ("projectId", "proj"),
        ("playbackId", "pb"),
        ("record", rng.random() < 0.5),
        ("recordingSpec", {"profiles": PROFILES[:1]}),
    ]:
        if rng.random() < 0.6:
            fields[name] = value
    if rng.random() < 0.7:
        ladder = [p for p in PROFILES if rng.random() < 0.8] or PROFILES[:1]
        if rng.random() < 0.2:
            ladder = [*ladder, profile("1080p")]  # never transcoded: a missing rendition
        fields["profiles"] = ladder
    if rng.random() < 0.2:
        fields["name"] = f"show \u00e9 {rng.randrange(9)}"
    return started(ts, **fields)


def _random_bodies(rng: random.Random) -> list[Json]:
    bodies: list[Json] = []
    if rng.random() < 0.9:
        bodies.append(_random_start(rng, T0 + rng.randrange(-3_000, 3_000)))
    count = rng.randrange(0, 40)
    transcoded_below = rng.choice([count, count, count, rng.randrange(0, count + 1)])
    for seq_no in range(count):
        duration = rng.choice([2.0, 1.98, 2.002, 4.0, 0.5])
        if rng.random() < 0.95:
            bodies.append(ingested(seq_no, duration=duration, size=rng.randrange(1, 2_000_000)))
        roll = rng.random()
        if roll < 0.1:
            bodies.append(failed(seq_no, error=rng.choice(["GPU OOM", "decoder \u4e2d"])))
        if seq_no < transcoded_below and (roll < 0.05 or roll > 0.15):
            chosen = {n: rng.randrange(1, 900_000) for n in _NAMES if rng.random() < 0.97}
            time = rng.choice([None, None, 0.3, 1.7, duration * rng.random() * 1.5])
            bodies.append(
                transcoded(
                    seq_no,
                    seg_ts(seq_no) + rng.randrange(100, 9_000),
                    duration=duration,
                    renditions=chosen or {"720p": 5},
                    transcode_time=time,
                )
            )
    if rng.random() < 0.3:
        status = rng.choice(["waiting", "ready", "failed", "deleted", "none"])
        bodies.append(recording(status, T0 + 5, mp4Url="m"))
    if rng.random() < 0.2:
        bodies.append(recording("ready", T0 + 9, recordingUrl="https://r/i.m3u8"))
    if rng.random() < 0.25:
        bodies.append(ended(seg_ts(rng.randrange(0, 45))))
    if not bodies:
        bodies.append(started(T0))
    if rng.random() < 0.5:
        rng.shuffle(bodies)
    return bodies


def varied_states(count: int, seed: int = 7) -> list[SessionState]:
    """Folded states of random sessions: metadata subsets, gaps, failures, retries, partial
    renditions, ratios with and without transcodeTime, recordings, endings, reordering."""
    rng = random.Random(seed)
    states = []
    for index in range(count):
        state = fold_bodies(_random_bodies(rng))
        state.partition = index % 7
        if state.ended_at is not None and rng.random() < 0.3:
            state.timed_out = True
        states.append(state)
    return states


RULES = [
    Rules(),
    Rules(
        rate_window_ms=7_000,
        stall_min_ms=3_000,
        stall_duration_factor=2.5,
        slow_transcode_ratio=0.5,
        max_transcode_lag_segments=2,
        idle_timeout_ms=90_000,
        inactive_after_ms=5_000,
    ),
]


@pytest.mark.parametrize("rules", RULES, ids=["default", "tight"])
def test_published_bytes_equal_the_reference(rules: Rules) -> None:
    kinds: set[str] = set()
    zeroed = 0
    """Inactive with bytes still in the rate window (the tight rules' window is longer)."""
    for state in varied_states(300):
        newest = max(state.last_activity, state.last_seen or 0)
        for now in (newest, newest + 700, newest + 6_500, newest + 11_000, newest + 95_000, T0):
            expected = reference_session(state, now, rules)
            assert encode_session(build_session(state, now, rules)) == encode_session(expected)
            window = _window_bytes(state.ingest, now, rules.rate_window_ms)
            zeroed += bool(window and _inactive(state, now, rules))
            kinds.update(" ".join(issue.split()[:3]) for issue in expected.get("issues", ()))
    # Guard: the generator reaches every rule.
    assert {k for k in kinds if not k[0].isdigit()} >= {
        "No source segments",
        "Transcoding is slower",
        "Missing renditions in",
    }
    assert any(k.startswith("Transcoding is ") and k[15].isdigit() for k in kinds)
    assert zeroed or rules.inactive_after_ms >= rules.rate_window_ms
    assert any(k.endswith(" segment failed") for k in kinds)
    assert any(k.endswith(" segments failed") for k in kinds)


def test_reference_agrees_on_a_plain_session() -> None:
    state = fold_bodies([started(T0, record=True), ingested(0), transcoded(0)])
    now = seg_ts(1)
    assert build_session(state, now, Rules()) == reference_session(state, now, Rules())
    assert state.session_id == SID
