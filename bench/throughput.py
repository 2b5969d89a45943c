"""Throughput: the real worker folding a pre-filled topic, against the bare aiokafka ceiling.

Both read the same topic from offset 0 to the end, in this process, on the same event-loop
implementation, in a fresh consumer group each time, with the worker's fetch settings. The
clock starts at the first batch (group join and restore are excluded) and stops when the
last record has been read (ceiling) or folded (worker: its periodic checkpoints, which
build, encode and write snapshots and changelog records every publish interval, are
included). Repetitions alternate the ceilings and the worker so load drift hits all alike.

Three ceilings peel off the layers an event goes through: the bare consumer, plus
`orjson.loads` of each value (the decode-only ceiling), plus pydantic validation. Each run
also reports this process's CPU time per event. While the worker catches up, a separate
process polls its `/readyz` and `/metrics` (the HTTP port must not starve).
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import orjson
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from worker.app import Worker
from worker.events import EVENT_ADAPTER
from worker.kafka.clients import client_options
from worker.kafka.source import INPUT_FETCH
from worker.outbox import InputRecord
from worker.settings import Settings

LAYERS: Final[dict[str, Callable[[bytes], object] | None]] = {
    "bare": None,
    "orjson": orjson.loads,
    "pydantic": EVENT_ADAPTER.validate_json,
}
"""The ceilings: a bare consumer that only counts records, one that also parses each value
with `orjson.loads` (the decode-only ceiling), one that also validates it with the worker's
pydantic adapter (no key or timestamp checks, no fold)."""


@dataclass(frozen=True, slots=True)
class Run:
    events: int
    seconds: float
    cpu_s: float = float("nan")
    """This process's CPU time (user + system) over the same window."""

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_s * 1e6 / self.events


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


async def read_ceiling(settings: Settings, total: int, layer: str = "bare") -> Run:
    """A bare consumer with the worker's consumer and fetch settings (see KafkaSource), that
    runs `LAYERS[layer]` on each value."""
    work = LAYERS[layer]
    consumer = AIOKafkaConsumer(
        settings.input_topic,
        **client_options(settings),
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **INPUT_FETCH,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        seen, first, cpu = 0, 0.0, 0.0
        while seen < total:
            batches = await consumer.getmany(timeout_ms=500, max_records=settings.max_poll_records)
            for records in batches.values():
                if not seen:
                    first, cpu = time.perf_counter(), cpu_s()
                if work is not None:
                    for record in records:
                        work(record.value)
                seen += len(records)
        return Run(seen, time.perf_counter() - first, cpu_s() - cpu)
    finally:
        await consumer.stop()


class _Timing:
    """Wraps the runner's `fold`: when the first batch came, when the last was folded."""

    def __init__(self, worker: Worker, total: int) -> None:
        self.first = 0.0
        self.last = 0.0
        self.cpu_first = 0.0
        self.cpu_last = 0.0
        self.epoch_first = 0.0
        self.epoch_last = 0.0
        self.records = 0
        self.done = asyncio.Event()
        self._total = total
        self._fold = worker.runner.fold
        worker.runner.fold = self  # type: ignore[method-assign]

    def __call__(self, records: Sequence[InputRecord]) -> None:
        if not self.records:
            self.first, self.cpu_first = time.perf_counter(), cpu_s()
            self.epoch_first = time.time()
        self._fold(records)
        self.records += len(records)
        if self.records >= self._total and not self.done.is_set():
            self.last, self.cpu_last = time.perf_counter(), cpu_s()
            self.epoch_last = time.time()
            self.done.set()


async def run_worker(
    settings: Settings, total: int, timeout_s: float = 600, probe_every_s: float | None = None
) -> tuple[Run, Worker, dict[str, list[tuple[float, int]]]]:
    """Fold the whole topic with a real Worker; stop it (final checkpoint) once done.

    With `probe_every_s`, a separate process (`bench.probe`, started once the HTTP port is
    open) GETs the worker's `/readyz` and `/metrics` in turn that often; the answers to the
    requests sent between the first batch and the last fold are returned per URL, as
    (ms, status)."""
    worker = Worker(settings, CollectorRegistry())
    timing = _Timing(worker, total)
    serving = asyncio.create_task(worker.serve())
    probes: dict[str, list[tuple[float, int]]] = {}
    try:
        while not worker.http.port and not timing.records:  # wait for the port to open
            if serving.done():
                break
            await asyncio.sleep(0.01)
        prober = None
        if probe_every_s is not None and worker.http.port:
            base = f"http://{settings.http_host}:{worker.http.port}"
            prober = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.probe",
                "--every",
                str(probe_every_s),
                f"{base}/readyz",
                f"{base}/metrics",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        done = asyncio.create_task(timing.done.wait())
        finished, _ = await asyncio.wait(
            {serving, done}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if prober is not None:
            out, _ = await prober.communicate(b"")
            answers = orjson.loads(out) if prober.returncode == 0 else {}
            window = timing.epoch_first, timing.epoch_last or time.time()
            probes = {
                url: [(ms, status) for sent, ms, status in got if window[0] <= sent <= window[1]]
                for url, got in answers.items()
            }
        if serving in finished:
            serving.result()
            raise RuntimeError("worker stopped before folding the topic")
        if done not in finished:
            raise TimeoutError(f"worker folded {timing.records}/{total} in {timeout_s}s")
    finally:
        worker.stop()
        await serving
    run = Run(timing.records, timing.last - timing.first, timing.cpu_last - timing.cpu_first)
    return run, worker, probes


def cpu_s() -> float:
    """This process's CPU time so far (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
