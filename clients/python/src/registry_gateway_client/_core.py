"""What the async client and its synchronous twin share: credentials, channels, requests,
metadata.

Nothing here does I/O on a call; the two clients differ only in how they wait.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias, TypeVar, cast

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor_pb2 import MethodOptions
from google.protobuf.message import Message

from registry_gateway_client._errors import (
    REQUEST_ID_KEY,
    InvalidArgument,
    RegistryGatewayError,
    client_error,
)
from registry_gateway_client._retry import RetryPolicy
from registry_gateway_client._transport import Metadata
from registry_gateway_client.v1 import registry_pb2 as pb

__version__ = "0.3.0"

DEFAULT_TIMEOUT = 10.0
CACHE_KEY = "x-cache"
UNVERIFIED_DESTINATIONS_KEY = "x-unverified-destinations"
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

#: Per-call metadata a caller adds (`metadata=`): pairs, or a mapping of text values.
CallMetadata: TypeAlias = Sequence[tuple[str, str]] | Mapping[str, str]
#: A resource of the configuration history: the proto enum, or its short name.
Resource: TypeAlias = Literal["replication", "policy"] | pb.HistoryResource.ValueType
#: What `restore` answers for the replication configuration: the whole configuration's
#: write, or (a slice tenant) the slice's.
ReplicationRestored: TypeAlias = (
    pb.PutReplicationConfigurationResponse | pb.PutReplicationRulesResponse
)
#: What `restore` answers for the registry policy: the policy written back, deleted (the
#: version was "no policy"), or (a slice tenant) the slice's statements written back.
PolicyRestored: TypeAlias = (
    pb.PutRegistryPolicyResponse | pb.DeleteRegistryPolicyResponse | pb.PutPolicyStatementsResponse
)
#: What `restore` answers when the resource is known only at run time.
Restored: TypeAlias = ReplicationRestored | PolicyRestored
#: Rules as a caller gives them: messages, or AWS-shaped JSON rules.
RulesInput: TypeAlias = Sequence[pb.ReplicationRule | Mapping[str, Any]]
#: Policy statements as a caller gives them: parsed JSON objects.
StatementsInput: TypeAlias = Sequence[Mapping[str, Any]]
_RESOURCES: dict[str, pb.HistoryResource.ValueType] = {
    "replication": pb.HISTORY_RESOURCE_REPLICATION,
    "policy": pb.HISTORY_RESOURCE_POLICY,
}
# Keys the client or the transport own: a caller's metadata may not set them.
_RESERVED_PREFIXES = ("grpc-", "connect-", ":")
_RESERVED_KEYS = frozenset({"content-type", "te", "content-encoding", "user-agent"})


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
    writes; `attempts` counts the attempts the retries made (1 when the first succeeded);
    `unverified_destinations` the cross-account replication destinations (`account/region`)
    a write went through without the gateway verifying that their registry policy accepts
    replication (`x-unverified-destinations`), empty when every one was verified.
    """

    request_id: str = ""
    cache: str = ""
    attempts: int = 0
    trailing_metadata: dict[str, str] = field(default_factory=dict)
    unverified_destinations: tuple[str, ...] = ()

    def record(self, trailing_metadata: Any, attempts: int) -> None:
        """Fill in from a call's trailing metadata."""
        text = {k: v for k, v in (trailing_metadata or ()) if isinstance(v, str)}
        self.trailing_metadata = text
        self.request_id = text.get(REQUEST_ID_KEY, "")
        self.cache = text.get(CACHE_KEY, "")
        unverified = text.get(UNVERIFIED_DESTINATIONS_KEY, "")
        self.unverified_destinations = tuple(unverified.split(",")) if unverified else ()
        self.attempts = attempts


def bearer_metadata(token: str | None, no_cache: bool) -> Metadata:
    """Call metadata: the bearer token (API key or JWT), and `cache-control: no-cache`."""
    metadata: list[tuple[str, str]] = []
    if token:
        metadata.append(("authorization", f"Bearer {token}"))
    if no_cache:
        metadata.append((CACHE_CONTROL_KEY, "no-cache"))
    return tuple(metadata)


def caller_metadata(metadata: CallMetadata | None, *, has_credentials: bool) -> Metadata:
    """A caller's per-call metadata as it is sent: keys lowercased (gRPC refuses capitals,
    HTTP ignores case); keys the client or the transport own refused; `authorization` only
    when the client was given no credentials of its own (else two would be sent)."""
    if metadata is None:
        return ()
    pairs = list(metadata.items()) if isinstance(metadata, Mapping) else list(metadata)
    sent: list[tuple[str, str]] = []
    for key, value in pairs:
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("metadata: keys and values are str (binary -bin metadata is not sent)")
        name = key.lower()
        if name.startswith(_RESERVED_PREFIXES) or name in _RESERVED_KEYS or name.endswith("-bin"):
            raise ValueError(f"metadata: {name!r} is set by the client or its transport")
        if name == "authorization" and has_credentials:
            raise ValueError("metadata: authorization given, but the client has credentials")
        sent.append((name, value))
    return tuple(sent)


