"""The load generator: long-lived client processes that run fixed-count jobs on command.

Each client process (multiprocessing `spawn`: a fresh interpreter, no inherited gRPC state)
runs one event loop for its whole life and takes jobs from a pipe. A job goes in three
steps, so the parent can read the server's CPU time around the timed part only:

1. prepare: open the job's channels, wait until they are connected, make warm-up calls;
   answer `ready`;
2. on `go`: make exactly the job's number of calls with its concurrency, timing each one;
3. answer `done` with the latencies, status codes, `x-cache` trailers and the process's
   own CPU time during step 2.

Jobs run in several pools at once start together too (`run_together`): the attack scenario
runs its bystander in the run's pool and its attacker in a process of its own.

gRPC calls are made with raw bytes (no serializer): the client pays no protobuf cost, so
more of the one client core goes to driving load. Connect calls (HTTP/1.1 + JSON, `HttpJob`)
go over httpcore, the keep-alive HTTP/1.1 client under httpx: one connection per call in
flight (HTTP/1.1 carries one call at a time), each driven by its own loop, with no pool in
between; the JSON body is sent as it is and the answer's body read, not parsed.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import multiprocessing
import os
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import grpc
import httpcore

# Each channel its own TCP connection: grpcio otherwise shares one subchannel between
# channels to the same target with the same arguments.
_CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
_PROTOCOL_TIMEOUT_SECONDS = 600.0
CACHE_TRAILER = "x-cache"
SERVICE = "/ecr.registry.v1.RegistryConfigService/"

Metadata: TypeAlias = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class UnaryJob:
    """Unary gRPC calls of one method with one request, from one client process."""

    targets: tuple[str, ...]  # host:port; channels are spread over them round-robin
    method: str  # full method path
    request: bytes  # serialized request
    metadata: Metadata
    calls: int
    concurrency: int  # calls in flight at once; `calls` at once when `burst`
    channels: int
    warmup: int = 0
    trailers: bool = False  # read trailing metadata (x-cache) of each call
    burst: bool = False  # fire every call at once (a storm)
    timeout: float = 30.0
    # Open loop: call i starts at i / rate seconds whatever the others are doing, and its
    # latency counts from then (a stalled server is not let off by a waiting client).
    # `concurrency` then applies to the warm-up only.
    rate: float = 0.0


@dataclass(frozen=True)
class HttpJob:
    """Unary Connect calls (HTTP/1.1 POST, JSON) of one method with one request, from one
    client process: `concurrency` keep-alive connections, one call at a time on each.

    Each answer's status (200 is `OK`, else `HTTP <status>`) and `x-cache` header (`none`
    when it has none) are counted, as a gRPC call's code and trailer are.
    """

    url: str  # http://host:port/<package.Service>/<Method>
    body: bytes  # the request as JSON
    headers: Metadata  # besides content-type (application/json)
    calls: int
    concurrency: int  # calls in flight at once: connections
    warmup: int = 0  # after one call on each connection (which opens it)
    timeout: float = 30.0


@dataclass(frozen=True)
class WriteJob:
    """Writers doing read-etag-then-PutReplicationConfiguration loops on one registry."""

    targets: tuple[str, ...]
    metadata: Metadata
    writers: int
    attempts: int  # per writer
    first_writer: int  # writer numbers are global across processes (labels stay unique)
    registry_id: str
    destination_region: str
    label: str  # run label, part of every written filter (so each write's content is unique)
    timeout: float = 30.0


@dataclass(frozen=True)
class AwsJob:
    """The same reads straight to AWS (the stand-in) with aioboto3: one long-lived client."""

    endpoint_url: str
    region: str
    operation: str  # describe_registry | get_registry_policy
    calls: int
    concurrency: int
    warmup: int = 0


@dataclass(frozen=True)
class AttackJob:
    """One connection sending, as fast as it can, messages a gateway must refuse.

    Two loops share the one channel: max-size bytes that are no valid request, without
    credentials, to `undecodable_method`; and, with the attacker tenant's own credentials, a
    valid validate_only write followed by as many unknown fields as fit, to `flood_method`.
    Each loop makes one call at a time, the next as soon as the last one failed; it stops
    after `max_calls` or once `seconds` have passed, whichever comes first.
    """

    target: str  # host:port, on loopback only
    undecodable_method: str
    flood_method: str
    flood_metadata: Metadata
    message_bytes: int  # each message's size: at most the server's max_message_bytes
    seconds: float
    max_calls: int  # per loop
    timeout: float = 30.0


class SelfRunningJob(Protocol):
    """A job defined outside this module (bench/edge_attacks.py): it runs itself, calling
    `go` once prepared, and returns its results (a JobResult or a subclass of it)."""

    async def run(self, go: Callable[[], Awaitable[None]]) -> JobResult: ...


Job: TypeAlias = UnaryJob | HttpJob | WriteJob | AwsJob | AttackJob | SelfRunningJob


@dataclass
class JobResult:
    """What one client process measured in the timed part of a job."""

    latencies: bytes  # array('d') of seconds, one per timed call
    started: float  # time.perf_counter() (CLOCK_MONOTONIC: comparable across processes)
    finished: float
    codes: dict[str, int]
    cache: dict[str, int] = field(default_factory=dict)  # x-cache trailer values
    client_cpu_seconds: float = 0.0
    # Writes that succeeded: (etag sent as precondition, etag answered, filter written).
    writes: list[tuple[str, str, str]] = field(default_factory=list)
    # An attack's calls per loop ("undecodable", "flood"): array('d') of seconds each.
    kind_latencies: dict[str, bytes] = field(default_factory=dict)
    # The first status message seen per failed code (what made a call fail, in its words).
    details: dict[str, str] = field(default_factory=dict)

    def latency_list(self) -> list[float]:
        """The latencies as floats (seconds)."""
        values = array.array("d")
        values.frombytes(self.latencies)
        return values.tolist()


class _Recorder:
    def __init__(self) -> None:
        self.latencies = array.array("d")
        self.codes: Counter[str] = Counter()
        self.cache: Counter[str] = Counter()
        self.writes: list[tuple[str, str, str]] = []
        self.details: dict[str, str] = {}

    def failed(self, exc: grpc.aio.AioRpcError, started: float, label: str = "") -> str:
        """The code's name; the first message of each code kept, with when it came."""
        code: str = exc.code().name
        if (label or code) not in self.details:
            after = time.perf_counter() - started
            self.details[label or code] = f"{str(exc.details() or '')[:300]} (after {after:.3f} s)"
        return code

    def result(self, started: float, finished: float, cpu: float) -> JobResult:
        return JobResult(
            latencies=self.latencies.tobytes(),
            started=started,
            finished=finished,
            codes=dict(self.codes),
            cache=dict(self.cache),
            client_cpu_seconds=cpu,
            writes=self.writes,
            details=self.details,
        )


