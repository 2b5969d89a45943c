"""The benchmark's pure helpers: the live plan, the fetch decoder it compares, the profile
summary. No timing is asserted (performance belongs in bench/, never in tests)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench import decode, load, pipeline, profile
from worker.events import InvalidRecord

START_MS = 1_700_000_000_000


def test_live_plan_holds_each_record_in_its_tick_and_partition() -> None:
    ticks = load.plan_live(rate=2_000, seconds=3, partitions=6, start_ms=START_MS)
    assert len(ticks) == 300
    records = [record for tick in ticks for record in tick]
    sessions = round(2_000 * 2 / load.EVENTS_PER_SEGMENT)
    assert 5_500 < len(records) < 6_000 + sessions  # ~2,000 events/s for 3 s, plus the starts
    for partition, key, _ in records:
        assert partition == load.partition_of(key, 6)
    stream = load.Traffic(sessions, seed=23).events(START_MS)
    for index, tick in enumerate(ticks[:50]):
        for _, key, value in tick:
            at, expected_key, expected_value = next(stream)
            assert (key, value) == (expected_key, expected_value)
            assert max(0, (at - START_MS) // load.TICK_MS) == index


def test_fetch_decoding_agrees_with_record_by_record_and_falls_back_on_a_bad_record() -> None:
    good = decode.fetch(500, renditions=4)
    assert decode.by_fetch(good, START_MS) == decode.by_record(good, START_MS)
    bad = decode.fetch(500, renditions=3, bad_every=97)
    decoded = decode.by_fetch(bad, START_MS)
    assert decoded == decode.by_record(bad, START_MS)
    assert sum(isinstance(item, InvalidRecord) for item in decoded) == len(bad[::97])


def test_fetch_decoding_keeps_the_key_check() -> None:
    records = decode.fetch(20, renditions=3)
    records[5] = (b"another-session", records[5][1])
    decoded = decode.by_fetch(records, START_MS)
    assert isinstance(decoded[5], InvalidRecord)
    assert decoded == decode.by_record(records, START_MS)


def test_profile_phases_pick_the_most_specific_phase(tmp_path: Path) -> None:
    run = "run (uvloop/__init__.py:92);Runner.run (asyncio/runners.py:118)"
    tick = (
        f"{run};Runner.publish (worker/runtime/loop.py:157);SessionStore.tick (worker/store.py:231)"
    )
    raw = tmp_path / "profile.txt"
    raw.write_text(
        f"{tick};build_session (worker/session.py:103);evaluate_issues (worker/health.py:149) 3\n"
        f"{tick};build_session (worker/session.py:111) 2\n"
        f"{tick};expire_windows (worker/state.py:600) 4\n"
        f"{run} 1\n"
    )
    stacks = profile.read(raw)
    assert [profile.phase_of(stack) for stack, _ in stacks] == [
        "refresh: health",
        "refresh: build_session",
        "refresh: tick, other",
        profile.IDLE,
    ]
    text = profile.summary(stacks, top=3)
    assert "| refresh: tick, other | 40.0% |" in text
    assert "| `SessionStore.tick (worker/store.py)` | 90.0% |" in text


def test_the_pipeline_benchmark_runs_the_real_loop_over_every_event() -> None:
    """What bench.pipeline times is the worker's work: every event folded, each live
    session published at least once per segment (2 s), changelog records every 5 s."""
    ticks, timed = pipeline.records(rate=300, seconds=3)
    total = sum(len(tick) for tick in ticks)
    run = asyncio.run(pipeline.run_once(ticks, timed))
    assert run.events_folded == total
    assert 0 < timed < total
    sessions = round(300 * 2 / load.EVENTS_PER_SEGMENT)
    seconds = pipeline.WARM_S + 3
    assert sessions * seconds // 2 <= run.written["sessions"] <= total
    assert sessions * (seconds // 5) <= run.written["changelog"] < run.written["sessions"]
    assert run.us_per_event > 0
