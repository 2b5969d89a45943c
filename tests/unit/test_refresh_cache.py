"""The refresh's caches (worker/parts/refresh.py) show what a refresh without them shows:
health judged again only on an event or a crossing of its `now` span, the snapshot's static
tail rendered once per metadata change: byte for byte the straightforward rendering."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.builders import (
    SID,
    T0,
    fold_bodies,
    ingested,
    parse_all,
    seg_ts,
    started,
    transcoded,
)
from tests.unit.test_properties import PROPERTY_SETTINGS, Plan, plans, shuffled_with_duplicates
from tests.unit.test_session_reference import RULES, reference_session, varied_states
from worker import health
from worker.health import evaluate_issues, judge_issues, stall_threshold_ms
from worker.rules import Rules
from worker.session import build_session, encode_session
from worker.state import SessionState, fold, new_session


def _check(state: SessionState, now: int, rules: Rules) -> None:
    expected = judge_issues(state, now, rules)
    assert evaluate_issues(state, now, rules) == expected
    session = build_session(state, now, rules)
    reference = reference_session(state, now, rules)
    assert session == reference
    assert list(session) == list(reference)  # key order is part of the bytes
    assert encode_session(session) == orjson.dumps(reference)


def _nows(data: st.DataObject, state: SessionState, at: int, rules: Rules) -> list[int]:
    """Clocks around the crossings silence makes (stall threshold, inactivity), and any."""
    since = state.last_seen if state.last_seen is not None else state.first_segment_at
    base = at if since is None else since
    edges = [rules.stall_min_ms, rules.inactive_after_ms, stall_threshold_ms(state, rules)]
    offsets = st.one_of(
        st.integers(-5_000, 130_000),
        st.sampled_from(edges).flatmap(lambda edge: st.integers(edge - 1, edge + 2)),
    )
    return [base + offset for offset in data.draw(st.lists(offsets, max_size=4))]


@settings(PROPERTY_SETTINGS, max_examples=150)
@given(data=st.data(), plan=plans(), rules=st.sampled_from(RULES))
def test_cached_refresh_equals_the_uncached_one(
    data: st.DataObject, plan: Plan, rules: Rules
) -> None:
    """Events in any order with redeliveries, clocks back and forth between them, and now
    and then the idle timeout the store sets without a fold."""
    events = data.draw(shuffled_with_duplicates(plan.events))
    state = new_session(SID, 0, plan.events[0].timestamp)
    for event in events:
        fold(state, event)
        for now in _nows(data, state, event.timestamp, rules):
            if state.ended_at is None and data.draw(st.integers(0, 15)) == 0:
                state.ended_at, state.timed_out = now, True
            _check(state, now, rules)


def test_varied_states_at_many_clocks_and_both_rule_sets() -> None:
    """The same state refreshed under alternating rules: a verdict is kept per rule set."""
    for state in varied_states(150, seed=3):
        newest = max(state.last_activity, state.last_seen or 0)
        for now in (newest, newest + 700, newest + 11_000, newest, newest + 95_000, T0, newest):
            for rules in (*RULES, *RULES):
                _check(state, now, rules)


def test_health_is_judged_once_until_an_event_or_a_crossing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = fold_bodies([started(T0), *(ingested(n) for n in range(3)), transcoded(0)])
    rules = Rules()
    judged: list[int] = []

    def counting(state: SessionState, now_ms: int, rules: Rules) -> list[str] | None:
        judged.append(now_ms)
        return judge_issues(state, now_ms, rules)

    monkeypatch.setattr(health, "judge_issues", counting)
    last = seg_ts(2)
    threshold = stall_threshold_ms(state, rules)
    assert evaluate_issues(state, last + 1_000, rules) == []
    assert evaluate_issues(state, last + threshold, rules) == []  # still within the span
    assert judged == [last + 1_000]
    stalled = evaluate_issues(state, last + threshold + 1, rules)  # the crossing
    assert stalled is not None
    assert stalled[0].startswith("No source segments")
    assert judged == [last + 1_000, last + threshold + 1]
    assert evaluate_issues(state, last + threshold + 5, rules) == stalled
    assert len(judged) == 2
    fold(state, parse_all([ingested(3)])[0])  # an event: judged again at the same clock
    assert evaluate_issues(state, last + threshold + 5, rules) == []
    assert len(judged) == 3
    inactive_at = seg_ts(3) + rules.inactive_after_ms + 1
    assert evaluate_issues(state, inactive_at - 1, rules) == stalled
    assert evaluate_issues(state, inactive_at, rules) is None
    assert evaluate_issues(state, inactive_at + 10**9, rules) is None
    assert len(judged) == 5
