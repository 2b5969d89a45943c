"""Synthetic media-server traffic for the demo, tests and benchmarks. Deterministic per seed.

Each session starts staggered, sends a `session.started`, then one source segment every
`segment_ms` and its transcode (3 renditions) a little later; a few transcodes fail (most
are retried successfully), one session stalls, some sessions end and get recorded.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Final

RENDITIONS: Final = (
    ("720p", 1280, 720, 3_000_000),
    ("480p", 854, 480, 1_600_000),
    ("360p", 640, 360, 800_000),
)
MAX_TRANSCODE_DELAY_MS: Final = 1_500


@dataclass(frozen=True, slots=True)
class SessionPlan:
    index: int
    session_id: str
    start_ms: int
    segments: int | None
    """None: runs forever; otherwise ends after this many segments."""
    stall_after: int | None
    record: bool


class SyntheticTraffic:
    def __init__(
        self,
        sessions: int,
        start_ms: int,
        segment_ms: int = 2_000,
        seed: int = 7,
        failure_rate: float = 0.03,
        stalling: int = 1,
        ending_every: int = 4,
        segments_before_end: int = 30,
        id_prefix: str = "demo",
    ) -> None:
        self.segment_ms = segment_ms
        self.seed = seed
        self.failure_rate = failure_rate
        rng = random.Random(seed)
        self.plans = [
            SessionPlan(
                index=i,
                session_id=f"{id_prefix}-{seed}-{i:05d}",
                start_ms=start_ms + rng.randrange(0, max(1, segment_ms * 5)),
                segments=segments_before_end + rng.randrange(0, 20)
                if i % ending_every == ending_every - 1
                else None,
                stall_after=8 if i < stalling else None,
                record=i % 3 == 0,
            )
            for i in range(sessions)
        ]

    def _started(self, plan: SessionPlan) -> dict[str, Any]:
        return {
            "type": "session.started",
            "sessionId": plan.session_id,
            "timestamp": plan.start_ms,
            "name": f"Live show #{plan.index}",
            "parentId": f"stream-{plan.index % 7}",
            "projectId": f"project-{plan.index % 3}",
            "playbackId": f"pb{plan.index:06d}",
            "record": plan.record,
            "kind": "stream",
            "profiles": [
                {"name": n, "width": w, "height": h, "bitrate": b, "fps": 30, "gop": "2.0"}
                for n, w, h, b in RENDITIONS
            ],
        }

    def _segment(self, plan: SessionPlan, seq_no: int) -> list[dict[str, Any]]:
        rng = random.Random(f"{self.seed}:{plan.index}:{seq_no}")
        at = plan.start_ms + 100 + seq_no * self.segment_ms
        duration = round(self.segment_ms / 1000 + rng.uniform(-0.02, 0.02), 3)
        source_bytes = rng.randrange(600_000, 1_400_000)
        base = {"sessionId": plan.session_id, "seqNo": seq_no}
        events: list[dict[str, Any]] = [
            {
                **base,
                "type": "segment.ingested",
                "timestamp": at,
                "duration": duration,
                "bytes": source_bytes,
            }
        ]
        delay = rng.randrange(200, MAX_TRANSCODE_DELAY_MS // 2)
        transcoded = {
            **base,
            "type": "segment.transcoded",
            "duration": duration,
            "transcodeTime": round(delay / 1000 + rng.uniform(0.1, 0.5), 3),
            "renditions": [
                {"name": n, "bytes": source_bytes * b // 4_000_000} for n, _, _, b in RENDITIONS
            ],
        }
        if rng.random() < self.failure_rate:
            events.append(
                {
                    **base,
                    "type": "segment.failed",
                    "timestamp": at + delay,
                    "error": "GPU ran out of memory",
                }
            )
            if rng.random() < 0.7:
                events.append({**transcoded, "timestamp": at + 2 * delay})
        else:
            events.append({**transcoded, "timestamp": at + delay})
        return events

    def _session_events(self, plan: SessionPlan, first: int, last: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        limit = plan.segments if plan.segments is not None else math.inf
        if plan.stall_after is not None:
            limit = min(limit, plan.stall_after)
        for seq_no in range(max(0, first), last + 1):
            if seq_no < limit:
                events.extend(self._segment(plan, seq_no))
        if plan.segments is not None and first <= plan.segments <= last:
            end_at = plan.start_ms + 100 + plan.segments * self.segment_ms
            events.append(
                {"type": "session.ended", "sessionId": plan.session_id, "timestamp": end_at}
            )
            if plan.record:
                events.append(
                    {
                        "type": "recording.updated",
                        "sessionId": plan.session_id,
                        "timestamp": end_at + 1_000,
                        "status": "ready",
                        "recordingUrl": f"https://recordings.example/{plan.session_id}/index.m3u8",
                        "mp4Url": f"https://recordings.example/{plan.session_id}/video.mp4",
                    }
                )
        return events

    def events_between(self, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
        """Every event stamped in [start_ms, end_ms), in timestamp order."""
        found: list[dict[str, Any]] = []
        for plan in self.plans:
            if start_ms <= plan.start_ms < end_ms:
                found.append(self._started(plan))
            first = (start_ms - plan.start_ms - 100 - 2 * MAX_TRANSCODE_DELAY_MS) // self.segment_ms
            last = (end_ms - plan.start_ms) // self.segment_ms + 1
            found.extend(
                e
                for e in self._session_events(plan, first, last)
                if start_ms <= e["timestamp"] < end_ms
            )
        found.sort(key=lambda e: e["timestamp"])
        return found
