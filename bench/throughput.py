"""Throughput: the real worker folding a pre-filled topic, against the bare aiokafka ceiling.

Both read the same topic from offset 0 to the end, in this process, on the same event-loop
implementation, in a fresh consumer group each time, with the worker's fetch settings. The
clock starts at the first batch (group join and restore are excluded) and stops when the
last record has been read (ceiling) or folded (worker: its periodic checkpoints, which
build, encode and write snapshots and changelog records every publish interval, are
included). Repetitions alternate ceiling and worker so load drift hits both alike.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from worker.app import Worker
from worker.kafka.clients import client_options
from worker.outbox import InputRecord
from worker.settings import Settings


@dataclass(frozen=True, slots=True)
class Run:
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def bench_settings(bootstrap: str, topic: str, **overrides: object) -> Settings:
    """Worker settings for a run on `topic`: fresh group, any free HTTP port."""
    group = f"bench-{uuid.uuid4().hex[:8]}"
    values: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "group_id": group,
        "client_id": group,
        "input_topic": topic,
        "snapshot_topic": f"{topic}.sessions",
        "dlq_topic": f"{topic}.dlq",
        "http_host": "127.0.0.1",
        "http_port": 0,
        **overrides,
    }
    interval = values.get("publish_interval_s")
    if isinstance(interval, int | float) and "commit_interval_s" not in values:
        # Checkpoints as often as by default, but never more often than publishes.
        values["commit_interval_s"] = max(
            Settings.model_fields["commit_interval_s"].default, interval
        )
    return Settings(**values)  # type: ignore[arg-type]


async def read_ceiling(settings: Settings, total: int) -> Run:
    """A bare consumer with the worker's consumer and fetch settings (see KafkaSource)."""
    consumer = AIOKafkaConsumer(
        settings.input_topic,
        **client_options(settings),
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        seen, first = 0, 0.0
        while seen < total:
            batches = await consumer.getmany(timeout_ms=500, max_records=settings.max_poll_records)
            for records in batches.values():
                if not seen:
                    first = time.perf_counter()
                seen += len(records)
        return Run(seen, time.perf_counter() - first)
    finally:
        await consumer.stop()


class _Timing:
    """Wraps the runner's `_process`: when the first batch came, when the last was folded."""

    def __init__(self, worker: Worker, total: int) -> None:
        self.first = 0.0
        self.last = 0.0
        self.records = 0
        self.done = asyncio.Event()
        self._total = total
        self._process = worker.runner._process
        worker.runner._process = self  # type: ignore[method-assign]

    def __call__(self, records: Sequence[InputRecord]) -> None:
        if not self.records:
            self.first = time.perf_counter()
        self._process(records)
        self.records += len(records)
        if self.records >= self._total:
            self.last = time.perf_counter()
            self.done.set()


async def run_worker(settings: Settings, total: int, timeout_s: float = 600) -> tuple[Run, Worker]:
    """Fold the whole topic with a real Worker; stop it (final checkpoint) once done."""
    worker = Worker(settings, CollectorRegistry())
    timing = _Timing(worker, total)
    serving = asyncio.create_task(worker.serve())
    try:
        done = asyncio.create_task(timing.done.wait())
        finished, _ = await asyncio.wait(
            {serving, done}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if serving in finished:
            serving.result()
            raise RuntimeError("worker stopped before folding the topic")
        if done not in finished:
            raise TimeoutError(f"worker folded {timing.records}/{total} in {timeout_s}s")
    finally:
        worker.stop()
        await serving
    return Run(timing.records, timing.last - timing.first), worker
