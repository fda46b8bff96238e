"""Typed Python client of the Registry Config Gateway (gRPC service ecr.registry.v1).

```python
from registry_gateway_client import RegistryConfigClient, EtagMismatch

async with RegistryConfigClient("gateway:50051", api_key=KEY) as client:
    registry = await client.describe_registry()
```

`RegistryConfigClient` is the asyncio client, `SyncRegistryConfigClient` its blocking
twin; requests and responses are the generated messages of the proto package
`ecr.registry.v1`, shipped in this package as `registry_gateway_client.v1.registry_pb2`
(`registry_connect`, the Connect client, needs the `connect` extra). Failures raise the
exceptions listed in `_errors`, all subclasses of `RegistryGatewayError`.
"""

from registry_gateway_client._aio import RegistryConfigClient
from registry_gateway_client._core import CallInfo, Tls, __version__
from registry_gateway_client._errors import (
    Aborted,
    DeadlineExceeded,
    EtagMismatch,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaViolation,
    RegistryGatewayError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    WriteOverwritten,
    from_rpc_error,
)
from registry_gateway_client._retry import NO_RETRY, RetryPolicy
from registry_gateway_client._sync import SyncRegistryConfigClient

__all__ = [
    "NO_RETRY",
    "Aborted",
    "CallInfo",
    "DeadlineExceeded",
    "EtagMismatch",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "QuotaViolation",
    "RegistryConfigClient",
    "RegistryGatewayError",
    "ResourceExhausted",
    "RetryPolicy",
    "SyncRegistryConfigClient",
    "Tls",
    "Unauthenticated",
    "Unavailable",
    "WriteOverwritten",
    "__version__",
    "from_rpc_error",
]
