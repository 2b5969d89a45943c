"""SessionStore: coalesced publishing, lifecycle (end, retention, eviction, TTL), partitions."""

from __future__ import annotations

import pytest

from tests.unit.builders import (
    DEFAULT_RULES,
    SID,
    T0,
    Json,
    decode,
    ended,
    ingested,
    render,
    seg_ts,
    segments,
    started,
)
from worker.metrics import ExportedValues, exported_values
from worker.rules import Rules
from worker.session import encode_session
from worker.state import new_session
from worker.store import SessionStore, TickResult

RETENTION = DEFAULT_RULES.retention_ms
TTL = DEFAULT_RULES.evicted_ttl_ms


def apply_all(store: SessionStore, bodies: list[Json], partition: int = 0) -> None:
    for body in bodies:
        store.apply(decode(body), partition)


def ids(result: TickResult) -> dict[str, list[str]]:
    return {
        "snapshots": [s.session_id for s in result.snapshots],
        "changed": [s.session_id for s in result.changed],
        "evicted": [s.session_id for s in result.evicted],
        "forgotten": [s.session_id for s in result.forgotten],
    }


def nothing() -> dict[str, list[str]]:
    return {"snapshots": [], "changed": [], "evicted": [], "forgotten": []}


def only(*, snapshots: bool = False, changed: bool = False) -> dict[str, list[str]]:
    return {
        "snapshots": [SID] if snapshots else [],
        "changed": [SID] if changed else [],
        "evicted": [],
        "forgotten": [],
    }


def ended_store(end_at: int) -> SessionStore:
    """A session of 3 segments ended at `end_at`, its final snapshot published at `end_at`."""
    store = SessionStore(DEFAULT_RULES)
    apply_all(store, [*segments(3), ended(end_at)])
    assert ids(store.tick(end_at)) == only(snapshots=True, changed=True)
    return store


# ----------------------------------------------------------------------------- folding


def test_apply_creates_the_session_on_its_first_event(store: SessionStore) -> None:
    state = store.apply(decode(ingested(0)), 4)
    assert store.get(SID) is state
    assert len(store) == 1
    assert (state.partition, state.created_at, state.source_segments) == (4, seg_ts(0), 1)
    assert store.get("other") is None


def test_apply_folds_into_the_same_state(store: SessionStore) -> None:
    apply_all(store, segments(3))
    apply_all(store, segments(3))
    state = store.live[SID]
    assert (state.source_segments, state.transcoded_segments) == (3, 9)
    assert len(store) == 1


def test_active_count(store: SessionStore) -> None:
    apply_all(store, [started(sid="a"), ingested(0, sid="b"), ingested(0, sid="c")])
    apply_all(store, [ended(T0 + 1, sid="c")])
    assert store.active_count(seg_ts(0)) == 1
    assert store.active_count(seg_ts(0) + DEFAULT_RULES.inactive_after_ms + 1) == 0  # inactive
    assert store.active_count({0: seg_ts(0)}) == 1


# ---------------------------------------------------------------------------- coalescing


def test_tick_publishes_a_snapshot_of_a_new_session(store: SessionStore) -> None:
    apply_all(store, segments(3))
    now = seg_ts(2) + 500
    result = store.tick(now)
    assert ids(result) == only(snapshots=True, changed=True)
    snapshot = result.snapshots[0]
    assert snapshot.partition == 0
    assert snapshot.session == render(store.live[SID], now)
    assert snapshot.payload == encode_session(snapshot.session)
    assert result.changed[0] is store.live[SID]


def test_a_second_tick_at_the_same_now_publishes_nothing(store: SessionStore) -> None:
    apply_all(store, segments(3))
    store.tick(seg_ts(2) + 500)
    assert ids(store.tick(seg_ts(2) + 500)) == nothing()


def test_a_duplicate_event_publishes_nothing_but_is_persisted(store: SessionStore) -> None:
    apply_all(store, segments(3))
    store.tick(seg_ts(2) + 500)
    apply_all(store, [ingested(1)])
    # The snapshot is unchanged; the state is still handed to the changelog (cheap, safe).
    assert ids(store.tick(seg_ts(2) + 500)) == only(changed=True)


def test_tick_publishes_only_when_the_json_changed(store: SessionStore) -> None:
    apply_all(store, segments(3))
    last = seg_ts(2) + 500
    store.tick(last)
    # The rates do not change until an entry leaves the window: nothing to publish.
    assert ids(store.tick(last + 100)) == nothing()
    apply_all(store, segments(1, 3))
    result = store.tick(seg_ts(3) + 500)
    assert ids(result) == only(snapshots=True, changed=True)
    assert exported_values(result.snapshots[0].session) == ExportedValues(
        source_segments=4,
        transcoded_segments=12,
        source_duration_s=8.0,
        transcoded_duration_s=24.0,
        source_bytes=4_000_000,
        transcoded_bytes=3_000_000,
        ingest_rate=400_000.0,
        outgoing_rate=300_000.0,
        is_healthy=True,
        issue_count=0,
        last_seen_ms=seg_ts(3),
    )


