"""Changelog codec: a session's full state as bytes and back. Pure.

The changelog topic is compacted and co-partitioned with the input, so on assignment a
worker rebuilds exactly the sessions of its partitions. Records carry a format version so
a rolling upgrade can refuse (and report) a format it does not understand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any, Final, NamedTuple

import orjson

from worker.parts.failures import Failures
from worker.parts.masks import RenditionMasks, mask_from_wire, mask_to_wire
from worker.parts.meta import SessionMeta
from worker.parts.rates import RateWindow
from worker.parts.recent import RecentDurations, RecentTranscodes
from worker.profiles import is_recording_spec
from worker.state import SessionState

FORMAT_VERSION: Final = 2
"""Written by `encode_state`; `decode_state` reads this and format 1."""


class ChangelogFormatError(ValueError):
    """A changelog record this version cannot read."""


class ChangelogEntry(NamedTuple):
    """A decoded record (a tuple: cheaper to build than a frozen dataclass, 100k a restore)."""

    state: SessionState
    evicted_at: int | None
    source_offset: int | None


_Codec = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Column:
    """One value of a record, in both formats. Without codecs a value is written as is."""

    name: str
    """A SessionState field, or the entry's `source_offset` / `evicted_at`."""
    v1: str
    """Its format 1 key; "group.i" puts it at index i of the array under "group"."""
    v2_width: int = 1
    """How many elements of the format 2 array it takes (its `to_v2` writes that many as a
    tuple; its `from_v2` reads them as that many arguments)."""
    to_v2: _Codec | None = None
    from_v2: _Codec | None = None
    to_v1: _Codec | None = None
    from_v1: _Codec | None = None


def _meta_from(meta: dict[str, list[Any]]) -> SessionMeta:
    spec = meta.get("recording_spec")
    if spec is not None and not is_recording_spec(spec[1]):
        del meta["recording_spec"]  # a TranscodeProfile spec from before 2026-12: unpublishable
    return SessionMeta.from_wire(meta)


def _recording_from(recording: list[Any] | None) -> tuple[Any, ...] | None:
    return None if recording is None else tuple(recording)


COLUMNS: Final = (
    # In format 2 order; format 1 has the same values under its keys (endedAt and timedOut
    # last, see V1_LAST).
    Column("session_id", "id"),
    Column("source_offset", "offset"),
    Column("evicted_at", "evictedAt"),
    Column("created_at", "createdAt"),
    Column("last_activity", "lastActivity"),
    Column("last_seen", "lastSeen"),
    Column("first_segment_at", "firstSegmentAt"),
    Column("ended_at", "endedAt"),
    Column("timed_out", "timedOut"),
    Column("source_segments", "totals.0"),
    Column("source_duration_us", "totals.1"),
    Column("source_bytes", "totals.2"),
    Column("transcoded_segments", "totals.3"),
    Column("transcoded_duration_us", "totals.4"),
    Column("transcoded_bytes", "totals.5"),
    Column("late_segments", "totals.6"),
    Column("source_hwm", "source.0"),
    Column(
        "source_mask",
        "source.1",
        v2_width=2,  # bit length and holes: all ones, the usual mask, is short
        to_v2=mask_to_wire,
        from_v2=mask_from_wire,
        to_v1=lambda mask: format(mask, "x"),
        from_v1=lambda text: int(text, 16),
    ),
    Column("transcoded_hwm", "transcoded.0"),
    Column(
        "rendition_masks",
        "transcoded.1",
        to_v2=RenditionMasks.to_wire,
        from_v2=RenditionMasks.from_wire,
        to_v1=RenditionMasks.to_wire_v1,
        from_v1=RenditionMasks.from_wire_v1,
    ),
    Column("ingest", "ingestWindow", to_v2=RateWindow.to_wire, from_v2=RateWindow.from_wire),
    Column("outgoing", "outgoingWindow", to_v2=RateWindow.to_wire, from_v2=RateWindow.from_wire),
    Column(
        "durations",
        "recentDurations",
        to_v2=RecentDurations.to_wire,
        from_v2=RecentDurations.from_wire,
    ),
    Column(
        "transcodes",
        "recentTranscodes",
        v2_width=4,  # seqNos, ratios, the name table, an index into it per entry
        to_v2=RecentTranscodes.to_wire,
        from_v2=RecentTranscodes.from_wire,
        to_v1=RecentTranscodes.to_wire_v1,
        from_v1=RecentTranscodes.from_wire_v1,
    ),
    Column(
        "failures",
        "failures",
        to_v2=Failures.to_wire,
        from_v2=Failures.from_wire,
        to_v1=Failures.to_wire_v1,
        from_v1=Failures.from_wire_v1,
    ),
    Column("meta", "meta", to_v2=SessionMeta.to_wire, from_v2=_meta_from),
    Column("recording", "recording", from_v2=_recording_from),
)
"""Every value of a changelog record, written once for both formats. Format 1 writes a
column with its format 2 codecs unless it has its own."""
V1_LAST: Final = frozenset({"endedAt", "timedOut"})
"""Format 1 wrote these keys after all the others."""
V2_WIDTH: Final = sum(c.v2_width for c in COLUMNS)
_ENTRY_COLUMNS: Final = ("source_offset", "evicted_at")
"""Columns of the entry, not of its state, in COLUMNS order."""
_state_values: Final = attrgetter(*(c.name for c in COLUMNS if c.name not in _ENTRY_COLUMNS))
_ENTRY_AT: Final = tuple(i for i, c in enumerate(COLUMNS) if c.name in _ENTRY_COLUMNS)


