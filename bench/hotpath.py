"""`python -m bench --hotpath`: the gateway's own Python work per cached read, piece by piece.

The end-to-end figures say how much more server CPU a cached read costs than a bare call;
this says where that difference goes, without a network or a second process (so without
the noise of a shared machine): the real wrapper (`service.rpc.interceptor`) and servicer
(`service.rpc.servicer`) built as `service.app.server.Gateway` builds them, driven in one event loop
with a stand-in for grpc.aio's servicer context, and each step of the call path timed on
its own. What grpcio itself does per call (HTTP/2, HPACK, the trailers on the wire, the
poller thread) is not here: the end-to-end ablations in docs/performance.md cover that.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import math
import pstats
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from unittest import mock

import grpc

from service.app.server import Gateway as Server
from service.call import Call, begin
from service.config import GatewayConfig, from_mapping
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from service.pipeline.pipeline import request_id
from service.pipeline.reporters import AccessLogReporter, Outcome
from service.state.cache import CacheKey

ACCOUNT = "123456789012"
REGION = "us-east-1"
KEY = "hotpath-key"
METHOD = "/ecr.registry.v1.RegistryConfigService/DescribeRegistry"


class StandInContext:
    """The parts of grpc.aio's ServicerContext the wrapper and servicer use on a hit."""

    def __init__(self, metadata: tuple[tuple[str, str], ...], raw: bytes = b"") -> None:
        self._metadata = metadata
        self._raw = raw
        self.trailers: Any = None

    async def read(self) -> bytes:
        """The request message, already arrived (the wrapper reads it after authentication)."""
        return self._raw

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        """What the client sent (grpcio adds user-agent)."""
        return self._metadata

    def time_remaining(self) -> float | None:
        """The caller's deadline, 30 s as the load generator sends it (bench/loadgen.py):
        grpc.aio enforces it, so the gateway arms no timer of its own."""
        return 30.0

    def auth_context(self) -> dict[str, list[bytes]]:
        """A plaintext connection's auth context."""
        return {"transport_security_type": [b"insecure"]}

    def peer(self) -> str:
        """The caller's address (asked only when authentication fails)."""
        return "ipv4:127.0.0.1:50000"

    def set_trailing_metadata(self, metadata: Any) -> None:
        """Kept, as grpcio keeps it until the status is sent."""
        self.trailers = metadata

    async def abort(self, code: grpc.StatusCode, details: str, metadata: Any = ()) -> None:
        """A hit never aborts."""
        raise AssertionError(f"aborted: {code} {details}")


def _config() -> GatewayConfig:
    from service.auth.api_keys import hash_key

    return from_mapping(
        {
            "aws": {"region": REGION, "endpoint_url": "http://127.0.0.1:9"},
            "cache": {"ttl_seconds": 3600},
            "tenants": [
                {
                    "name": "bench",
                    "api_keys": [hash_key(KEY)],
                    "registries": [
                        {
                            "registry_id": ACCOUNT,
                            "regions": [REGION],
                            "operations": ["DescribeRegistry", "GetRegistryPolicy"],
                        }
                    ],
                }
            ],
        },
        {},
    )


class _Details:
    method = METHOD
    invocation_metadata = ()


async def _build() -> tuple[Any, Any, Any, Server]:
    """The real Gateway, built in this process; its interceptor and servicer captured as it
    hands them to grpc (so this follows however server.py wires them)."""
    captured: dict[str, Any] = {}
    real_server = grpc.aio.server
    real_add = pb_grpc.add_RegistryConfigServiceServicer_to_server

    def server(*args: Any, **kwargs: Any) -> Any:
        captured.setdefault("interceptors", kwargs.get("interceptors") or [])
        return real_server(*args, **kwargs)

    def add(servicer: Any, target: Any) -> None:
        captured["servicer"] = servicer
        real_add(servicer, target)

    with (
        mock.patch.object(grpc.aio, "server", server),
        mock.patch.object(pb_grpc, "add_RegistryConfigServiceServicer_to_server", add),
    ):
        gateway = Server(_config(), environ={})
    (interceptor,) = captured["interceptors"]
    servicer = captured["servicer"]
    response = pb.DescribeRegistryResponse(registry_id=ACCOUNT, etag="e" * 64)
    await servicer._ops._cache.put(CacheKey(ACCOUNT, REGION, "registry"), response)

    async def continuation(details: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            servicer.DescribeRegistry,
            request_deserializer=pb.DescribeRegistryRequest.FromString,
            response_serializer=pb.DescribeRegistryResponse.SerializeToString,
        )

    handler = await interceptor.intercept_service(continuation, _Details())
    assert handler is not None
    return handler, servicer, interceptor, gateway


