"""`session-worker demo`: local broker + synthetic traffic + the worker + the live view.

Everything it starts it stops on Ctrl-C (the broker only if the demo started it). On a
terminal the view takes the whole screen and shows the newest log lines itself.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import orjson

from worker.app import Worker, install_signal_handlers
from worker.kafka import EventProducer, StartupError
from worker.logs import TextFormatter
from worker.settings import Settings
from worker.traffic import SyntheticTraffic
from worker.view import LiveView, LogTail

log = logging.getLogger(__name__)

KAFKA_SCRIPT: Final = Path(__file__).resolve().parent.parent / "scripts" / "kafka.sh"
TRAFFIC_STEP_MS: Final = 250


def _broker_answers() -> bool:
    result = subprocess.run(["bash", str(KAFKA_SCRIPT), "status"], capture_output=True, check=False)
    return result.returncode == 0


def start_local_broker() -> bool:
    """Start the repo's local broker unless one answers; return True if we started it."""
    if _broker_answers():
        return False
    print("demo: starting the local Kafka broker (first run downloads it) ...", file=sys.stderr)
    subprocess.run(["bash", str(KAFKA_SCRIPT), "up"], check=True)
    return True


async def produce_traffic(
    settings: Settings, traffic: SyntheticTraffic, stop: asyncio.Event
) -> None:
    """Produce the synthetic events in real time, keyed by session id."""
    producer = EventProducer(settings)
    await producer.start()
    try:
        cursor = int(time.time() * 1000)
        while not stop.is_set():
            await asyncio.sleep(TRAFFIC_STEP_MS / 1000)
            now = int(time.time() * 1000)
            for event in traffic.events_between(cursor, now):
                await producer.send(
                    settings.input_topic, event["sessionId"].encode(), orjson.dumps(event)
                )
            cursor = now
    finally:
        await producer.stop()


async def finish(task: asyncio.Task[None]) -> None:
    """Cancel a helper task; an error it died of earlier is logged, not raised."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        log.exception("demo task failed", extra={"task": task.get_name()})


@contextmanager
def logs_into(tail: LogTail | None) -> Iterator[None]:
    """While the view owns the screen, log records go to `tail` instead of stderr.

    Afterwards warnings and errors that were only on screen are repeated on stderr.
    """
    if tail is None:
        yield
        return
    root = logging.getLogger()
    saved = root.handlers[:]
    tail.setLevel(root.level)
    root.handlers[:] = [tail]
    try:
        yield
    finally:
        root.handlers[:] = saved
        for line in tail.lines(logging.WARNING):
            print(line, file=sys.stderr)


async def run_demo(settings: Settings, sessions: int, duration_s: float) -> int:
    started_broker = False
    if settings.bootstrap_servers == "127.0.0.1:9092":
        started_broker = await asyncio.to_thread(start_local_broker)
    started = time.monotonic()
    try:
        worker = Worker(settings)
        install_signal_handlers(worker)
        traffic = SyntheticTraffic(
            sessions, start_ms=int(time.time() * 1000), seed=int(time.time()) % 1000
        )
        tail = LogTail(TextFormatter()) if sys.stdout.isatty() else None
        view = LiveView(worker, sys.stdout, tail)
        with logs_into(tail):
            serving = asyncio.create_task(worker.serve())
            producing = asyncio.create_task(
                produce_traffic(settings, traffic, worker.stop_event), name="traffic"
            )
            showing = asyncio.create_task(view.run(worker.stop_event), name="view")
            if duration_s > 0:
                asyncio.get_running_loop().call_later(duration_s, worker.stop)
            try:
                await asyncio.wait({serving}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                worker.stop()
                for task in (producing, showing):
                    await finish(task)
        try:
            serving.result()
        except StartupError as error:
            log.error("cannot start: %s", error)
            return 2
        print(
            f"demo: {worker.runner.events_folded:,} events folded into "
            f"{len(worker.store.live)} live sessions in {time.monotonic() - started:.0f}s",
            file=sys.stderr,
        )
    finally:
        if started_broker:
            await asyncio.to_thread(
                subprocess.run, ["bash", str(KAFKA_SCRIPT), "down"], check=False
            )
    return 0