def _values(state: SessionState, evicted_at: int | None, source_offset: int | None) -> list[Any]:
    """The value of each column, in COLUMNS order."""
    values = list(_state_values(state))
    entry = {"source_offset": source_offset, "evicted_at": evicted_at}
    for index in _ENTRY_AT:
        values.insert(index, entry[COLUMNS[index].name])
    return values


def _v2_encoder_source() -> str:
    """The source of `encode_state`'s body, written from COLUMNS: one array display with a
    call per codec, no per-column loop (every changed session, every checkpoint)."""
    items = []
    for index, column in enumerate(COLUMNS):
        value = column.name if column.name in _ENTRY_COLUMNS else f"state.{column.name}"
        if column.to_v2 is None:
            items.append(value)
        elif column.v2_width == 1:
            items.append(f"_to_v2_{index}({value})")
        else:
            items.append(f"*_to_v2_{index}({value})")
    return (
        "def _encode_v2(state, evicted_at, source_offset):\n"
        f"    return dumps({{'v': {FORMAT_VERSION}, 's': [{', '.join(items)}]}})\n"
    )


def _compiled(source: str, name: str, namespace: dict[str, Any]) -> Any:
    """The function `name` that `source` (our own, written from COLUMNS) defines, with the
    codecs and classes it calls in `namespace`."""
    exec(source, namespace)  # noqa: S102  # generated here from COLUMNS, never from input
    return namespace[name]


def _compile_v2_encoder() -> Callable[[SessionState, int | None, int | None], bytes]:
    codecs = {f"_to_v2_{i}": c.to_v2 for i, c in enumerate(COLUMNS) if c.to_v2}
    encoder: Callable[[SessionState, int | None, int | None], bytes] = _compiled(
        _v2_encoder_source(), "_encode_v2", {"dumps": orjson.dumps, **codecs}
    )
    return encoder


_encode_v2: Final = _compile_v2_encoder()


def encode_state(state: SessionState, evicted_at: int | None, source_offset: int | None) -> bytes:
    """Format 2: one flat array of the columns (names written once per record, masks
    short). Runs for every changed session every checkpoint: the array is written by
    code generated from COLUMNS (`_v2_encoder_source`)."""
    return _encode_v2(state, evicted_at, source_offset)


def _v1_codec(column: Column, to: bool) -> _Codec | None:
    if to:
        return column.to_v1 or column.to_v2
    return column.from_v1 or column.from_v2


def encode_state_v1(
    state: SessionState, evicted_at: int | None, source_offset: int | None
) -> bytes:
    """Format 1, which workers before format 2 read (they skip a format 2 record and lose
    that session's state). For a two-phase rolling upgrade: write this until every worker
    runs a version that reads format 2, then switch to `encode_state`."""
    body: dict[str, Any] = {"v": 1}
    last: dict[str, Any] = {}
    for column, value in zip(COLUMNS, _values(state, evicted_at, source_offset), strict=True):
        codec = _v1_codec(column, to=True)
        written = value if codec is None else codec(value)
        key, _, index = column.v1.partition(".")
        if index:
            body.setdefault(key, []).append(written)  # columns of a group are in its order
        else:
            (last if key in V1_LAST else body)[key] = written
    body.update(last)
    return orjson.dumps(body)


