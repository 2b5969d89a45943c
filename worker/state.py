"""Per-session state and the pure fold: (state, event) -> state. No I/O, no clock reads.

Every step is idempotent and order-insensitive within the dedupe window: source segments
are remembered per seqNo and rendition segments per (seqNo, rendition name) in bitmasks
anchored at a high-water mark, metadata is last-write-wins by event timestamp, and the
health inputs are keyed by seqNo. So replaying, duplicating or reordering events, within a
process or across restarts from the changelog, never changes the totals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Final

from pydantic import TypeAdapter

from worker.events import (
    Event,
    RecordingUpdated,
    SegmentFailed,
    SegmentIngested,
    SegmentTranscoded,
    SessionEnded,
    SessionStarted,
)
from worker.parts.failures import NO_FAILURES, Failures
from worker.parts.masks import NO_MASKS, WINDOW_BITS, RenditionMasks
from worker.parts.meta import EMPTY_META, SessionMeta
from worker.parts.rates import RateWindow
from worker.parts.recent import NO_RATIO, RecentDurations, RecentTranscodes
from worker.parts.refresh import RefreshCache
from worker.parts.shared import MAX_SHARED_VALUES, share_meta, share_value
from worker.profiles import FfmpegProfile
from worker.rules import DEDUPE_WINDOW, RECENT_SEGMENTS

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


def set_meta(state: SessionState, name: str, timestamp: int, value: Any) -> None:
    """Set one metadata field (last write wins by timestamp), as a folded event would."""
    state.meta = state.meta.with_values(timestamp, {name: value})
    state.version += 1


@dataclass(slots=True)
class SessionState:
    """Everything needed to continue a session after a restart; plain data only. The packed
    parts (worker/parts/) are read and changed only through their methods."""

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
    """Source seqNos seen: bit i for seqNo source_hwm - i."""
    transcoded_hwm: int = -1
    rendition_masks: RenditionMasks = NO_MASKS
    """Per rendition name, the seqNos transcoded: bit i for seqNo transcoded_hwm - i."""
    ingest: RateWindow = field(default_factory=RateWindow)
    outgoing: RateWindow = field(default_factory=RateWindow)
    durations: RecentDurations = field(default_factory=RecentDurations)
    transcodes: RecentTranscodes = field(default_factory=RecentTranscodes)
    failures: Failures = NO_FAILURES
    meta: SessionMeta = EMPTY_META
    recording: tuple[int, str, str | None, str | None] | None = None
    ended_at: int | None = None
    timed_out: bool = False
    published_hash: int | None = None
    version: int = field(default=0, compare=False, repr=False)
    """Bumped by every fold: what the refresh cache's health verdict is keyed by."""
    refresh: RefreshCache | None = field(default=None, compare=False, repr=False)
    """Runtime only (see RefreshCache); None until the first refresh."""

    def newest_seq_no(self) -> int:
        """Newest seqNo any segment event named. It only grows, whatever the arrival order:
        a failure that leaves `failures` does so because its seqNo was transcoded, which the
        transcoded high-water mark remembers."""
        return self.failures.newest_seq_no(max(self.source_hwm, self.transcoded_hwm))

    def recent_failures(self) -> dict[int, tuple[int, str]]:
        """Failures among the newest RECENT_SEGMENTS seqNos (health's "last 10")."""
        if not self.failures:
            return {}
        oldest = self.newest_seq_no() - RECENT_SEGMENTS
        return {s: f for s, f in self.failures.items().items() if s > oldest}

    def has_rates(self) -> bool:
        """Whether any rate entry is still held (see `expire_windows`)."""
        return bool(self.ingest) or bool(self.outgoing)


def new_session(session_id: str, partition: int, timestamp: int) -> SessionState:
    return SessionState(
        session_id=session_id, partition=partition, created_at=timestamp, last_activity=timestamp
    )


def _fold_ingested(state: SessionState, event: SegmentIngested) -> None:
    timestamp = event.timestamp
    if state.last_seen is None or timestamp > state.last_seen:
        state.last_seen = timestamp
    seq_no = event.seq_no
    hwm = state.source_hwm
    if seq_no > hwm:
        shift = seq_no - hwm
        # A jump past the whole window clears it; shifting by it would allocate `shift` bits.
        mask = (
            (state.source_mask << shift) & WINDOW_BITS if hwm >= 0 and shift < DEDUPE_WINDOW else 0
        )
        state.source_hwm = hwm = seq_no
    else:
        mask = state.source_mask
        if hwm - seq_no >= DEDUPE_WINDOW:
            state.late_segments += 1
            return
    bit = 1 << (hwm - seq_no)
    if mask & bit:
        state.source_mask = mask
        return
    state.source_mask = mask | bit
    state.source_segments += 1
    state.source_duration_us += round(event.duration * MICROS)
    size = event.bytes
    state.source_bytes += size
    state.ingest.add(timestamp, size)
    # A seqNo is never added twice: its bit stays set for as long as it is not late.
    state.durations.add(seq_no, event.duration)
    if state.failures:
        _prune_failures(state)


_names_by_arrival: dict[tuple[str, ...], tuple[str, ...]] = {}
"""Rendition names in event order -> the shared sorted tuple: saves sorting per event."""
_NAME: Final = itemgetter("name")


def _remember_names(arrival: tuple[str, ...]) -> tuple[str, ...]:
    if len(_names_by_arrival) >= MAX_SHARED_VALUES:
        _names_by_arrival.clear()
    names: tuple[str, ...] = share_value(tuple(sorted(arrival)))
    _names_by_arrival[arrival] = names
    return names


