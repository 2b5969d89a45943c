"""How long /metrics takes with many sessions, and how long it stalls the event loop.

    .venv/bin/python -m bench.scrape [--sizes 1000,10000,100000] [--cap N] [--generic]

For each size the store is filled with realistic sessions (synthetic traffic folded through
the real decoder and fold, then `store.tick`) and the worker's `HttpServer` is built over
them exactly as the worker wires it. Measured:

* render: the whole /metrics body (`HttpServer.render_metrics`: worker metrics plus
  `SessionCollector.render`) called directly, each time after every session published
  new numbers (as a tick of every session does; the collector reuses a body that nothing
  changed since); wall-clock and CPU milliseconds, median of a few runs. "unchanged": the
  CPU of the same call when nothing was published since the previous one.
* scrape and loop stall: the server runs on this loop while a client in another process
  (asking for gzip, like Prometheus) scrapes it, each scrape past the server's cache and
  after every session published new numbers; a
  ticker coroutine sleeps 1 ms at a time and records how late it wakes up. The worst
  lateness during a scrape is the longest the consume loop would have been frozen by it;
  the same ticker over idle windows of the same length gives the host's noise floor.
* with `--generic`, both again with the collector registered on the registry instead, so
  prometheus-client's `generate_latest` renders all of /metrics, as the first version did
  (served the same way otherwise: thread, cache, gzip); for comparison.

No broker is needed. Figures go to stdout as a table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import multiprocessing
import os
import statistics
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.events import InvalidRecord, decode_event
from worker.http import SCRAPE_CACHE_S, HttpServer, Probes
from worker.metrics import (
    LEFT_OUT_FAMILY,
    LEFT_OUT_HELP,
    RECORDING_FAMILY,
    RECORDING_HELP,
    RECORDING_STATES,
    SESSION_LABELS,
    SESSION_SERIES,
    ExportedValues,
    SessionCollector,
    WorkerMetrics,
    recording_status,
    session_labels,
)
from worker.rules import Rules
from worker.state import SessionState, set_meta
from worker.store import SessionStore
from worker.traffic import SyntheticTraffic

TEMPLATE_SESSIONS: Final = 2_000
"""Sessions folded from real events; larger stores are filled with renamed copies of these
(folding 100k sessions event by event takes minutes and changes nothing about a scrape)."""
TRAFFIC_SPAN_MS: Final = 30_000
SCRAPES: Final = 5
TICK_S: Final = 0.001


@dataclass(frozen=True, slots=True)
class Result:
    sessions: int
    exported: int
    body_bytes: int
    render_median_ms: float
    render_cpu_ms: float
    unchanged_cpu_ms: float
    generic_ms: float | None
    scrapes: Scrapes
    generic_scrapes: Scrapes | None


@dataclass(frozen=True, slots=True)
class Scrapes:
    durations_ms: list[float]
    stalls_ms: list[float]
    """Worst loop stall during each scrape."""
    idle_stalls_ms: list[float]
    """Worst loop stall in idle windows as long as a scrape: the host's noise floor."""
    gzip_bytes: int


def fill_store(size: int, now_ms: int) -> tuple[SessionStore, dict[str, ExportedValues]]:
    """A store with `size` live sessions, folded from synthetic events and ticked once, and
    the numbers that tick published (what the worker's collector keeps)."""
    store = SessionStore(Rules())
    template = min(size, TEMPLATE_SESSIONS)
    traffic = SyntheticTraffic(template, start_ms=now_ms - TRAFFIC_SPAN_MS, seed=5)
    for event in traffic.events_between(now_ms - TRAFFIC_SPAN_MS, now_ms):
        decoded = decode_event(orjson.dumps(event), None, now_ms)
        assert not isinstance(decoded, InvalidRecord), decoded
        store.apply(decoded, partition=0)
    originals: Sequence[SessionState] = list(store.live.values())
    for n in range(template, size):
        clone = copy.deepcopy(originals[n % template])
        clone.session_id = f"clone-{n:06d}"
        set_meta(clone, "parent_id", clone.last_activity, f"stream-{n % 5_000}")
        set_meta(clone, "project_id", clone.last_activity, f"project-{n % 97}")
        clone.last_activity -= n % 60_000  # spread recency so the cap has to choose
        store.restore(clone, None)  # through the store, which indexes its live sessions
    collector = SessionCollector(list, 0)
    collector.published(store.tick(now_ms))
    return store, collector.values


