"""Logging setup: one line per event, with the call's fields appended as key=value."""

from __future__ import annotations

import logging
import sys

# Fields the gateway attaches to its log records with `extra=`.
_FIELDS = (
    "request_id",
    "tenant",
    "rpc",
    "code",
    "reason",
    "duration_ms",
    "error_type",
    "registry_id",
    "region",
    "account",
    "listen",
)


class KeyValueFormatter(logging.Formatter):
    """`<time> <level> <logger> <message> key=value ...` for the fields a record carries."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        pairs = [
            f"{k}={getattr(record, k)}" for k in _FIELDS if getattr(record, k, None) is not None
        ]
        return " ".join([base, *pairs])


def configure_logging(level: int = logging.INFO) -> None:
    """Send the gateway's logs to stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        KeyValueFormatter("%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s")
    )
    root = logging.getLogger("registry_gateway")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
