"""Changelog codec: a session's full state as bytes and back. Pure.

The changelog topic is compacted and co-partitioned with the input, so on assignment a
worker rebuilds exactly the sessions of its partitions. Records carry a format version so
a rolling upgrade can refuse (and report) a format it does not understand.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any, Final

import orjson

from worker.profiles import is_recording_spec
from worker.rules import DEDUPE_WINDOW
from worker.state import (
    NO_RATIO,
    SessionMeta,
    SessionState,
    failure_items,
    flat_failures,
    ingest_window,
    meta_items,
    outgoing_window,
    packed_stamps,
    pairs,
    share_meta,
    share_recent_names,
    share_value,
    transcodes_start,
)

FORMAT_VERSION: Final = 2
"""Written by `encode_state`; `decode_state` reads this and format 1."""


def _durations(state: SessionState) -> list[tuple[int, float]]:
    it = iter(state.recent[: transcodes_start(state)])
    return [(int(seq_no), duration) for seq_no, duration in zip(it, it, strict=True)]


def _transcode_seqs(state: SessionState) -> list[int]:
    return [int(seq_no) for seq_no in state.recent[transcodes_start(state) :: 2]]


def _ratios(state: SessionState) -> list[float | None]:
    start = transcodes_start(state)
    return [None if r == NO_RATIO else r for r in state.recent[start + 1 :: 2]]


def _flat_window(entries: list[list[int]]) -> array[int]:
    return array("q", [x for ts, size in entries for x in (ts, size)])


class ChangelogFormatError(ValueError):
    """A changelog record this version cannot read."""


@dataclass(frozen=True, slots=True)
class ChangelogEntry:
    state: SessionState
    evicted_at: int | None
    source_offset: int | None


def _mask_fields(mask: int) -> tuple[int, str]:
    """(bit length, the zero bits below it in hex): all ones, the usual mask, is (n, "0")."""
    length = mask.bit_length()
    return length, format(mask ^ ((1 << length) - 1), "x")


def _mask_from(length: int, holes_hex: str) -> int:
    if not 0 <= length <= DEDUPE_WINDOW:  # also bounds the allocation a corrupt record asks
        raise ChangelogFormatError(f"corrupt changelog record: mask of {length!r} bits")
    holes = int(holes_hex, 16)
    if holes >> length:
        raise ChangelogFormatError("corrupt changelog record: mask holes beyond its length")
    return ((1 << length) - 1) ^ holes


def encode_state(state: SessionState, evicted_at: int | None, source_offset: int | None) -> bytes:
    """Format 2. Runs for every changed session every checkpoint: the packed windows and
    recent entries are written as the arrays of pairs format 2 always had (tuples, which
    orjson writes in C); names are written once per record, masks short."""
    names = state.recent_names
    name_table = list(dict.fromkeys(names))
    renditions: list[Any] = []
    for name, mask in pairs(state.rendition_masks):
        renditions.append(name)
        renditions.extend(_mask_fields(mask))
    body = [
        state.session_id,
        source_offset,
        evicted_at,
        state.created_at,
        state.last_activity,
        state.last_seen,
        state.first_segment_at,
        state.ended_at,
        state.timed_out,
        state.source_segments,
        state.source_duration_us,
        state.source_bytes,
        state.transcoded_segments,
        state.transcoded_duration_us,
        state.transcoded_bytes,
        state.late_segments,
        state.source_hwm,
        *_mask_fields(state.source_mask),
        state.transcoded_hwm,
        renditions,
        pairs(ingest_window(state)),
        pairs(outgoing_window(state)),
        _durations(state),
        _transcode_seqs(state),
        _ratios(state),
        name_table,
        # Index into name_table per entry; null when every entry has the one name tuple.
        None if len(name_table) <= 1 else [name_table.index(n) for n in names],
        state.failures,  # flat (seqNo, ts, error, ...), as format 2 writes them
        meta_items(state),
        state.recording,
    ]
    return orjson.dumps({"v": FORMAT_VERSION, "s": body})


def encode_state_v1(
    state: SessionState, evicted_at: int | None, source_offset: int | None
) -> bytes:
    """Format 1, which workers before format 2 read (they skip a format 2 record and lose
    that session's state). For a two-phase rolling upgrade: write this until every worker
    runs a version that reads format 2, then switch to `encode_state`."""
    body: dict[str, Any] = {
        "v": 1,
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
            {name: format(mask, "x") for name, mask in pairs(state.rendition_masks)},
        ],
        "ingestWindow": pairs(ingest_window(state)),
        "outgoingWindow": pairs(outgoing_window(state)),
        "recentDurations": _durations(state),
        "recentTranscodes": list(
            zip(_transcode_seqs(state), _ratios(state), state.recent_names, strict=True)
        ),
        "failures": [[s, ts, err] for s, (ts, err) in failure_items(state).items()],
        "meta": meta_items(state),
        "recording": state.recording,
        "endedAt": state.ended_at,
        "timedOut": state.timed_out,
    }
    return orjson.dumps(body)


def _decode_v2(body: list[Any], partition: int) -> ChangelogEntry:
    if not isinstance(body, list):
        raise ChangelogFormatError(f"corrupt changelog record: not an array: {body!r:.80}")
    (
        session_id,
        source_offset,
        evicted_at,
        created_at,
        last_activity,
        last_seen,
        first_segment_at,
        ended_at,
        timed_out,
        source_segments,
        source_duration_us,
        source_bytes,
        transcoded_segments,
        transcoded_duration_us,
        transcoded_bytes,
        late_segments,
        source_hwm,
        source_length,
        source_holes,
        transcoded_hwm,
        renditions,
        ingest,
        outgoing,
        durations,
        transcode_seqs,
        ratios,
        name_table,
        name_index,
        failures,
        meta,
        recording,
    ) = body
    # zip(it, it[, it], strict=True) over one iterator: pairs or triples; ragged raises.
    it = iter(renditions)
    masks = {
        name: _mask_from(length, holes) for name, length, holes in zip(it, it, it, strict=True)
    }
    table = [share_value(tuple(names)) for names in name_table]
    if name_index is None:
        if transcode_seqs and len(table) != 1:
            raise ChangelogFormatError("corrupt changelog record: no rendition names")
        names = [table[0]] * len(transcode_seqs) if transcode_seqs else []
    else:
        names = [table[i] for i in name_index]
    recent_transcodes, recent_names = _recent_transcodes(transcode_seqs, ratios, names)
    it = iter(failures)
    state = SessionState(
        session_id=session_id,
        partition=partition,
        created_at=created_at,
        last_activity=last_activity,
        last_seen=last_seen,
        first_segment_at=first_segment_at,
        source_segments=source_segments,
        source_duration_us=source_duration_us,
        source_bytes=source_bytes,
        transcoded_segments=transcoded_segments,
        transcoded_duration_us=transcoded_duration_us,
        transcoded_bytes=transcoded_bytes,
        late_segments=late_segments,
        source_hwm=source_hwm,
        source_mask=_mask_from(source_length, source_holes),
        transcoded_hwm=transcoded_hwm,
        rendition_masks=_flat_masks(masks),
        rates=_flat_window(ingest) + _flat_window(outgoing),
        outgoing_entries=len(outgoing),
        recent=_flat_durations(durations) + recent_transcodes,
        recent_names=recent_names,
        failures=flat_failures({s: (ts, e) for s, ts, e in zip(it, it, it, strict=True)}),
        meta=_meta_from(meta),
        recording=None if recording is None else tuple(recording),
        ended_at=ended_at,
        timed_out=timed_out,
    )
    return ChangelogEntry(state, evicted_at, source_offset)


def _flat_masks(masks: dict[str, int]) -> tuple[Any, ...]:
    if not all(isinstance(name, str) for name in masks):
        raise ChangelogFormatError("corrupt changelog record: a rendition name not a string")
    return tuple(x for item in masks.items() for x in item)


def _meta_from(meta: dict[str, list[Any]]) -> SessionMeta:
    """Raises TypeError for a name that is not a metadata field (a corrupt record)."""
    spec = meta.get("recording_spec")
    if spec is not None and not is_recording_spec(spec[1]):
        del meta["recording_spec"]  # a TranscodeProfile spec from before 2026-12: unpublishable
    return SessionMeta(
        share_value(tuple(meta)),
        packed_stamps([ts for ts, _ in meta.values()]),
        **{name: share_meta(name, value) for name, (_, value) in meta.items()},
    )


def _flat_durations(durations: list[list[Any]]) -> array[float]:
    """Written from a dict, so seqNos are unique; a repeated one keeps its first place and
    its last value, as reading it into a dict did."""
    by_seq_no = dict(durations)
    return array("d", [x for item in by_seq_no.items() for x in item])


def _recent_transcodes(
    seq_nos: list[int], ratios: list[float | None], names: list[tuple[str, ...]]
) -> tuple[array[float], tuple[tuple[str, ...], ...]]:
    """The flat `recent_transcodes` and its `recent_names`; a repeated seqNo keeps its first
    place and its last value, as reading the entries into a dict did."""
    recent = dict(zip(seq_nos, zip(ratios, names, strict=True), strict=True))
    flat = [x for s, (r, _) in recent.items() for x in (s, NO_RATIO if r is None else r)]
    return array("d", flat), share_recent_names(tuple(n for _, n in recent.values()))


def _decode_v1(body: dict[str, Any], partition: int) -> ChangelogEntry:
    totals = body["totals"]
    entries = body["recentTranscodes"]
    recent_transcodes, recent_names = _recent_transcodes(
        [s for s, _, _ in entries],
        [r for _, r, _ in entries],
        [share_value(tuple(n)) for _, _, n in entries],
    )
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
        rendition_masks=_flat_masks({n: int(m, 16) for n, m in body["transcoded"][1].items()}),
        rates=_flat_window(body["ingestWindow"]) + _flat_window(body["outgoingWindow"]),
        outgoing_entries=len(body["outgoingWindow"]),
        recent=_flat_durations(body["recentDurations"]) + recent_transcodes,
        recent_names=recent_names,
        failures=flat_failures({s: (ts, err) for s, ts, err in body["failures"]}),
        meta=_meta_from(body["meta"]),
        recording=None if body["recording"] is None else tuple(body["recording"]),
        ended_at=body["endedAt"],
        timed_out=body["timedOut"],
    )
    return ChangelogEntry(state, body["evictedAt"], body["offset"])


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
