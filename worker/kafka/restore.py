"""Changelog restore: read partitions from the beginning to their end, keeping only the
latest value of each key as it reads (tombstones delete), so memory holds live state only."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.kafka.clients import client_options, pace_metadata_updates
from worker.settings import Settings

LatestValues = dict[bytes, bytes]
"""The latest value of each key of one partition; a key whose latest record is a tombstone
is absent."""


def keep_latest(latest: LatestValues, records: Iterable[tuple[bytes | None, bytes | None]]) -> None:
    """Fold `records` (key, value) in offset order into `latest`: a value replaces the key's
    previous one, a tombstone (None) deletes it, and keyless records are ignored (compaction
    would drop them too)."""
    for key, value in records:
        if key is None:
            continue
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = value


async def read_latest(
    settings: Settings,
    topic: str,
    partitions: Sequence[int],
    on_batch: Callable[[], object] | None = None,
) -> dict[int, LatestValues]:
    """The latest value per key of the given partitions of `topic`, read from the beginning
    to their current end (committed transactions only). Each fetched batch is folded in and
    dropped, so a partition not compacted yet costs its live keys, not its history."""
    result: dict[int, LatestValues] = {p: {} for p in partitions}
    if not partitions:
        return result
    reader = AIOKafkaConsumer(
        **client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        # Fetches of a few MiB: bigger ones cost more to buffer and copy than they save
        # (100k records, 6 partitions: 8/32 MiB 1.15 s wall, 2/12 MiB 0.83 s; a batch
        # bigger than the limit is still returned whole).
        max_partition_fetch_bytes=2 * 1024 * 1024,
        fetch_max_bytes=12 * 1024 * 1024,
        isolation_level="read_committed",
    )
    pace_metadata_updates(reader._client)
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        ends = await reader.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        for tp in tps:
            if tp in remaining and await reader.position(tp) >= ends[tp]:
                remaining.discard(tp)
        while remaining:
            batches = await reader.getmany(*remaining, timeout_ms=500, max_records=20_000)
            if on_batch is not None:
                on_batch()  # a long restore is progress, not a stuck worker
            for tp, records in batches.items():
                keep_latest(result[tp.partition], ((r.key, r.value) for r in records))
            for tp in list(remaining):
                if await reader.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await reader.stop()
    return result
