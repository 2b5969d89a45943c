"""Changelog codec: a session's full state as bytes and back. Pure.

The changelog topic is compacted and co-partitioned with the input, so on assignment a
worker rebuilds exactly the sessions of its partitions. Records carry a format version so
a rolling upgrade can refuse (and report) a format it does not understand.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Final

import orjson

from worker.state import SessionState, share_meta, share_value

FORMAT_VERSION: Final = 1
_first = itemgetter(0)
_second = itemgetter(1)


class ChangelogFormatError(ValueError):
    """A changelog record this version cannot read."""


@dataclass(frozen=True, slots=True)
class ChangelogEntry:
    state: SessionState
    evicted_at: int | None
    source_offset: int | None


def encode_state(state: SessionState, evicted_at: int | None, source_offset: int | None) -> bytes:
    transcodes = state.recent_transcodes
    body: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "id": state.session_id,
        "offset": source_offset,
        "evictedAt": evicted_at,
        "createdAt": state.created_at,
        "lastActivity": state.last_activity,
        "lastSeen": state.last_seen,
        "firstSegmentAt": state.first_segment_at,
        "totals": [
            state.source_segments,
            state.source_duration_us,
            state.source_bytes,
            state.transcoded_segments,
            state.transcoded_duration_us,
            state.transcoded_bytes,
            state.late_segments,
        ],
        "source": [state.source_hwm, format(state.source_mask, "x")],
        "transcoded": [
            state.transcoded_hwm,
            {name: format(mask, "x") for name, mask in state.rendition_masks.items()},
        ],
        "ingestWindow": state.ingest_window,
        "outgoingWindow": state.outgoing_window,
        "recentDurations": list(state.recent_durations.items()),
        # [seqNo, ratio, names] rows built in C (orjson writes tuples as arrays).
        "recentTranscodes": list(
            zip(
                transcodes,
                map(_first, transcodes.values()),
                map(_second, transcodes.values()),
                strict=True,
            )
        ),
        "failures": [[s, ts, err] for s, (ts, err) in state.failures.items()],
        "meta": state.meta,
        "recording": state.recording,
        "endedAt": state.ended_at,
        "timedOut": state.timed_out,
    }
    return orjson.dumps(body)


def decode_state(payload: bytes, partition: int) -> ChangelogEntry:
    """Raises ChangelogFormatError for a record of another format or a corrupt one."""
    try:
        body = orjson.loads(payload)
        if not isinstance(body, dict):
            raise ChangelogFormatError(f"corrupt changelog record: not an object: {body!r:.80}")
        if body.get("v") != FORMAT_VERSION:
            raise ChangelogFormatError(f"unsupported changelog format {body.get('v')!r}")
        totals = body["totals"]
        state = SessionState(
            session_id=body["id"],
            partition=partition,
            created_at=body["createdAt"],
            last_activity=body["lastActivity"],
            last_seen=body["lastSeen"],
            first_segment_at=body["firstSegmentAt"],
            source_segments=totals[0],
            source_duration_us=totals[1],
            source_bytes=totals[2],
            transcoded_segments=totals[3],
            transcoded_duration_us=totals[4],
            transcoded_bytes=totals[5],
            late_segments=totals[6],
            source_hwm=body["source"][0],
            source_mask=int(body["source"][1], 16),
            transcoded_hwm=body["transcoded"][0],
            rendition_masks={n: int(m, 16) for n, m in body["transcoded"][1].items()},
            ingest_window=[(ts, size) for ts, size in body["ingestWindow"]],
            outgoing_window=[(ts, size) for ts, size in body["outgoingWindow"]],
            recent_durations=dict(body["recentDurations"]),
            recent_transcodes={
                s: (r, share_value(tuple(n))) for s, r, n in body["recentTranscodes"]
            },
            failures={s: (ts, err) for s, ts, err in body["failures"]},
            meta={k: (v[0], share_meta(k, v[1])) for k, v in body["meta"].items()},
            recording=None if body["recording"] is None else tuple(body["recording"]),
            ended_at=body["endedAt"],
            timed_out=body["timedOut"],
        )
        evicted_at, source_offset = body["evictedAt"], body["offset"]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as error:
        if isinstance(error, ChangelogFormatError):
            raise
        raise ChangelogFormatError(f"corrupt changelog record: {error}") from error
    return ChangelogEntry(state, evicted_at, source_offset)
