"""Bystander under edge attacks (issue 21): one tenant's cached reads, over gRPC and over
HTTP/1.1 + JSON, alone and while a stranger or another tenant attacks the listeners
themselves rather than the pipeline behind them.

Each scenario starts a gateway of its own (two tenants, both listeners, memory cache;
`server.max_concurrent_rpcs` EDGE_MAX_CONCURRENT_RPCS, every other limit at its default)
and alternates, for `EdgePlan.rounds` rounds of `EdgePlan.seconds` each, a quiet phase and
an attacked one. The bystander tenant reads DescribeRegistry (warmed: every call a hit) in
an open loop at the plan's `attack_rate` over gRPC (one channel) and at the same rate over
HTTP (keep-alive connections taken from a small pool, POST `{}`), from 127.0.0.1, in the
run's two client processes. The attacker is one more process at nice 19 on the load
generator's core; strangers connect from other loopback addresses (STRANGERS), as other
hosts would, so what the HTTP listener caps per address is the attacker's, never the
bystander's (behind one NAT they would share a cap: the README's security section). What
is held is remade after it ends, as an attacker would: the rate of refusals that follows is
part of the attack (reported with it).

- `edge-body` (finding 1): POSTs without credentials whose bodies never end, on
  BODY_CONNECTIONS connections per kind, each remade as soon as it ends: `transfer-encoding:
  chunked` with 64 KiB chunks, and `content-length: 100000000`, written as fast as the
  socket takes them whatever the answer;
- `edge-json` (finding 2): as the attacker tenant, JSON PutReplicationRules of JSON_RULES
  empty rules with validateOnly (2.04 MB, within the RPC's JSON byte limit), back to back
  on one keep-alive connection;
- `edge-idle` (finding 3): IDLE_CONNECTIONS TCP connections that send nothing (more than
  `server.max_concurrent_rpcs`, spread over the stranger addresses so no per-address cap
  refuses them) and SLOWLORIS connections that send a request head one byte every
  TRICKLE_SECONDS, all opened before the timed part, each remade REOPEN_SECONDS after it
  ends;
- `edge-streams` (finding 4): STREAM_CHANNELS gRPC channels x STREAM_CALLS calls without
  credentials, and TENANT_STREAM_CHANNELS x STREAM_CALLS as the attacker tenant, that send
  their headers and never their message, opened before the timed part, each remade
  REOPEN_SECONDS after it ends.

The attacker's jobs run themselves in a load-generator process (`run(go)`,
bench/loadgen.py's SelfRunningJob): they return an EdgeResult, whose per-kind counters
(bytes sent, connections or calls made, most held at once) go beside the outcomes and
times of `attacker_summary`.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import httpcore

from bench.common import (
    ATTACK_P99_GOAL,
    ATTACKER_NICE,
    CLIENT_CPUS,
    DESCRIBE,
    Loaded,
    Row,
    Verdict,
    _all_hits,
    _attack_config,
    _codes_and_cache,
    attacker_summary,
)
from bench.loadgen import SERVICE, JobResult, LoadPool, Metadata, UnaryJob, loopback_only
from bench.stats import measure

if TYPE_CHECKING:
    from bench.harness import Run

Go = Callable[[], Awaitable[None]]

# Where strangers connect from: other hosts, as far as the gateway can tell.
STRANGERS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6")
# Below the attacks' 1,000 connections and 1,000 streams: each would hold every slot if
# connections or streams counted against it (as they did before issue 21).
EDGE_MAX_CONCURRENT_RPCS = 500
BODY_CONNECTIONS = 2  # per kind
DECLARED_BYTES = 100_000_000
CHUNK_BYTES = 64 * 1024
JSON_RULES = 680_000
IDLE_CONNECTIONS = 1000
SLOWLORIS = 100
TRICKLE_SECONDS = 1.0
STREAM_CHANNELS = 10
STREAM_CALLS = 100
TENANT_STREAM_CHANNELS = 2
REOPEN_SECONDS = 1.0
# How long the held attacks get to open their connections or streams before the timing.
PREPARE_SECONDS = 15.0
STREAMS_SETTLE_SECONDS = 1.0
CONNECTIONS_SETTLE_SECONDS = 1.5
# Past this share of failed bystander reads the p99 is "unbounded": a refused read is
# never served, however fast the refusal came.
FAILED_SHARE_UNBOUNDED = 0.01
HTTP_BYSTANDER_CONNECTIONS = 8
HTTP_FAILURES = (
    httpcore.NetworkError,
    httpcore.TimeoutException,
    httpcore.ProtocolError,
    httpcore.ConnectionNotAvailable,
)
_GRPC_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]  # a TCP connection per channel


@dataclass(frozen=True)
class EdgePlan:
    """Rounds of (quiet, attacked) and each phase's length, per run mode."""

    rounds: int
    seconds: float


