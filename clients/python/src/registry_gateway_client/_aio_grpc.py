"""The gRPC transport of the async client: one attempt on a grpc.aio channel.

Its blocking twin, `_sync_grpc.py`, is generated from this file by `scripts/unasync.py`.
"""

from __future__ import annotations

from typing import Any

import grpc

from registry_gateway_client._aio_only import with_call
from registry_gateway_client._errors import from_rpc_error
from registry_gateway_client._transport import Attempt, Reply
from registry_gateway_client.v1 import registry_pb2_grpc as pb_grpc


class GrpcTransport:
    """Sends each attempt on `channel` (closed by `close` only when `owns_channel`)."""

    def __init__(self, channel: grpc.aio.Channel, *, owns_channel: bool) -> None:
        self._channel = channel
        self._owns_channel = owns_channel
        self._stub = pb_grpc.RegistryConfigServiceStub(channel)

    async def unary(self, attempt: Attempt) -> Reply:
        # The generated stub's method of this RPC (its path, serializers, registered method).
        method: Any = getattr(self._stub, attempt.rpc)
        try:
            response, call = await with_call(
                method, attempt.request, timeout=attempt.timeout, metadata=attempt.metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc.code(), exc.details(), exc.trailing_metadata()) from exc
        return Reply(response, tuple(await call.trailing_metadata() or ()))

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()