async def _per_call(
    step: Callable[[], Awaitable[Any] | Any], calls: int, repeats: int = 5
) -> float:
    """Best-of-repeats µs per call of `step` (awaited when it returns an awaitable)."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        for _ in range(calls):
            result = step()
            if asyncio.iscoroutine(result):
                await result
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e6


async def measure(calls: int = 20000) -> tuple[list[tuple[str, float]], str]:
    """µs per call of the whole cached read and of each step; a cProfile of the whole."""
    handler, servicer, _interceptor, gateway = await _build()
    metadata = (("authorization", f"Bearer {KEY}"), ("user-agent", "grpc-python/1.85"))
    request = pb.DescribeRegistryRequest()
    raw = request.SerializeToString()
    context = StandInContext(metadata, raw)
    # Stream-unary: the wrapper runs at the headers and reads the message itself.
    handle = handler.stream_unary
    tenancy = gateway.pipeline.tenancy.current
    call = Call(
        "r" * 32,
        tenancy.authenticator.authenticate(metadata, None),
        "DescribeRegistry",
        asyncio.get_running_loop().time() + 10,
        tenancy,
    )
    target = tenancy.authorizer.authorize(call.tenant, call.rpc, "", "")
    hit_call = Call("r", call.identity, "DescribeRegistry", call.deadline, tenancy)
    hit_call.cache_outcome("hit")
    access_log = AccessLogReporter()
    hit_outcome = Outcome(
        METHOD,
        "DescribeRegistry",
        "r",
        call.identity,
        hit_call,
        None,
        grpc.StatusCode.OK,
        None,
        0.0003,
    )
    ops = servicer._ops
    validator = servicer._validator

    async def whole() -> Any:
        return await handle(None, context)  # raw bytes: parsed after authentication

    async def servicer_only() -> Any:
        begin(call)
        return await servicer.DescribeRegistry(request, call)

    async def timeout_only() -> None:
        # Its own cost: arming and cancelling the timer (nothing inside can time out).
        async with asyncio.timeout(10):  # noqa: ASYNC100
            pass

    async def cache_hit() -> Any:
        return (await ops.describe_registry(target)).answer()

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("whole cached read: wrapper + servicer + cache (in-process)", whole),
        ("  servicer.DescribeRegistry (authorize, validate, cache hit)", servicer_only),
        (
            "    target authorization",
            lambda: tenancy.authorizer.authorize(call.tenant, call.rpc, "", ""),
        ),
        ("    request validation", lambda: validator.check(request, target)),
        ("    read cache hit (operations + ReadCache + MemoryStore)", cache_hit),
        (
            "  authentication (bearer token, sha256, compare)",
            lambda: tenancy.authenticator.authenticate(metadata, context.auth_context()),
        ),
        (
            "  request id (a new one when the caller sends none)",
            lambda: request_id(metadata),
        ),
        (
            "  asyncio.timeout(budget) enter + exit (only when the gateway arms its own)",
            timeout_only,
        ),
        (
            "  Call(...) dataclass",
            lambda: Call("r", call.identity, "DescribeRegistry", 0.0, tenancy),
        ),
        (
            "  request parse (after authentication, within the byte limit)",
            lambda: pb.DescribeRegistryRequest.FromString(raw),
        ),
        (
            "  the call's log line, sampled out (a hit)",
            lambda: access_log.post_call(hit_outcome),
        ),
    ]
    metrics = gateway.metrics
    method_metrics = metrics.for_method(METHOD)
    steps += [
        ("  metrics: started", lambda: method_metrics.start()),
        (
            "  metrics: handled(OK, seconds) (count by code + histogram bucket)",
            lambda: method_metrics.handled(grpc.StatusCode.OK, 0.0003),
        ),
        ("  metrics: count_cache('hit')", lambda: metrics.count_cache("hit")),
    ]
    figures: list[tuple[str, float]] = []
    for name, step in steps:
        try:
            figures.append((name, await _per_call(step, calls)))
        except Exception as exc:  # a step written against internals that have since moved
            figures.append((f"{name} (n/a: {type(exc).__name__})", math.nan))
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        await whole()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(18)
    return figures, out.getvalue()


def main(calls: int = 20000) -> int:
    """Print the per-step figures and the profile."""
    figures, profile = asyncio.run(measure(calls))
    lines = [f"gateway Python work per cached DescribeRegistry ({calls} calls, best of 5):"]
    lines += [f"  {us:7.2f} us  {name}" for name, us in figures]
    lines += [
        "",
        "cProfile of the whole in-process call (tottime; profiling inflates small calls):",
    ]
    lines += profile.splitlines()[:40]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).resolve().parent / "results" / "hotpath.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote bench/results/{out.name}")
    return 0
