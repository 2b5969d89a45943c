"""The Session snapshot: the public output contract (shared/spec/session.md).

`build_session` renders state as the camelCase dict that is published; the pydantic
`Session` model documents the same contract and validates what we publish in tests and in
`session-worker tail`.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, Final, Literal, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from worker.health import evaluate_issues, is_inactive
from worker.parts.refresh import RefreshCache
from worker.profiles import Profiles, RecordingSpec
from worker.rules import Rules
from worker.state import MICROS, SessionState

RecordingStatus = Literal["waiting", "ready", "failed", "none"]
"""The seed SDK's enum (livepeer-go-session.md); its decoder rejects any other value."""
RECORDING_STATUSES: Final[tuple[str, ...]] = get_args(RecordingStatus)
PUBLISHED_STATUS: Final = {"deleted": "none"}
"""Input statuses the SDK does not know, and what is published for them (session.md)."""


class Session(BaseModel):
    """Livepeer Studio's Session object, as published; unknown values are omitted."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str
    kind: str | None = Field(default=None, max_length=64)
    user_id: str | None = Field(default=None, alias="userId", max_length=128)
    name: str
    last_seen: int | None = Field(default=None, alias="lastSeen")
    source_segments: int = Field(alias="sourceSegments", ge=0)
    transcoded_segments: int = Field(alias="transcodedSegments", ge=0)
    source_segments_duration: float = Field(alias="sourceSegmentsDuration", ge=0)
    transcoded_segments_duration: float = Field(alias="transcodedSegmentsDuration", ge=0)
    source_bytes: int = Field(alias="sourceBytes", ge=0)
    transcoded_bytes: int = Field(alias="transcodedBytes", ge=0)
    ingest_rate: float = Field(alias="ingestRate", ge=0)
    outgoing_rate: float = Field(alias="outgoingRate", ge=0)
    is_healthy: bool | None = Field(alias="isHealthy")
    issues: list[str] | None = None
    created_at: int = Field(alias="createdAt")
    parent_id: str | None = Field(default=None, alias="parentId", max_length=128)
    project_id: str | None = Field(default=None, alias="projectId", max_length=128)
    record: bool | None = None
    recording_status: RecordingStatus | None = Field(default=None, alias="recordingStatus")
    recording_url: str | None = Field(default=None, alias="recordingUrl", max_length=2048)
    mp4_url: str | None = Field(default=None, alias="mp4Url", max_length=2048)
    playback_id: str | None = Field(default=None, alias="playbackId", max_length=128)
    profiles: Profiles | None = None
    recording_spec: RecordingSpec | None = Field(default=None, alias="recordingSpec")

    @model_validator(mode="after")
    def _recording_only_when_recorded(self) -> Session:
        """session.md: recording status and URLs only when `record` is true."""
        recording = (self.recording_status, self.recording_url, self.mp4_url)
        if self.record is not True and recording != (None, None, None):
            raise ValueError("recordingStatus, recordingUrl and mp4Url only when record is true")
        return self


_OPTIONAL_META: Final = (
    ("kind", "kind"),
    ("userId", "user_id"),
    ("parentId", "parent_id"),
    ("projectId", "project_id"),
    ("record", "record"),
    ("playbackId", "playback_id"),
    ("profiles", "profiles"),
    ("recordingSpec", "recording_spec"),
)
_OPTIONAL_JSON_NAMES: Final = tuple(json_name for json_name, _ in _OPTIONAL_META)
_optional_values: Final = attrgetter(*(meta_name for _, meta_name in _OPTIONAL_META))


def _static_tail(state: SessionState) -> RefreshCache:
    """The refresh cache, its static tail (keys after createdAt) rendered for the state's
    current metadata and recording: both immutable, replaced by the fold on change. Kept
    as a dict, not encoded: splicing pre-encoded bytes measured within noise of encoding
    the whole dict (docs/performance.md) and would tie the bytes to an unchanged dict."""
    cache = state.refresh
    if cache is None:
        cache = state.refresh = RefreshCache()
    meta = state.meta
    recording = state.recording
    if cache.meta is meta and cache.recording is recording:
        return cache
    tail: dict[str, Any] = {}
    if meta.order:
        for json_name, value in zip(_OPTIONAL_JSON_NAMES, _optional_values(meta), strict=True):
            if value is not None:
                tail[json_name] = value
    if meta.record is True:
        status = "waiting"
        if recording is not None:
            _, status, url, mp4 = recording
            status = PUBLISHED_STATUS.get(status, status)
            if url is not None:
                tail["recordingUrl"] = url
            if mp4 is not None:
                tail["mp4Url"] = mp4
        tail["recordingStatus"] = status
    cache.tail = tail
    cache.meta, cache.recording = meta, recording
    return cache


def build_session(state: SessionState, now_ms: int, rules: Rules) -> dict[str, Any]:
    """The Session JSON object for `state` at `now_ms` (camelCase, unknowns omitted).

    Runs for every session a tick rebuilds, so it assigns keys one by one in contract order
    rather than merging intermediate dicts (key order is part of the published bytes); the
    static tail (metadata, recording) comes rendered from the cache."""
    session_id = state.session_id
    name = state.meta.name
    session: dict[str, Any] = {"id": session_id, "name": session_id if name is None else name}
    if state.last_seen is not None:
        session["lastSeen"] = state.last_seen
    window_ms = rules.rate_window_ms
    window_s = window_ms / 1000
    ingest = state.ingest.bytes_in(now_ms, window_ms)
    outgoing = state.outgoing.bytes_in(now_ms, window_ms)
    if (ingest or outgoing) and is_inactive(state, now_ms, rules):
        ingest = outgoing = 0  # inactive shows 0 even with a window longer than the silence
    session["sourceSegments"] = state.source_segments
    session["transcodedSegments"] = state.transcoded_segments
    session["sourceSegmentsDuration"] = state.source_duration_us / MICROS
    session["transcodedSegmentsDuration"] = state.transcoded_duration_us / MICROS
    session["sourceBytes"] = state.source_bytes
    session["transcodedBytes"] = state.transcoded_bytes
    session["ingestRate"] = ingest / window_s
    session["outgoingRate"] = outgoing / window_s
    issues = evaluate_issues(state, now_ms, rules)
    if issues is None:
        session["isHealthy"] = None
    else:
        session["isHealthy"] = not issues
        session["issues"] = issues
    session["createdAt"] = state.created_at
    session.update(_static_tail(state).tail)
    return session


def encode_session(session: dict[str, Any]) -> bytes:
    return orjson.dumps(session)
