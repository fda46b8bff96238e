"""What the async client and its synchronous twin share: credentials, channels, requests.

Nothing here does I/O on a call; the two clients differ only in how they wait.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor_pb2 import MethodOptions
from google.protobuf.message import Message

from registry_gateway_client._errors import REQUEST_ID_KEY
from registry_gateway_client._retry import RetryPolicy
from registry_gateway_client.v1 import registry_pb2 as pb

__version__ = "0.3.0"

DEFAULT_TIMEOUT = 10.0
CACHE_KEY = "x-cache"
CACHE_CONTROL_KEY = "cache-control"
USER_AGENT = f"registry-gateway-client-python/{__version__}"

# The writes: every RPC the contract does not mark `idempotency_level = NO_SIDE_EFFECTS`.
# Retried only when safe (an etag or validate_only), see _retry.
_SERVICE = pb.DESCRIPTOR.services_by_name["RegistryConfigService"]
WRITE_RPCS = frozenset(
    method.name
    for method in _SERVICE.methods
    if method.GetOptions().idempotency_level != MethodOptions.NO_SIDE_EFFECTS
)

M = TypeVar("M", bound=Message)


class _Targeted(Protocol):
    """Every request of the service names its target (the contract's additive fields)."""

    registry_id: str
    region: str


@dataclass(frozen=True)
class Tls:
    """TLS to the gateway: the CA to trust and, for mTLS, this client's certificate.

    Paths to PEM files. `ca_file` None means the system's roots. `server_name` overrides
    the name the server certificate is checked against (when dialling an IP, say).
    """

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("Tls: give both cert_file and key_file, or neither")

    def credentials(self) -> grpc.ChannelCredentials:
        """The grpc channel credentials these files make."""

        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )

    def options(self) -> list[tuple[str, Any]]:
        """Channel options this TLS setting needs."""
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def channel_options(tls: Tls | None, extra: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    """The options every channel the clients open gets."""
    options: list[tuple[str, Any]] = [("grpc.primary_user_agent", USER_AGENT)]
    options += tls.options() if tls is not None else []
    options += list((extra or {}).items())
    return options


@dataclass
class CallInfo:
    """What one call learned besides its response; pass one as `info=` to have it filled.

    `cache` is the gateway's `x-cache` trailer on reads (`hit`, `miss` or `stale`), empty on
    writes; `attempts` counts the attempts the retries made (1 when the first succeeded).
    """

    request_id: str = ""
    cache: str = ""
    attempts: int = 0
    trailing_metadata: dict[str, str] = field(default_factory=dict)

    def record(self, trailing_metadata: Any, attempts: int) -> None:
        """Fill in from a call's trailing metadata."""
        text = {k: v for k, v in (trailing_metadata or ()) if isinstance(v, str)}
        self.trailing_metadata = text
        self.request_id = text.get(REQUEST_ID_KEY, "")
        self.cache = text.get(CACHE_KEY, "")
        self.attempts = attempts


def bearer_metadata(token: str | None, no_cache: bool) -> tuple[tuple[str, str], ...]:
    """Call metadata: the bearer token (API key or JWT), and `cache-control: no-cache`."""
    metadata: list[tuple[str, str]] = []
    if token:
        metadata.append(("authorization", f"Bearer {token}"))
    if no_cache:
        metadata.append((CACHE_CONTROL_KEY, "no-cache"))
    return tuple(metadata)


def check_credentials(api_key: str | None, token_provider: object | None) -> None:
    """At most one kind of bearer credential."""
    if api_key is not None and token_provider is not None:
        raise ValueError("give api_key or token_provider, not both")


def prepare(
    kind: type[M],
    request: M | None,
    fields: Mapping[str, Any],
    *,
    registry_id: str | None,
    region: str | None,
) -> M:
    """A copy of `request` (or a new `kind`) with the given fields set, and the client's
    default registry and region where neither the request nor the call names one."""
    message = kind()
    if request is not None:
        if not isinstance(request, kind):
            raise TypeError(f"expected {kind.__name__}, got {type(request).__name__}")
        message.CopyFrom(request)
    for name, value in fields.items():
        if value is None:
            continue
        if name == "policy_text" and not isinstance(value, str):
            value = json.dumps(value, separators=(",", ":"))
        if name == "replication_configuration":
            getattr(message, name).CopyFrom(replication_configuration(value))
            continue
        if name == "rules":
            # Messages or AWS-shaped JSON rules ({"destinations": [...], "repositoryFilters": ...}).
            del message.rules[:]  # type: ignore[attr-defined]
            for rule in value:
                parsed = (
                    rule
                    if isinstance(rule, pb.ReplicationRule)
                    else json_format.ParseDict(dict(rule), pb.ReplicationRule())
                )
                message.rules.append(parsed)  # type: ignore[attr-defined]
            continue
        if name == "statements_json" and not isinstance(value, str):
            value = json.dumps(list(value), separators=(",", ":"))
        setattr(message, name, value)
    target = cast(_Targeted, message)
    if registry_id and not target.registry_id:
        target.registry_id = registry_id
    if region and not target.region:
        target.region = region
    return message


def replication_configuration(
    value: pb.ReplicationConfiguration | Mapping[str, Any],
) -> pb.ReplicationConfiguration:
    """A ReplicationConfiguration from the message or from AWS-shaped JSON
    (`{"rules": [{"destinations": [{"region": ..., "registryId": ...}], ...}]}`)."""
    if isinstance(value, pb.ReplicationConfiguration):
        return value
    return json_format.ParseDict(dict(value), pb.ReplicationConfiguration())


def retry_safe(rpc: str, request: Message, policy: RetryPolicy) -> bool:
    """Whether repeating this call cannot undo someone else's change (see _retry)."""
    if rpc not in WRITE_RPCS:
        return True
    if getattr(request, "etag", "") or getattr(request, "validate_only", False):
        return True
    return policy.retry_writes_without_etag
