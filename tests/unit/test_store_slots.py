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