def _decoded(columns: dict[str, Any], partition: int) -> ChangelogEntry:
    evicted_at = columns.pop("evicted_at")
    source_offset = columns.pop("source_offset")
    return ChangelogEntry(SessionState(partition=partition, **columns), evicted_at, source_offset)


def _v2_decoder_source() -> str:
    """The source of `_decode_v2_values`, written from COLUMNS: one unpacking of the array
    and one call per codec, no per-column loop or dict (restore decodes 100k records)."""
    names, args, at = [], [], 0
    for index, column in enumerate(COLUMNS):
        values = ", ".join(f"v{i}" for i in range(at, at + column.v2_width))
        names.append(column.name)
        args.append(values if column.from_v2 is None else f"_from_v2_{index}({values})")
        at += column.v2_width
    given = dict(zip(names, args, strict=True), partition="partition")
    positional: list[str] = []  # cheaper than keywords: in field order while all are given
    for field in fields(SessionState):
        if field.name not in given:
            break
        positional.append(given.pop(field.name))
    entry = {name: given.pop(name) for name in _ENTRY_COLUMNS}
    state = ", ".join([*positional, *(f"{name}={arg}" for name, arg in given.items())])
    return (
        "def _decode_v2_values(body, partition):\n"
        f"    {', '.join(f'v{i}' for i in range(V2_WIDTH))} = body\n"
        f"    state = SessionState({state})\n"
        f"    return ChangelogEntry(state, {entry['evicted_at']}, {entry['source_offset']})\n"
    )


def _compile_v2_decoder() -> Callable[[list[Any], int], ChangelogEntry]:
    codecs = {f"_from_v2_{i}": c.from_v2 for i, c in enumerate(COLUMNS) if c.from_v2}
    classes = {"SessionState": SessionState, "ChangelogEntry": ChangelogEntry}
    decoder: Callable[[list[Any], int], ChangelogEntry] = _compiled(
        _v2_decoder_source(), "_decode_v2_values", {**classes, **codecs}
    )
    return decoder


_decode_v2_values: Final = _compile_v2_decoder()


def _decode_v2(body: list[Any], partition: int) -> ChangelogEntry:
    if not isinstance(body, list):
        raise ChangelogFormatError(f"corrupt changelog record: not an array: {body!r:.80}")
    if len(body) != V2_WIDTH:
        raise ChangelogFormatError(
            f"corrupt changelog record: {len(body)} values, expected {V2_WIDTH}"
        )
    return _decode_v2_values(body, partition)


def _decode_v1(body: dict[str, Any], partition: int) -> ChangelogEntry:
    columns: dict[str, Any] = {}
    for column in COLUMNS:
        key, _, index = column.v1.partition(".")
        value = body[key][int(index)] if index else body[key]
        codec = _v1_codec(column, to=False)
        columns[column.name] = value if codec is None else codec(value)
    return _decoded(columns, partition)


def decode_state(payload: bytes, partition: int) -> ChangelogEntry:
    """Reads formats 1 and 2. Raises ChangelogFormatError for a record of another format or
    a corrupt one."""
    try:
        body = orjson.loads(payload)
        if not isinstance(body, dict):
            raise ChangelogFormatError(f"corrupt changelog record: not an object: {body!r:.80}")
        version = body.get("v")
        if version == FORMAT_VERSION:
            return _decode_v2(body["s"], partition)
        if version == 1:
            return _decode_v1(body, partition)
        raise ChangelogFormatError(f"unsupported changelog format {version!r}")
    except (
        orjson.JSONDecodeError,
        KeyError,
        TypeError,
        ValueError,
        IndexError,
        AttributeError,
        OverflowError,
    ) as error:
        if isinstance(error, ChangelogFormatError):
            raise
        raise ChangelogFormatError(f"corrupt changelog record: {error}") from error
