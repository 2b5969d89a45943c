"""Wiring of the daemon: topics, clients, runner, HTTP, signals, and an orderly shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry

from worker.changelog import encode_state, encode_state_v1
from worker.http import HttpServer, Probes
from worker.kafka.clients import KafkaClientError, StartupError
from worker.kafka.restore import read_latest
from worker.kafka.sinks import AtLeastOnceSink, TransactionalSink
from worker.kafka.source import KafkaSource
from worker.kafka.topics import prepare_topics
from worker.logs import held_back, last_message
from worker.metrics import SessionCollector, WorkerMetrics
from worker.runtime import OutputTopics, Runner
from worker.settings import ProcessingGuarantee, Settings
from worker.store import SessionStore

log = logging.getLogger(__name__)

PUBLISH_SLICES: Final = 10
"""At-least-once: each publish interval's snapshot work is cut into this many slices (100 ms
at the default interval), so no event waits for a tick of every session (docs/performance.md)."""

LAG_POLL_S: Final = 5.0
"""Lag needs a broker round trip; polling it every few seconds is plenty for alerting."""
CLIENT_CLOSE_MIN_S: Final = 1.0
"""Each client gets at least this long to close, even when the drain used the whole deadline."""


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
        self._close_by: float | None = None
        """The shutdown deadline once a drain started: the clients are closed by it too."""
        self.source = KafkaSource(settings)
        self.sink: AtLeastOnceSink | TransactionalSink = (
            TransactionalSink(settings)
            if settings.processing_guarantee is ProcessingGuarantee.EXACTLY_ONCE
            else AtLeastOnceSink(settings, self.source)
        )
        exactly_once = settings.processing_guarantee is ProcessingGuarantee.EXACTLY_ONCE
        self.sessions = SessionCollector(
            lambda: list(self.store.live.values()), settings.metrics_max_sessions
        )
        self.runner = Runner(
            self.source,
            self.sink,
            self.store,
            self.metrics,
            lambda partitions: read_latest(
                settings,
                settings.changelog_topic_name,
                partitions,
                on_batch=self.runner.mark_progress,
            ),
            OutputTopics(
                settings.snapshot_topic, settings.changelog_topic_name, settings.dlq_topic
            ),
            settings.publish_interval_s,
            # Exactly-once: every write is a transaction that commits, so no slices either.
            commit_interval_s=(
                settings.publish_interval_s if exactly_once else settings.commit_interval_s
            ),
            catchup_backlog=settings.catchup_backlog,
            publish_slices=1 if exactly_once else PUBLISH_SLICES,
            encode_changelog=encode_state_v1 if settings.changelog_format == 1 else encode_state,
            observer=self.sessions,
        )
        self.metrics.sessions.set_function(lambda: len(self.store))  # current at every scrape
        self.http = HttpServer(
            self.registry,
            Probes(
                is_ready=lambda: self.runner.ready,
                last_progress=lambda: self.runner.last_progress,
                liveness_timeout_s=settings.liveness_timeout_s,
                lookup=self.store.get,
                clock_ms=self.runner.clock.last,
                rules=self.store.rules,
            ),
            self.sessions,
        )
        if settings.debug_stall_file is not None:
            self.runner.pause_hook = stall_while_exists(settings.debug_stall_file)

    def stop(self) -> None:
        self.stop_event.set()

    async def close(self) -> None:
        """Close every client, started or not (unstarted ones would warn when collected).
        Bounded by the shutdown deadline (at least CLIENT_CLOSE_MIN_S each): a consumer
        stuck rejoining a group, or a broker that no longer answers, cannot keep the process
        from exiting; what it leaves undone (a leave-group) the broker settles by timeout.
        Idempotent."""
        for client, stop in (("consumer", self.source.stop), ("producer", self.sink.stop)):
            budget = self.settings.shutdown_timeout_s
            if self._close_by is not None:
                budget = self._close_by - time.monotonic()
            try:
                await asyncio.wait_for(stop(), max(CLIENT_CLOSE_MIN_S, budget))
            except TimeoutError:
                log.error(
                    "client did not close in time; exiting without it", extra={"client": client}
                )

    async def _poll_lag(self) -> None:
        while True:
            await asyncio.sleep(LAG_POLL_S)
            with suppress(KafkaClientError):
                for partition, lag in (await self.source.lag()).items():
                    self.metrics.lag.labels(str(partition)).set(lag)

    async def _start(self, stack: AsyncExitStack) -> None:
        """Topics, HTTP, producer, consumer. Raises StartupError with one readable reason;
        the Kafka client's own per-attempt error lines are held back meanwhile."""
        settings = self.settings
        with held_back() as held:
            try:
                partitions = await prepare_topics(settings)
                self.metrics.input_partitions.set(partitions)
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
                try:
                    await self.http.start(settings.http_host, settings.http_port)
                except OSError as error:
                    where = f"{settings.http_host}:{settings.http_port}"
                    raise StartupError(f"cannot serve HTTP on {where}: {error}") from error
                stack.push_async_callback(self.http.stop)
                # Both clients are closed by `close` (pushed first, so it runs last), bounded
                # by the shutdown deadline: an unbounded stop here would run before it.
                await self.sink.start()
                await self.source.start(self.runner)
            except StartupError as error:
                raise StartupError(_with_detail(str(error), held)) from error
            except KafkaClientError as error:
                # Anything else at start-up (authentication, authorization, bad config)
                # is as much an operator's problem as an unreachable broker.
                message = f"Kafka refused to start the worker: {type(error).__name__}: {error}"
                raise StartupError(_with_detail(message, held)) from error

    async def serve(self) -> None:
        """Start, run until stopped (a signal during start-up stops it too), drain, close."""
        settings = self.settings
        async with AsyncExitStack() as stack:
            stack.push_async_callback(self.close)
            starting = asyncio.create_task(self._start(stack))
            stopped = asyncio.create_task(self.stop_event.wait())
            await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not starting.done():
                await _cancel(starting)
                log.info("stopped during start-up")
                return
            starting.result()
            lag_task = asyncio.create_task(self._poll_lag())
            stack.push_async_callback(_cancel, lag_task)
            log.info("serving", extra={"http_port": self.http.port})
            run_task = asyncio.create_task(self.runner.run(self.stop_event))
            stopped = asyncio.create_task(self.stop_event.wait())
            done, _ = await asyncio.wait({run_task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if run_task not in done:
                started = time.monotonic()
                self._close_by = started + settings.shutdown_timeout_s
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


def _with_detail(message: str, held: list[logging.LogRecord]) -> str:
    detail = last_message(held)
    return message if detail is None or detail in message else f"{message} ({detail})"


def stall_while_exists(path: Path) -> Callable[[], Awaitable[None]]:
    """TEST HOOK (WORKER_DEBUG_STALL_FILE): the consume loop sleeps while `path` exists."""

    async def pause() -> None:
        # A stat() per loop turn, and only when the hook is configured; polling because a
        # file has no event to wait on.
        if not path.exists():  # noqa: ASYNC240
            return
        log.warning("consume loop stalled by the test hook", extra={"file": str(path)})
        while path.exists():  # noqa: ASYNC110, ASYNC240
            await asyncio.sleep(0.1)
        log.warning("consume loop resumed by the test hook", extra={"file": str(path)})

    return pause


async def run_worker(settings: Settings) -> int:
    """Run until stopped; return the process exit code (2: could not start)."""
    try:
        worker = Worker(settings)
        install_signal_handlers(worker)
        await worker.serve()
    except StartupError as error:
        log.error("cannot start: %s", error)
        return 2
    return 0