def test_an_issue_appearing_is_published_without_any_event(store: SessionStore) -> None:
    apply_all(store, segments(1))
    store.tick(T0 + 500)
    result = store.tick(T0 + 30_000)
    assert ids(result) == only(snapshots=True, changed=True)
    assert result.snapshots[0].session["issues"] == ["No source segments received for over 10s"]
    # While the stall holds nothing visible changes: nothing is published (issue 12, part 4).
    for later in range(T0 + 31_000, T0 + DEFAULT_RULES.inactive_after_ms, 1_000):
        assert ids(store.tick(later)) == nothing(), later
    inactive = store.tick(T0 + DEFAULT_RULES.inactive_after_ms + 1)
    assert [(s.session["isHealthy"], "issues" in s.session) for s in inactive.snapshots] == [
        (None, False)
    ]


def test_only_changed_sessions_are_published(store: SessionStore) -> None:
    apply_all(store, [started(sid="a"), started(sid="b")])
    assert sorted(ids(store.tick(T0))["snapshots"]) == ["a", "b"]
    apply_all(store, [started(T0 + 1, sid="b", name="renamed")])
    assert ids(store.tick(T0 + 1))["snapshots"] == ["b"]


# -------------------------------------------------------------------- end and eviction


def test_ended_session_is_kept_for_the_retention() -> None:
    end_at = seg_ts(3)
    store = ended_store(end_at)
    assert ids(store.tick(end_at + 20_000)) == only(snapshots=True, changed=True)  # rates -> 0
    assert ids(store.tick(end_at + RETENTION)) == nothing()
    assert SID in store.live


def test_ended_session_is_evicted_after_the_retention() -> None:
    end_at = seg_ts(3)
    store = ended_store(end_at)
    store.tick(end_at + 20_000)
    state = store.live[SID]
    result = store.tick(end_at + RETENTION + 1)
    assert ids(result) == {"snapshots": [], "changed": [SID], "evicted": [SID], "forgotten": []}
    assert result.evicted[0] is state
    assert SID not in store.live
    assert store.evicted[SID] == (state, end_at + RETENTION + 1)
    assert store.active_count(end_at + RETENTION + 1) == 0
    assert ids(store.tick(end_at + RETENTION + 2)) == nothing()


def test_eviction_waits_until_the_final_snapshot_is_published(store: SessionStore) -> None:
    apply_all(store, [*segments(3), ended(seg_ts(3))])
    late = seg_ts(3) + RETENTION + 60_000
    # First tick after the retention: the final snapshot is still unpublished: publish it.
    result = store.tick(late)
    assert ids(result) == only(snapshots=True, changed=True)
    assert result.snapshots[0].session["isHealthy"] is None
    assert ids(store.tick(late + 1)) == {
        "snapshots": [],
        "changed": [SID],
        "evicted": [SID],
        "forgotten": [],
    }


def test_event_after_the_end_delays_eviction_until_published() -> None:
    end_at = seg_ts(3)
    store = ended_store(end_at)
    store.tick(end_at + 20_000)
    apply_all(store, [started(end_at + 30_000, name="renamed")])
    result = store.tick(end_at + RETENTION + 1)
    assert ids(result) == only(snapshots=True, changed=True)
    assert ids(store.tick(end_at + RETENTION + 2))["evicted"] == [SID]


def test_evicted_session_revived_by_a_late_event_keeps_its_totals() -> None:
    end_at = seg_ts(3)
    store = ended_store(end_at)
    store.tick(end_at + 20_000)
    store.tick(end_at + RETENTION + 1)
    assert SID not in store.live
    state = store.apply(decode(ingested(3, seg_ts(3))), 7)
    assert SID in store.live
    assert SID not in store.evicted
    assert state.partition == 7
    result = store.tick(end_at + RETENTION + 2)
    session = result.snapshots[0].session
    assert (session["sourceSegments"], session["transcodedSegments"]) == (4, 9)
    assert session["sourceBytes"] == 4_000_000
    assert session["isHealthy"] is None  # still ended
    assert result.snapshots[0].partition == 7


def test_evicted_session_replayed_duplicate_changes_no_totals() -> None:
    end_at = seg_ts(3)
    store = ended_store(end_at)
    store.tick(end_at + 20_000)
    before = render(store.live[SID], end_at + 20_000)
    store.tick(end_at + RETENTION + 1)
    apply_all(store, segments(3))  # at-least-once redelivery of everything
    after = render(store.live[SID], end_at + 20_000)
    assert after == before
    assert ids(store.tick(end_at + RETENTION + 2)) == only(changed=True)


def test_evicted_session_is_forgotten_after_the_ttl() -> None:
    end_at = seg_ts(3)
    store = ended_store(end_at)
    store.tick(end_at + 20_000)
    evicted_at = end_at + RETENTION + 1
    state = store.live[SID]
    store.tick(evicted_at)
    assert ids(store.tick(evicted_at + TTL)) == nothing()
    assert SID in store.evicted
    result = store.tick(evicted_at + TTL + 1)
    assert ids(result) == {"snapshots": [], "changed": [], "evicted": [], "forgotten": [SID]}
    assert result.forgotten[0] is state
    assert store.evicted == {}


