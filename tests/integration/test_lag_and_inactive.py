"""On a real broker: consumer lag is never published as an outage (the partition clock),
a stream that stops stalls then goes inactive, and an inactive session is not republished."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any, Final

import orjson
import pytest

from tests.integration.conftest import StartWorker
from tests.integration.helpers import (
    ConsumedRecord,
    Topics,
    create_topic,
    event_records,
    produce,
    read_all,
    wait_for,
)

pytestmark = pytest.mark.integration

SEGMENT_MS: Final = 2_000
BACKLOG_MS: Final = 30_000
STALLED: Final = "No source segments received for over 10s"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def segment_events(session_id: str, seq_no: int, at: int) -> list[dict[str, Any]]:
    """One healthy 2 s segment of 1 MB and its transcode (3 renditions) 300 ms later."""
    base = {"sessionId": session_id, "seqNo": seq_no, "duration": 2.0}
    return [
        {**base, "type": "segment.ingested", "timestamp": at, "bytes": 1_000_000},
        {
            **base,
            "type": "segment.transcoded",
            "timestamp": at + 300,
            "transcodeTime": 1.0,
            "renditions": [
                {"name": name, "bytes": size}
                for name, size in (("720p", 400_000), ("480p", 250_000), ("360p", 100_000))
            ],
        },
    ]


def snapshots(records: list[ConsumedRecord]) -> Iterator[tuple[ConsumedRecord, dict[str, Any]]]:
    for record in records:
        if record.key is not None and record.value is not None:
            yield record, orjson.loads(record.value)


class LiveTraffic:
    """Sessions that keep sending a segment every 2 s, stamped with the real time."""

    def __init__(self, topics: Topics, next_seq_no: dict[str, int]) -> None:
        self._topics = topics
        self.next_seq_no = next_seq_no
        self.stop = asyncio.Event()

    async def run(self) -> None:
        while not self.stop.is_set():
            at = now_ms()
            events = []
            for session_id, seq_no in self.next_seq_no.items():
                events += segment_events(session_id, seq_no, at)
                self.next_seq_no[session_id] = seq_no + 1
            await produce(self._topics.bootstrap, self._topics.input, event_records(events))
            try:
                await asyncio.wait_for(self.stop.wait(), SEGMENT_MS / 1000)
            except TimeoutError:
                continue


async def test_a_worker_behind_a_backlog_never_publishes_an_outage(
    topics: Topics, start_worker: StartWorker
) -> None:
    """30 s of healthy traffic waits before the worker starts, and the streams go on live.
    The worker folds the backlog one record per fetch, publishing as it goes: no snapshot
    may show a stall or a zero ingest rate (judged at the wall clock, the early ones would)."""
    await create_topic(topics.bootstrap, topics.input, 2)
    sessions = [f"backlog-{n:02d}" for n in range(60)]
    start = now_ms() - BACKLOG_MS
    backlog = [
        event
        for seq_no in range(BACKLOG_MS // SEGMENT_MS)
        for session_id in sessions
        for event in segment_events(session_id, seq_no, start + seq_no * SEGMENT_MS)
    ]
    await produce(topics.bootstrap, topics.input, event_records(backlog))
    traffic = LiveTraffic(topics, dict.fromkeys(sessions, BACKLOG_MS // SEGMENT_MS))
    live = asyncio.create_task(traffic.run())
    try:
        worker = start_worker(WORKER_MAX_POLL_RECORDS="1")
        await worker.wait_ready()

        async def live_segments_published() -> bool:
            latest = {
                s["id"]: s for _, s in snapshots(await read_all(topics.bootstrap, topics.snapshots))
            }
            wanted = BACKLOG_MS // SEGMENT_MS + 3  # three live segments past the backlog
            return all(latest.get(sid, {}).get("sourceSegments", 0) >= wanted for sid in sessions)

        await wait_for(live_segments_published, 90, 1.0, "live segments of every session")
    finally:
        traffic.stop.set()
        await live
    assert worker.terminate() == 0

    published = list(snapshots(await read_all(topics.bootstrap, topics.snapshots)))
    assert {s["id"] for _, s in published} == set(sessions)
    outages = [
        s
        for _, s in published
        if s["isHealthy"] is not True
        or s["ingestRate"] == 0
        or (s["transcodedSegments"] and s["outgoingRate"] == 0)
    ]
    assert outages == [], f"{len(outages)} of {len(published)}: {outages[:3]}"
    # Guard: the worker did publish while behind, at event times long past on the wall clock.
    behind = [s for record, s in published if record.timestamp - s["lastSeen"] > 10_000]
    assert behind, "every snapshot was published caught up: the backlog was not exercised"


async def test_a_stream_that_stops_stalls_then_goes_inactive_and_stays_quiet(
    topics: Topics, start_worker: StartWorker
) -> None:
    await create_topic(topics.bootstrap, topics.input, 1)
    worker = start_worker("--inactive-after", "15")
    await worker.wait_ready()
    stopping, heartbeat = "stops-1", "heartbeat-1"

    async def published(session_id: str) -> list[dict[str, Any]]:
        records = await read_all(topics.bootstrap, topics.snapshots)
        return [s for _, s in snapshots(records) if s["id"] == session_id]

    traffic = LiveTraffic(topics, {stopping: 0, heartbeat: 0})
    live = asyncio.create_task(traffic.run())
    try:

        async def live_and_healthy() -> bool:
            found = await published(stopping)
            return len(found) >= 3 and found[-1]["isHealthy"] is True

        await wait_for(live_and_healthy, 30, 0.5, "the stream live and healthy")
        del traffic.next_seq_no[stopping]  # the broadcaster goes away without session.ended
        stopped_at = now_ms()

        async def stalled() -> list[dict[str, Any]] | None:
            found = await published(stopping)
            return found if found[-1].get("issues") == [STALLED] else None

        await wait_for(stalled, 30, 0.5, "the stall issue")
        assert now_ms() - stopped_at >= 8_000, "stalled only after ~10 s without a segment"

        async def inactive() -> list[dict[str, Any]] | None:
            found = await published(stopping)
            last = found[-1]
            return found if last["isHealthy"] is None and "issues" not in last else None

        history = await wait_for(inactive, 40, 0.5, "the session inactive")
        last = history[-1]
        assert (last["ingestRate"], last["outgoingRate"]) == (0, 0)
        stalled_snapshots = [s for s in history if s.get("issues") == [STALLED]]
        # The text does not count seconds: while stalled, only the decaying outgoing rate
        # may publish once more (10 publish intervals passed meanwhile).
        assert 1 <= len(stalled_snapshots) <= 2, stalled_snapshots

        # Quiet while inactive: the heartbeat session publishes on, this one does not.
        beats = len(await published(heartbeat))

        async def heartbeat_went_on() -> bool:
            return len(await published(heartbeat)) >= beats + 6

        await wait_for(heartbeat_went_on, 40, 0.5, "six more heartbeat snapshots")
        assert await published(stopping) == history
    finally:
        traffic.stop.set()
        await live
    assert worker.terminate() == 0
    assert await published(stopping) == history, "nothing more, even at shutdown"
