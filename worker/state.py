"""Per-session state and the pure fold: (state, event) -> state. No I/O, no clock reads.

Every step is idempotent and order-insensitive within the dedupe window: source segments
are remembered per seqNo and rendition segments per (seqNo, rendition name) in bitmasks
anchored at a high-water mark, metadata is last-write-wins by event timestamp, and the
health inputs are keyed by seqNo. So replaying, duplicating or reordering events, within a
process or across restarts from the changelog, never changes the totals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import orjson

from worker.events import (
    Event,
    RecordingUpdated,
    SegmentFailed,
    SegmentIngested,
    SegmentTranscoded,
    SessionEnded,
    SessionStarted,
)
from worker.rules import DEDUPE_WINDOW, MAX_RATE_ENTRIES, RECENT_SEGMENTS

WINDOW_BITS: Final = (1 << DEDUPE_WINDOW) - 1
MICROS: Final = 1_000_000
"""Durations are summed as integer microseconds so totals do not depend on event order."""

_META_FIELDS: Final = (
    "name",
    "parent_id",
    "project_id",
    "playback_id",
    "record",
    "kind",
    "user_id",
)


MAX_SHARED_VALUES: Final = 4096
"""Distinct rendition-name tuples and profile lists remembered for sharing between sessions
(a fleet uses a handful of ladders; sharing saves ~2 KB per session). Bounded: cleared when
full, which only costs sharing, never correctness."""
_shared: dict[Any, Any] = {}
_SHARED_META: Final = frozenset({"profiles", "recording_spec"})


def _share(key: Any, value: Any) -> Any:
    """An equal value already held by another session, else `value` (then remembered).

    Shared values are never mutated: the fold replaces them, it does not edit them."""
    found = _shared.get(key)
    if found is None:
        if len(_shared) >= MAX_SHARED_VALUES:
            _shared.clear()
        found = _shared[key] = value
    return found


def share_value(value: Any) -> Any:
    """`_share` for a hashable value (rendition name tuples)."""
    return _share(value, value)


def share_meta(name: str, value: Any) -> Any:
    """`_share` for the metadata that sessions repeat verbatim (profile ladders)."""
    if name in _SHARED_META:
        return _share((name, orjson.dumps(value)), value)
    return value


class ExportedValues(NamedTuple):
    source_segments: int
    transcoded_segments: int
    source_duration_s: float
    transcoded_duration_s: float
    source_bytes: int
    transcoded_bytes: int
    ingest_rate: float
    outgoing_rate: float
    is_healthy: bool | None
    issue_count: int
    last_seen_ms: int | None


@dataclass(slots=True)
class SessionState:
    """Everything needed to continue a session after a restart; plain data only."""

    session_id: str
    partition: int = 0
    created_at: int = 0
    last_activity: int = 0
    last_seen: int | None = None
    first_segment_at: int | None = None
    source_segments: int = 0
    source_duration_us: int = 0
    source_bytes: int = 0
    transcoded_segments: int = 0
    transcoded_duration_us: int = 0
    transcoded_bytes: int = 0
    late_segments: int = 0
    source_hwm: int = -1
    source_mask: int = 0
    transcoded_hwm: int = -1
    rendition_masks: dict[str, int] = field(default_factory=dict)
    ingest_window: list[tuple[int, int]] = field(default_factory=list)
    outgoing_window: list[tuple[int, int]] = field(default_factory=list)
    recent_durations: dict[int, float] = field(default_factory=dict)
    recent_transcodes: dict[int, tuple[float | None, tuple[str, ...]]] = field(default_factory=dict)
    failures: dict[int, tuple[int, str]] = field(default_factory=dict)
    meta: dict[str, tuple[int, Any]] = field(default_factory=dict)
    recording: tuple[int, str, str | None, str | None] | None = None
    ended_at: int | None = None
    timed_out: bool = False
    published_hash: int | None = None
    exported: ExportedValues | None = None
    """The numbers of the latest snapshot, so metrics show exactly what was published."""


def new_session(session_id: str, partition: int, timestamp: int) -> SessionState:
    return SessionState(
        session_id=session_id, partition=partition, created_at=timestamp, last_activity=timestamp
    )


def _shift_into_window(hwm: int, mask: int, seq_no: int) -> tuple[int, int, int | None]:
    """Advance (hwm, mask) to cover seq_no; return the bit offset of seq_no, None if too old."""
    if seq_no > hwm:
        shift = seq_no - hwm
        # A jump past the whole window clears it; shifting by it would allocate `shift` bits.
        mask = (mask << shift) & WINDOW_BITS if hwm >= 0 and shift < DEDUPE_WINDOW else 0
        hwm = seq_no
    offset = hwm - seq_no
    return hwm, mask, (offset if offset < DEDUPE_WINDOW else None)


def _keep_newest(recent: dict[int, Any], limit: int = RECENT_SEGMENTS) -> None:
    excess = len(recent) - limit
    if excess == 1:  # the usual case: one new entry pushed the oldest out
        del recent[min(recent)]
    elif excess > 1:
        for seq_no in sorted(recent)[:excess]:
            del recent[seq_no]


def _add_to_window(window: list[tuple[int, int]], timestamp: int, size: int) -> None:
    window.append((timestamp, size))
    if len(window) > MAX_RATE_ENTRIES:
        window.sort()
        del window[: len(window) - MAX_RATE_ENTRIES]


def _is_transcoded(state: SessionState, seq_no: int) -> bool:
    offset = state.transcoded_hwm - seq_no
    if offset < 0 or offset >= DEDUPE_WINDOW:
        return False
    bit = 1 << offset
    return any(mask & bit for mask in state.rendition_masks.values())


def _fold_ingested(state: SessionState, event: SegmentIngested) -> None:
    state.last_seen = (
        event.timestamp if state.last_seen is None else max(state.last_seen, event.timestamp)
    )
    state.source_hwm, state.source_mask, offset = _shift_into_window(
        state.source_hwm, state.source_mask, event.seq_no
    )
    if offset is None:
        state.late_segments += 1
        return
    bit = 1 << offset
    if state.source_mask & bit:
        return
    state.source_mask |= bit
    state.source_segments += 1
    state.source_duration_us += round(event.duration * MICROS)
    state.source_bytes += event.bytes
    _add_to_window(state.ingest_window, event.timestamp, event.bytes)
    state.recent_durations[event.seq_no] = event.duration
    _keep_newest(state.recent_durations)
    _prune_failures(state)


def _fold_transcoded(state: SessionState, event: SegmentTranscoded) -> None:
    hwm = state.transcoded_hwm
    if event.seq_no > hwm:
        shift = event.seq_no - hwm
        state.rendition_masks = (
            {
                name: shifted
                for name, mask in state.rendition_masks.items()
                if (shifted := (mask << shift) & WINDOW_BITS)
            }
            if shift < DEDUPE_WINDOW
            else {}  # past the whole window: nothing survives (and no huge shift)
        )
        state.transcoded_hwm = event.seq_no
    offset = state.transcoded_hwm - event.seq_no
    if offset >= DEDUPE_WINDOW:
        state.late_segments += 1
        return
    bit = 1 << offset
    duration_us = round(event.duration * MICROS)
    added_bytes = 0
    for rendition in event.renditions:
        mask = state.rendition_masks.get(rendition.name, 0)
        if mask & bit:
            continue
        state.rendition_masks[rendition.name] = mask | bit
        state.transcoded_segments += 1
        state.transcoded_duration_us += duration_us
        state.transcoded_bytes += rendition.bytes
        added_bytes += rendition.bytes
    if added_bytes:
        _add_to_window(state.outgoing_window, event.timestamp, added_bytes)
    state.failures.pop(event.seq_no, None)
    ratio = None if event.transcode_time is None else event.transcode_time / event.duration
    names = tuple(sorted(r.name for r in event.renditions))
    previous = state.recent_transcodes.get(event.seq_no)
    if previous is not None:
        # A retry may deliver renditions the first attempt lacked: remember their union.
        names = tuple(sorted(set(names) | set(previous[1])))
        ratio = previous[0] if ratio is None else ratio
    state.recent_transcodes[event.seq_no] = (ratio, share_value(names))
    _keep_newest(state.recent_transcodes)


def _newest_seq_no(state: SessionState) -> int:
    """Newest seqNo any segment event named. It only grows, whatever the arrival order: a
    failure that leaves `failures` does so because its seqNo was transcoded, which the
    transcoded high-water mark remembers."""
    return max(state.source_hwm, state.transcoded_hwm, *state.failures)


def recent_failures(state: SessionState) -> dict[int, tuple[int, str]]:
    """Failures among the newest RECENT_SEGMENTS seqNos (health's "last 10")."""
    if not state.failures:
        return {}
    oldest = _newest_seq_no(state) - RECENT_SEGMENTS
    return {s: f for s, f in state.failures.items() if s > oldest}


def _prune_failures(state: SessionState) -> None:
    if not state.failures:
        return
    oldest = _newest_seq_no(state) - RECENT_SEGMENTS
    for seq_no in [s for s in state.failures if s <= oldest]:
        del state.failures[seq_no]


def _fold_failed(state: SessionState, event: SegmentFailed) -> None:
    if _is_transcoded(state, event.seq_no):
        return  # a success for this seqNo already counts; the failure is history
    previous = state.failures.get(event.seq_no)
    if previous is None or (event.timestamp, event.error) > previous:
        state.failures[event.seq_no] = (event.timestamp, event.error)
    _prune_failures(state)


def _set_meta(state: SessionState, name: str, timestamp: int, value: Any) -> None:
    current = state.meta.get(name)
    if current is None or timestamp >= current[0]:
        state.meta[name] = (timestamp, value)


def _fold_started(state: SessionState, event: SessionStarted) -> None:
    for name in _META_FIELDS:
        value = getattr(event, name)
        if value is not None:
            _set_meta(state, name, event.timestamp, value)
    if event.profiles is not None:
        profiles = [p.model_dump(by_alias=True, exclude_none=True) for p in event.profiles]
        _set_meta(state, "profiles", event.timestamp, share_meta("profiles", profiles))
    if event.recording_spec is not None:
        spec = event.recording_spec.model_dump(by_alias=True, exclude_none=True)
        _set_meta(state, "recording_spec", event.timestamp, share_meta("recording_spec", spec))


def _fold_recording(state: SessionState, event: RecordingUpdated) -> None:
    # Last write wins per field by timestamp, like session.started: the status comes from the
    # newest update and each URL from the newest update carrying it, so a status-only update
    # never erases a known URL and the result does not depend on arrival order.
    if event.recording_url is not None:
        _set_meta(state, "recording_url", event.timestamp, event.recording_url)
    if event.mp4_url is not None:
        _set_meta(state, "mp4_url", event.timestamp, event.mp4_url)
    timestamp: int = event.timestamp
    status: str = event.status
    if state.recording is not None and timestamp < state.recording[0]:
        timestamp, status = state.recording[0], state.recording[1]
    url = state.meta.get("recording_url")
    mp4 = state.meta.get("mp4_url")
    state.recording = (
        timestamp,
        status,
        None if url is None else url[1],
        None if mp4 is None else mp4[1],
    )


def fold(state: SessionState, event: Event) -> SessionState:
    """Fold one valid event into the session's state (mutated in place and returned)."""
    state.created_at = min(state.created_at, event.timestamp)
    state.last_activity = max(state.last_activity, event.timestamp)
    if isinstance(event, SegmentIngested | SegmentTranscoded | SegmentFailed):
        if state.first_segment_at is None or event.timestamp < state.first_segment_at:
            state.first_segment_at = event.timestamp
        if state.timed_out:
            state.timed_out, state.ended_at = False, None  # it was only idle: alive again
    if isinstance(event, SegmentIngested):
        _fold_ingested(state, event)
    elif isinstance(event, SegmentTranscoded):
        _fold_transcoded(state, event)
    elif isinstance(event, SegmentFailed):
        _fold_failed(state, event)
    elif isinstance(event, SessionStarted):
        _fold_started(state, event)
    elif isinstance(event, RecordingUpdated):
        _fold_recording(state, event)
    elif isinstance(event, SessionEnded):
        if state.ended_at is None or state.timed_out:
            state.ended_at = event.timestamp
        else:
            state.ended_at = min(state.ended_at, event.timestamp)
        state.timed_out = False
    return state


def window_bytes(window: list[tuple[int, int]], now_ms: int, window_ms: int) -> int:
    """Bytes of entries stamped in (now - window, now]."""
    start = now_ms - window_ms
    return sum(size for ts, size in window if start < ts <= now_ms)


def expire_windows(state: SessionState, now_ms: int, window_ms: int) -> None:
    """Drop rate entries that can never count again for any later `now`."""
    start = now_ms - window_ms
    for window in (state.ingest_window, state.outgoing_window):
        if window and min(window)[0] <= start:  # (ts, size) tuples: the min has the min ts
            window[:] = [entry for entry in window if entry[0] > start]