EDGE_PLANS = {"quick": EdgePlan(rounds=1, seconds=3.0), "full": EdgePlan(rounds=3, seconds=4.0)}


@dataclass
class EdgeResult(JobResult):
    """An attacker job's results: per kind, counters beside the outcomes and times."""

    stats: dict[str, dict[str, float]] = field(default_factory=dict)


class _Tally:
    """What an attacker's loops did, per kind: each outcome with how long it took
    (a refusal's time, or how long a connection or stream was held), and counters."""

    def __init__(self, kinds: Sequence[str]) -> None:
        self.codes: Counter[str] = Counter()
        self.details: dict[str, str] = {}
        self.times = {kind: array.array("d") for kind in kinds}
        self.stats: dict[str, dict[str, float]] = {kind: {} for kind in kinds}
        self._held = dict.fromkeys(kinds, 0)

    def outcome(self, kind: str, code: str, seconds: float, detail: str = "") -> None:
        self.codes[f"{kind} {code}"] += 1
        self.times[kind].append(seconds)
        if detail and f"{kind} {code}" not in self.details:
            self.details[f"{kind} {code}"] = f"{detail[:300]} (after {seconds:.3f} s)"

    def add(self, kind: str, name: str, amount: float = 1.0) -> None:
        stats = self.stats[kind]
        stats[name] = stats.get(name, 0.0) + amount

    def hold(self, kind: str, delta: int) -> None:
        self._held[kind] += delta
        stats = self.stats[kind]
        stats["peak_held"] = max(stats.get("peak_held", 0.0), float(self._held[kind]))

    def note_held(self, name: str) -> None:
        """Record under `name` how many each kind holds now."""
        for kind, held in self._held.items():
            self.stats[kind][name] = float(held)

    def result(self, started: float, finished: float, cpu: float) -> EdgeResult:
        latencies = array.array("d")
        for values in self.times.values():
            latencies.extend(values)
        return EdgeResult(
            latencies=latencies.tobytes(),
            started=started,
            finished=finished,
            codes=dict(self.codes),
            client_cpu_seconds=cpu,
            kind_latencies={kind: values.tobytes() for kind, values in self.times.items()},
            details=self.details,
            stats=self.stats,
        )


def _host_port(target: str) -> tuple[str, int]:
    host, _, port = loopback_only(target).rpartition(":")
    return host.strip("[]"), int(port)


