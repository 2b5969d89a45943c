"""Property tests: totals do not depend on order, duplication or restarts, and a catch-up
shows what a replay shows (semantics.md)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes import FakeClock, FakeSource
from tests.unit.builders import (
    RENDITION_BYTES,
    SEGMENT_MS,
    SID,
    T0,
    Json,
    Totals,
    ended,
    failed,
    fold_events,
    ingested,
    parse_all,
    profile,
    recording,
    render,
    started,
    totals,
    transcoded,
)
from tests.unit.runtime.harness import make_runner, record
from worker.changelog import decode_state, encode_state
from worker.events import Event
from worker.replay import replay_lines
from worker.rules import Rules
from worker.state import MICROS

NAMES = tuple(RENDITION_BYTES)
PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Plan:
    """A generated session: its events in timestamp order and the totals they must give."""

    events: list[Event]
    expected: Totals


durations = st.one_of(
    st.sampled_from([0.5, 1.0, 2.0, 2.002, 1 / 3, 600.0]),
    st.floats(min_value=0.001, max_value=600.0, allow_nan=False, allow_infinity=False),
)


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    bodies: list[Json] = []
    source = [0, 0, 0]  # segments, duration in us, bytes
    rendered = [0, 0, 0]
    last_seen: int | None = None
    for seq_no in draw(st.lists(st.integers(0, 80), max_size=60, unique=True)):
        at = T0 + seq_no * SEGMENT_MS + draw(st.integers(-3_000, 3_000))
        duration = draw(durations)
        duration_us = round(duration * MICROS)
        if draw(st.integers(0, 9)) > 0:  # mostly ingested; sometimes only transcoded
            size = draw(st.integers(0, 5_000_000))
            bodies.append(ingested(seq_no, at, duration=duration, size=size))
            source = [source[0] + 1, source[1] + duration_us, source[2] + size]
            last_seen = at if last_seen is None else max(last_seen, at)
        sizes = {name: draw(st.integers(0, 2_000_000)) for name in NAMES}
        transcode_time = draw(st.none() | st.floats(0, 30, allow_nan=False))
        delivered: set[str] = set()
        for attempt in range(draw(st.integers(0, 3))):
            attempt_at = at + draw(st.integers(0, 10_000))
            if draw(st.booleans()):
                bodies.append(failed(seq_no, attempt_at, error=f"error {attempt}"))
                continue
            names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
            delivered.update(names)
            # A retry carries the same transcodeTime or none (health needs no tie-breaking).
            timed = transcode_time if draw(st.booleans()) else None
            renditions = {name: sizes[name] for name in names}
            bodies.append(
                transcoded(
                    seq_no,
                    attempt_at,
                    duration=duration,
                    renditions=renditions,
                    transcode_time=timed,
                )
            )
        rendered = [
            rendered[0] + len(delivered),
            rendered[1] + duration_us * len(delivered),
            rendered[2] + sum(sizes[name] for name in delivered),
        ]
    bodies += metadata(draw)
    if not bodies:
        bodies.append(started(T0))
    bodies.sort(key=lambda body: body["timestamp"])
    expected = Totals(
        source[0],
        rendered[0],
        source[1] / MICROS,
        rendered[1] / MICROS,
        source[2],
        rendered[2],
        last_seen,
        min(body["timestamp"] for body in bodies),
    )
    return Plan(parse_all(bodies), expected)


def metadata(draw: st.DrawFn) -> list[Json]:
    """session.started, recording.updated and session.ended events, distinct timestamps each."""
    bodies: list[Json] = []
    offsets = st.lists(st.integers(-10_000, 200_000), max_size=3, unique=True)
    for offset in draw(offsets):
        fields: Json = {"name": f"name {offset}"}
        if draw(st.booleans()):
            fields["parentId"] = f"parent {offset}"
        if draw(st.booleans()):
            fields["record"] = draw(st.booleans())
        if draw(st.booleans()):
            fields["profiles"] = [profile(n) for n in draw(st.lists(st.sampled_from(NAMES)))]
        bodies.append(started(T0 + offset, **fields))
    statuses = st.sampled_from(["waiting", "ready", "failed", "deleted", "none"])
    for offset in draw(offsets):
        urls: Json = {}
        if draw(st.booleans()):
            urls["recordingUrl"] = f"https://r/{offset}.m3u8"
        if draw(st.booleans()):
            urls["mp4Url"] = f"https://r/{offset}.mp4"
        bodies.append(recording(draw(statuses), T0 + offset, **urls))
    if draw(st.booleans()):
        bodies.append(ended(T0 + draw(st.integers(0, 200_000))))
    return bodies


@st.composite
def shuffled_with_duplicates(draw: st.DrawFn, events: list[Event]) -> list[Event]:
    """Any permutation of the events plus any multiset of redelivered ones."""
    if not events:
        return []
    duplicates = draw(st.lists(st.sampled_from(events), max_size=len(events)))
    return draw(st.permutations([*events, *duplicates]))


def far_future(events: list[Event]) -> int:
    """A `now` at which every rate window is empty (rates are stamped by arrival)."""
    return max(e.timestamp for e in events) + 24 * 3_600_000


@PROPERTY_SETTINGS
@given(data=st.data(), plan=plans())
def test_totals_do_not_depend_on_order_or_duplicates(data: st.DataObject, plan: Plan) -> None:
    in_order = fold_events(plan.events)
    assert totals(in_order) == plan.expected
    delivered = data.draw(shuffled_with_duplicates(plan.events))
    assert totals(fold_events(delivered)) == plan.expected


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(data=st.data(), plan=plans())
def test_snapshot_does_not_depend_on_order_or_duplicates(data: st.DataObject, plan: Plan) -> None:
    """Metadata, recording and health too (stamped events, no timestamp ties)."""
    now = far_future(plan.events)
    expected = render(fold_events(plan.events), now)
    delivered = data.draw(shuffled_with_duplicates(plan.events))
    assert render(fold_events(delivered), now) == expected


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(data=st.data(), plan=plans())
def test_a_restart_anywhere_is_transparent(data: st.DataObject, plan: Plan) -> None:
    """Crash after any prefix, restore from the changelog, redeliver from an older offset."""
    delivered = data.draw(shuffled_with_duplicates(plan.events))
    crash_at = data.draw(st.integers(1, max(1, len(delivered))))
    redeliver_from = data.draw(st.integers(0, crash_at))
    before_crash = fold_events(delivered[:crash_at])
    restored = decode_state(encode_state(before_crash, None, crash_at), 0).state
    assert restored == before_crash
    resumed = fold_events(delivered[redeliver_from:], restored)

    uninterrupted = fold_events([*delivered[:crash_at], *delivered[redeliver_from:]])
    assert resumed == uninterrupted
    assert totals(resumed) == plan.expected
    assert resumed.session_id == SID


# ------------------------------------------- the partition clock during a catch-up


@st.composite
def partition_logs(draw: st.DrawFn) -> dict[int, list[Json]]:
    """What two input partitions hold: a few sessions each, their events in roughly the
    order they were produced (segments every ~2 s, transcodes a little later, occasional
    local reordering), with pauses that reach the stall, inactive and idle-timeout rules,
    failures, slow transcodes, lag and endings."""
    logs: dict[int, list[Json]] = {0: [], 1: []}
    for index in range(draw(st.integers(1, 4))):
        sid = f"s{index}"
        partition = draw(st.integers(0, 1))
        at = T0 + draw(st.integers(0, 20_000))
        bodies: list[Json] = [started(at, sid=sid)]
        for seq_no in range(draw(st.integers(0, 30))):
            at += SEGMENT_MS + draw(
                st.sampled_from([0, 0, 0, 300, 12_000, 25_000, 70_000, 2 * 3_600_000])
            )
            if draw(st.integers(0, 9)) > 0:
                bodies.append(ingested(seq_no, at, sid=sid, size=draw(st.integers(0, 2_000_000))))
            outcome = draw(st.sampled_from(["ok", "ok", "ok", "slow", "failed", "none"]))
            later = at + draw(st.integers(100, 3_000))
            if outcome == "failed":
                bodies.append(failed(seq_no, later, sid=sid))
            elif outcome != "none":
                time = 3.0 if outcome == "slow" else 1.0
                bodies.append(transcoded(seq_no, later, sid=sid, transcode_time=time))
        if draw(st.booleans()):
            bodies.append(ended(at + draw(st.integers(0, 5_000)), sid=sid))
        logs[partition] += bodies
    for partition, bodies in logs.items():
        bodies.sort(key=lambda body: body["timestamp"])
        for i in draw(st.lists(st.integers(0, max(0, len(bodies) - 2)), max_size=5)):
            if len(bodies) > 1:
                bodies[i], bodies[i + 1] = bodies[i + 1], bodies[i]
        logs[partition] = bodies
    return logs


def replayed(bodies: list[Json]) -> dict[str, Json]:
    """`session-worker replay` of these events: every session at stream time."""
    snapshots, _, invalid = replay_lines(
        [orjson.dumps(body) for body in bodies], Rules(), io.StringIO()
    )
    assert invalid == 0
    return {s["id"]: s for s in map(orjson.loads, snapshots)}


@settings(PROPERTY_SETTINGS, max_examples=60, derandomize=True)
@given(data=st.data(), logs=partition_logs())
async def test_a_catch_up_shows_what_a_replay_of_the_same_events_shows(
    data: st.DataObject, logs: dict[int, list[Json]]
) -> None:
    """A worker that comes back a day later folds both partitions' backlogs in fetches of
    any size, publishing after each: every session's latest snapshot, rates and health
    included, equals a replay (stream time) of what its partition has delivered so far."""
    wall = max((b["timestamp"] for bodies in logs.values() for b in bodies), default=T0)
    source = FakeSource(behind={0: None, 1: None})
    h = make_runner(source=source, clock=FakeClock(wall_ms=wall + 24 * 3_600_000))
    runner = h.runner
    await runner.on_assigned([0, 1])
    delivered: dict[int, int] = {0: 0, 1: 0}
    latest: dict[str, Json] = {}
    while any(delivered[p] < len(logs[p]) for p in logs):
        partition = data.draw(st.sampled_from([p for p in logs if delivered[p] < len(logs[p])]))
        start = delivered[partition]
        count = data.draw(st.integers(1, max(1, len(logs[partition]) - start)))
        batch = logs[partition][start : start + count]
        runner.fold([record(partition, start + n, body) for n, body in enumerate(batch)])
        delivered[partition] += len(batch)
        for p, bodies in logs.items():
            source.behind[p] = len(bodies) - delivered[p] or 1  # still behind: more to come
        written = len(h.sink.written)
        await runner.publish()
        latest.update(
            ((r.key or b"").decode(), orjson.loads(r.value or b""))
            for box in h.sink.written[written:]
            for rs in box.records.values()
            for r in rs
            if r.topic == "snapshots"
        )
        for p, bodies in logs.items():
            expected = replayed(bodies[: delivered[p]])
            assert {sid: latest.get(sid) for sid in expected} == expected
