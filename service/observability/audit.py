"""The audit trail: one JSON line per write attempt, on its own sink.

Allowed, denied, failed or validate-only, every write leaves exactly one line with who,
what, where, the outcome and the etags around it. Events the gateway sees rather than
serves (a change made around it, a write overwritten) leave a line with an `event` field.
Never a key, a token or a policy text: the identity is a digest prefix, a JWT subject or a
SPIFFE ID, and a policy is its digest.
Every text field is passed through `echo`: at most 128 characters, nothing unprintable.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sys
import threading
from dataclasses import asdict, dataclass
from typing import IO, Any

from service.config import AuditConfig
from service.echo import echo


@dataclass
class WriteRecord:
    """What a write call learned on its way, filled in by the servicer and the operations."""

    registry_id: str | None = None
    region: str | None = None
    validate_only: bool = False
    etag_before: str | None = None
    etag_after: str | None = None
    policy_sha256: str | None = None


def _bounded(value: object) -> object:
    # The registry and region of a refused write are the caller's, as sent: bounded and
    # escaped so one line stays one readable line (and a lone surrogate cannot make the
    # UTF-8 write fail and lose the line).
    if value is None or isinstance(value, bool | int | float):
        return value
    return echo(value)


_RESERVED = frozenset({"log", "time", "event"})
# An event line's nested fields (a diff) are bounded in breadth and depth as well.
_MAX_ITEMS = 32
_MAX_DEPTH = 4


def _bounded_deep(value: object, depth: int = 0) -> object:
    if isinstance(value, dict):
        if depth >= _MAX_DEPTH:
            return "…"
        items = list(value.items())[:_MAX_ITEMS]
        return {echo(str(k), 64): _bounded_deep(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple):
        if depth >= _MAX_DEPTH:
            return "…"
        return [_bounded_deep(v, depth + 1) for v in list(value)[:_MAX_ITEMS]]
    return _bounded(value)


def policy_digest(policy_text: str) -> str:
    """The digest the audit trail records instead of a policy's text."""
    return hashlib.sha256(policy_text.encode("utf-8")).hexdigest()


# The field that marks an audit line on stdout: `"log":"audit"`, first on the line.
#
# Why a marker rather than a stream of its own by default: a container has two collected
# streams, and stderr carries the gateway's log; the audit's default (`path: "-"`) has
# always been stdout, and moving it (to a file nobody collects) would silently drop the
# trail of every deployment relying on that. But collectors usually merge a container's
# two streams into one, where an audit line and a JSON log line look alike; the marker
# lets a pipeline route the audit (to its own retention) by one field. A file of its own
# (`path: /var/log/...`) is the audit by where it is, so its lines stay as they were.
STDOUT_MARKER = {"log": "audit"}


class AuditLog:
    """Appends audit lines to a file, or to stdout for `path: "-"` (marked `"log":"audit"`)."""

    def __init__(self, config: AuditConfig) -> None:
        self._stream: IO[str]
        self._marker: dict[str, str] = {}
        if config.path == "-":
            self._stream, self._owned = sys.stdout, False
            self._marker = STDOUT_MARKER
        else:
            # Line-buffered append: each line reaches the file whole, in order.
            self._stream = open(config.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            self._owned = True
        self._lock = threading.Lock()

    def write(
        self,
        *,
        request_id: str,
        tenant: str | None,
        identity: str | None,
        rpc: str,
        outcome: str,
        reason: str | None,
        record: WriteRecord,
    ) -> None:
        """Append one line for one write attempt."""
        fields: dict[str, Any] = {
            "request_id": request_id,
            "tenant": tenant,
            "identity": identity,
            "rpc": rpc,
            "outcome": outcome,
            "reason": reason,
            **asdict(record),
        }
        line: dict[str, Any] = {
            **self._marker,
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            **{k: _bounded(v) for k, v in fields.items()},
        }
        self._emit(line)

    def event(self, event: str, /, **fields: object) -> None:
        """Append one line for something the gateway saw rather than a call it served:
        `out_of_band_change` (drift), `overwritten` (a write another writer's state replaced).
        Same sink and marker as the write lines; every text echoed, lists and mappings
        bounded (at most 32 items, 4 levels)."""
        line: dict[str, Any] = {
            **self._marker,
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "event": echo(event),
            **{
                echo(k, 64): _bounded_deep(v)
                for k, v in fields.items()
                if k not in _RESERVED  # the marker, time and event are the line's own
            },
        }
        self._emit(line)

    def _emit(self, line: dict[str, Any]) -> None:
        text = json.dumps(line, separators=(",", ":"), ensure_ascii=False)
        with self._lock:
            self._stream.write(text + "\n")
            self._stream.flush()

    def close(self) -> None:
        """Close the file (not stdout)."""
        if self._owned:
            self._stream.close()
