"""The core pipeline on a real broker: events in, snapshots and dead letters out, restarts."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from tests.integration.conftest import StartWorker
from tests.integration.helpers import (
    Record,
    Topics,
    create_topic,
    event_records,
    expected_totals,
    latest_snapshots,
    produce,
    produce_in_chunks,
    read_all,
    totals_of,
    wait_for,
)
from worker.session import Session
from worker.traffic import SyntheticTraffic

pytestmark = pytest.mark.integration
SCHEMA_PATH = Path(__file__).parents[2] / "docs" / "session.schema.json"


def mixed_stream(seed: int, sessions: int = 12, span_ms: int = 120_000) -> list[dict[str, Any]]:
    """Synthetic traffic of the last `span_ms`, with duplicates and small reorderings."""
    now = int(time.time() * 1000)
    traffic = SyntheticTraffic(
        sessions, start_ms=now - span_ms, seed=seed, segments_before_end=20, ending_every=3
    )
    events = traffic.events_between(now - span_ms, now)
    rng = random.Random(seed)
    events += rng.sample(events, len(events) // 10)  # redeliveries
    for i in range(0, len(events) - 4, 4):  # local reordering
        chunk = events[i : i + 4]
        rng.shuffle(chunk)
        events[i : i + 4] = chunk
    return events


def malformed_records(session_id: str) -> list[tuple[str, Record]]:
    now = int(time.time() * 1000)
    ingested = {
        "type": "segment.ingested",
        "sessionId": session_id,
        "timestamp": now,
        "seqNo": 1,
        "duration": 2.0,
        "bytes": 10,
    }
    return [
        ("invalid_json", (session_id.encode(), b"{not json", [("trace", b"abc")])),
        ("not_an_object", (session_id.encode(), b"[1, 2]", [])),
        (
            "unknown_type",
            (session_id.encode(), orjson.dumps({**ingested, "type": "segment.exploded"}), []),
        ),
        ("schema_violation", (session_id.encode(), orjson.dumps({**ingested, "seqNo": -1}), [])),
        ("key_mismatch", (b"someone-else", orjson.dumps(ingested), [])),
        (
            "future_timestamp",
            (session_id.encode(), orjson.dumps({**ingested, "timestamp": now + 600_000}), []),
        ),
    ]


async def wait_for_totals(
    topics: Topics, expected: dict[str, dict[str, Any]], timeout_s: float = 60
) -> dict[str, dict[str, Any]]:
    async def converged() -> dict[str, dict[str, Any]] | None:
        latest = await latest_snapshots(topics.bootstrap, topics.snapshots)
        if set(latest) >= set(expected) and all(
            totals_of(latest[s]) == t for s, t in expected.items()
        ):
            return latest
        return None

    result: dict[str, dict[str, Any]] = await wait_for(
        converged, timeout_s, 1.0, "exact totals in snapshots"
    )
    return result


async def test_mixed_stream_gives_exact_snapshots_and_dead_letters(
    topics: Topics, start_worker: StartWorker
) -> None:
    await create_topic(topics.bootstrap, topics.input, 3)
    events = mixed_stream(seed=11)
    bad = malformed_records(events[0]["sessionId"])
    records = event_records(events)
    for i, (_, record) in enumerate(bad):
        records.insert(i * 50 + 7, record)
    records.append((b"tombstoned", None, []))
    await produce(topics.bootstrap, topics.input, records)

    # The stalling session stopped ~90 s ago: keep it active (by default it is inactive).
    worker = start_worker(WORKER_INACTIVE_AFTER_S="600")
    expected = expected_totals(events)
    latest = await wait_for_totals(topics, expected)

    schema = orjson.loads(SCHEMA_PATH.read_bytes())
    for session in latest.values():
        jsonschema.validate(session, schema)
        Session.model_validate(session)
    ended = [s for s in latest.values() if s["isHealthy"] is None and s["sourceSegments"] > 0]
    assert ended, "the traffic ends some sessions"
    assert all("issues" not in s for s in ended)
    stalled = latest[events[0]["sessionId"].rsplit("-", 1)[0] + "-00000"]
    assert stalled["isHealthy"] is False
    assert "No source segments received for over 10s" in stalled["issues"]

    dead = await wait_for(lambda: _dead_letters(topics, len(bad)), 30, what="dead letters")
    assert sorted(r.headers["dlq.reason"].decode() for r in dead) == sorted(
        reason for reason, _ in bad
    )
    by_reason = {r.headers["dlq.reason"].decode(): r for r in dead}
    first = by_reason["invalid_json"]
    assert first.value == b"{not json"
    assert first.headers["trace"] == b"abc", "original headers are kept"
    assert first.headers["dlq.source.topic"].decode() == topics.input
    source_offsets = {
        (r.partition, r.offset)
        for r in await read_all(topics.bootstrap, topics.input)
        if r.value == b"{not json"
    }
    assert {
        (int(first.headers["dlq.source.partition"]), int(first.headers["dlq.source.offset"]))
    } == source_offsets
    assert by_reason["key_mismatch"].key == b"someone-else"

    assert worker.terminate(timeout_s=10) == 0
    assert '"stopped"' in worker.logs()


async def test_invalid_optional_metadata_is_applied_and_dead_lettered(
    topics: Topics, start_worker: StartWorker
) -> None:
    """events.md: a bad profile or recording spec no longer loses the name, parentId and
    the rest; session.md: `deleted` is published as `none`."""
    await create_topic(topics.bootstrap, topics.input, 1)
    sid, now = "meta-1", int(time.time() * 1000)
    good = {"name": "720p", "width": 1280, "height": 720, "bitrate": 3_000_000, "fps": 30}
    start = {
        "type": "session.started",
        "sessionId": sid,
        "timestamp": now - 4_000,
        "name": "Live show",
        "parentId": "stream-1",
        "record": True,
        "profiles": [good, {**good, "name": "360p", "width": 100}],
        "recordingSpec": {"profiles": [{"bitrate": 900_000, "encoder": "HEVC"}]},
    }
    events = [
        start,
        {"type": "segment.ingested", "sessionId": sid, "timestamp": now - 3_000, "seqNo": 0,
         "duration": 2.0, "bytes": 1000},
        {"type": "recording.updated", "sessionId": sid, "timestamp": now - 2_000,
         "status": "deleted", "recordingUrl": "https://r/i.m3u8"},
    ]  # fmt: skip
    await produce(topics.bootstrap, topics.input, event_records(events))
    start_worker()

    async def published() -> dict[str, Any] | None:
        session = (await latest_snapshots(topics.bootstrap, topics.snapshots)).get(sid)
        return session if session and "recordingStatus" in session else None

    session = await wait_for(published, 60, what="the session's snapshot")
    assert (session["name"], session["parentId"], session["record"]) == (
        "Live show",
        "stream-1",
        True,
    )
    assert (session["recordingStatus"], session["recordingUrl"]) == ("none", "https://r/i.m3u8")
    assert "profiles" not in session
    assert "recordingSpec" not in session
    assert session["sourceSegments"] == 1

    (letter,) = await wait_for(lambda: _dead_letters(topics, 1), 30, what="the dead letter")
    assert letter.headers["dlq.reason"] == b"invalid_metadata"
    assert letter.value == orjson.dumps(start), "the original record, unchanged"
    error = letter.headers["dlq.error"].decode()
    assert error.startswith("applied without recordingSpec, profiles: "), error
    assert "recordingSpec.profiles.0.encoder: " in error
    assert "profiles.1.width: " in error


async def _dead_letters(topics: Topics, count: int) -> list[Any] | None:
    found = await read_all(topics.bootstrap, topics.dlq)
    return found if len(found) >= count else None


async def test_sigterm_mid_stream_then_restart_gives_the_same_final_snapshots(
    topics: Topics, start_worker: StartWorker
) -> None:
    await create_topic(topics.bootstrap, topics.input, 3)
    events = mixed_stream(seed=23, sessions=10)
    half = len(events) // 2
    await produce(topics.bootstrap, topics.input, event_records(events[:half]))
    first = start_worker()
    await wait_for_totals(topics, expected_totals(events[:half]))
    # Keep producing while the worker stops, so the stop lands mid-stream.
    producing = asyncio.create_task(
        produce_in_chunks(topics, events[half:], chunks=20, pause_s=0.1)
    )
    await asyncio.sleep(0.5)
    started = time.monotonic()
    assert first.terminate(timeout_s=10) == 0
    assert time.monotonic() - started < 10
    await producing
    after_stop = await latest_snapshots(topics.bootstrap, topics.snapshots)
    final = expected_totals(events)
    assert any(totals_of(after_stop.get(s, {})) != t for s, t in final.items()), (
        "stopped mid-stream"
    )
    # Redeliver part of what the first worker already counted: it must not count twice.
    await produce(topics.bootstrap, topics.input, event_records(events[: half // 3]))

    second = start_worker()
    await second.wait_ready()
    latest = await wait_for_totals(topics, final)
    assert len(latest) == len({e["sessionId"] for e in events})
    assert second.terminate() == 0


async def test_rates_follow_live_traffic_and_decay_without_events(
    topics: Topics, start_worker: StartWorker
) -> None:
    await create_topic(topics.bootstrap, topics.input, 1)
    worker = start_worker(WORKER_RATE_WINDOW_S="4", WORKER_STALL_MIN_S="3")
    await worker.wait_ready()
    session_id = "live-rate-1"
    for seq_no in range(6):  # 1 MB every 2 s, stamped in real time
        now = int(time.time() * 1000)
        base = {"sessionId": session_id, "timestamp": now, "seqNo": seq_no, "duration": 2.0}
        ingested = {**base, "type": "segment.ingested", "bytes": 1_000_000}
        transcoded = {
            **base,
            "type": "segment.transcoded",
            "renditions": [{"name": "360p", "bytes": 250_000}],
        }
        await produce(topics.bootstrap, topics.input, event_records([ingested, transcoded]))
        await asyncio.sleep(2.0)
    latest = (await latest_snapshots(topics.bootstrap, topics.snapshots))[session_id]
    # Two segments lie in the 4 s window, give or take the one on its edge.
    assert 250_000 <= latest["ingestRate"] <= 750_000, latest
    assert latest["outgoingRate"] == pytest.approx(latest["ingestRate"] / 4)
    assert latest["isHealthy"] is True, latest

    async def decayed() -> dict[str, Any] | None:
        s = (await latest_snapshots(topics.bootstrap, topics.snapshots))[session_id]
        return (
            s
            if s["ingestRate"] == 0 and s["outgoingRate"] == 0 and s["isHealthy"] is False
            else None
        )

    final = await wait_for(decayed, 20, what="rate decay to 0 and a stall issue")
    assert final["sourceSegments"] == 6
    assert len(final["issues"]) == 1
    assert final["issues"] == ["No source segments received for over 6s"], final  # 3 x 2 s
    assert worker.terminate() == 0