async def _connect(
    target: str, source: str, within: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = _host_port(target)
    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that comes
    # as the connection completes (python/cpython#86296), and the loop would go on.
    async with asyncio.timeout(within):
        return await asyncio.open_connection(host, port, local_addr=(source, 0))


class _Opened:
    """Counts slots that have made their first attempt; set once all of them have."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.all = asyncio.Event()

    def one(self) -> None:
        self.count += 1
        if self.count >= self.total:
            self.all.set()


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        writer.transport.abort()


async def _for(seconds: float, go: Go, tasks: list[asyncio.Task[None]]) -> tuple[float, float]:
    """After `go`, let `tasks` run for `seconds`, then cancel them: the timed part's ends."""
    await go()
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    finished = time.perf_counter()
    pending = set(tasks)
    while pending:
        # Again for any that swallowed it (a library's cancellation race): none runs on.
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    return started, finished


# ---- the bystander over HTTP ------------------------------------------------------------


@dataclass(frozen=True)
class PacedHttpReads:
    """Connect+JSON calls (POST, keep-alive HTTP/1.1) in an open loop: call i starts at
    i / rate on the first free connection of the pool and its latency counts from then."""

    url: str
    body: bytes
    headers: Metadata
    calls: int
    rate: float
    connections: int = HTTP_BYSTANDER_CONNECTIONS
    warmup: int = 200
    timeout: float = 30.0

    async def run(self, go: Go) -> JobResult:
        url = httpcore.URL(self.url)
        origin = httpcore.Origin(url.scheme, url.host, url.port or 80)
        headers = [
            (b"content-type", b"application/json"),
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers),
        ]
        timeouts = {"timeout": dict.fromkeys(("connect", "read", "write", "pool"), self.timeout)}
        free: asyncio.Queue[httpcore.AsyncHTTPConnection] = asyncio.Queue()
        for _ in range(self.connections):
            free.put_nowait(httpcore.AsyncHTTPConnection(origin))
        latencies = array.array("d")
        codes: Counter[str] = Counter()
        cache: Counter[str] = Counter()
        details: dict[str, str] = {}

        async def one(t0: float) -> None:
            connection = await free.get()
            if connection.is_closed() or connection.has_expired():
                # The server ended it (an answer with `connection: close`, an idle timeout).
                await connection.aclose()
                connection = httpcore.AsyncHTTPConnection(origin)
            try:
                response = await connection.request(
                    b"POST", url, headers=headers, content=self.body, extensions=timeouts
                )
            except HTTP_FAILURES as exc:
                code = type(exc).__name__
                details.setdefault(
                    code, f"{str(exc)[:300]} (after {time.perf_counter() - t0:.3f} s)"
                )
                await connection.aclose()
                connection = httpcore.AsyncHTTPConnection(origin)
            else:
                code = "OK" if response.status == 200 else f"HTTP {response.status}"
                if code != "OK":
                    details.setdefault(code, response.content[:300].decode("utf-8", "replace"))
                value = next((v for k, v in response.headers if k.lower() == b"x-cache"), b"none")
                cache[value.decode("latin-1")] += 1
            finally:
                free.put_nowait(connection)
            latencies.append(time.perf_counter() - t0)
            codes[code] += 1

        try:
            # Every connection open, then the warm-up, closed loop.
            await asyncio.gather(*(one(time.perf_counter()) for _ in range(self.connections)))
            for start in range(0, self.warmup, self.connections):
                batch = min(self.connections, self.warmup - start)
                await asyncio.gather(*(one(time.perf_counter()) for _ in range(batch)))
            latencies = array.array("d")
            codes.clear()
            cache.clear()
            details.clear()
            await go()
            cpu0, started = time.process_time(), time.perf_counter()
            tasks = []
            for i in range(self.calls):
                due = started + i / self.rate
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                tasks.append(asyncio.ensure_future(one(due)))
            await asyncio.gather(*tasks)
            finished, cpu1 = time.perf_counter(), time.process_time()
        finally:
            while not free.empty():
                await free.get_nowait().aclose()
        return JobResult(
            latencies=latencies.tobytes(),
            started=started,
            finished=finished,
            codes=dict(codes),
            cache=dict(cache),
            client_cpu_seconds=cpu1 - cpu0,
            details=details,
        )


# ---- attack 1: bodies that never end ----------------------------------------------------


def _status(line: bytes) -> str:
    parts = line.split(b" ", 2)
    return parts[1].decode("latin-1") if len(parts) > 1 and parts[0].startswith(b"HTTP/") else "?"


@dataclass(frozen=True)
class EndlessBodies:
    """POSTs without credentials whose bodies never end: `chunked` (64 KiB chunks, no last
    chunk) and `length` (content-length: declared_bytes, all of it sent if the server
    reads it), `connections` of each kind from the stranger addresses, each remade as soon
    as it ends. Every byte the socket takes is written, whatever the server answered."""

    target: str  # host:port of the HTTP listener
    path: str
    sources: tuple[str, ...]
    connections: int
    seconds: float
    declared_bytes: int = DECLARED_BYTES
    chunk_bytes: int = CHUNK_BYTES
    timeout: float = 30.0

    def _head(self, kind: str) -> bytes:
        framing = (
            b"transfer-encoding: chunked"
            if kind == "chunked"
            else b"content-length: %d" % self.declared_bytes
        )
        return b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n%s\r\n\r\n" % (
            self.path.encode(),
            self.target.encode(),
            framing,
        )

    async def _connection(self, kind: str, source: str, tally: _Tally) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            reader, writer = await _connect(self.target, source, self.timeout)
        except (OSError, TimeoutError) as exc:
            tally.outcome(kind, "connect failed", loop.time() - t0, repr(exc))
            await asyncio.sleep(0.1)
            return
        tally.hold(kind, 1)
        tally.add(kind, "connections")
        answer: dict[str, Any] = {}

        async def read_answer() -> None:
            with contextlib.suppress(OSError):
                line = await reader.readline()
                if line:
                    answer["status"], answer["after"] = _status(line), loop.time() - t0
                while await reader.read(65536):
                    pass
            answer["eof"] = True

        reading = asyncio.create_task(read_answer())
        if kind == "chunked":
            piece = b"%x\r\n%s\r\n" % (self.chunk_bytes, b"a" * self.chunk_bytes)
        else:
            piece = b"a" * self.chunk_bytes
        sent = 0
        ended = "open at the end"
        try:
            writer.write(self._head(kind))
            body = 0
            while kind == "chunked" or body < self.declared_bytes:
                chunk = piece if kind == "chunked" else piece[: self.declared_bytes - body]
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
                body += len(chunk)
            await reading  # all of a declared body sent: the answer, and the close
            ended = "closed by the server"
        except OSError:
            ended = "closed by the server"
        finally:
            tally.add(kind, "bytes_sent", sent)
            tally.add(kind, "seconds_open", loop.time() - t0)
            tally.hold(kind, -1)
            reading.cancel()
            _close(writer)
            answered = f"answered {answer['status']}" if "status" in answer else "no answer"
            tally.outcome(kind, f"{answered}, {ended}", answer.get("after", loop.time() - t0))

    async def _loop(self, kind: str, source: str, tally: _Tally) -> None:
        while True:
            await self._connection(kind, source, tally)

    async def run(self, go: Go) -> EdgeResult:
        loopback_only(self.target)
        kinds = ("chunked", "length")
        tally = _Tally(kinds)
        cpu0 = time.process_time()
        gate = asyncio.Event()

        async def after_go(kind: str, index: int) -> None:
            await gate.wait()
            await self._loop(kind, self.sources[index % len(self.sources)], tally)

        tasks = [
            asyncio.create_task(after_go(kind, i))
            for kind in kinds
            for i in range(self.connections)
        ]

        async def released() -> None:
            await go()
            gate.set()

        started, finished = await _for(self.seconds, released, tasks)
        return tally.result(started, finished, time.process_time() - cpu0)


