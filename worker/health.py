"""Health rules (semantics.md): pure functions of a session's state and `now`."""

from __future__ import annotations

from typing import Any, Final

from worker.parts.refresh import RefreshCache
from worker.rules import Rules
from worker.state import SessionState


def silent_since(state: SessionState) -> int | None:
    """What silence is measured from: the newest segment.ingested, else the first segment
    event (only transcodes arrived); None before any segment event."""
    return state.last_seen if state.last_seen is not None else state.first_segment_at


def is_inactive(state: SessionState, now_ms: int, rules: Rules) -> bool:
    """Had segments, but none ingested for longer than `inactive_after` by `now_ms`: rates
    show 0 and health is not judged until the next one (ended or not)."""
    since = silent_since(state)
    return since is not None and now_ms - since > rules.inactive_after_ms


def is_active(state: SessionState, now_ms: int, rules: Rules) -> bool:
    """Judged by the health rules: has had a segment event, has not ended or timed out, and
    is not inactive."""
    return (
        state.first_segment_at is not None
        and state.ended_at is None
        and not is_inactive(state, now_ms, rules)
    )


def stall_threshold_ms(state: SessionState, rules: Rules) -> int:
    # factor * median * 1000 in this order, as the reference model (tests) computes it:
    # another order rounds some exact halves the other way (2.5 * 1.251 s: 3127 vs 3128).
    typical_s = state.durations.median_duration()
    return max(rules.stall_min_ms, round(rules.stall_duration_factor * typical_s * 1000))


def _stall_issue(state: SessionState, silent_ms: int, rules: Rules) -> str | None:
    """Names the threshold, not the silence: the text must not change while it holds."""
    # The threshold is at least stall_min_ms: skip the median while the source is fresh.
    if silent_ms <= rules.stall_min_ms:
        return None
    threshold_ms = stall_threshold_ms(state, rules)
    if silent_ms <= threshold_ms:
        return None
    return f"No source segments received for over {threshold_ms / 1000:g}s"


def _failure_issue(state: SessionState) -> str | None:
    recent = state.recent_failures()
    if not recent:
        return None
    _, last_error = max(recent.values())
    count = len(recent)
    noun = "segment" if count == 1 else "segments"
    return f"{count} {noun} failed to transcode in the last 10: {last_error}"


def _slow_issue(state: SessionState, rules: Rules) -> str | None:
    mean_ratio = state.transcodes.mean_ratio()
    if mean_ratio is None or mean_ratio <= rules.slow_transcode_ratio:
        return None
    return f"Transcoding is slower than real time ({mean_ratio:.2f}x segment duration)"


def _lag_issue(state: SessionState, rules: Rules) -> str | None:
    if state.source_hwm < 0:
        return None
    behind = state.source_hwm - state.transcoded_hwm
    if behind <= rules.max_transcode_lag_segments:
        return None
    return f"Transcoding is {behind} segments behind ingest"


MAX_CACHED_LADDERS: Final = 1024
"""Profile ladders whose rendition names are remembered (a fleet uses a handful; the fold
shares equal ladders between sessions). Bounded: cleared when full."""
_expected_names: dict[int, tuple[list[dict[str, Any]], frozenset[str]]] = {}


def _profile_names(profiles: list[dict[str, Any]]) -> frozenset[str]:
    """The names of a (never mutated) profile ladder; keyed by identity, so the cache holds
    the ladder itself and an id cannot be reused while its entry lives."""
    cached = _expected_names.get(id(profiles))
    if cached is not None and cached[0] is profiles:
        return cached[1]
    if len(_expected_names) >= MAX_CACHED_LADDERS:
        _expected_names.clear()
    names = frozenset(p["name"] for p in profiles)
    _expected_names[id(profiles)] = (profiles, names)
    return names


def _missing_renditions_issue(state: SessionState) -> str | None:
    configured = state.meta.profiles
    if not configured:
        return None
    missing = state.transcodes.missing(_profile_names(configured))
    if not missing:
        return None
    return f"Missing renditions in recent segments: {', '.join(sorted(missing))}"


def judge_issues(state: SessionState, now_ms: int, rules: Rules) -> list[str] | None:
    """Issues affecting the session at `now_ms`; None while it is not active (isHealthy null:
    no segment event yet, ended or timed out, or inactive). The rules as written, without
    the cache `evaluate_issues` keeps.

    Rules that cannot fire are skipped cheaply. Only the stall rule depends on `now_ms`
    alone; every text changes only with its inputs."""
    since = silent_since(state)
    if since is None or state.ended_at is not None:
        return None
    silent_ms = now_ms - since
    if silent_ms > rules.inactive_after_ms:
        return None  # inactive
    issues: list[str] = []
    issue = _stall_issue(state, silent_ms, rules)
    if issue is not None:
        issues.append(issue)
    if state.failures:
        issue = _failure_issue(state)
        if issue is not None:
            issues.append(issue)
    if state.transcodes:
        issue = _slow_issue(state, rules)
        if issue is not None:
            issues.append(issue)
    issue = _lag_issue(state, rules)
    if issue is not None:
        issues.append(issue)
    if state.transcodes:
        issue = _missing_renditions_issue(state)
        if issue is not None:
            issues.append(issue)
    return issues


NEVER: Final = 1 << 62
"""A `now` no clock reaches: the verdict holds from or until it."""


def _span(state: SessionState, since: int, now_ms: int, rules: Rules) -> tuple[int, int]:
    """The `now` span around `now_ms` in which the verdict cannot change without an event:
    between the crossings silence makes (the stall threshold, then inactivity)."""
    silent_ms = now_ms - since
    inactive_at = since + rules.inactive_after_ms + 1
    if silent_ms > rules.inactive_after_ms:
        return inactive_at, NEVER
    stall_min_at = since + rules.stall_min_ms + 1
    if now_ms < stall_min_at:
        return -NEVER, min(stall_min_at, inactive_at)
    stall_at = since + stall_threshold_ms(state, rules) + 1
    if now_ms < stall_at:
        return stall_min_at, min(stall_at, inactive_at)
    return stall_at, inactive_at


def evaluate_issues(state: SessionState, now_ms: int, rules: Rules) -> list[str] | None:
    """`judge_issues`, judged again only when an event changed the state (its fold version)
    or `now_ms` left the span in which silence cannot change the verdict. Runs for every
    session a tick rebuilds; most of them had no event since the last tick or one that
    leaves the span as it was, and are judged once, not once a second.

    The end (an event or the idle timeout, which the store sets without a fold) is read
    every time: it ends judging at once."""
    since = silent_since(state)
    if since is None or state.ended_at is not None:
        return None
    cache = state.refresh
    if cache is None:
        cache = state.refresh = RefreshCache()
    elif (
        cache.health_version == state.version
        and cache.health_rules is rules
        and cache.health_from <= now_ms < cache.health_until
    ):
        issues = cache.health_issues
        return None if issues is None else list(issues)
    judged = judge_issues(state, now_ms, rules)
    cache.health_version = state.version
    cache.health_rules = rules
    cache.health_from, cache.health_until = _span(state, since, now_ms, rules)
    cache.health_issues = None if judged is None else tuple(judged)
    return judged
