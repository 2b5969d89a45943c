"""End-to-end latency at a steady offered load, and the worker's memory over that soak.

A separate process (`bench.load --live`) produces `rate` events/s in real time while the
real worker runs in this process. Afterwards both topics are read back: every
`segment.ingested` event carries its produce time (the record's CreateTime, stamped by the
producer when it sent it), and the snapshot topic is created with LogAppendTime, so each
snapshot carries the broker's time of writing it. An event's latency is the time from its
produce to the first snapshot of its session whose `sourceSegments` includes it (events
are produced in seqNo order per session, so snapshot count > seqNo means included). The
first `warmup_s` are left out (group join, first fills). RSS is sampled once a second.
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import sys
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from bench.load import create_topic
from bench.throughput import bench_settings
from worker.app import Worker
from worker.kafka.readers import scan_topic
from worker.settings import Settings

PAGE: int = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


@dataclass(slots=True)
class LatencyResult:
    rate_offered: float
    events_sent: int
    seconds: float
    events_measured: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    publish_interval_s: float
    sessions_live_end: int
    events_unpublished: int
    """Ingested events after the warm-up that no snapshot included by the end."""
    checkpoint_p50_ms: float
    checkpoint_max_ms: float
    """How long checkpoints held up the consume loop: tick and encoding, plus waiting for the
    previous checkpoint's acks and commit (the writes themselves run in the background);
    while the worker ran, not its final checkpoint at shutdown."""
    worker_cpu: float
    """The worker's CPU time over the load, as a fraction of one core (1.0: one core busy)."""
    generator_cpu: float
    """The load generator's (a separate process) CPU time over its sending, a fraction of a
    core (its preparation, before the sending, is not counted)."""
    worker_us_per_event: float
    """The worker process's CPU time over the load (user + system, from getrusage) divided by
    the events offered: the cost of an event at this rate, measured from outside the worker.
    Understated when the worker falls behind (what it folds after the load is not counted)."""
    generator_us_per_event: float
    generator_late_ms_max: float
    """The furthest the generator's sending fell behind its 10 ms schedule."""
    rss_mib: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since start, RSS MiB) samples of this process (the worker) over the run."""

    @property
    def rss_slope_mib_per_min(self) -> float:
        """Least-squares slope of RSS over the second half of the run (after warm-up)."""
        half = self.rss_mib[len(self.rss_mib) // 2 :]
        if len(half) < 3:
            return 0.0
        slope, _ = statistics.linear_regression([t for t, _ in half], [m for _, m in half])
        return slope * 60


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def _sample_rss(samples: list[tuple[float, float]], started: float) -> None:
    while True:
        samples.append((time.monotonic() - started, rss_bytes() / 2**20))
        await asyncio.sleep(1.0)


async def measure(
    bootstrap: str,
    rate: float,
    seconds: float,
    warmup_s: float = 5.0,
    partitions: int = 6,
    overrides: dict[str, object] | None = None,
    profile: Path | None = None,
) -> LatencyResult:
    """`overrides`: worker settings for this run (e.g. a short retention). `profile`: record
    this process (the worker) with py-spy over the soak, after the warm-up, into that file
    (raw folded stacks, `--idle`)."""
    topic = f"bench.live.{time.time_ns() // 1_000_000}"
    settings: Settings = bench_settings(bootstrap, topic, **(overrides or {}))
    await create_topic(bootstrap, topic, partitions)
    await create_topic(
        bootstrap,
        settings.snapshot_topic,
        partitions,
        **{"message.timestamp.type": "LogAppendTime", "cleanup.policy": "compact"},
    )
    worker = Worker(settings, CollectorRegistry())
    checkpoints = _time_checkpoints(worker)
    serving = asyncio.create_task(worker.serve())
    while not worker.runner.ready:  # joined and assigned: start the load now
        if serving.done():
            serving.result()
        await asyncio.sleep(0.05)
    producer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.load",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--partitions",
        str(partitions),
        "--live",
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    assert producer.stdout is not None
    await producer.stdout.readline()  # "started": its records are encoded, the sending begins
    started = time.monotonic()
    cpu_started = resource.getrusage(resource.RUSAGE_SELF)
    samples: list[tuple[float, float]] = []
    sampler = asyncio.create_task(_sample_rss(samples, started))
    spy = await _profile(profile, seconds) if profile else None
    out = await producer.stdout.read()
    await producer.wait()
    loaded_s = time.monotonic() - started
    worker_cpu = _cpu_seconds(resource.getrusage(resource.RUSAGE_SELF)) - _cpu_seconds(cpu_started)
    if spy is not None:
        await spy.wait()
    await asyncio.sleep(settings.publish_interval_s * 2 + 1)  # let the last events publish
    sampler.cancel()
    sessions_live = len(worker.store)
    holds = sorted(checkpoints)  # not the final checkpoint of the shutdown (all sessions)
    worker.stop()
    await serving
    run = orjson.loads(out) if producer.returncode == 0 else {}
    sent = int(run.get("sent", 0))
    latencies, unpublished = await _latencies(settings, warmup_s)
    return LatencyResult(
        rate_offered=rate,
        events_sent=sent,
        seconds=seconds,
        events_measured=len(latencies),
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        max_ms=latencies[-1] if latencies else float("nan"),
        publish_interval_s=settings.publish_interval_s,
        sessions_live_end=sessions_live,
        events_unpublished=unpublished,
        checkpoint_p50_ms=percentile(holds, 0.5),
        checkpoint_max_ms=holds[-1] if holds else float("nan"),
        worker_cpu=worker_cpu / loaded_s,
        generator_cpu=run.get("cpu_s", float("nan")) / loaded_s,
        worker_us_per_event=worker_cpu * 1e6 / max(1, sent),
        generator_us_per_event=run.get("cpu_s", float("nan")) * 1e6 / max(1, sent),
        generator_late_ms_max=run.get("late_ms_max", float("nan")),
        rss_mib=samples,
    )


async def _profile(path: Path, seconds: float) -> asyncio.subprocess.Process:
    """py-spy (from the venv) on this process, from the warm-up's end to the load's end."""
    await asyncio.sleep(5.0)
    spy = Path(sys.executable).with_name("py-spy")
    return await asyncio.create_subprocess_exec(
        str(spy),
        "record",
        "--pid",
        str(os.getpid()),
        "--idle",
        "--rate",
        "100",
        "--format",
        "raw",
        "--duration",
        str(max(1, round(seconds - 7))),
        "--output",
        str(path),
        stdout=asyncio.subprocess.DEVNULL,
    )


def _cpu_seconds(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def _time_checkpoints(worker: Worker) -> list[float]:
    """The returned list fills with how long each publish or checkpoint held up the consume
    loop (ms): the tick and encoding, plus any wait for the previous write's acks (and
    commit)."""
    durations: list[float] = []
    runner = worker.runner
    settle = runner._settle
    waited = [0.0]

    async def timed_settle() -> None:
        started = time.perf_counter()
        await settle()
        waited[0] = time.perf_counter() - started

    def timed(prepare: Callable[..., Any]) -> Callable[..., Any]:
        def timed_prepare(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return prepare(*args, **kwargs)
            finally:
                durations.append((time.perf_counter() - started + waited[0]) * 1000)
                waited[0] = 0.0

        return timed_prepare

    runner._settle = timed_settle  # type: ignore[method-assign]
    runner._prepare = timed(runner._prepare)  # type: ignore[method-assign]
    return durations


async def _latencies(settings: Settings, warmup_s: float) -> tuple[list[float], int]:
    """Per ingested event: ms from its produce to the first snapshot that counts it."""
    produced: dict[bytes, list[tuple[int, int]]] = defaultdict(list)
    first_ms: int | None = None
    for record in await scan_topic(settings, settings.input_topic):
        value = record.value or b""
        if b'"segment.ingested"' not in value or record.key is None:
            continue
        first_ms = record.timestamp if first_ms is None else min(first_ms, record.timestamp)
        produced[record.key].append((orjson.loads(value)["seqNo"], record.timestamp))
    published: dict[bytes, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for record in await scan_topic(settings, settings.snapshot_topic):
        if record.key is None or record.value is None:
            continue
        counts, times = published[record.key]
        counts.append(orjson.loads(record.value)["sourceSegments"])
        times.append(record.timestamp)
    latencies: list[float] = []
    unpublished = 0
    cutoff = (first_ms or 0) + warmup_s * 1000
    for key, events in produced.items():
        counts, times = published.get(key, ([], []))
        for seq_no, produced_ms in events:
            if produced_ms < cutoff:
                continue
            # Counts only grow, so the first snapshot with count > seqNo is found by bisection.
            index = bisect_left(counts, seq_no + 1)
            if index < len(counts):
                latencies.append(float(times[index] - produced_ms))
            else:
                unpublished += 1
    latencies.sort()
    return latencies, unpublished
