"""Rendition profiles shared by the input events and the Session output (session.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

H264Profile = Literal["H264Baseline", "H264Main", "H264High", "H264ConstrainedHigh"]
ProfileName = Annotated[str, Field(min_length=1, max_length=500)]


class _Profile(BaseModel):
    # Output field names are the API's camelCase names; extra="ignore" keeps producers free
    # to send fields we do not model yet.
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True, strict=True)

    fps_den: Annotated[int, Field(ge=1)] | None = Field(default=None, alias="fpsDen")
    quality: Annotated[int, Field(ge=0, le=44)] | None = None
    gop: str | None = None
    profile: H264Profile | None = None


class FfmpegProfile(_Profile):
    """A rendition of a live stream; every field the API requires is required here too."""

    name: ProfileName
    width: Annotated[int, Field(ge=128)]
    height: Annotated[int, Field(ge=128)]
    bitrate: Annotated[int, Field(ge=400)]
    fps: Annotated[int, Field(ge=0)]
    encoder: Literal["H.264"] | None = None


class TranscodeProfile(_Profile):
    """A rendition of a recording: only the bitrate is required."""

    bitrate: Annotated[int, Field(ge=400)]
    name: ProfileName | None = None
    width: Annotated[int, Field(ge=128)] | None = None
    height: Annotated[int, Field(ge=128)] | None = None
    fps: Annotated[int, Field(ge=0)] | None = None
    encoder: Literal["H.264", "HEVC", "VP8", "VP9"] | None = None


class RecordingSpec(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    profiles: list[TranscodeProfile]
