"""Log formats (JSON lines with context, text for humans) and that secrets never get out."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import orjson
import pytest

from tests.unit.builders import ROOT
from worker.logs import (
    JsonFormatter,
    RepeatFilter,
    TextFormatter,
    configure_logging,
    held_back,
    last_message,
    redact,
)
from worker.settings import LogFormat, Settings

PASSWORD = "pa55-Very-Secret-42"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Capture what the root logger prints; restore the root logger afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buffer = io.StringIO()
    yield buffer
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    logging.getLogger("aiokafka").setLevel(logging.NOTSET)


def use(stream: io.StringIO, formatter: logging.Formatter, level: int = logging.DEBUG) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def test_json_is_one_object_per_line_with_context(stream: io.StringIO) -> None:
    use(stream, JsonFormatter())
    logging.getLogger("worker.runner").warning(
        "invalid event dead-lettered",
        extra={"topic": "events", "partition": 2, "offset": 41, "session": "s-1"},
    )
    logging.getLogger("worker.app").info("multi\nline %s", "message")

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (orjson.loads(line) for line in lines)
    assert first == {
        "ts": first["ts"],
        "level": "warning",
        "logger": "worker.runner",
        "message": "invalid event dead-lettered",
        "topic": "events",
        "partition": 2,
        "offset": 41,
        "session": "s-1",
    }
    assert first["ts"].endswith("Z")
    assert len(first["ts"]) == len("2026-01-01T00:00:00.000Z")
    assert second["message"] == "multi\nline message"


def test_json_keeps_a_traceback_on_the_same_line(stream: io.StringIO) -> None:
    use(stream, JsonFormatter())
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("worker").exception("failed", extra={"partition": 1})

    (line,) = stream.getvalue().splitlines()
    entry = orjson.loads(line)
    assert entry["level"] == "error"
    assert entry["partition"] == 1
    assert "ValueError: boom" in entry["exception"]


def test_json_serializes_what_orjson_does_not_know(stream: io.StringIO) -> None:
    use(stream, JsonFormatter())
    logging.getLogger("worker").info("odd", extra={"where": ROOT, "values": {1, 2}})

    entry = orjson.loads(stream.getvalue())
    assert entry["where"] == str(ROOT)


def test_text_is_one_readable_line_with_context_before_any_traceback(
    stream: io.StringIO,
) -> None:
    use(stream, TextFormatter())
    logging.getLogger("worker.runner").info(
        "partitions assigned", extra={"partitions": [0, 1], "restored": 3}
    )
    try:
        raise RuntimeError("bad")
    except RuntimeError:
        logging.getLogger("worker.app").exception("stopped", extra={"partition": 4})

    lines = stream.getvalue().splitlines()
    assert lines[0].endswith(
        "INFO    worker.runner: partitions assigned partitions=[0, 1] restored=3"
    )
    assert lines[1].endswith("ERROR   worker.app: stopped partition=4")
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: bad"


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()])
def test_context_keys_naming_a_secret_are_redacted(
    stream: io.StringIO, formatter: logging.Formatter
) -> None:
    use(stream, formatter)
    logging.getLogger("worker").info(
        "connecting",
        extra={"sasl_password": PASSWORD, "api_token": PASSWORD, "user": "alice"},
    )

    output = stream.getvalue()
    assert PASSWORD not in output
    assert "alice" in output
    assert redact({"ssl_key_password": "x", "topic": "t"}) == {
        "ssl_key_password": "***",
        "topic": "t",
    }


def test_settings_never_show_a_password() -> None:
    settings = Settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="alice",
        sasl_password=PASSWORD,
    )
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings.model_dump())


def test_configure_logging_sets_format_level_and_quiets_the_kafka_client(
    stream: io.StringIO,
) -> None:
    configure_logging("debug", LogFormat.TEXT)
    root = logging.getLogger()

    assert root.level == logging.DEBUG
    assert isinstance(root.handlers[0].formatter, TextFormatter)
    assert logging.getLogger("aiokafka").level == logging.WARNING
    configure_logging("ERROR", LogFormat.JSON)
    assert isinstance(root.handlers[0].formatter, JsonFormatter)
    assert logging.getLogger("aiokafka").level == logging.ERROR


def test_held_back_records_are_kept_not_printed(stream: io.StringIO) -> None:
    use(stream, JsonFormatter())
    client = logging.getLogger("aiokafka.conn")
    with held_back() as held:
        client.error('Unable connect to "%s": refused', "127.0.0.1:1")
        client.info("routine")
    client.error("after start-up")

    assert [orjson.loads(line)["message"] for line in stream.getvalue().splitlines()] == [
        "after start-up"
    ]
    assert last_message(held) == 'Unable connect to "127.0.0.1:1": refused'
    assert last_message([]) is None


def test_a_bare_exception_in_a_held_back_record_is_named() -> None:
    with held_back() as held:
        logging.getLogger("aiokafka").error('Unable connect to "%s": %s', "h:1", TimeoutError())
    assert last_message(held) == 'Unable connect to "h:1": TimeoutError'


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_startup_failure_with_sasl_configured_logs_one_line_and_no_secret(
    log_format: str,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env.update(
        WORKER_BOOTSTRAP_SERVERS="127.0.0.1:1",
        WORKER_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        WORKER_SASL_MECHANISM="SCRAM-SHA-256",
        WORKER_SASL_USERNAME="alice",
        WORKER_SASL_PASSWORD=PASSWORD,
        WORKER_HTTP_PORT="0",
        WORKER_LOG_LEVEL="DEBUG",
        WORKER_LOG_FORMAT=log_format,
    )
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert PASSWORD not in output
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, output
    assert "cannot start: cannot connect to Kafka at 127.0.0.1:1" in errors[0]
    assert "Connection refused" in errors[0]
    if log_format == "json":
        for line in output.splitlines():
            orjson.loads(line)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def client_record(msg: str, *args: object, name: str = "aiokafka.conn") -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, "conn.py", 1, msg, args, None)


def test_repeated_client_messages_pass_once_per_interval_with_a_count() -> None:
    clock = FakeClock()
    repeats = RepeatFilter(("aiokafka",), interval_s=10.0, clock=clock)
    template = "Unable connect to node with id %s: %s"
    passed = []
    for second in range(25):  # 100 attempts a second for 25 s, arguments varying
        clock.now = 100.0 + second
        for attempt in range(100):
            record = client_record(template, attempt % 3, "refused")
            if repeats.filter(record):
                passed.append((second, getattr(record, "suppressed", 0)))
    assert passed == [(0, 0), (10, 999), (20, 999)]


def test_distinct_messages_and_other_loggers_are_not_condensed() -> None:
    clock = FakeClock()
    repeats = RepeatFilter(("aiokafka",), interval_s=10.0, clock=clock)
    assert repeats.filter(client_record("Unable connect to node %s", 1))
    assert repeats.filter(client_record("Unable to update metadata from %s", [1]))
    assert repeats.filter(client_record("Unable connect to node %s", 1, name="aiokafka.client"))
    assert not repeats.filter(client_record("Unable connect to node %s", 1))
    for _ in range(3):
        assert repeats.filter(client_record("checkpoint failed", name="worker.runner"))
        assert repeats.filter(client_record("x", name="aiokafkaish"))