# ---- attack 2: a JSON body of many empty elements, as a tenant --------------------------


def rules_flood(rules: int) -> bytes:
    """`{"rules":[{},{},...],"validateOnly":true}` with `rules` empty rules."""
    return b'{"rules":[' + b",".join([b"{}"] * rules) + b'],"validateOnly":true}'


@dataclass(frozen=True)
class JsonFlood:
    """As a tenant, the same JSON request (PutReplicationRules of `rules` empty rules,
    validateOnly) back to back on `connections` keep-alive connections."""

    url: str
    headers: Metadata  # the attacker tenant's credentials
    rules: int
    source: str
    connections: int
    seconds: float
    timeout: float = 30.0

    async def run(self, go: Go) -> EdgeResult:
        url = httpcore.URL(self.url)
        loopback_only(f"{url.host.decode()}:{url.port}")
        origin = httpcore.Origin(url.scheme, url.host, url.port or 80)
        body = rules_flood(self.rules)
        headers = [
            (b"content-type", b"application/json"),
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers),
        ]
        timeouts = {"timeout": dict.fromkeys(("connect", "read", "write", "pool"), self.timeout)}
        tally = _Tally(("json",))

        def connection() -> httpcore.AsyncHTTPConnection:
            return httpcore.AsyncHTTPConnection(origin, local_address=self.source)

        async def loop_calls() -> None:
            conn = connection()
            try:
                while True:
                    if conn.is_closed() or conn.has_expired():
                        await conn.aclose()
                        conn = connection()
                    t0 = time.perf_counter()
                    try:
                        response = await conn.request(
                            b"POST", url, headers=headers, content=body, extensions=timeouts
                        )
                    except HTTP_FAILURES as exc:
                        tally.outcome("json", type(exc).__name__, time.perf_counter() - t0)
                        await conn.aclose()
                        conn = connection()
                        await asyncio.sleep(0.01)
                        continue
                    tally.add("json", "bytes_sent", len(body))
                    text = response.content[:300].decode("utf-8", "replace")
                    tally.outcome("json", f"HTTP {response.status}", time.perf_counter() - t0, text)
            finally:
                await conn.aclose()

        cpu0 = time.process_time()
        gate = asyncio.Event()

        async def after_go() -> None:
            await gate.wait()
            await loop_calls()

        tasks = [asyncio.create_task(after_go()) for _ in range(self.connections)]

        async def released() -> None:
            await go()
            gate.set()

        started, finished = await _for(self.seconds, released, tasks)
        return tally.result(started, finished, time.process_time() - cpu0)


# ---- attack 3: connections that hold and say nothing ------------------------------------


