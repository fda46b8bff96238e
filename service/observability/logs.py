"""Logging setup: JSON lines for machines, one readable line for a person at a terminal."""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
from typing import IO, Any

from opentelemetry import trace
from opentelemetry.trace import SpanContext

from service.config import LogsConfig
from service.echo import echo
from service.observability.tracing import call_span_context

# A field value printed bare in the text format; anything else is quoted.
_PLAIN = re.compile(r"[A-Za-z0-9._:/@+-]+")
# Longest message a log line carries, after escaping.
MESSAGE_LIMIT = 4096

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
    "peer",
)


def _trace(fields: dict[str, Any]) -> dict[str, Any]:
    """`trace_id` and `span_id` (W3C hex) of the span current where the line is written,
    else of the call being served (its access line comes after its span has ended): a log
    line joins its trace. Untraced (tracing off, or no call), the line has neither."""
    context: SpanContext | None = trace.get_current_span().get_span_context()
    if context is None or not context.is_valid:
        context = call_span_context()
        if context is None or not context.is_valid:
            return fields
    fields["trace_id"] = format(context.trace_id, "032x")
    fields["span_id"] = format(context.span_id, "016x")
    return fields


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return _trace({k: v for k in _FIELDS if (v := getattr(record, k, None)) is not None})


def _message(message: str) -> str:
    # Bounded too: a message may quote caller text, and one line must stay one line.
    return echo(message, MESSAGE_LIMIT)


def _token(value: object) -> str:
    """A field value for the text format: bare when a plain token, else a JSON string, so
    no caller text (spaces, `=`, quotes) can pass for a field of its own."""
    text = echo(value)
    if _PLAIN.fullmatch(text):
        return text
    # echo already escaped what is not printable; JSON quoting handles `"` and `\\`.
    return json.dumps(text, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    """`<time> <level> <logger>[pid] <message> key=value ...` for the fields a record carries;
    a value that is not a plain token is quoted as a JSON string."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        # Formatter.format has just set record.message from getMessage(); every formatter
        # sets it afresh, so replacing it here reaches no other handler.
        record.message = _message(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        return " ".join([base, *(f"{k}={_token(v)}" for k, v in _fields(record).items())])


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
            "message": _message(record.getMessage()),
            **{k: echo(v) if isinstance(v, str) else v for k, v in _fields(record).items()},
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
