"""Logging setup: one JSON object per line for machines, or plain text for humans.

Context travels in `extra={...}` (topic, partition, offset, session, ...). Secrets are never
passed to a log call; `redact` is a last line of defence for keys that name one.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import orjson

from worker.settings import LogFormat

_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
_SECRET_WORDS: Final = ("password", "secret", "token", "credential", "jaas")
REDACTED: Final = "***"
CHATTY_LOGGERS: Final = ("aiokafka",)
"""Libraries that log routine coordination at INFO and every failed connect attempt as an
error; they are held at WARNING, and held back entirely during start-up."""
REPEAT_INTERVAL_S: Final = 10.0
"""A chatty library's repeated message is printed at most once per this interval."""


def redact(context: dict[str, Any]) -> dict[str, Any]:
    return {
        k: REDACTED if any(word in k.lower() for word in _SECRET_WORDS) else v
        for k, v in context.items()
    }


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return redact({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS})


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message", <context>..., "exception"?}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_context(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """`HH:MM:SS LEVEL logger: message key=value ...`, then any traceback."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802  # logging's name
        line = super().formatMessage(record)
        context = _context(record)
        if context:
            line += " " + " ".join(f"{k}={v}" for k, v in context.items())
        return line


class RepeatFilter(logging.Filter):
    """One line per interval for each repeated message of the named loggers (and their
    children): while a broker is down a client logs the same failure many times a second.
    A message is known by logger, level and format string (not its arguments); the first
    one printed after a quiet spell carries `suppressed`, how many were dropped before it.
    Other loggers' records always pass. `clock` is monotonic seconds (injected for tests).
    """

    def __init__(
        self,
        prefixes: tuple[str, ...] = CHATTY_LOGGERS,
        interval_s: float = REPEAT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._prefixes = prefixes
        self._interval_s = interval_s
        self._clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}
        """Per message: when it was last printed, and how many were dropped since."""

    def _watched(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self._prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._watched(record.name):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        printed = self._seen.get(key)
        if printed is not None and now - printed[0] < self._interval_s:
            self._seen[key] = (printed[0], printed[1] + 1)
            return False
        if printed is not None and printed[1]:
            record.suppressed = printed[1]
        if len(self._seen) >= 1000:  # bounded: messages differ by format string only
            self._seen.clear()
        self._seen[key] = (now, 0)
        return True


def configure_logging(level: str, log_format: LogFormat) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format is LogFormat.JSON else TextFormatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def held_back(names: tuple[str, ...] = CHATTY_LOGGERS) -> Iterator[list[logging.LogRecord]]:
    """Keep the named loggers' records instead of printing them (start-up: an unreachable
    broker would otherwise print a line per attempt). The list is for a better error."""
    keep = _Keep()
    loggers = [logging.getLogger(name) for name in names]
    saved = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(keep)
        logger.propagate = False
    try:
        yield keep.records
    finally:
        for logger, propagate in zip(loggers, saved, strict=True):
            logger.removeHandler(keep)
            logger.propagate = propagate


def last_message(records: list[logging.LogRecord]) -> str | None:
    """The newest held-back warning or error, as text, if any. An exception argument with
    no text (a bare timeout) is shown by its type name rather than as nothing."""
    for record in reversed(records):
        if record.levelno < logging.WARNING:
            continue
        if isinstance(record.args, tuple) and record.args:
            args = tuple(
                type(a).__name__ if isinstance(a, BaseException) and not str(a) else a
                for a in record.args
            )
            return str(record.msg) % args
        return record.getMessage()
    return None
