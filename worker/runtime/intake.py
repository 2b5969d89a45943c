"""Folding a fetched batch: decode each record, fold the valid events into the store, turn
invalid ones into dead letters, note offsets and event times. No I/O, no clock reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from worker.events import InvalidRecord, decode_event
from worker.metrics import WorkerMetrics
from worker.outbox import InputRecord
from worker.runtime.checkpoint import Checkpoints
from worker.store import SessionStore


class Folded(NamedTuple):
    events: int
    """Valid events folded."""
    newest: dict[int, int]
    """Per partition, the newest event timestamp folded: its event-time watermark."""


def fold_records(
    records: Sequence[InputRecord],
    store: SessionStore,
    checkpoints: Checkpoints,
    metrics: WorkerMetrics,
    now_ms: int,
) -> Folded:
    """Fold `records` in order; `now_ms` (the wall clock) judges future timestamps only.
    Each record's offset + 1 and any dead letter go into the checkpoints' outbox."""
    offsets, pending = checkpoints.outbox.offsets, checkpoints.first_pending_ms
    folded_by_type: dict[str, int] = {}
    newest: dict[int, int] = {}
    for record in records:
        offsets[record.partition] = record.offset + 1
        value = record.value
        if value is None:
            metrics.tombstones.inc()
            continue
        decoded = decode_event(value, record.key, now_ms)
        if isinstance(decoded, InvalidRecord):
            checkpoints.dead_letter(record, decoded)
            if decoded.event is None:
                continue
            decoded = decoded.event  # invalid_metadata: the valid part is folded too
        state = store.apply(decoded, record.partition)
        timestamp = decoded.timestamp
        if timestamp > newest.get(record.partition, timestamp - 1):
            newest[record.partition] = timestamp
        folded_by_type[decoded.type] = folded_by_type.get(decoded.type, 0) + 1
        if state.session_id not in pending:
            pending[state.session_id] = record.timestamp
    for event_type, count in folded_by_type.items():
        metrics.events.labels(event_type).inc(count)
    return Folded(sum(folded_by_type.values()), newest)
