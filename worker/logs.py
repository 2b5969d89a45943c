"""Logging setup: one JSON object per line for machines, or plain text for humans.

Context travels in `extra={...}` (topic, partition, offset, session, ...). Secrets are never
passed to a log call; `redact` is a last line of defence for anything that looks like one.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Final

import orjson

from worker.settings import LogFormat

_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
_SECRET_WORDS: Final = ("password", "secret", "token", "credential")


def redact(context: dict[str, Any]) -> dict[str, Any]:
    return {
        k: "***" if any(word in k.lower() for word in _SECRET_WORDS) else v
        for k, v in context.items()
    }


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return redact({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_context(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = _context(record)
        if context:
            line += " " + " ".join(f"{k}={v}" for k, v in context.items())
        return line


def configure_logging(level: str, log_format: LogFormat) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format is LogFormat.JSON else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka is chatty at INFO about routine group coordination.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
