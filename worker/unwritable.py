"""What a checkpoint gave up on: counted and logged, never silent (docs/troubleshooting.md)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from worker.metrics import WorkerMetrics
from worker.outbox import (
    DLQ_OFFSET_HEADER,
    DLQ_PARTITION_HEADER,
    DLQ_TOPIC_HEADER,
    DLQ_TRUNCATED_HEADER,
    OutRecord,
    Unwritten,
)

if TYPE_CHECKING:
    from worker.runtime.ports import OutputTopics

log = logging.getLogger(__name__)


def report_given_up(
    metrics: WorkerMetrics,
    topics: OutputTopics,
    unwritten: Sequence[Unwritten],
    truncated: Sequence[OutRecord],
) -> None:
    """Count and log what a write held back for good (its offsets are committed all the
    same: retrying could never succeed) and the dead letters it cut to fit."""
    roles = {
        topics.snapshots: "snapshots",
        topics.changelog: "changelog",
        topics.dead_letters: "dead_letters",
    }
    for item in unwritten:
        record = item.record
        role = roles.get(record.topic, "other")
        metrics.unwritable.labels(role, item.reason).inc()
        # A changelog record lost means a restart before this session's next record that
        # fits restores an older state of it: loud, not silent (docs/troubleshooting.md).
        log.error(
            "record cannot be written; skipped",
            extra={
                "topic": record.topic,
                "role": role,
                "reason": item.reason,
                "bytes": len(record.value or b"") + len(record.key or b""),
                "key": (record.key or b"").decode(errors="replace")[:200],
                **_source_of(record, item.input_partition),
            },
        )
    for record in truncated:
        metrics.truncated_dead_letters.inc()
        headers = dict(record.headers)
        log.warning(
            "dead letter truncated to fit",
            extra={
                "original_bytes": _int_header(headers, DLQ_TRUNCATED_HEADER),
                "written_bytes": len(record.value or b""),
                **_source_of(record, None),
            },
        )


def _source_of(record: OutRecord, input_partition: int | None) -> dict[str, object]:
    """Where a record came from: a dead letter names its input record in its headers, other
    records only their input partition."""
    headers = dict(record.headers)  # the last of a name wins: ours follow the input's own
    if DLQ_OFFSET_HEADER in headers:
        return {
            "source_topic": (headers.get(DLQ_TOPIC_HEADER) or b"").decode(errors="replace"),
            "source_partition": _int_header(headers, DLQ_PARTITION_HEADER),
            "source_offset": _int_header(headers, DLQ_OFFSET_HEADER),
        }
    return {"source_partition": input_partition}


def _int_header(headers: Mapping[str, bytes | None], name: str) -> int | None:
    try:
        return int(headers.get(name) or b"")
    except ValueError:
        return None