def republish(values: dict[str, ExportedValues]) -> None:
    """New numbers objects for every session, as a tick that published each of them stores."""
    for session_id, numbers in values.items():
        values[session_id] = ExportedValues(*numbers)


def timed_ms(
    action: Callable[[], bytes], runs: int, before: Callable[[], None] = lambda: None
) -> tuple[list[float], list[float], bytes]:
    """Wall-clock and CPU milliseconds of each run (CPU time is what a busy host inflates
    least), and the last result; `before` runs untimed before each run."""
    wall, cpu, body = [], [], b""
    for _ in range(runs):
        before()
        started, started_cpu = time.perf_counter(), time.thread_time()
        body = action()
        cpu.append((time.thread_time() - started_cpu) * 1000)
        wall.append((time.perf_counter() - started) * 1000)
    return wall, cpu, body


async def _ticker(stop: asyncio.Event, worst: list[float]) -> None:
    """Sleep TICK_S at a time; record the worst oversleep, i.e. the longest loop stall."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(TICK_S)
        worst[0] = max(worst[0], (loop.time() - before - TICK_S) * 1000)


class GenericCollector(Collector):
    """The first version: the same families built as prometheus-client metric objects."""

    def __init__(self, sessions: SessionCollector) -> None:
        self.sessions = sessions

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        chosen, left_out = self.sessions.chosen()
        rows = [(session_labels(s), v, recording_status(s)) for s, v in chosen]
        for series in SESSION_SERIES:
            kind = CounterMetricFamily if series.kind == "counter" else GaugeMetricFamily
            family = kind(series.family, series.help, labels=SESSION_LABELS)
            for labels, values, _ in rows:
                value = series.value(values)
                if value is not None:
                    family.add_metric(labels, value)
            yield family
        recording = GaugeMetricFamily(
            RECORDING_FAMILY, RECORDING_HELP, labels=[*SESSION_LABELS, "status"]
        )
        for labels, _, current in rows:
            if current is not None:
                for status in RECORDING_STATES:
                    recording.add_metric([*labels, status], 1.0 if status == current else 0.0)
        yield recording
        yield GaugeMetricFamily(LEFT_OUT_FAMILY, LEFT_OUT_HELP, value=left_out)


def make_server(
    store: SessionStore, values: dict[str, ExportedValues], cap: int, generic: bool = False
) -> HttpServer:
    """The worker's server; `generic`: the collector on the registry instead, so all of
    /metrics goes through prometheus-client's `generate_latest` (the first version)."""
    registry = CollectorRegistry()
    WorkerMetrics(registry)
    sessions = SessionCollector(lambda: list(store.live.values()), cap)
    sessions.values = values
    if generic:
        registry.register(GenericCollector(sessions))
    probes = Probes(
        is_ready=lambda: True,
        last_progress=time.monotonic,
        liveness_timeout_s=30,
        lookup=store.get,
        clock_ms=lambda _partition: 0,
        rules=store.rules,
    )
    return HttpServer(registry, probes, None if generic else sessions)


def scrape(url: str) -> tuple[float, int]:
    """One gzip scrape like Prometheus does (runs in a separate process): (ms, bytes)."""
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})  # noqa: S310
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310  # our own URL
        assert response.headers.get("Content-Encoding") == "gzip"
        size = len(response.read())
    return (time.perf_counter() - started) * 1000, size


async def worst_stall_ms(work: Awaitable[Any]) -> tuple[float, Any]:
    """Run `work` while a ticker watches this loop: (worst stall ms, result of `work`)."""
    stop, worst = asyncio.Event(), [0.0]
    ticker = asyncio.create_task(_ticker(stop, worst))
    try:
        result = await work
    finally:
        stop.set()
        await ticker
    return worst[0], result


