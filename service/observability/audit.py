"""The audit trail: one JSON line per write attempt, on its own sink.

Allowed, denied, failed or validate-only, every write leaves exactly one line with who,
what, where, the outcome and the etags around it. Events the gateway sees rather than
serves (a change made around it, a write overwritten) leave a line with an `event` field.
Never a key, a token or a policy text: the identity is a digest prefix, a JWT subject or a
SPIFFE ID, and a policy is its digest.
Every text field is passed through `echo`: at most 128 characters, nothing unprintable.

Never on the event loop's time: a line is built and queued by the caller (one event loop
serves every tenant's calls) and written and flushed by a thread of its own, so a slow or
stuck sink (a full disk, a network volume, a stdout pipe nobody reads) delays no call. The
thread is the standard library's `logging.handlers.QueueListener` draining a bounded queue
into one handler that writes each line whole and flushes it, in order:

- the queue holds AUDIT_QUEUE_LINES lines. A line that finds it full (the sink has taken
  nothing for that long: at the gateway's write rates, many minutes) is dropped rather than
  waited for, counted (`queue_full` in registry_gateway_audit_lines_lost_total) and
  logged at ERROR once per such episode: waiting would stall every tenant's reads behind
  the audit sink, which is what this exists to prevent;
- a write the sink refuses (OSError: disk full, closed pipe) loses that line, counted
  (`write_failed`) and logged once per episode, and the thread goes on with the next;
- `close()` (the shutdown, after every call's reporters have run: service/app/server.py)
  drains the queue into the sink before the file closes, waiting up to CLOSE_SECONDS for a
  stuck sink; lines still queued then are counted (`not_written`) and logged.

A caller with no running event loop (a tool, a test) writes its line itself, in its own
time, as the trail always did: it serves nobody else.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import logging
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from logging.handlers import QueueListener
from typing import IO, Any

from service.config import AuditConfig
from service.echo import echo

log = logging.getLogger("registry_gateway.audit")

# Lines waiting for the writer thread (a few hundred bytes each: a few MB at most).
AUDIT_QUEUE_LINES = 10_000
# How long `close()` waits for the sink to take what is queued.
CLOSE_SECONDS = 5.0
# How long a write's answer waits for its audit line to be written by the writer thread
# (awaited, never blocking the loop): the answer then implies the line is in the file,
# unless the sink is slower than this, when the answer goes and the line stays queued.
WRITTEN_WAIT_SECONDS = 0.5


@dataclass
class WriteRecord:
    """What a write call learned on its way, filled in by the servicer and the operations."""

    registry_id: str | None = None
    region: str | None = None
    validate_only: bool = False
    etag_before: str | None = None
    etag_after: str | None = None
    policy_sha256: str | None = None
    # Cross-account destinations whose policy the gateway could not verify, `account/region`
    # comma-separated (service/registry/rpcs/destinations.py); None when there were none.
    unverified_destinations: str | None = None


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


class _LineSink(logging.Handler):
    """The writer thread's end: each record's message as one line, flushed at once (what the
    trail's readers tail). A failed write loses that line only; `failed(first)` hears of it
    (`first`: the last write before it succeeded)."""

    def __init__(
        self,
        stream: IO[str],
        failed: Callable[[bool], None],
        handled: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__()
        self._stream = stream
        self._failed = failed
        self._handled = handled
        self._wrote = True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(record)
        finally:
            self._handled()  # counted: the writer thread's lines only

    def write_line(self, record: logging.LogRecord) -> None:
        """Write one line now, in the caller's thread."""
        try:
            self._stream.write(f"{record.msg}\n")
            self._stream.flush()
        except Exception:  # any failure of the sink loses this one line, nothing more
            self._failed(self._wrote)
            self._wrote = False
        else:
            self._wrote = True


class _Writer(QueueListener):
    """The QueueListener whose stop waits for room for its sentinel (the documented override
    point: the base class's `put_nowait` would raise on a full queue), so that `stop` drains
    every line queued before it; it counts the lines it has taken from the queue."""

    taken = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        self.taken += 1  # the writer thread only
        return record

    def enqueue_sentinel(self) -> None:
        self.queue.put(self._sentinel)  # type: ignore[attr-defined]


class AuditLog:
    """Appends audit lines to a file, or to stdout for `path: "-"` (marked `"log":"audit"`),
    through a writer thread (see the module's docstring).

    `lost(why, lines)` is told of every line that did not reach the sink: `queue_full`,
    `write_failed`, `not_written` (still queued when `close()` gave up), `closed` (written
    after `close()`)."""

    def __init__(
        self,
        config: AuditConfig,
        *,
        lost: Callable[[str, int], None] | None = None,
        queue_lines: int = AUDIT_QUEUE_LINES,
    ) -> None:
        self._stream: IO[str]
        self._marker: dict[str, str] = {}
        if config.path == "-":
            self._stream, self._owned = sys.stdout, False
            self._marker = STDOUT_MARKER
        else:
            # Line-buffered append: each line reaches the file whole, in order.
            self._stream = open(config.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            self._owned = True
        self._lost = lost or (lambda why, lines: None)
        self._queue: queue.Queue[logging.LogRecord] = queue.Queue(queue_lines)
        self._sink = _LineSink(self._stream, self._write_failed, self._line_handled)
        self._writer = _Writer(self._queue, self._sink)
        self._queued = 0  # lines put in the queue (the writer counts those it took)
        self._started = False  # the thread starts with the first queued line
        self._closed = False
        self._overflowing = False  # dropping lines since the last one queued
        self._lock = threading.Lock()  # start and close, from any thread
        # Lines the sink has handled, in queue order (the writer thread counts; the loop
        # reads), and the calls awaiting theirs: (the line's number, its future).
        self._handled = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []

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
    ) -> int:
        """Append one line for one write attempt; the line's number for `written` (0: it was
        written at once, or not queued at all)."""
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
        return self._emit(line)

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

    def _emit(self, line: dict[str, Any]) -> int:
        # Serialized here: the queue holds finished text, nothing a caller could still change.
        record = logging.makeLogRecord(
            {"msg": json.dumps(line, separators=(",", ":"), ensure_ascii=False)}
        )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._sink.write_line(record)  # no event loop to keep free: written in the caller
            return 0
        if self._closed:
            log.error("an audit line came after the audit trail was closed: it is lost")
            self._lost("closed", 1)
            return 0
        self._loop = loop
        if not self._started:
            self._start()
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            if not self._overflowing:
                self._overflowing = True
                log.error(
                    "audit lines are being dropped: %d lines wait for a sink that takes none "
                    "(registry_gateway_audit_lines_lost_total counts them)",
                    self._queue.maxsize,
                )
            self._lost("queue_full", 1)
            return 0
        self._queued += 1
        self._overflowing = False
        return self._queued

    async def written(self, line: int) -> None:
        """Wait (without blocking the loop) until line number `line` has been handled by
        the sink, at most WRITTEN_WAIT_SECONDS: a write's answer then implies its line is in
        the trail (service/rpc/interceptor.py, service/http/transport.py)."""
        if line <= self._handled:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((line, future))
        if line <= self._handled:  # handled while we got ready to wait: no wake will come
            future.cancel()
            self._waiting.remove((line, future))
            return
        try:
            await asyncio.wait_for(asyncio.shield(future), WRITTEN_WAIT_SECONDS)
        except TimeoutError:
            pass  # a slow sink: the answer goes, the line stays queued
        finally:
            if not future.done():
                future.cancel()

    def _line_handled(self) -> None:
        # In the writer thread: count, and wake the loop's waiters (if any wait).
        self._handled += 1
        loop = self._loop
        if self._waiting and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        handled, still = self._handled, []
        for line, future in self._waiting:
            if line <= handled:
                if not future.done():
                    future.set_result(None)
            elif not future.done():
                still.append((line, future))
        self._waiting = still

    def _start(self) -> None:
        with self._lock:
            if not self._started and not self._closed:
                self._writer.start()
                self._started = True

    def _write_failed(self, first: bool) -> None:
        # In the writer thread (or a caller without a loop): logged once per run of failures,
        # each counted. The exception's text is not logged: the line it failed on may be in it.
        if first:
            log.error(
                "the audit sink refused a line: it is lost, and so is every line until the "
                "sink takes one again (registry_gateway_audit_lines_lost_total counts them)"
            )
        self._lost("write_failed", 1)

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Write every queued line, then close the file (not stdout). A sink that takes
        them for longer than `timeout` seconds is left to its thread (the file stays open for
        it) and the lines still queued are counted lost."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            started = self._started
        if started:
            # `stop` queues a sentinel after every line and joins the thread; in a thread of
            # its own, so that a stuck sink bounds this wait rather than hanging the shutdown.
            stopping = threading.Thread(target=self._writer.stop, name="audit-close", daemon=True)
            stopping.start()
            stopping.join(timeout)
            if stopping.is_alive():
                left = self._queued - self._writer.taken
                log.error(
                    "closing the audit trail with %d lines not written: its sink took none for %gs",
                    left,
                    timeout,
                )
                self._lost("not_written", left)
                return
        if self._owned:
            self._stream.close()
