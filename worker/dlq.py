"""`dlq inspect` and `dlq replay`: read dead letters back, re-inject selected ones.

A dead letter is the input record unchanged plus `dlq.*` headers (worker.outbox) naming the
reason, the error and where it was consumed. Selection is by reason and/or DLQ offsets.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Final, TextIO

import orjson

from worker.kafka.clients import CONNECT_TIMEOUT_S, StartupError
from worker.kafka.readers import EventProducer, StoredRecord, scan_topic
from worker.kafka.topics import describe_layouts
from worker.outbox import (
    DLQ_ERROR_HEADER,
    DLQ_OFFSET_HEADER,
    DLQ_PARTITION_HEADER,
    DLQ_REASON_HEADER,
    DLQ_TOPIC_HEADER,
    DLQ_TRUNCATED_HEADER,
)
from worker.settings import Settings

DLQ_HEADER_PREFIX: Final = "dlq."
"""Every header the worker adds to a dead letter starts with this; a replay strips them."""
PREVIEW_CHARS: Final = 120


@dataclass(frozen=True, slots=True)
class OffsetRange:
    """`P:FIRST-LAST` (inclusive), `P:OFFSET`, `P:FIRST-`, or without `P:` for any partition."""

    partition: int | None
    first: int
    last: int | None

    def covers(self, partition: int, offset: int) -> bool:
        return (
            (self.partition is None or partition == self.partition)
            and offset >= self.first
            and (self.last is None or offset <= self.last)
        )


def parse_offset_range(text: str) -> OffsetRange:
    """Raises ValueError with a readable message (argparse shows it)."""
    partition_text, _, span = text.rpartition(":")
    first_text, dash, last_text = span.partition("-")
    try:
        partition = int(partition_text) if partition_text else None
        first = int(first_text)
        last = int(last_text) if last_text else (None if dash else first)
    except ValueError:
        raise ValueError(f"{text!r} is not PARTITION:FIRST-LAST, e.g. 2:100-250") from None
    if (
        first < 0
        or (partition is not None and partition < 0)
        or (last is not None and last < first)
    ):
        raise ValueError(f"{text!r}: offsets must be >= 0 and FIRST <= LAST")
    return OffsetRange(partition, first, last)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: StoredRecord
    reason: str
    error: str
    source: str
    """Where the record was first consumed: `topic partition:offset`."""
    truncated: int | None = None
    """The original value's size when the worker cut it to fit the DLQ (`dlq.truncated`):
    such a letter is listed but never replayed, its value is not the record that came in."""

    @classmethod
    def of(cls, record: StoredRecord) -> DeadLetter:
        headers = {name: value.decode(errors="replace") for name, value in record.headers}
        source = (
            f"{headers.get(DLQ_TOPIC_HEADER, '?')} "
            f"{headers.get(DLQ_PARTITION_HEADER, '?')}:{headers.get(DLQ_OFFSET_HEADER, '?')}"
        )
        return cls(
            record,
            headers.get(DLQ_REASON_HEADER, "unknown"),
            headers.get(DLQ_ERROR_HEADER, ""),
            source,
            _size(headers.get(DLQ_TRUNCATED_HEADER)),
        )

    def original_headers(self) -> list[tuple[str, bytes]]:
        return [(n, v) for n, v in self.record.headers if not n.startswith(DLQ_HEADER_PREFIX)]


@dataclass(frozen=True, slots=True)
class Selection:
    reasons: frozenset[str] = frozenset()
    ranges: tuple[OffsetRange, ...] = ()
    everything: bool = False

    @property
    def is_empty(self) -> bool:
        return not (self.everything or self.reasons or self.ranges)

    def matches(self, letter: DeadLetter) -> bool:
        if self.reasons and letter.reason not in self.reasons:
            return False
        record = letter.record
        return not self.ranges or any(
            r.covers(record.partition, record.offset) for r in self.ranges
        )


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode(errors="backslashreplace")


def letter_json(letter: DeadLetter) -> bytes:
    record = letter.record
    return orjson.dumps(
        {
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp,
            "reason": letter.reason,
            "error": letter.error,
            "source": letter.source,
            "truncated": letter.truncated,
            "key": _text(record.key),
            "value": _text(record.value),
            "headers": {n: _text(v) for n, v in letter.original_headers()},
        }
    )


def _size(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def describe_letter(letter: DeadLetter) -> str:
    record = letter.record
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.timestamp / 1000))
    value = _text(record.value) or ""
    if len(value) > PREVIEW_CHARS:
        value = value[: PREVIEW_CHARS - 1] + "…"
    if letter.truncated is not None:
        value = f"(cut from {letter.truncated} bytes) {value}"
    return (
        f"{record.partition}:{record.offset}  {stamp}  {letter.reason}  key {_text(record.key)}  "
        f"(from {letter.source})\n    error: {letter.error}\n    value: {value}\n"
    )


async def load_dead_letters(settings: Settings, selection: Selection) -> list[DeadLetter]:
    """Every dead letter. Raises StartupError when the DLQ, or a partition that the
    selection names, does not exist (a typo must not read as "nothing to replay")."""
    topic = settings.dlq_topic
    layout = (await describe_layouts(settings, {topic: ()})).get(topic)
    if layout is None:
        raise StartupError(f"topic {topic!r} does not exist")
    named = {r.partition for r in selection.ranges if r.partition is not None}
    missing = sorted(p for p in named if p >= layout.partitions)
    if missing:
        raise StartupError(
            f"{topic} has no partition {', '.join(map(str, missing))} "
            f"(its partitions are 0-{layout.partitions - 1})"
        )
    return [DeadLetter.of(r) for r in await scan_topic(settings, topic)]


async def inspect_dead_letters(
    settings: Settings,
    selection: Selection,
    limit: int = 20,
    as_json: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """List dead letters (newest `limit` of the selection; all with --json) and count reasons."""
    letters = await load_dead_letters(settings, selection)
    chosen = [letter for letter in letters if selection.matches(letter)]
    if as_json:
        out.writelines(letter_json(letter).decode() + "\n" for letter in chosen)
        return 0
    shown = sorted(chosen, key=lambda d: (d.record.timestamp, d.record.offset))[-limit:]
    out.writelines(describe_letter(letter) for letter in shown)
    reasons = Counter(letter.reason for letter in chosen)
    by_reason = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common()) or "none"
    out.write(
        f"dlq: {len(letters)} dead letters in {settings.dlq_topic}; {len(chosen)} selected "
        f"({by_reason}); showing the newest {len(shown)}\n"
    )
    return 0


async def replay_dead_letters(
    settings: Settings,
    selection: Selection,
    target: str | None = None,
    dry_run: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """Re-inject the selected dead letters into `target` (default: the input topic).

    Key, value and the original headers are kept; the `dlq.*` headers are stripped. Order is
    kept per DLQ partition. A record that is still invalid is dead-lettered again.
    """
    if selection.is_empty:
        raise ValueError("select dead letters with --reason, --offset or --all")
    topic = target or settings.input_topic
    letters = await load_dead_letters(settings, selection)
    selected = [letter for letter in letters if selection.matches(letter)]
    chosen = [letter for letter in selected if letter.truncated is None]
    for letter in selected:
        if letter.truncated is not None:
            record = letter.record
            out.write(
                f"skipped {record.partition}:{record.offset}: its value was cut from "
                f"{letter.truncated} bytes to fit the DLQ, so it is not the original record\n"
            )
    if dry_run:
        for letter in chosen:
            record = letter.record
            out.write(
                f"would replay {record.partition}:{record.offset} {letter.reason} "
                f"key {_text(record.key)}\n"
            )
    elif chosen:
        if topic not in await describe_layouts(settings, {topic: ()}):
            raise StartupError(f"target topic {topic!r} does not exist")
        producer = EventProducer(settings, acks="all", enable_idempotence=True)
        try:
            await asyncio.wait_for(producer.start(), CONNECT_TIMEOUT_S)
            for letter in chosen:
                record = letter.record
                await producer.send(topic, record.key, record.value, letter.original_headers())
            await producer.flush()
        finally:
            await producer.stop()
    reasons = Counter(letter.reason for letter in chosen)
    by_reason = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common()) or "none"
    done = "would replay" if dry_run else "replayed"
    out.write(
        f"dlq: {done} {len(chosen)} of {len(letters)} dead letters ({by_reason}) into {topic}\n"
    )
    return 0