@dataclass(frozen=True)
class HeldConnections:
    """`idle` connections that send nothing and `slowloris` ones that send a request head a
    byte every `trickle_seconds`, from the stranger addresses, opened before the timed
    part; each remade `reopen_seconds` after the server ends it."""

    target: str
    path: str
    sources: tuple[str, ...]
    idle: int
    slowloris: int
    seconds: float
    trickle_seconds: float = TRICKLE_SECONDS
    reopen_seconds: float = REOPEN_SECONDS
    settle_seconds: float = CONNECTIONS_SETTLE_SECONDS
    timeout: float = 30.0

    def _head(self) -> bytes:
        # Never complete: header lines after the first, for as long as it takes.
        return (
            (
                b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
                % (self.path.encode(), self.target.encode())
            )
            + b"x-padding: "
            + b"a" * 100_000
        )

    async def _trickle(self, writer: asyncio.StreamWriter, tally: _Tally) -> None:
        for byte in self._head():
            writer.write(bytes((byte,)))
            await writer.drain()
            tally.add("slowloris", "bytes_sent")
            await asyncio.sleep(self.trickle_seconds)

    async def _slot(self, kind: str, source: str, tally: _Tally, opened: _Opened) -> None:
        loop = asyncio.get_running_loop()
        first = True
        while True:
            t0 = loop.time()
            try:
                reader, writer = await _connect(self.target, source, self.timeout)
            except (OSError, TimeoutError) as exc:
                tally.outcome(kind, "connect failed", loop.time() - t0, repr(exc))
                if first:
                    opened.one()
                    first = False
                await asyncio.sleep(self.reopen_seconds)
                continue
            tally.hold(kind, 1)
            tally.add(kind, "connections")
            if first:
                opened.one()
                first = False
            trickle = (
                asyncio.create_task(self._trickle(writer, tally)) if kind == "slowloris" else None
            )
            code = "held to the end"
            try:
                got = await reader.read(4096)
                if got:
                    code = f"answered {_status(got)}, closed by the server"
                    with contextlib.suppress(OSError):
                        while await reader.read(4096):
                            pass
                else:
                    code = "closed by the server unanswered"
            except OSError:
                code = "reset by the server"
            finally:
                if trickle is not None:
                    trickle.cancel()
                tally.hold(kind, -1)
                _close(writer)
                tally.outcome(kind, code, loop.time() - t0)
            await asyncio.sleep(self.reopen_seconds)

    async def run(self, go: Go) -> EdgeResult:
        loopback_only(self.target)
        tally = _Tally(("idle", "slowloris"))
        slots = [("idle", i) for i in range(self.idle)]
        slots += [("slowloris", i) for i in range(self.slowloris)]
        opened = _Opened(len(slots))
        tasks = [
            asyncio.create_task(
                self._slot(kind, self.sources[i % len(self.sources)], tally, opened)
            )
            for kind, i in slots
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(opened.all.wait(), PREPARE_SECONDS)
        # The kernel completes a handshake before the gateway accepts it: time for the
        # gateway to take them all in, so the timed part holds them rather than accepts them.
        await asyncio.sleep(self.settle_seconds)
        tally.note_held("held_at_start")
        cpu0 = time.process_time()
        started, finished = await _for(self.seconds, go, tasks)
        return tally.result(started, finished, time.process_time() - cpu0)


# ---- attack 4: gRPC streams that never send their message -------------------------------


class _Silent:
    """A request stream that sends nothing, ever. Not an async generator: grpc would try to
    close one that is still waiting when the call is cancelled, and complain."""

    def __aiter__(self) -> _Silent:
        return self

    async def __anext__(self) -> bytes:
        await asyncio.Event().wait()
        raise StopAsyncIteration  # pragma: no cover - never reached


@dataclass(frozen=True)
class HeldStreams:
    """Calls that send their headers and never their message: `channels` x `calls` without
    credentials ("stranger"), `tenant_channels` x `calls` with the attacker tenant's
    ("tenant"), opened before the timed part, each remade `reopen_seconds` after it ends."""

    target: str
    method: str
    channels: int
    calls: int
    tenant_metadata: Metadata
    tenant_channels: int
    seconds: float
    reopen_seconds: float = REOPEN_SECONDS
    settle_seconds: float = STREAMS_SETTLE_SECONDS  # for every stream's headers to be sent
    timeout: float = 300.0

    async def _slot(self, kind: str, stub: Any, metadata: Metadata, tally: _Tally) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            call = stub(_Silent(), metadata=metadata, timeout=self.timeout)
            tally.hold(kind, 1)
            code, detail = "held to the end", ""
            try:
                await call
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code, detail = exc.code().name, str(exc.details() or "")
            finally:
                tally.hold(kind, -1)
                if code == "held to the end":
                    call.cancel()
                tally.outcome(kind, code, loop.time() - t0, detail)
            await asyncio.sleep(self.reopen_seconds)

    async def run(self, go: Go) -> EdgeResult:
        target = loopback_only(self.target)
        tally = _Tally(("stranger", "tenant"))
        channels: list[grpc.aio.Channel] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            for kind, count, metadata in (
                ("stranger", self.channels, ()),
                ("tenant", self.tenant_channels, self.tenant_metadata),
            ):
                for _ in range(count):
                    channel = grpc.aio.insecure_channel(target, options=_GRPC_OPTIONS)
                    channels.append(channel)
                    await channel.channel_ready()
                    stub: Any = channel.stream_unary(
                        self.method, request_serializer=None, response_deserializer=None
                    )
                    tasks += [
                        asyncio.create_task(self._slot(kind, stub, metadata, tally))
                        for _ in range(self.calls)
                    ]
            await asyncio.sleep(self.settle_seconds)
            tally.note_held("held_at_start")
            cpu0 = time.process_time()
            started, finished = await _for(self.seconds, go, tasks)
            return tally.result(started, finished, time.process_time() - cpu0)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for channel in channels:
                await channel.close()


# ---- the scenarios ----------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    """One edge scenario: its label, its method in a sentence, its kinds of attacker loop."""

    label: str
    method: str
    kinds: dict[str, tuple[str, str]]  # kind -> (what it does, what `calls` counts)


ATTACKS: dict[str, Attack] = {
    "edge-body": Attack(
        "endless bodies, no credentials",
        f"POSTs to DescribeRegistry without credentials from {len(STRANGERS)} other loopback "
        f"addresses, {BODY_CONNECTIONS} connections per kind, each remade as soon as it "
        "ends, writing as fast as the socket takes it whatever the answer",
        {
            "chunked": (
                f"`transfer-encoding: chunked`, {CHUNK_BYTES // 1024} KiB chunks, no last chunk",
                "connections",
            ),
            "length": (f"`content-length: {DECLARED_BYTES:,}`", "connections"),
        },
    ),
    "edge-json": Attack(
        "2 MB JSON of empty rules, as a tenant",
        f"the attacker tenant's JSON PutReplicationRules of {JSON_RULES:,} empty rules "
        f"with validateOnly ({len(rules_flood(JSON_RULES)):,} bytes), back to back on one "
        "keep-alive connection",
        {"json": ('PutReplicationRules `{"rules":[{},{},...]}`, validateOnly', "calls")},
    ),
    "edge-idle": Attack(
        "idle and slowloris connections, no credentials",
        f"{IDLE_CONNECTIONS:,} TCP connections that send nothing (more than "
        f"`server.max_concurrent_rpcs` = {EDGE_MAX_CONCURRENT_RPCS}) and {SLOWLORIS} that "
        f"send a request head one byte every {TRICKLE_SECONDS:g} s, from {len(STRANGERS)} "
        "other loopback addresses, opened before the timed part, each remade "
        f"{REOPEN_SECONDS:g} s after it ends",
        {
            "idle": ("a connection that sends nothing", "connections"),
            "slowloris": (f"a request head, one byte every {TRICKLE_SECONDS:g} s", "connections"),
        },
    ),
    "edge-streams": Attack(
        "gRPC streams that never send their message",
        f"{STREAM_CHANNELS} channels x {STREAM_CALLS} calls to DescribeRegistry without "
        f"credentials and {TENANT_STREAM_CHANNELS} x {STREAM_CALLS} as the attacker tenant, "
        "that send their headers and never their message (stream-unary calls whose request "
        f"stream never yields), opened before the timed part, each remade {REOPEN_SECONDS:g} "
        "s after it ends",
        {
            "stranger": ("headers without credentials, no message", "calls"),
            "tenant": ("headers with the attacker tenant's key, no message", "calls"),
        },
    ),
}


def edge_config(proxy_url: str, key: str, attacker_key: str) -> dict[str, Any]:
    """The attack scenario's gateway config with the HTTP listener on, the attacker tenant
    allowed PutReplicationRules on a slice of its own, and fewer RPC slots than the
    attacks' connections or streams."""

    config = _attack_config(proxy_url, key, attacker_key)
    config["http"] = {"listen": "127.0.0.1:0"}
    config["server"]["max_concurrent_rpcs"] = EDGE_MAX_CONCURRENT_RPCS
    registry = config["tenants"][1]["registries"][0]
    registry["operations"].append("PutReplicationRules")
    registry["owned_repository_prefixes"] = ["attacker/"]
    return config


def attacker_job(
    name: str, grpc_address: str, http_address: str, attacker_key: str, seconds: float
) -> Any:
    """The attacker's job of scenario `name`."""
    credentials = (("authorization", f"Bearer {attacker_key}"),)
    if name == "edge-body":
        return EndlessBodies(
            target=http_address,
            path=SERVICE + "DescribeRegistry",
            sources=STRANGERS,
            connections=BODY_CONNECTIONS,
            seconds=seconds,
        )
    if name == "edge-json":
        return JsonFlood(
            url=f"http://{http_address}{SERVICE}PutReplicationRules",
            headers=credentials,
            rules=JSON_RULES,
            source=STRANGERS[0],
            connections=1,
            seconds=seconds,
        )
    if name == "edge-idle":
        return HeldConnections(
            target=http_address,
            path=SERVICE + "DescribeRegistry",
            sources=STRANGERS,
            idle=IDLE_CONNECTIONS,
            slowloris=SLOWLORIS,
            seconds=seconds,
        )
    if name == "edge-streams":
        return HeldStreams(
            target=grpc_address,
            method=SERVICE + "DescribeRegistry",
            channels=STREAM_CHANNELS,
            calls=STREAM_CALLS,
            tenant_metadata=credentials,
            tenant_channels=TENANT_STREAM_CHANNELS,
            seconds=seconds,
        )
    raise ValueError(f"no edge scenario {name!r}")


def edge_summary(results: Sequence[JobResult], seconds: float, attack: Attack) -> dict[str, Any]:
    """attacker_summary (outcomes, times) with each kind's counters summed over phases
    (peaks: the largest) and what the kind does."""

    summary = attacker_summary(list(results), seconds)
    for result in results:
        if not isinstance(result, EdgeResult):
            continue
        for kind, stats in result.stats.items():
            entry = summary.setdefault(kind, {"calls": 0, "codes": {}})
            for name, value in stats.items():
                peak = name.startswith("peak") or name.startswith("held_at")
                entry[name] = max(entry.get(name, 0), value) if peak else entry.get(name, 0) + value
    for kind, entry in summary.items():
        what, unit = attack.kinds.get(kind, (kind, "calls"))
        entry.update(what=what, unit=unit)
        for name in ("bytes_sent", "peak_held", "held_at_start", "connections", "seconds_open"):
            if name in entry:
                entry[name] = round(entry[name], 3) if name == "seconds_open" else int(entry[name])
    return summary


def _one(load: Loaded, index: int) -> Loaded:
    """The `index`-th job's calls of a load as a load of their own (same server CPU)."""

    result = load.results[index]
    return Loaded(
        measure([result], load.m.server_cpu_s),
        load.upstream,
        load.watched,
        load.cores,
        [result],
        load.beside,
    )


def failed_share(row: Row) -> float:
    """The share of the row's calls not answered OK."""
    calls = sum(row.m.codes.values())
    return (calls - row.m.codes.get("OK", 0)) / calls if calls else 1.0


def run_scenario(run: Run, name: str) -> None:
    """Scenario `name`: its gateway, the rounds of quiet and attacked phases, rows, verdicts."""

    attack = ATTACKS[name]
    plan = EDGE_PLANS.get(run.plan.name, EDGE_PLANS["quick"])
    rate = run.plan.attack_rate
    calls = max(1, round(rate * plan.seconds))
    run.log(
        f"{name}: bystander reads at {rate:g}/s over gRPC and over HTTP, alone and under "
        f"attack ({attack.label}) x {plan.rounds} rounds of {plan.seconds:g} s"
    )
    attacker_key = f"edge-{run.key[:16]}"
    loads: dict[str, list[Loaded]] = {"quiet": [], "attacked": []}
    with contextlib.ExitStack() as stack:
        # Spawned first: the process imports while the gateway starts.
        attackers = LoadPool(1, run._cpus(CLIENT_CPUS), nice=ATTACKER_NICE)
        stack.callback(attackers.close)
        gateway = run._start_gateway(
            f"gateway-{name}", edge_config(run.aws.proxy_url, run.key, attacker_key)
        )
        stack.callback(gateway.stop)
        bystanders: list[Any] = [
            UnaryJob(
                targets=(gateway.address,),
                method=DESCRIBE,
                request=b"",
                metadata=run.metadata,
                calls=calls,
                concurrency=8,
                channels=1,
                warmup=min(200, calls),
                trailers=True,
                rate=rate,
            ),
            PacedHttpReads(
                url=f"http://{gateway.http_address}{SERVICE}DescribeRegistry",
                body=b"{}",
                headers=run.metadata,
                calls=calls,
                rate=rate,
            ),
        ]
        job = attacker_job(name, gateway.address, gateway.http_address, attacker_key, plan.seconds)
        for _ in range(plan.rounds):
            loads["quiet"].append(run.load(bystanders, [gateway.pid]))
            loads["attacked"].append(run.load(bystanders, [gateway.pid], beside=(attackers, [job])))
            time.sleep(1.0)  # what the attack left (closing connections) settles
    _rows(run, name, attack, plan, loads)


def _rows(
    run: Run, name: str, attack: Attack, plan: EdgePlan, loads: dict[str, list[Loaded]]
) -> None:

    rate = run.plan.attack_rate
    where = "server cpu0, clients cpu1" if run.pin else "unpinned"
    summary = edge_summary(
        [r for load in loads["attacked"] for r in load.beside],
        plan.seconds * len(loads["attacked"]),
        attack,
    )
    rows: dict[tuple[str, str], Row] = {}
    for index, transport in enumerate(("gRPC", "HTTP")):
        setup = (
            f"bystander: open loop {rate:g}/s, "
            + (
                "1 channel"
                if transport == "gRPC"
                else f"{HTTP_BYSTANDER_CONNECTIONS} keep-alive connections"
            )
            + f"; attacker: 1 proc (nice 19); {where}"
        )
        for phase, title in (("quiet", "no attack"), ("attacked", "under attack")):
            row = run._row_of(
                f"{name}.{transport.lower()}.{phase}",
                "edge",
                f"{name}: bystander {transport} cached DescribeRegistry, {title}",
                1,
                [_one(load, index) for load in loads[phase]],
                setup,
            )
            row.extra.update(
                rate_per_s=rate,
                transport=transport,
                p99_ms_per_round=[round(_one(load, index).m.p99_ms, 3) for load in loads[phase]],
                phase_seconds=plan.seconds,
            )
            row.notes.append(
                "open loop: latency counts from each call's planned start; srv CPU is the "
                "gateway's in the phase (both bystanders, and the attack when there is one)"
            )
            rows[transport, phase] = row
        quiet, attacked = rows[transport, "quiet"], rows[transport, "attacked"]
        failed = failed_share(attacked)
        unbounded = failed > FAILED_SHARE_UNBOUNDED
        ratio = (
            math.inf
            if unbounded or quiet.m.p99_ms <= 0
            else round(attacked.m.p99_ms / quiet.m.p99_ms, 3)  # as the page shows it
        )
        attacked.extra.update(
            p99_goal=ATTACK_P99_GOAL,
            failed_share=round(failed, 4),
            attack=attack.method,
            attack_label=attack.label,
            attacker=summary,
        )
        if math.isfinite(ratio):
            attacked.extra["p99_vs_no_attack"] = ratio
        run._add(quiet)
        run._add(attacked)
        value = (
            f"unbounded: {failed:.1%} of reads not answered OK ({attacked.m.p99_ms:.2f} vs "
            f"{quiet.m.p99_ms:.2f} ms)"
            if unbounded
            else f"{ratio:.2f}x ({attacked.m.p99_ms:.2f} vs {quiet.m.p99_ms:.2f} ms)"
        )
        run.verdicts.append(
            Verdict(
                f"{name} ({attack.label}): bystander's {transport} cached-read p99 vs no attack",
                ratio <= ATTACK_P99_GOAL,
                value,
                f"<= {ATTACK_P99_GOAL:.2f}x",
                "target",
            )
        )
    for kind, entry in summary.items():
        run.log(
            f"    attacker {kind}: {entry['calls']} {entry['unit']}, {entry['codes']}, "
            + ", ".join(
                f"{k} {entry[k]}"
                for k in ("bytes_sent", "peak_held", "held_at_start")
                if k in entry
            )
            + f"; p50 {entry['p50_ms']} ms, max {entry['max_ms']} ms"
        )
    attacked_rows = [rows[t, "attacked"] for t in ("gRPC", "HTTP")]
    quiet_rows = [rows[t, "quiet"] for t in ("gRPC", "HTTP")]
    upstream = {k: v for row in attacked_rows for k, v in row.upstream.items()}
    answered = [
        f"{kind} {code} {n}"
        for kind, entry in summary.items()
        for code, n in entry["codes"].items()
        if code in ("OK", "answered 200") or code.startswith("HTTP 2")
    ]
    run.verdicts += [
        Verdict(
            f"{name} ({attack.label}): every bystander read under attack answered OK from the "
            "cache",
            all(_all_hits(row.m) for row in attacked_rows),
            "; ".join(
                f"{row.extra['transport']}: {_codes_and_cache(row.m)}" for row in attacked_rows
            ),
            "all OK, all hits",
            "target",
        ),
        Verdict(
            f"{name}: without the attack every bystander read answered OK from the cache",
            all(_all_hits(row.m) for row in quiet_rows),
            "; ".join(f"{row.extra['transport']}: {_codes_and_cache(row.m)}" for row in quiet_rows),
            "all OK, all hits",
            "check",
        ),
        Verdict(
            f"{name}: the attacker was served nothing and reached no AWS call",
            bool(summary) and not answered and not upstream,
            f"served: {', '.join(answered) or 'nothing'}; upstream {upstream or 0}",
            "nothing served, 0 upstream",
            "check",
        ),
    ]
