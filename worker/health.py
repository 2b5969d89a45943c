"""Health rules (semantics.md): pure functions of a session's state and `now`."""

from __future__ import annotations

from operator import itemgetter

from worker.rules import Rules
from worker.state import SessionState, recent_failures

_second = itemgetter(1)


def is_active(state: SessionState) -> bool:
    """Active = has had a segment event and has not ended (timed-out sessions are judged)."""
    return state.first_segment_at is not None and (state.ended_at is None or state.timed_out)


def _median(values: list[float]) -> float:
    """statistics.median (same result), without its generic overhead: runs every tick."""
    values.sort()
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def stall_threshold_ms(state: SessionState, rules: Rules) -> int:
    durations = state.recent_durations
    typical_ms = _median(list(durations.values())) * 1000 if durations else 0.0
    return max(rules.stall_min_ms, round(rules.stall_duration_factor * typical_ms))


def _stall_issue(state: SessionState, now_ms: int, rules: Rules) -> str | None:
    reference = state.last_seen if state.last_seen is not None else state.first_segment_at
    if reference is None:
        return None
    silent_ms = now_ms - reference
    if silent_ms <= stall_threshold_ms(state, rules):
        return None
    return f"No source segments received for {silent_ms // 1000}s"


def _failure_issue(state: SessionState) -> str | None:
    recent = recent_failures(state)
    if not recent:
        return None
    _, last_error = max(recent.values())
    count = len(recent)
    noun = "segment" if count == 1 else "segments"
    return f"{count} {noun} failed to transcode in the last 10: {last_error}"


def _slow_issue(state: SessionState, rules: Rules) -> str | None:
    ratios = [r for r, _ in state.recent_transcodes.values() if r is not None]
    if not ratios:
        return None
    mean_ratio = sum(ratios) / len(ratios)
    if mean_ratio <= rules.slow_transcode_ratio:
        return None
    return f"Transcoding is slower than real time ({mean_ratio:.2f}x segment duration)"


def _lag_issue(state: SessionState, rules: Rules) -> str | None:
    if state.source_hwm < 0:
        return None
    behind = state.source_hwm - state.transcoded_hwm
    if behind <= rules.max_transcode_lag_segments:
        return None
    return f"Transcoding is {behind} segments behind ingest"


def _missing_renditions_issue(state: SessionState) -> str | None:
    configured = state.meta.get("profiles")
    if configured is None or not configured[1] or not state.recent_transcodes:
        return None
    expected = {p["name"] for p in configured[1]}
    missing: set[str] = set()
    # Distinct name tuples first: recent segments nearly always share one.
    for names in set(map(_second, state.recent_transcodes.values())):
        missing |= expected.difference(names)
    if not missing:
        return None
    return f"Missing renditions in recent segments: {', '.join(sorted(missing))}"


def evaluate_issues(state: SessionState, now_ms: int, rules: Rules) -> list[str] | None:
    """Issues affecting the session at `now_ms`; None while it is not active (isHealthy null)."""
    if not is_active(state):
        return None
    if state.timed_out:
        idle_s = rules.idle_timeout_ms // 1000
        return [f"Session timed out after {idle_s}s without events"]
    found = (
        _stall_issue(state, now_ms, rules),
        _failure_issue(state),
        _slow_issue(state, rules),
        _lag_issue(state, rules),
        _missing_renditions_issue(state),
    )
    return [issue for issue in found if issue is not None]