def resource_value(resource: Resource) -> pb.HistoryResource.ValueType:
    """The proto enum of a history resource given by enum or short name."""
    if isinstance(resource, str):
        try:
            return _RESOURCES[resource]
        except KeyError:
            raise ValueError(f"resource: {resource!r} is not 'replication' or 'policy'") from None
    return resource


def is_connect_target(target: str | None) -> bool:
    """Whether a target names the gateway's HTTP (Connect) listener rather than gRPC."""
    return target is not None and target.startswith(("http://", "https://"))


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
    default registry and region where neither the request nor the call names one.

    Data the client cannot encode (an AWS-JSON dict with a misspelt or mistyped field, a
    policy dict that is not JSON) raises `InvalidArgument` (reason UNDECODABLE_REQUEST, the
    field named), as the gateway would answer it; nothing is sent."""
    message = kind()
    if request is not None:
        if not isinstance(request, kind):
            raise TypeError(f"expected {kind.__name__}, got {type(request).__name__}")
        message.CopyFrom(request)
    for name, value in fields.items():
        if value is None:
            continue
        if name == "policy_text" and not isinstance(value, str):
            value = _json_text(name, value)
        if name == "replication_configuration":
            getattr(message, name).CopyFrom(replication_configuration(value))
            continue
        if name == "rules":
            del message.rules[:]  # type: ignore[attr-defined]
            message.rules.extend(replication_rules(value))  # type: ignore[attr-defined]
            continue
        if name == "statements_json" and not isinstance(value, str):
            value = _json_text(name, statements_list(value))
        setattr(message, name, value)
    target = cast(_Targeted, message)
    if registry_id and not target.registry_id:
        target.registry_id = registry_id
    if region and not target.region:
        target.region = region
    return message


def undecodable(field: str, problem: object) -> RegistryGatewayError:
    """The client's own INVALID_ARGUMENT for request data it cannot encode."""
    return client_error(
        InvalidArgument,
        f"{field}: {str(problem)[:300]}",
        reason="UNDECODABLE_REQUEST",
        field=field,
    )


def _json_text(field: str, value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise undecodable(field, exc) from exc


def statements_list(value: Any) -> list[Any]:
    """Policy statements: a sequence of JSON objects (a single dict is a mistake, not a list
    of its keys)."""
    if isinstance(value, Mapping) or not isinstance(value, Sequence):
        raise undecodable("statements_json", "give a list of statements (dicts) or a JSON array")
    for index, statement in enumerate(value):
        if not isinstance(statement, Mapping):
            raise undecodable(f"statements_json[{index}]", "a statement is a JSON object")
    return list(value)


def replication_rules(value: RulesInput) -> list[pb.ReplicationRule]:
    """Rules from messages or AWS-shaped JSON rules
    (`{"destinations": [...], "repositoryFilters": [...]}`), each a new message."""
    if isinstance(value, Mapping | str | bytes):
        raise undecodable("rules", "give a list of rules (messages or dicts)")
    rules: list[pb.ReplicationRule] = []
    for index, rule in enumerate(value):
        parsed = pb.ReplicationRule()
        if isinstance(rule, pb.ReplicationRule):
            parsed.CopyFrom(rule)
        else:
            _parse(f"rules[{index}]", rule, parsed)
        rules.append(parsed)
    return rules


def replication_configuration(
    value: pb.ReplicationConfiguration | Mapping[str, Any],
) -> pb.ReplicationConfiguration:
    """A ReplicationConfiguration from the message or from AWS-shaped JSON
    (`{"rules": [{"destinations": [{"region": ..., "registryId": ...}], ...}]}`)."""
    if isinstance(value, pb.ReplicationConfiguration):
        return value
    return _parse("replication_configuration", value, pb.ReplicationConfiguration())


def _parse(field: str, value: Any, message: M) -> M:
    if not isinstance(value, Mapping):
        raise undecodable(field, f"expected a JSON object (dict), got {type(value).__name__}")
    try:
        json_format.ParseDict(dict(value), message)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        # e.g. 'Message type "ecr.registry.v1.ReplicationRule" has no field named
        # "destination"': protobuf's words name the field and the message type.
        raise undecodable(field, exc) from exc
    return message


def retry_safe(rpc: str, request: Message, policy: RetryPolicy) -> bool:
    """Whether repeating this call cannot undo someone else's change (see _retry)."""
    if rpc not in WRITE_RPCS:
        return True
    if getattr(request, "etag", "") or getattr(request, "validate_only", False):
        return True
    return policy.retry_writes_without_etag
