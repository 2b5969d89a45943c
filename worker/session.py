"""The Session snapshot: the public output contract (shared/spec/session.md).

`build_session` renders state as the camelCase dict that is published; the pydantic
`Session` model documents the same contract and validates what we publish in tests and in
`session-worker tail`.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from worker.events import RecordingStatus
from worker.health import evaluate_issues
from worker.profiles import FfmpegProfile, RecordingSpec
from worker.rules import Rules
from worker.state import MICROS, SessionState, window_bytes


class Session(BaseModel):
    """Livepeer Studio's Session object, as published; unknown values are omitted."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str
    kind: str | None = None
    user_id: str | None = Field(default=None, alias="userId")
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
    parent_id: str | None = Field(default=None, alias="parentId")
    project_id: str | None = Field(default=None, alias="projectId")
    record: bool | None = None
    recording_status: Literal["waiting", "ready", "failed", "deleted", "none"] | None = Field(
        default=None, alias="recordingStatus"
    )
    recording_url: str | None = Field(default=None, alias="recordingUrl")
    mp4_url: str | None = Field(default=None, alias="mp4Url")
    playback_id: str | None = Field(default=None, alias="playbackId")
    profiles: list[FfmpegProfile] | None = None
    recording_spec: RecordingSpec | None = Field(default=None, alias="recordingSpec")


_OPTIONAL_META = (
    ("kind", "kind"),
    ("userId", "user_id"),
    ("parentId", "parent_id"),
    ("projectId", "project_id"),
    ("record", "record"),
    ("playbackId", "playback_id"),
    ("profiles", "profiles"),
    ("recordingSpec", "recording_spec"),
)


def _recording_fields(state: SessionState) -> dict[str, Any]:
    record = state.meta.get("record")
    fields: dict[str, Any] = {}
    status: RecordingStatus = "waiting"
    if state.recording is not None:
        _, status_text, url, mp4 = state.recording
        status = status_text  # type: ignore[assignment]  # validated on input
        if url is not None:
            fields["recordingUrl"] = url
        if mp4 is not None:
            fields["mp4Url"] = mp4
    if record is not None and record[1] is True:
        fields["recordingStatus"] = status
    return fields


def build_session(state: SessionState, now_ms: int, rules: Rules) -> dict[str, Any]:
    """The Session JSON object for `state` at `now_ms` (camelCase, unknowns omitted)."""
    name = state.meta.get("name")
    window_s = rules.rate_window_ms / 1000
    issues = evaluate_issues(state, now_ms, rules)
    session: dict[str, Any] = {
        "id": state.session_id,
        "name": name[1] if name else state.session_id,
    }
    if state.last_seen is not None:
        session["lastSeen"] = state.last_seen
    session.update(
        sourceSegments=state.source_segments,
        transcodedSegments=state.transcoded_segments,
        sourceSegmentsDuration=state.source_duration_us / MICROS,
        transcodedSegmentsDuration=state.transcoded_duration_us / MICROS,
        sourceBytes=state.source_bytes,
        transcodedBytes=state.transcoded_bytes,
        ingestRate=window_bytes(state.ingest_window, now_ms, rules.rate_window_ms) / window_s,
        outgoingRate=window_bytes(state.outgoing_window, now_ms, rules.rate_window_ms) / window_s,
        isHealthy=None if issues is None else not issues,
    )
    if issues is not None:
        session["issues"] = issues
    session["createdAt"] = state.created_at
    for json_name, meta_name in _OPTIONAL_META:
        value = state.meta.get(meta_name)
        if value is not None:
            session[json_name] = value[1]
    session.update(_recording_fields(state))
    return session


def encode_session(session: dict[str, Any]) -> bytes:
    return orjson.dumps(session)
