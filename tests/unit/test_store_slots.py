"""SessionStore.tick by slots: a round of slot ticks does what one tick of all sessions does."""

from __future__ import annotations

from tests.unit.builders import T0, Json, decode, ended, ingested, seg_ts, started
from worker.rules import Rules
from worker.store import SessionStore

SLOTS = 4


def sessions(count: int) -> list[Json]:
    bodies: list[Json] = []
    for n in range(count):
        sid = f"sess-{n}"
        bodies += [started(sid=sid), ingested(0, sid=sid), ingested(1, sid=sid)]
        if n % 3 == 0:
            bodies.append(ended(seg_ts(2), sid=sid))
    return bodies


def filled(count: int) -> SessionStore:
    store = SessionStore(Rules())
    for body in sessions(count):
        store.apply(decode(body), 0)
    return store


def test_each_session_is_refreshed_in_exactly_one_slot_of_a_round() -> None:
    store = filled(40)
    published = [
        [s.session_id for s in store.tick(seg_ts(3), slot, SLOTS).snapshots]
        for slot in range(SLOTS)
    ]
    flat = [sid for ids in published for sid in ids]
    assert sorted(flat) == sorted(store.live), "every session once, none twice"
    assert all(published), "40 sessions spread over 4 slots leave none empty"
    again = store.tick(seg_ts(3), 1, SLOTS)
    assert again.snapshots == [], "nothing changed since its slot was refreshed"


def test_a_round_of_slots_publishes_what_one_full_tick_publishes() -> None:
    by_slots, at_once = filled(30), filled(30)
    for now in (seg_ts(3), seg_ts(3) + 20_000, T0 + 900_000):  # live, stalled, evicted
        round_payloads = {
            s.session_id: s.payload
            for slot in range(SLOTS)
            for s in by_slots.tick(now, slot, SLOTS).snapshots
        }
        full_payloads = {s.session_id: s.payload for s in at_once.tick(now).snapshots}
        assert round_payloads == full_payloads
        assert sorted(by_slots.live) == sorted(at_once.live)
        assert sorted(by_slots.evicted) == sorted(at_once.evicted)
    assert by_slots.evicted, "the last round evicted the ended sessions"


def refreshed_in_a_round(store: SessionStore, now: int) -> list[str]:
    return sorted(
        s.session_id for slot in range(SLOTS) for s in store.tick(now, slot, SLOTS).snapshots
    )


def test_slots_follow_sessions_that_arrive_leave_and_come_back() -> None:
    store = filled(12)
    now = seg_ts(3)
    assert refreshed_in_a_round(store, now) == sorted(store.live)  # the slots are built now
    for n in range(12, 16):  # new sessions, on partition 1
        store.apply(decode(started(sid=f"sess-{n}")), 1)
    assert refreshed_in_a_round(store, now + 1) == [f"sess-{n}" for n in range(12, 16)]
    gone = [store.live[f"sess-{n}"] for n in range(12, 16)]
    taken = store.take_partitions([1])
    assert sorted(s.session_id for s in taken[1].live) == [f"sess-{n}" for n in range(12, 16)]
    kept = store.live["sess-1"]
    for state in [*gone, kept]:
        state.published_hash = None  # as if changed: a tick that visits it publishes it
    assert refreshed_in_a_round(store, now + 2) == ["sess-1"], "dropped ones are not visited"
    gone.append(store.live["sess-2"])
    store.take_partitions([0])
    gone[-1].published_hash = None
    assert refreshed_in_a_round(store, now + 3) == []
    store.restore(kept, None)  # restored states are republished
    assert refreshed_in_a_round(store, now + 4) == ["sess-1"]


def test_a_changed_slot_count_rebuilds_the_slots() -> None:
    store = filled(20)
    now = seg_ts(3)
    store.tick(now, 0, 2)
    everyone = sorted(store.live)
    for state in store.live.values():
        state.published_hash = None
    assert refreshed_in_a_round(store, now + 1) == everyone, f"{SLOTS} slots, each once"