def test_idle_session_without_segments_is_ended_and_evicted(store: SessionStore) -> None:
    apply_all(store, [started()])
    assert ids(store.tick(T0)) == only(snapshots=True, changed=True)
    timeout_at = T0 + DEFAULT_RULES.idle_timeout_ms + 1
    # Ended (isHealthy stays null: it never had a segment): nothing visible changed.
    assert ids(store.tick(timeout_at)) == only(changed=True)
    assert store.live[SID].ended_at == timeout_at
    assert store.tick(timeout_at + RETENTION + 1).evicted[0].session_id == SID
    assert store.live == {}


def test_timed_out_session_is_evicted_after_the_retention(store: SessionStore) -> None:
    apply_all(store, segments(3))
    timeout_at = seg_ts(2) + 500 + DEFAULT_RULES.idle_timeout_ms + 1
    result = store.tick(timeout_at)
    assert result.snapshots[0].session["isHealthy"] is None
    assert "issues" not in result.snapshots[0].session
    assert [s.session_id for s in result.timed_out] == [SID]
    assert ids(store.tick(timeout_at + RETENTION)) == nothing()
    assert ids(store.tick(timeout_at + RETENTION + 1))["evicted"] == [SID]


# --------------------------------------------------------------- partitions and restore


def test_take_partitions_removes_their_sessions(store: SessionStore) -> None:
    for partition, sid in enumerate(["p0", "p1", "p2"]):
        apply_all(store, [ingested(0, sid=sid)], partition)
    apply_all(store, [ingested(0, sid="p1-b")], 1)
    taken = store.take_partitions([1])
    assert sorted(s.session_id for s in taken[1].live) == ["p1", "p1-b"]
    assert sorted(store.live) == ["p0", "p2"]
    # Their pending changes are dropped too: the new owner publishes them.
    assert sorted(ids(store.tick(T0))["snapshots"]) == ["p0", "p2"]
    assert sorted(s.session_id for s in store.sessions_in([0, 1])) == ["p0"]


def test_take_partitions_removes_evicted_sessions_too() -> None:
    end_at = seg_ts(3)
    store = ended_store(end_at)
    store.tick(end_at + 20_000)
    store.tick(end_at + RETENTION + 1)
    assert SID in store.evicted
    assert store.take_partitions([1])[1].live == []
    assert SID in store.evicted
    assert store.take_partitions([0])[0].live == []
    assert store.evicted == {}


def test_taken_partitions_come_back_as_they_were_with_adopt() -> None:
    end_at = seg_ts(3)
    store = ended_store(end_at)  # SID on partition 0: ended, then evicted below
    store.tick(end_at + 20_000)
    store.tick(end_at + RETENTION + 1)
    apply_all(store, [ingested(0, sid="live-0")], 0)
    apply_all(store, [ingested(0, sid="live-1")], 1)
    store.tick(end_at + RETENTION + 2)  # publishes the live ones
    published = store.live["live-0"].published_hash
    taken = store.take_partitions([0, 1])
    assert [s.session_id for s in taken[0].live] == ["live-0"]
    assert list(taken[0].evicted) == [SID]
    assert [s.session_id for s in taken[1].live] == ["live-1"]
    assert store.live == {}
    assert store.evicted == {}
    store.adopt(taken[0])
    assert sorted(store.live) == ["live-0"]
    assert SID in store.evicted
    assert store.live["live-0"].published_hash == published
    assert ids(store.tick(end_at + RETENTION + 2))["snapshots"] == [], "nothing changed"


def test_restore_live_state_is_republished(store: SessionStore) -> None:
    apply_all(store, segments(3))
    store.tick(seg_ts(2) + 500)
    state = store.live[SID]
    other = SessionStore(DEFAULT_RULES)
    other.restore(state, None)
    assert other.live[SID] is state
    assert state.published_hash is None
    assert ids(other.tick(seg_ts(2) + 500)) == only(snapshots=True, changed=True)


def test_restore_evicted_state_is_archived(store: SessionStore) -> None:
    state = new_session(SID, 2, T0)
    state.source_segments = 9
    store.restore(state, T0 + 5)
    assert store.live == {}
    assert store.evicted == {SID: (state, T0 + 5)}
    revived = store.apply(decode(ingested(0)), 2)
    assert revived is state
    assert revived.source_segments == 10


@pytest.mark.parametrize("retention_ms", [0, 1_000])
def test_retention_is_configurable(retention_ms: int) -> None:
    store = SessionStore(Rules(retention_ms=retention_ms))
    end_at = T0 + 20_000  # rates are already 0 when it ends: the first snapshot is final
    apply_all(store, [ingested(0, T0), ended(end_at)])
    assert ids(store.tick(end_at)) == only(snapshots=True, changed=True)
    assert ids(store.tick(end_at + retention_ms)) == nothing()
    assert ids(store.tick(end_at + retention_ms + 1))["evicted"] == [SID]
