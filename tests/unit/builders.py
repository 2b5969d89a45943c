"""Builders for unit tests: raw event payloads (JSON dicts), parsing, folding, rendering.

Events are built as the JSON objects a producer sends (camelCase), so the same builders
feed `decode_event`, the fold (after parsing) and NDJSON replays.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, NamedTuple

from worker.events import Event, InvalidRecord, decode_event
from worker.rules import Rules
from worker.session import build_session
from worker.state import SessionState, fold, new_session

Json = dict[str, Any]

SID: Final = "sess-1"
T0: Final = 1_700_000_000_000
"""Stream start (Unix ms); segment seqNo n is ingested at T0 + n * SEGMENT_MS."""
SEGMENT_MS: Final = 2_000
FAR_FUTURE: Final = T0 + 365 * 24 * 3_600_000
"""A worker clock for decoding: later than every builder timestamp (no future rejects)."""
SOURCE_BYTES: Final = 1_000_000
RENDITION_BYTES: Final[Mapping[str, int]] = {"720p": 400_000, "480p": 250_000, "360p": 100_000}
"""750_000 transcoded bytes per source segment."""
DEFAULT_RULES: Final = Rules()
ROOT: Final = Path(__file__).resolve().parents[2]
SCHEMA_PATH: Final = ROOT / "docs" / "session.schema.json"


def seg_ts(seq_no: int) -> int:
    return T0 + seq_no * SEGMENT_MS


def profile(name: str, /, **fields: Any) -> Json:
    """A valid FfmpegProfile (every required field), with overrides."""
    return {"name": name, "width": 1280, "height": 720, "bitrate": 3_000_000, "fps": 30, **fields}


PROFILES: Final = [profile(name) for name in RENDITION_BYTES]


def started(ts: int = T0, sid: str = SID, **fields: Any) -> Json:
    body: Json = {"type": "session.started", "sessionId": sid, "timestamp": ts, "name": "show"}
    body.update(fields)
    return body


def ingested(
    seq_no: int,
    ts: int | None = None,
    *,
    duration: float = 2.0,
    size: int = SOURCE_BYTES,
    sid: str = SID,
    **fields: Any,
) -> Json:
    return {
        "type": "segment.ingested",
        "sessionId": sid,
        "timestamp": seg_ts(seq_no) if ts is None else ts,
        "seqNo": seq_no,
        "duration": duration,
        "bytes": size,
        **fields,
    }


def transcoded(
    seq_no: int,
    ts: int | None = None,
    *,
    duration: float = 2.0,
    renditions: Mapping[str, int] | None = None,
    transcode_time: float | None = None,
    sid: str = SID,
    **fields: Any,
) -> Json:
    chosen = RENDITION_BYTES if renditions is None else renditions
    body: Json = {
        "type": "segment.transcoded",
        "sessionId": sid,
        "timestamp": seg_ts(seq_no) + 500 if ts is None else ts,
        "seqNo": seq_no,
        "duration": duration,
        "renditions": [{"name": name, "bytes": size} for name, size in chosen.items()],
        **fields,
    }
    if transcode_time is not None:
        body["transcodeTime"] = transcode_time
    return body


def failed(
    seq_no: int,
    ts: int | None = None,
    *,
    error: str = "GPU ran out of memory",
    sid: str = SID,
    **fields: Any,
) -> Json:
    return {
        "type": "segment.failed",
        "sessionId": sid,
        "timestamp": seg_ts(seq_no) + 400 if ts is None else ts,
        "seqNo": seq_no,
        "error": error,
        **fields,
    }


def recording(status: str, ts: int, *, sid: str = SID, **fields: Any) -> Json:
    return {
        "type": "recording.updated",
        "sessionId": sid,
        "timestamp": ts,
        "status": status,
        **fields,
    }


def ended(ts: int, *, sid: str = SID, **fields: Any) -> Json:
    return {"type": "session.ended", "sessionId": sid, "timestamp": ts, **fields}


def segment(seq_no: int, **transcoded_fields: Any) -> list[Json]:
    """The ingested and (all renditions) transcoded events of one healthy segment."""
    return [ingested(seq_no), transcoded(seq_no, **transcoded_fields)]


def segments(count: int, first: int = 0, **transcoded_fields: Any) -> list[Json]:
    """`count` healthy segments from seqNo `first`, in order."""
    return [
        event
        for seq_no in range(first, first + count)
        for event in segment(seq_no, **transcoded_fields)
    ]


def encode(body: Json) -> bytes:
    return json.dumps(body).encode()


def ndjson(bodies: Iterable[Json]) -> list[bytes]:
    return [encode(body) + b"\n" for body in bodies]


def decode(body: Json | bytes, key: bytes | None = None, now: int = FAR_FUTURE) -> Event:
    """Parse a payload that must be valid."""
    decoded = decode_event(body if isinstance(body, bytes) else encode(body), key, now)
    assert not isinstance(decoded, InvalidRecord), decoded
    return decoded


def reject(body: Json | bytes, key: bytes | None = None, now: int = FAR_FUTURE) -> InvalidRecord:
    """Parse a payload that must be invalid."""
    decoded = decode_event(body if isinstance(body, bytes) else encode(body), key, now)
    assert isinstance(decoded, InvalidRecord), decoded
    return decoded


def parse_all(bodies: Iterable[Json]) -> list[Event]:
    return [decode(body) for body in bodies]


def fold_events(events: Iterable[Event], state: SessionState | None = None) -> SessionState:
    """Fold parsed events into `state` (or a new session created by the first event)."""
    for event in events:
        if state is None:
            state = new_session(event.session_id, 0, event.timestamp)
        fold(state, event)
    assert state is not None, "no events"
    return state


def fold_bodies(bodies: Iterable[Json], state: SessionState | None = None) -> SessionState:
    return fold_events(parse_all(bodies), state)


def render(state: SessionState, now: int, rules: Rules = DEFAULT_RULES) -> Json:
    return build_session(state, now, rules)


class Totals(NamedTuple):
    source_segments: int
    transcoded_segments: int
    source_duration_s: float
    transcoded_duration_s: float
    source_bytes: int
    transcoded_bytes: int
    last_seen: int | None
    created_at: int


def totals(state: SessionState) -> Totals:
    """The six published totals plus lastSeen and createdAt, as published."""
    session = render(state, state.last_activity)
    return Totals(
        session["sourceSegments"],
        session["transcodedSegments"],
        session["sourceSegmentsDuration"],
        session["transcodedSegmentsDuration"],
        session["sourceBytes"],
        session["transcodedBytes"],
        session.get("lastSeen"),
        session["createdAt"],
    )


def load_schema() -> Json:
    loaded: Json = json.loads(SCHEMA_PATH.read_text())
    return loaded
