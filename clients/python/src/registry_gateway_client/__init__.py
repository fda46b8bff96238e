"""Typed Python client of the Registry Config Gateway (gRPC service ecr.registry.v1).

```python
from registry_gateway_client import RegistryConfigClient, EtagMismatch

async with RegistryConfigClient("gateway:50051", api_key=KEY) as client:
    registry = await client.describe_registry()
```

`RegistryConfigClient` is the asyncio client, `SyncRegistryConfigClient` its blocking
twin; either speaks gRPC to a `host:port` target, or Connect to an `http(s)://` URL (the
`connect` extra). Requests and responses are the generated messages of the proto package
`ecr.registry.v1`, shipped in this package as `registry_gateway_client.v1.registry_pb2`
(`registry_connect`, the generated Connect client, needs the `connect` extra). Every failure
raises one of the exceptions listed in `_errors`, all subclasses of `RegistryGatewayError`.
See clients/python/README.md.
"""

from registry_gateway_client._aio import (
    AsyncConfigChange,
    AsyncRulesChange,
    AsyncStatementsChange,
    AsyncTokenProvider,
    RegistryConfigClient,
)
from registry_gateway_client._core import (
    CallInfo,
    CallMetadata,
    PolicyRestored,
    ReplicationRestored,
    Resource,
    Restored,
    Tls,
    __version__,
)
from registry_gateway_client._errors import (
    CLIENT_DOMAIN,
    DOMAIN,
    Aborted,
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    EtagMismatch,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    QuotaViolation,
    RegistryGatewayError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    VersionNotFound,
    VersionNotRestorable,
    WriteOverwritten,
    error_class,
    from_rpc_error,
    from_status,
)
from registry_gateway_client._retry import NO_RETRY, RetryEvent, RetryPolicy, retryable
from registry_gateway_client._sync import (
    ConfigChange,
    RulesChange,
    StatementsChange,
    SyncRegistryConfigClient,
    TokenProvider,
)
from registry_gateway_client._transport import (
    AsyncInterceptor,
    AsyncProceed,
    Attempt,
    Interceptor,
    Proceed,
    Reply,
)

__all__ = [
    "CLIENT_DOMAIN",
    "DOMAIN",
    "NO_RETRY",
    "Aborted",
    "AlreadyExists",
    "AsyncConfigChange",
    "AsyncInterceptor",
    "AsyncProceed",
    "AsyncRulesChange",
    "AsyncStatementsChange",
    "AsyncTokenProvider",
    "Attempt",
    "CallInfo",
    "CallMetadata",
    "Cancelled",
    "ConfigChange",
    "DeadlineExceeded",
    "EtagMismatch",
    "FailedPrecondition",
    "FieldViolation",
    "Interceptor",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "PolicyRestored",
    "Proceed",
    "QuotaViolation",
    "RegistryConfigClient",
    "RegistryGatewayError",
    "ReplicationRestored",
    "Reply",
    "Resource",
    "ResourceExhausted",
    "Restored",
    "RetryEvent",
    "RetryPolicy",
    "RulesChange",
    "StatementsChange",
    "SyncRegistryConfigClient",
    "Tls",
    "TokenProvider",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "VersionNotFound",
    "VersionNotRestorable",
    "WriteOverwritten",
    "__version__",
    "error_class",
    "from_rpc_error",
    "from_status",
    "retryable",
]