async def measure_scrapes(
    server: HttpServer, scraper: ProcessPoolExecutor, values: dict[str, ExportedValues]
) -> Scrapes:
    """Scrape SCRAPES times from another process (so only the server's own work lands on
    this loop), each past the cache and after a publish of every session (`values`); then
    watch the idle loop for as many equal windows."""
    loop = asyncio.get_running_loop()
    await server.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.port}/metrics"
    durations, stalls, idle, gzipped = [], [], [], 0
    try:
        await loop.run_in_executor(scraper, scrape, url)  # warm-up: process start, imports
        for _ in range(SCRAPES):
            await asyncio.sleep(SCRAPE_CACHE_S + 0.05)  # past the cache: a real render
            republish(values)
            stall, (elapsed_ms, gzipped) = await worst_stall_ms(
                loop.run_in_executor(scraper, scrape, url)
            )
            stalls.append(stall)
            durations.append(elapsed_ms)
        window_s = statistics.median(durations) / 1000
        for _ in range(SCRAPES):
            idle.append((await worst_stall_ms(asyncio.sleep(window_s)))[0])
    finally:
        await server.stop()
    return Scrapes(durations, stalls, idle, gzipped)


def run_size(size: int, cap: int, generic: bool) -> Result:
    now_ms = int(time.time() * 1000)
    store, values = fill_store(size, now_ms)
    server = make_server(store, values, cap)
    timings, cpu, body = timed_ms(server.render_metrics, SCRAPES, lambda: republish(values))
    unchanged = timed_ms(server.render_metrics, SCRAPES)[1]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as scraper:
        scrapes = asyncio.run(measure_scrapes(server, scraper, values))
        generic_ms = generic_scrapes = None
        if generic:
            slow = make_server(store, values, cap, generic=True)
            generic_ms = statistics.median(timed_ms(slow.render_metrics, 3)[1])
            generic_scrapes = asyncio.run(measure_scrapes(slow, scraper, values))
    return Result(
        sessions=size,
        exported=min(size, cap),
        body_bytes=len(body),
        render_median_ms=statistics.median(timings),
        render_cpu_ms=statistics.median(cpu),
        unchanged_cpu_ms=statistics.median(unchanged),
        generic_ms=generic_ms,
        scrapes=scrapes,
        generic_scrapes=generic_scrapes,
    )


def table(results: Sequence[Result]) -> str:
    lines = [
        "| sessions | exported | body MiB | gzip MiB | render ms (wall / CPU) "
        "| unchanged: CPU ms | scrape ms "
        "| loop stall ms, scraping (median / max) | idle (median / max) "
        "| generic: render CPU ms, stall ms (median / max) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s, g = r.scrapes, r.generic_scrapes
        generic = "-"
        if r.generic_ms is not None and g is not None:
            generic = (
                f"{r.generic_ms:.0f}, {statistics.median(g.stalls_ms):.0f} / {max(g.stalls_ms):.0f}"
            )
        lines.append(
            f"| {r.sessions} | {r.exported} | {r.body_bytes / 2**20:.1f} "
            f"| {s.gzip_bytes / 2**20:.1f} | {r.render_median_ms:.0f} / {r.render_cpu_ms:.0f} "
            f"| {r.unchanged_cpu_ms:.1f} "
            f"| {statistics.median(s.durations_ms):.0f} "
            f"| {statistics.median(s.stalls_ms):.0f} / {max(s.stalls_ms):.0f} "
            f"| {statistics.median(s.idle_stalls_ms):.0f} / {max(s.idle_stalls_ms):.0f} "
            f"| {generic} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scrape",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated")
    parser.add_argument("--cap", type=int, default=10_000, help="exported sessions (10000)")
    parser.add_argument(
        "--generic", action="store_true", help="also measure the generate_latest path"
    )
    args = parser.parse_args(argv)
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        results.append(run_size(size, args.cap, args.generic))
        print(f"{size} sessions measured", file=sys.stderr)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load average {load}; medians of {SCRAPES} runs\n")
    print(table(results))


if __name__ == "__main__":
    main()
