"""Wiring of the daemon: topics, clients, runner, HTTP, signals, and an orderly shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from contextlib import AsyncExitStack, suppress
from importlib.metadata import PackageNotFoundError, version
from typing import Final

from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from worker.http import HttpServer, Probes
from worker.kafka import (
    AtLeastOnceSink,
    KafkaSource,
    StartupError,
    TransactionalSink,
    prepare_topics,
    read_partitions,
)
from worker.metrics import SessionCollector, WorkerMetrics
from worker.runner import OutputTopics, Runner
from worker.settings import ProcessingGuarantee, Settings
from worker.store import SessionStore

log = logging.getLogger(__name__)

LAG_POLL_S: Final = 5.0
"""Lag needs a broker round trip; polling it every few seconds is plenty for alerting."""


def package_version() -> str:
    try:
        return version("session-worker")
    except PackageNotFoundError:
        return "unknown"


class Worker:
    """One running worker; `serve` returns when stopped (signal or `stop`)."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = WorkerMetrics(self.registry)
        self.metrics.build.info({"version": package_version()})
        self.store = SessionStore(settings.rules())
        self.stop_event = asyncio.Event()
        self.source = KafkaSource(settings)
        self.sink: AtLeastOnceSink | TransactionalSink = (
            TransactionalSink(settings)
            if settings.processing_guarantee is ProcessingGuarantee.EXACTLY_ONCE
            else AtLeastOnceSink(settings, self.source)
        )
        self.runner = Runner(
            self.source,
            self.sink,
            self.store,
            self.metrics,
            lambda partitions: read_partitions(settings, settings.changelog_topic_name, partitions),
            OutputTopics(
                settings.snapshot_topic, settings.changelog_topic_name, settings.dlq_topic
            ),
            settings.publish_interval_s,
        )
        self.registry.register(
            SessionCollector(lambda: list(self.store.live.values()), settings.metrics_max_sessions)
        )
        self.http = HttpServer(
            self.registry,
            Probes(
                is_ready=lambda: self.runner.ready,
                last_progress=lambda: self.runner.last_progress,
                liveness_timeout_s=settings.liveness_timeout_s,
                lookup=self.store.get,
                clock_ms=lambda: self.runner.last_tick_ms,
                rules=self.store.rules,
            ),
        )

    def stop(self) -> None:
        self.stop_event.set()

    async def _poll_lag(self) -> None:
        while True:
            await asyncio.sleep(LAG_POLL_S)
            with suppress(KafkaError):
                for partition, lag in (await self.source.lag()).items():
                    self.metrics.lag.labels(str(partition)).set(lag)

    async def serve(self) -> None:
        settings = self.settings
        partitions = await prepare_topics(settings)
        log.info(
            "starting",
            extra={
                "version": package_version(),
                "input_topic": settings.input_topic,
                "partitions": partitions,
                "group_id": settings.group_id,
                "bootstrap_servers": settings.bootstrap_servers,
            },
        )
        async with AsyncExitStack() as stack:
            await self.http.start(settings.http_host, settings.http_port)
            stack.push_async_callback(self.http.stop)
            await self.sink.start()
            stack.push_async_callback(self.sink.stop)
            await self.source.start(self.runner)
            stack.push_async_callback(self.source.stop)
            lag_task = asyncio.create_task(self._poll_lag())
            stack.push_async_callback(_cancel, lag_task)
            log.info("serving", extra={"http_port": self.http.port})
            run_task = asyncio.create_task(self.runner.run(self.stop_event))
            stopped = asyncio.create_task(self.stop_event.wait())
            done, _ = await asyncio.wait({run_task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if run_task not in done:
                started = time.monotonic()
                try:
                    await asyncio.wait_for(run_task, settings.shutdown_timeout_s)
                except TimeoutError:
                    log.error(
                        "final checkpoint timed out; offsets since the last one are not committed"
                    )
                log.info("drained", extra={"seconds": round(time.monotonic() - started, 3)})
            stopped.cancel()
            if not run_task.cancelled():
                run_task.result()  # a fatal error in the loop surfaces here
        log.info("stopped")


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


def install_signal_handlers(worker: Worker) -> None:
    """First SIGTERM/SIGINT drains gracefully; a second SIGINT exits at once."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if worker.stop_event.is_set() and signum == signal.SIGINT:
            os._exit(130)
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        worker.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


async def run_worker(settings: Settings) -> int:
    """Run until stopped; return the process exit code."""
    worker = Worker(settings)
    install_signal_handlers(worker)
    try:
        await worker.serve()
    except StartupError as error:
        log.error("cannot start: %s", error)
        return 2
    return 0