async def _run_unary(job: UnaryJob, go: Callable[[], Awaitable[None]]) -> JobResult:
    channels = [
        grpc.aio.insecure_channel(job.targets[i % len(job.targets)], options=_CHANNEL_OPTIONS)
        for i in range(job.channels)
    ]
    try:
        await asyncio.gather(*(ch.channel_ready() for ch in channels))
        stubs: list[Any] = [
            ch.unary_unary(job.method, request_serializer=None, response_deserializer=None)
            for ch in channels
        ]
        recorder = _Recorder()
        left = [0]

        async def one(stub: Any, due: float | None = None) -> None:
            t0 = time.perf_counter() if due is None else due
            try:
                call = stub(job.request, metadata=job.metadata, timeout=job.timeout)
                await call
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = recorder.failed(exc, t0)
            if job.trailers:
                for key, value in await call.trailing_metadata() or ():
                    if key == CACHE_TRAILER:
                        recorder.cache[str(value)] += 1
            recorder.latencies.append(time.perf_counter() - t0)
            recorder.codes[code] += 1

        async def worker(index: int) -> None:
            stub = stubs[index % len(stubs)]
            while left[0] > 0:
                left[0] -= 1
                await one(stub)

        async def run(calls: int, concurrency: int) -> None:
            left[0] = calls
            if job.burst:
                await asyncio.gather(*(one(stubs[i % len(stubs)]) for i in range(calls)))
            else:
                await asyncio.gather(*(worker(i) for i in range(min(concurrency, calls))))

        async def paced(calls: int) -> None:
            start = time.perf_counter()
            tasks = []
            for i in range(calls):
                due = start + i / job.rate
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                tasks.append(asyncio.ensure_future(one(stubs[i % len(stubs)], due)))
            await asyncio.gather(*tasks)

        if job.warmup:
            await run(job.warmup, job.concurrency)
            recorder = _Recorder()
        await go()
        cpu0, t0 = time.process_time(), time.perf_counter()
        if job.rate > 0:
            await paced(job.calls)
        else:
            await run(job.calls, job.concurrency)
        t1, cpu1 = time.perf_counter(), time.process_time()
        return recorder.result(t0, t1, cpu1 - cpu0)
    finally:
        for ch in channels:
            await ch.close()


