"""Rendition profiles shared by the input events and the Session output (session.md).

The Session model of the seed's SDK (shared/spec/livepeer-go-session.md) has one profile
type, FfmpegProfile, for a stream's renditions and for `recordingSpec.profiles` alike. Its
generated enum decoders reject values they do not list, so the enums here are exactly the
SDK's, and every integer is bounded so the output encoder (64-bit) and every JSON consumer
(float64) hold it exactly.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

MAX_JSON_INT: Final = 2**53 - 1
"""Largest integer accepted anywhere: exact in every JSON consumer (float64), and far from
the 64-bit limit of the orjson encoder, so one absurd record cannot crash the outputs."""
MAX_PROFILES: Final = 32
"""Profiles in `profiles` and in `recordingSpec.profiles` (events.md)."""
MAX_GOP_CHARS: Final = 64
"""The spec leaves `gop` unbounded; a GOP is a number or a word like "intra", and a bound
keeps every snapshot's size bounded (session.md "Size")."""

H264Profile = Literal["H264Baseline", "H264Main", "H264High", "H264ConstrainedHigh"]
ProfileName = Annotated[str, Field(min_length=1, max_length=500)]


def gop_text(value: Any) -> Any:
    """A `gop` sent as a JSON number becomes the decimal string it is published as.

    Formatted like JSON.stringify prints the number: integral values without a fraction
    (2 and 2.0 give "2"), others as the shortest text that reads back as the same number
    (2.5 gives "2.5"). Anything else goes on to the string check unchanged.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if not 0 <= value <= MAX_JSON_INT:  # also false for NaN; JSON has no NaN, pydantic reads it
        raise ValueError(f"gop must be a string or a number from 0 to {MAX_JSON_INT}")
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return repr(value)


Gop = Annotated[str, BeforeValidator(gop_text), Field(max_length=MAX_GOP_CHARS)]


def _bounded(minimum: int, maximum: int = MAX_JSON_INT) -> Any:
    return Field(ge=minimum, le=maximum)


class FfmpegProfile(BaseModel):
    """A rendition; every field the API requires is required here too (session.md)."""

    # Output field names are the API's camelCase names; extra="ignore" keeps producers free
    # to send fields we do not model yet.
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True, strict=True)

    name: ProfileName
    width: Annotated[int, _bounded(128)]
    height: Annotated[int, _bounded(128)]
    bitrate: Annotated[int, _bounded(400)]
    fps: Annotated[int, _bounded(0)]
    fps_den: Annotated[int, _bounded(1)] | None = Field(default=None, alias="fpsDen")
    quality: Annotated[int, _bounded(0, 44)] | None = None
    gop: Gop | None = None
    profile: H264Profile | None = None
    encoder: Literal["H.264"] | None = None


Profiles = Annotated[list[FfmpegProfile], Field(max_length=MAX_PROFILES)]


class RecordingSpec(BaseModel):
    """`{"profiles": FfmpegProfile[]}`: the seed's SDK has no other profile type."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    profiles: Profiles


def is_recording_spec(spec: Any) -> bool:
    """Whether `spec` (a dumped value, e.g. restored from the changelog) is a valid spec.

    Versions before 2026-12 accepted TranscodeProfile specs (`{"bitrate": 400}`, `HEVC`),
    which the seed's SDK cannot decode; restored state drops them rather than publish them.
    """
    try:
        RecordingSpec.model_validate(spec)
    except ValidationError:
        return False
    return True
