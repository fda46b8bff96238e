"""Logging setup: JSON lines for machines, one readable line for a person at a terminal."""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import IO, Any

from service.config import LogsConfig

# Fields the gateway attaches to its log records with `extra=`.
_FIELDS = (
    "request_id",
    "tenant",
    "rpc",
    "registry_id",
    "region",
    "code",
    "reason",
    "duration_ms",
    "cache",
    "error_type",
    "account",
    "listen",
)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k in _FIELDS if (v := getattr(record, k, None)) is not None}


class KeyValueFormatter(logging.Formatter):
    """`<time> <level> <logger>[pid] <message> key=value ...` for the fields a record carries."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        return " ".join([base, *(f"{k}={v}" for k, v in _fields(record).items())])


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, message and the call's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
            **_fields(record),
        }
        return json.dumps(line, separators=(",", ":"), default=str)


def configure_logging(logs: LogsConfig | None = None, stream: IO[str] | None = None) -> None:
    """Send the gateway's logs to stderr: JSON unless a person is watching (or as configured)."""
    logs = logs or LogsConfig()
    out = stream or sys.stderr
    use_json = logs.format == "json" or (logs.format == "auto" and not out.isatty())
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        JsonFormatter()
        if use_json
        else KeyValueFormatter("%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s")
    )
    root = logging.getLogger("registry_gateway")
    root.handlers[:] = [handler]
    root.setLevel(logs.level)
    root.propagate = False