# What a call can fail with short of an answer: connect, read or write errors, timeouts, a
# connection the server closed or answered garbage on.
_HTTP_FAILURES = (
    httpcore.NetworkError,
    httpcore.TimeoutException,
    httpcore.ProtocolError,
    httpcore.ConnectionNotAvailable,
)


def _http_connection(url: httpcore.URL) -> httpcore.AsyncHTTPConnection:
    # A connection of its own, not httpcore's pool: the pool scans every connection and
    # makes a lock and an event per request, which would cost the client more than the
    # call itself.
    return httpcore.AsyncHTTPConnection(httpcore.Origin(url.scheme, url.host, url.port or 80))


async def _run_http(job: HttpJob, go: Callable[[], Awaitable[None]]) -> JobResult:
    url = httpcore.URL(job.url)
    headers = [
        (b"content-type", b"application/json"),
        *((k.encode("latin-1"), v.encode("latin-1")) for k, v in job.headers),
    ]
    timeouts = {"timeout": dict.fromkeys(("connect", "read", "write", "pool"), job.timeout)}
    connections = [_http_connection(url) for _ in range(max(1, job.concurrency))]
    recorder = _Recorder()
    left = [0]

    async def one(index: int) -> None:
        t0 = time.perf_counter()
        try:
            response = await connections[index].request(
                b"POST", url, headers=headers, content=job.body, extensions=timeouts
            )
        except _HTTP_FAILURES as exc:
            code = type(exc).__name__
            recorder.details.setdefault(
                code, f"{str(exc)[:300]} (after {time.perf_counter() - t0:.3f} s)"
            )
            # A failed connection takes no more calls: the next one opens a new one.
            await connections[index].aclose()
            connections[index] = _http_connection(url)
        else:
            code = "OK" if response.status == 200 else f"HTTP {response.status}"
            if code != "OK" and code not in recorder.details:
                recorder.details[code] = response.content[:300].decode("utf-8", "replace")
            cache = next((v for k, v in response.headers if k.lower() == b"x-cache"), b"none")
            recorder.cache[cache.decode("latin-1")] += 1
        recorder.latencies.append(time.perf_counter() - t0)
        recorder.codes[code] += 1

    async def worker(index: int) -> None:
        while left[0] > 0:
            left[0] -= 1
            await one(index)

    async def run(calls: int) -> None:
        left[0] = calls
        await asyncio.gather(*(worker(i) for i in range(min(len(connections), calls))))

    try:
        # Every connection open (and the server's first answer on it) before the timing.
        await asyncio.gather(*(one(i) for i in range(len(connections))))
        if job.warmup:
            await run(job.warmup)
        recorder = _Recorder()
        await go()
        cpu0, t0 = time.process_time(), time.perf_counter()
        await run(job.calls)
        t1, cpu1 = time.perf_counter(), time.process_time()
        return recorder.result(t0, t1, cpu1 - cpu0)
    finally:
        for connection in connections:
            await connection.aclose()


def _replication_request(registry_id: str, region: str, filter_value: str, etag: str) -> bytes:
    from service.gen.v1 import registry_pb2 as pb

    rule = pb.ReplicationRule(
        destinations=[pb.ReplicationDestination(region=region, registry_id=registry_id)],
        repository_filters=[pb.RepositoryFilter(filter=filter_value, filter_type="PREFIX_MATCH")],
    )
    return pb.PutReplicationConfigurationRequest(
        replication_configuration=pb.ReplicationConfiguration(rules=[rule]), etag=etag
    ).SerializeToString()


async def _run_writes(job: WriteJob, go: Callable[[], Awaitable[None]]) -> JobResult:
    from service.gen.v1 import registry_pb2 as pb

    channels = [
        grpc.aio.insecure_channel(job.targets[i % len(job.targets)], options=_CHANNEL_OPTIONS)
        for i in range(max(1, min(job.writers, 4)))
    ]
    try:
        await asyncio.gather(*(ch.channel_ready() for ch in channels))
        describe: list[Any] = [
            ch.unary_unary(
                SERVICE + "DescribeRegistry",
                request_serializer=None,
                response_deserializer=pb.DescribeRegistryResponse.FromString,
            )
            for ch in channels
        ]
        put: list[Any] = [
            ch.unary_unary(
                SERVICE + "PutReplicationConfiguration",
                request_serializer=None,
                response_deserializer=pb.PutReplicationConfigurationResponse.FromString,
            )
            for ch in channels
        ]
        recorder = _Recorder()
        empty = pb.DescribeRegistryRequest().SerializeToString()

        async def writer(index: int) -> None:
            number = job.first_writer + index
            read, write = describe[index % len(channels)], put[index % len(channels)]
            for attempt in range(job.attempts):
                current = await read(empty, metadata=job.metadata, timeout=job.timeout)
                label = f"bench-{job.label}-w{number}-n{attempt}"
                request = _replication_request(
                    job.registry_id, job.destination_region, label, current.etag
                )
                t0 = time.perf_counter()
                try:
                    answer = await write(request, metadata=job.metadata, timeout=job.timeout)
                    recorder.writes.append((current.etag, answer.etag, label))
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                recorder.latencies.append(time.perf_counter() - t0)
                recorder.codes[code] += 1

        await go()
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(writer(i) for i in range(job.writers)))
        t1, cpu1 = time.perf_counter(), time.process_time()
        return recorder.result(t0, t1, cpu1 - cpu0)
    finally:
        for ch in channels:
            await ch.close()


