"""`session-worker demo`: local broker + synthetic traffic + the worker + the live view.

Everything it starts it stops on Ctrl-C (the broker only if the demo started it). On a
terminal the view takes the whole screen and shows the newest log lines itself. A broker it
cannot reach is one line on stderr with what to do, exit code 2.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import orjson

from worker.app import Worker, install_signal_handlers
from worker.kafka.clients import KafkaClientError, StartupError
from worker.kafka.readers import EventProducer
from worker.kafka.topics import probe_broker
from worker.logs import TextFormatter, held_back
from worker.settings import Settings
from worker.traffic import SyntheticTraffic
from worker.view import LiveView, LogTail

log = logging.getLogger(__name__)

REPO: Final = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT: Final = REPO / "scripts" / "kafka.sh"
TRAFFIC_STEP_MS: Final = 250
LOCAL_HOSTS: Final = ("127.0.0.1", "localhost")
"""A demo on one of these (any port) starts the repo's broker there if none answers."""
DEFAULT_KAFKA_PORT: Final = 9092


class DemoError(RuntimeError):
    """The demo cannot run; the message is one line that says what to do."""


def local_port(bootstrap_servers: str) -> int | None:
    """The port of a single local bootstrap address (`127.0.0.1:9092`), else None."""
    host, _, port = bootstrap_servers.strip().rpartition(":")
    return int(port) if host in LOCAL_HOSTS and port.isdigit() else None


def broker_env(port: int) -> dict[str, str]:
    """scripts/kafka.sh's environment for a broker on `port`: a port other than the default
    gets its own controller port and run directory unless they are given."""
    env = dict(os.environ)
    env["KAFKA_PORT"] = str(port)
    if port != DEFAULT_KAFKA_PORT:
        env.setdefault("KAFKA_CONTROLLER_PORT", str(port + 1))
        env.setdefault("KAFKA_RUN_DIR", str(REPO / ".cache" / "kafka" / f"run-{port}"))
    return env


def kafka_script(action: str, port: int, quiet: bool = False) -> int:
    """Run scripts/kafka.sh ACTION for a broker on `port`; its exit code."""
    return subprocess.run(
        ["bash", str(KAFKA_SCRIPT), action],
        env=broker_env(port),
        capture_output=quiet,
        check=False,
    ).returncode


def start_local_broker(port: int) -> bool:
    """Start the repo's local broker on `port` unless one answers; True if we started it.

    Raises DemoError when scripts/kafka.sh fails (its own output says why)."""
    if kafka_script("status", port, quiet=True) == 0:
        return False
    print(
        f"demo: starting a local Kafka broker on 127.0.0.1:{port} (first run downloads it) ...",
        file=sys.stderr,
    )
    if kafka_script("up", port) != 0:
        raise DemoError(
            f"could not start a local Kafka broker on port {port} (scripts/kafka.sh up failed, "
            "see above); start one with `make kafka-up`"
        )
    return True


async def reach_broker(settings: Settings) -> None:
    """Raises DemoError, with the hint to start a broker, when Kafka does not answer."""
    port = local_port(settings.bootstrap_servers)
    hint = (
        f"start one with `make kafka-up`{'' if port in (None, 9092) else f' (KAFKA_PORT={port})'}"
        " or point --bootstrap-servers at one"
    )
    with held_back():  # the client's per-attempt errors; the reason is in the StartupError
        try:
            await probe_broker(settings)
        except StartupError as error:
            raise DemoError(f"{error}; {hint}") from None


async def produce_traffic(
    settings: Settings, traffic: SyntheticTraffic, stop: asyncio.Event
) -> None:
    """Produce the synthetic events in real time, keyed by session id."""
    producer = EventProducer(settings)
    try:
        await producer.start()
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
    except KafkaClientError as error:  # the broker went away: one line, not a traceback
        log.error("demo %s stopped: %s: %s", task.get_name(), type(error).__name__, error)
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
    """Exit code 0 when stopped, 2 when it could not start (one line on stderr)."""
    port = local_port(settings.bootstrap_servers)
    started_broker = False
    started = time.monotonic()
    try:
        if port is not None:
            started_broker = await asyncio.to_thread(start_local_broker, port)
        await reach_broker(settings)
        return await show_demo(settings, sessions, duration_s, started)
    except DemoError as error:
        print(f"session-worker demo: {error}", file=sys.stderr)
        return 2
    finally:
        if started_broker and port is not None:
            await asyncio.to_thread(kafka_script, "down", port)


async def show_demo(settings: Settings, sessions: int, duration_s: float, started: float) -> int:
    """The worker, the traffic and the view, until Ctrl-C or `duration_s`."""
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
        raise DemoError(f"cannot start: {error}") from None
    print(
        f"demo: {worker.runner.events_folded:,} events folded into "
        f"{len(worker.store.live)} live sessions in {time.monotonic() - started:.0f}s",
        file=sys.stderr,
    )
    return 0