def _fold_transcoded(state: SessionState, event: SegmentTranscoded) -> None:
    seq_no = event.seq_no
    hwm = state.transcoded_hwm
    renditions = event.renditions
    arrival = tuple(map(_NAME, renditions))
    if seq_no > hwm:  # the usual case: in order
        state.transcoded_hwm = seq_no
        masks, added, added_bytes = state.rendition_masks.advanced(
            renditions, arrival, seq_no - hwm
        )
    elif hwm - seq_no >= DEDUPE_WINDOW:
        state.late_segments += 1
        return
    else:
        masks, added, added_bytes = state.rendition_masks.marked(renditions, hwm - seq_no)
    state.rendition_masks = masks
    if added:
        state.transcoded_segments += added
        state.transcoded_duration_us += added * round(event.duration * MICROS)
        state.transcoded_bytes += added_bytes
        if added_bytes:
            state.outgoing.add(event.timestamp, added_bytes)
    if state.failures:
        state.failures = state.failures.without(seq_no)
    transcode_time = event.transcode_time
    ratio = NO_RATIO if transcode_time is None else transcode_time / event.duration
    names = _names_by_arrival.get(arrival)
    if names is None:
        names = _remember_names(arrival)
    state.transcodes.add(seq_no, ratio, names)


def _prune_failures(state: SessionState) -> None:
    if state.failures:
        state.failures = state.failures.newer_than(state.newest_seq_no() - RECENT_SEGMENTS)


def _is_transcoded(state: SessionState, seq_no: int) -> bool:
    offset = state.transcoded_hwm - seq_no
    if offset < 0 or offset >= DEDUPE_WINDOW:
        return False
    return state.rendition_masks.any_has(1 << offset)


def _fold_failed(state: SessionState, event: SegmentFailed) -> None:
    if _is_transcoded(state, event.seq_no):
        return  # a success for this seqNo already counts; the failure is history
    state.failures = state.failures.with_failure(event.seq_no, event.timestamp, event.error)
    _prune_failures(state)


_PROFILES: Final = TypeAdapter(list[FfmpegProfile])
"""Dumps a ladder in one call: ~3 us less per session.started than a dump per profile."""


def _fold_started(state: SessionState, event: SessionStarted) -> None:
    values = {}
    for name in _META_FIELDS:
        value = getattr(event, name)
        if value is not None:
            values[name] = share_meta(name, value)
    if event.profiles is not None:
        profiles = _PROFILES.dump_python(event.profiles, by_alias=True, exclude_none=True)
        values["profiles"] = share_meta("profiles", profiles)
    if event.recording_spec is not None:
        spec = event.recording_spec.model_dump(by_alias=True, exclude_none=True)
        values["recording_spec"] = share_meta("recording_spec", spec)
    state.meta = state.meta.with_values(event.timestamp, values)


def _fold_recording(state: SessionState, event: RecordingUpdated) -> None:
    # Last write wins per field by timestamp, like session.started: the status comes from the
    # newest update and each URL from the newest update carrying it, so a status-only update
    # never erases a known URL and the result does not depend on arrival order.
    urls = {}
    if event.recording_url is not None:
        urls["recording_url"] = event.recording_url
    if event.mp4_url is not None:
        urls["mp4_url"] = event.mp4_url
    if urls:
        state.meta = state.meta.with_values(event.timestamp, urls)
    timestamp: int = event.timestamp
    status: str = event.status
    if state.recording is not None and timestamp < state.recording[0]:
        timestamp, status = state.recording[0], state.recording[1]
    state.recording = (timestamp, status, state.meta.recording_url, state.meta.mp4_url)


def _fold_ended(state: SessionState, event: SessionEnded) -> None:
    if state.ended_at is None or state.timed_out:
        state.ended_at = event.timestamp
    else:
        state.ended_at = min(state.ended_at, event.timestamp)
    state.timed_out = False


_SEGMENT_FOLDS: Final[dict[type, Callable[[SessionState, Any], None]]] = {
    SegmentTranscoded: _fold_transcoded,
    SegmentIngested: _fold_ingested,
    SegmentFailed: _fold_failed,
}
_OTHER_FOLDS: Final[dict[type, Callable[[SessionState, Any], None]]] = {
    SessionStarted: _fold_started,
    RecordingUpdated: _fold_recording,
    SessionEnded: _fold_ended,
}


def fold(state: SessionState, event: Event) -> SessionState:
    """Fold one valid event into the session's state (mutated in place and returned)."""
    timestamp = event.timestamp
    state.version += 1  # the refresh cache's health verdict is stale
    # Comparisons, not min()/max(): a builtin call costs more on this per-event path.
    if timestamp < state.created_at:  # noqa: PLR1730
        state.created_at = timestamp
    if timestamp > state.last_activity:  # noqa: PLR1730
        state.last_activity = timestamp
    # One lookup by the exact class (events are never subclassed) instead of isinstance
    # after isinstance.
    segment_fold = _SEGMENT_FOLDS.get(type(event))
    if segment_fold is not None:
        first = state.first_segment_at
        if first is None or timestamp < first:
            state.first_segment_at = timestamp
        if state.timed_out:
            state.timed_out, state.ended_at = False, None  # it was only idle: alive again
        segment_fold(state, event)
    else:
        _OTHER_FOLDS[type(event)](state, event)
    return state


def expire_windows(state: SessionState, now_ms: int, window_ms: int) -> None:
    """Drop rate entries that can never count again for any later `now`."""
    start = now_ms - window_ms
    state.ingest.expire(start)
    state.outgoing.expire(start)