async def _run_aws(job: AwsJob, go: Callable[[], Awaitable[None]]) -> JobResult:
    import aioboto3
    from botocore.exceptions import ClientError

    session = aioboto3.Session(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto's placeholder
    )
    async with session.client(
        "ecr", region_name=job.region, endpoint_url=job.endpoint_url
    ) as client:
        operation = getattr(client, job.operation)
        recorder = _Recorder()
        left = [0]

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                t0 = time.perf_counter()
                try:
                    await operation()
                    code = "OK"
                except ClientError as exc:
                    code = str(exc.response.get("Error", {}).get("Code", "ClientError"))
                recorder.latencies.append(time.perf_counter() - t0)
                recorder.codes[code] += 1

        async def run(calls: int) -> None:
            left[0] = calls
            await asyncio.gather(*(worker() for _ in range(min(job.concurrency, calls))))

        if job.warmup:
            await run(job.warmup)
            recorder = _Recorder()
        await go()
        cpu0, t0 = time.process_time(), time.perf_counter()
        await run(job.calls)
        t1, cpu1 = time.perf_counter(), time.process_time()
        return recorder.result(t0, t1, cpu1 - cpu0)


def undecodable_request(size: int) -> bytes:
    """At most `size` bytes that are no valid request of any of the service's RPCs.

    Field 10 (a varint, unknown to every request) repeated, then field 1 declaring 5 bytes
    where 2 remain: the parser reads all the way to the end before it can refuse.
    """
    tail = b"\x0a\x05ab"
    return b"\x50\x00" * max(0, (size - len(tail)) // 2) + tail


FLOOD_FIELD = b"\xf8\x07\x00"  # field 127, varint 0: unknown to every message, 3 bytes


def unknown_field_flood(size: int) -> bytes:
    """At most `size` bytes: a valid validate_only PutReplicationConfiguration request (an
    empty configuration), then as many unknown fields as fit."""
    from service.gen.v1 import registry_pb2 as pb

    head = pb.PutReplicationConfigurationRequest(
        replication_configuration=pb.ReplicationConfiguration(), validate_only=True
    ).SerializeToString()
    return head + FLOOD_FIELD * max(0, (size - len(head)) // len(FLOOD_FIELD))


def loopback_only(target: str) -> str:
    """`target` (host:port) when its host is a loopback address; ValueError otherwise."""
    host = target.rpartition(":")[0].strip("[]")
    try:
        loopback = host == "localhost" or ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"an attack goes to a loopback address only, not {target!r}")
    return target


async def _run_attack(job: AttackJob, go: Callable[[], Awaitable[None]]) -> JobResult:
    channel = grpc.aio.insecure_channel(loopback_only(job.target), options=_CHANNEL_OPTIONS)
    try:
        await channel.channel_ready()
        loops: list[tuple[str, Any, bytes, Metadata]] = [
            (
                "undecodable",
                channel.unary_unary(
                    job.undecodable_method, request_serializer=None, response_deserializer=None
                ),
                undecodable_request(job.message_bytes),
                (),
            ),
            (
                "flood",
                channel.unary_unary(
                    job.flood_method, request_serializer=None, response_deserializer=None
                ),
                unknown_field_flood(job.message_bytes),
                job.flood_metadata,
            ),
        ]
        recorder = _Recorder()
        kinds = {name: array.array("d") for name, *_ in loops}

        async def attack(
            end: float, name: str, stub: Any, payload: bytes, metadata: Metadata
        ) -> None:
            for _ in range(job.max_calls):
                if time.perf_counter() >= end:
                    return
                t0 = time.perf_counter()
                try:
                    await stub(payload, metadata=metadata, timeout=job.timeout)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    # Expected: the point is what refusing costs the server, not the answer.
                    code = recorder.failed(exc, t0, f"{name} {exc.code().name}")
                elapsed = time.perf_counter() - t0
                recorder.latencies.append(elapsed)
                kinds[name].append(elapsed)
                recorder.codes[f"{name} {code}"] += 1
                if code == "UNAVAILABLE":
                    await asyncio.sleep(0.01)  # the connection is being re-made: do not spin

        await go()
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(attack(t0 + job.seconds, *loop) for loop in loops))
        t1, cpu1 = time.perf_counter(), time.process_time()
        result = recorder.result(t0, t1, cpu1 - cpu0)
        result.kind_latencies = {name: values.tobytes() for name, values in kinds.items()}
        return result
    finally:
        await channel.close()


