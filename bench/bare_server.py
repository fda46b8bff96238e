"""The baseline: a bare grpc.aio server of the same service, answering from memory.

No interceptors, no authentication, no cache lookup: each read RPC returns a response
message built once at start from the bytes the real gateway answered (so the response is
the same size, and protobuf serializes the same message). It is the ceiling for Python
gRPC on this machine, against which the gateway's cached reads are measured.

Run as `python -m bench.bare_server RESPONSES_JSON [LAYERS]`, where the JSON maps an RPC
name to its serialized response in hex; it logs `serving listen=127.0.0.1:PORT` on stderr.

LAYERS (comma-separated, for the ablation scenario) add, one at a time, what the gateway's
wrapper does at the gRPC level, so each one's cost can be read apart from the gateway's own
logic: `wrap` (one wrapping interceptor, its handler cached per method, as the gateway's),
and on top of it `trailers` (x-request-id from uuid4 and x-cache as trailing metadata),
`timeout` (asyncio.timeout around the handler), `context` (reads invocation metadata,
time remaining and the auth context).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeAlias

import grpc

from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"  # generic only in the stubs


class BareServicer:
    """Answers the two reads with prebuilt messages; any other RPC is UNIMPLEMENTED.

    Not a subclass of the generated servicer (whose every RPC is abstract, and the contract
    grows), but registered by the same generated function as the gateway's servicer.
    """

    def __init__(
        self, describe: pb.DescribeRegistryResponse, policy: pb.GetRegistryPolicyResponse
    ) -> None:
        self._describe = describe
        self._policy = policy

    async def DescribeRegistry(
        self, request: pb.DescribeRegistryRequest, context: Context
    ) -> pb.DescribeRegistryResponse:
        return self._describe

    async def GetRegistryPolicy(
        self, request: pb.GetRegistryPolicyRequest, context: Context
    ) -> pb.GetRegistryPolicyResponse:
        return self._policy

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        async def unimplemented(request: Any, context: Context) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"baseline: {name} not served")

        return unimplemented


def load_responses(path: Path) -> tuple[pb.DescribeRegistryResponse, pb.GetRegistryPolicyResponse]:
    """The two prebuilt responses from the JSON file of hex-encoded serialized messages."""
    raw = json.loads(path.read_text())
    describe = pb.DescribeRegistryResponse.FromString(bytes.fromhex(raw["DescribeRegistry"]))
    policy = pb.GetRegistryPolicyResponse.FromString(bytes.fromhex(raw["GetRegistryPolicy"]))
    return describe, policy


class LayersInterceptor(grpc.aio.ServerInterceptor):
    """One wrapping interceptor with some of the gateway wrapper's gRPC-level work."""

    def __init__(self, layers: set[str]) -> None:
        self._layers = layers
        self._wrapped: dict[str, Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        cached = self._wrapped.get(details.method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._wrap(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[details.method] = wrapped
        return wrapped

    def _wrap(self, inner: Callable[[Any, Context], Awaitable[Any]]) -> Any:
        trailers = "trailers" in self._layers
        timeout = "timeout" in self._layers
        reads = "context" in self._layers

        async def handle(request: Any, context: Context) -> Any:
            if reads:
                for key, _ in context.invocation_metadata() or ():
                    if key == "authorization":
                        break
                context.time_remaining()
                context.auth_context()
            if timeout:
                async with asyncio.timeout(10):
                    response = await inner(request, context)
            else:
                response = await inner(request, context)
            if trailers:
                context.set_trailing_metadata(
                    (("x-request-id", uuid.uuid4().hex), ("x-cache", "hit"))
                )
            return response

        return handle


async def serve(responses: Path, layers: set[str] | None = None) -> None:
    """Serve on a free loopback port until SIGTERM/SIGINT."""
    interceptors = [LayersInterceptor(layers)] if layers else []
    server = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
    servicer: Any = BareServicer(*load_responses(responses))
    pb_grpc.add_RegistryConfigServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"bare server serving listen=127.0.0.1:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> int:
    """Entry point: `python -m bench.bare_server RESPONSES_JSON [LAYERS]`."""
    layers = set(sys.argv[2].split(",")) - {""} if len(sys.argv) > 2 else set()
    asyncio.run(serve(Path(sys.argv[1]), layers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