async def _serve_jobs(conn: Connection) -> None:
    async def receive() -> Any:
        return await asyncio.to_thread(conn.recv)

    while True:
        job = await receive()
        if job is None:
            return

        async def go() -> None:
            conn.send(("ready", None))
            command = await receive()
            if command != "go":
                raise RuntimeError(f"expected 'go', got {command!r}")

        try:
            result: JobResult
            if isinstance(job, UnaryJob):
                result = await _run_unary(job, go)
            elif isinstance(job, HttpJob):
                result = await _run_http(job, go)
            elif isinstance(job, WriteJob):
                result = await _run_writes(job, go)
            elif isinstance(job, AttackJob):
                result = await _run_attack(job, go)
            elif isinstance(job, AwsJob):
                result = await _run_aws(job, go)
            else:
                result = await job.run(go)
            conn.send(("done", result))
        except Exception:
            conn.send(("error", traceback.format_exc()))


def _client_main(conn: Connection, cpus: set[int] | None, nice: int = 0) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    if nice:
        # Per thread on Linux: every thread there is now, and those made later inherit it.
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
    asyncio.run(_serve_jobs(conn))


class LoadError(RuntimeError):
    """A client process failed a job (its traceback is the message)."""


class LoadPool:
    """Client processes kept for the whole run (spawning one costs ~0.5 s of imports)."""

    def __init__(self, processes: int, cpus: set[int] | None, *, nice: int = 0) -> None:
        context = multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for index in range(processes):
            parent, child = context.Pipe()
            proc = context.Process(
                target=_client_main,
                args=(child, cpus, nice),
                name=f"bench-client-{index}",
                daemon=True,
            )
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    @property
    def size(self) -> int:
        """How many client processes there are."""
        return len(self._conns)

    @property
    def pids(self) -> list[int]:
        """The client processes' pids."""
        return [int(p.pid) for p in self._procs]

    def run(
        self,
        jobs: Sequence[Job],
        on_ready: Callable[[], None] = lambda: None,
        on_done: Callable[[], None] = lambda: None,
    ) -> list[JobResult]:
        """Run one job per client process (the first len(jobs)); all start timing together.

        `on_ready` runs when every process is prepared, just before `go`; `on_done` as soon
        as every process has finished its timed calls.
        """
        return run_together([(self, jobs)], on_ready, on_done)[0]

    def _send(self, jobs: Sequence[Job]) -> list[Connection]:
        if len(jobs) > self.size:
            raise ValueError(f"{len(jobs)} jobs for {self.size} client processes")
        conns = self._conns[: len(jobs)]
        for conn, job in zip(conns, jobs, strict=True):
            conn.send(job)
        return conns

    @staticmethod
    def _expect(conn: Connection, kind: str) -> Any:
        if not conn.poll(_PROTOCOL_TIMEOUT_SECONDS):
            raise LoadError(f"a client process did not answer {kind!r} in time")
        answer, payload = conn.recv()
        if answer == "error":
            raise LoadError(str(payload))
        if answer != kind:
            raise LoadError(f"expected {kind!r} from a client process, got {answer!r}")
        return payload

    def close(self) -> None:
        """Stop every client process."""
        for conn in self._conns:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()


def run_together(
    groups: Sequence[tuple[LoadPool, Sequence[Job]]],
    on_ready: Callable[[], None] = lambda: None,
    on_done: Callable[[], None] = lambda: None,
) -> list[list[JobResult]]:
    """Jobs in several pools, all timing from the same `go`; the results per pool."""
    conns = [pool._send(jobs) for pool, jobs in groups]
    for conn in (c for group in conns for c in group):
        LoadPool._expect(conn, "ready")
    on_ready()
    for conn in (c for group in conns for c in group):
        conn.send("go")
    results = [[LoadPool._expect(conn, "done") for conn in group] for group in conns]
    on_done()
    return [[r for r in group if isinstance(r, JobResult)] for group in results]


def split(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near-equal non-negative integers."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
