"""The gateway's configuration: the YAML keys the README documents, env overrides, errors."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from service import catalog
from service.ecr import limits as ecr_limits

ENV_CONFIG_PATH = "REGISTRY_GATEWAY_CONFIG"
ENV_OVERRIDE_PREFIX = "REGISTRY_GATEWAY__"

# The RPCs, from the contract's descriptor (service/catalog.py); re-exported here because
# the config names them (`operations:`).
ECR_OPERATIONS = catalog.ECR_OPERATIONS
SLICE_OPERATIONS = catalog.SLICE_OPERATIONS
OPERATIONS = catalog.RPCS
WRITE_OPERATIONS = catalog.WRITES


def _known_operation(name: str) -> str:
    if name not in OPERATIONS:
        raise ValueError(f"unknown operation {name!r}; expected one of {', '.join(OPERATIONS)}")
    return name


# An RPC of the service; the JSON schema lists them, so editors can complete them.
Operation = Annotated[
    str, AfterValidator(_known_operation), WithJsonSchema({"enum": list(OPERATIONS)})
]

# Sections of the design whose behaviour this version does not implement yet. A config
# that asks for metrics and silently gets none would be worse than a refusal.
NOT_YET_SUPPORTED: tuple[str, ...] = ()

_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")
_KEY_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class ConfigError(Exception):
    """A config that cannot be used; `str()` is one line naming the key (the first problem),
    `problems` every problem found, each as (key path, message): what `check-config` prints."""

    def __init__(self, message: str, problems: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (("", message.removeprefix("config error: ")),)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    """The `server:` section: deadlines, limits, shutdown and reflection."""

    default_deadline_seconds: float = Field(10.0, gt=0)
    max_deadline_seconds: float = Field(60.0, gt=0)
    drain_seconds: float = Field(5.0, ge=0)
    grace_seconds: float = Field(20.0, ge=0)
    # After the grace period, writes already sent to AWS get up to this long to settle (read
    # back, recorded, answered) while no new write is sent; then what is left is cut
    # (service/app/server.py, `shutdown`).
    settle_seconds: float = Field(5.0, ge=0)
    max_concurrent_rpcs: int = Field(1000, ge=1)
    # gRPC calls in flight, counted by the gateway from their headers (service/pipeline/slots.py):
    # max_concurrent_rpcs caps authenticated calls only, each tenant holds at most its own
    # share, and the services that need no credentials (health, reflection) are capped per
    # peer address, so no stranger can hold the tenants' slots.
    max_calls_in_flight_per_tenant: int = Field(100, ge=1)
    max_unauthenticated_calls_per_address: int = Field(32, ge=1)
    # HTTP/2 streams one connection may have open at once (grpc.max_concurrent_streams).
    max_streams_per_connection: int = Field(100, ge=1)
    # From a call's headers to its whole request message; past it the call is CANCELLED
    # (REQUEST_MESSAGE_TIMEOUT), so a caller that never sends its message holds nothing long.
    message_timeout_seconds: float = Field(5.0, gt=0)
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_connection_age_seconds: float = Field(300.0, gt=0)
    keepalive_time_seconds: float = Field(60.0, gt=0)
    keepalive_timeout_seconds: float = Field(20.0, gt=0)
    # The HTTP listener's connections (service/http/connections.py): open at once, in all
    # (under the process's open-file limit) and per peer address (IPv6: per /64; 0: no cap;
    # behind a proxy or NAT every caller shares its address). A connection past a cap is
    # answered 503 and closed before anything is read.
    http_max_connections: int = Field(4096, ge=1)
    http_max_connections_per_address: int = Field(256, ge=0)
    # From a connection (or a later request's first byte) to its whole request head, and
    # from the head to the whole body; past either the connection is closed.
    http_header_timeout_seconds: float = Field(10.0, gt=0)
    http_body_timeout_seconds: float = Field(30.0, gt=0)
    # A kept-alive connection silent this long after an answer is closed (uvicorn's
    # timeout_keep_alive: whole seconds).
    http_idle_timeout_seconds: int = Field(5, ge=1)
    reflection: bool = True
    # A plaintext listener serving only grpc.health.v1.Health: Kubernetes' gRPC probe does
    # not speak TLS, so with mTLS on, probes need a port of their own (pod-local).
    health_listen: str | None = None
    # Writes of one tenant on one registry at once (waiting for its write lock or holding
    # it): past this, RESOURCE_EXHAUSTED, so one tenant's queue of writes cannot make
    # another's wait past its deadline.
    max_writes_in_flight_per_tenant: int = Field(4, ge=1)
    # Reload when the config file changes (checked this often; 0: only on SIGHUP). Follows
    # symlinks, so a Kubernetes ConfigMap update (an atomic symlink swap) is seen.
    watch_config_seconds: float = Field(0.0, ge=0)

    @field_validator("health_listen")
    @classmethod
    def _health_host_port(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value

    @model_validator(mode="after")
    def _default_within_cap(self) -> ServerConfig:
        if self.default_deadline_seconds > self.max_deadline_seconds:
            raise ValueError("default_deadline_seconds must not exceed max_deadline_seconds")
        return self


class AwsConfig(_Strict):
    """The `aws:` section: default region, endpoint, retries and timeouts."""

    region: str = Field("us-east-1", pattern=r"^[0-9a-z-]{2,25}$")
    endpoint_url: str | None = None
    max_attempts: int = Field(3, ge=1, le=10)
    connect_timeout_seconds: float = Field(2.0, gt=0)
    read_timeout_seconds: float = Field(10.0, gt=0)
    # Region names are checked against botocore's endpoint data; private partitions
    # (ISO, sovereign clouds) have regions it does not list.
    allow_unknown_regions: bool = False
    # Circuit breaker per (account, region): opens after this many consecutive failures,
    # stays open this long, then lets a probe through.
    breaker_threshold: int = Field(5, ge=1)
    breaker_open_seconds: float = Field(30.0, gt=0)
    # Bulkhead: AWS calls in flight per (account, region); a call waits for a slot until
    # this margin before its deadline.
    max_concurrent_calls: int = Field(64, ge=1)
    bulkhead_margin_seconds: float = Field(0.05, ge=0)
    # The most of those slots one tenant may hold at once (a fraction; at least one slot),
    # so a tenant flooding AWS with calls cannot starve the others of the same account.
    max_tenant_share: float = Field(0.5, gt=0, le=1)
    # Calls past the cache (no-cache reads, every write) per tenant, always on
    # (service/state/ratelimit.py UpstreamBudget), so one tenant cannot bring AWS throttling, and
    # with it the shared breaker, on everyone.
    tenant_upstream_per_second: float = Field(5.0, gt=0)
    tenant_upstream_burst: int = Field(20, ge=1)
    # The start-up probes and policy-scope reads of every (account, region) run this many at
    # a time (service/bounded_gather.py); one waiting past connect_timeout_seconds gives its
    # place to the next, so an account that does not answer holds no other back.
    probe_concurrency: int = Field(16, ge=1, le=1024)
    # An ECR client unused this long is closed (and made again on its next call, without a
    # new account check or policy-scope read); 0 keeps every client open.
    client_idle_seconds: float = Field(600.0, ge=0)


class DestinationAllow(_Strict):
    """Replication destinations a registry entry may replicate to: one registry, some regions."""

    registry_id: str = Field(pattern=r"^[0-9]{12}$")
    regions: tuple[str, ...] = Field(min_length=1)

    @field_validator("registry_id", mode="before")
    @classmethod
    def _id_as_string(cls, value: Any) -> Any:
        return _account_id(value)


class RegistryConfig(_Strict):
    """One registry a tenant may act on, and what it may do there."""

    registry_id: str = Field(pattern=r"^[0-9]{12}$")
    role_arn: str | None = Field(None, pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$")
    external_id_env: str | None = None
    # ECR's REGISTRY_POLICY_SCOPE of the account: `auto` reads it (GetAccountSetting) when
    # the account's client is made and on reload, and refuses policy writes while it cannot;
    # V1 or V2 pins it (a pin AWS disagrees with is logged and counted).
    policy_scope: Literal["auto", "V1", "V2"] = "auto"
    regions: tuple[str, ...] = ()
    operations: tuple[Operation, ...] = ()
    # Deny by default: with none listed, PutReplicationConfiguration may only clear replication.
    replication_destinations: tuple[DestinationAllow, ...] = ()
    # This tenant's slice of a shared registry (PutReplicationRules): the rules whose every
    # repository filter starts with one of these. Repository names are lowercase.
    owned_repository_prefixes: tuple[
        Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[a-z0-9][a-z0-9._/-]*$")],
        ...,
    ] = ()
    # Its slice of the registry policy (PutPolicyStatements): statements whose Sid starts
    # with this. IAM Sids are alphanumeric, so the prefix is too.
    owned_statement_sid_prefix: str | None = Field(None, pattern=r"^[A-Za-z0-9]{1,100}$")
    # This slice's share of ECR's registry-wide limits (service/ecr/limits.py); absent, an
    # equal part of what the other slices' explicit shares leave.
    max_rules: int | None = Field(None, ge=1, le=ecr_limits.MAX_RULES)
    max_destinations: int | None = Field(None, ge=1, le=ecr_limits.MAX_UNIQUE_DESTINATIONS)
    max_policy_chars: int | None = Field(None, ge=1, le=ecr_limits.POLICY_STATEMENT_CHARS)

    @field_validator("registry_id", mode="before")
    @classmethod
    def _id_as_string(cls, value: Any) -> Any:
        return _account_id(value)


def _account_id(value: Any) -> Any:
    # YAML reads an unquoted 111111111111 as an int; an account id is a string. A 0-led
    # one may have been read as octal (YAML 1.1), so a short int is refused, not padded.
    if isinstance(value, int) and not isinstance(value, bool):
        if len(str(value)) != 12:
            raise ValueError(
                "quote account ids in YAML ('012345678901'): unquoted, they are numbers"
            )
        return str(value)
    return value


class PolicyGuardrails(_Strict):
    """What a tenant's registry policies may grant."""

    allow_wildcard_principal: bool = False
    # When given, every AWS principal must belong to one of these accounts.
    principal_accounts: tuple[str, ...] | None = None

    @field_validator("principal_accounts", mode="before")
    @classmethod
    def _ids_as_strings(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(_account_id(v) for v in value)
        return value


class TenantConfig(_Strict):
    """A tenant: how it proves who it is, and its registries."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    api_keys: tuple[str, ...] = ()
    spiffe_ids: tuple[str, ...] = ()
    policy_guardrails: PolicyGuardrails = PolicyGuardrails()
    registries: tuple[RegistryConfig, ...] = Field(min_length=1)

    @field_validator("spiffe_ids")
    @classmethod
    def _spiffe(cls, ids: tuple[str, ...]) -> tuple[str, ...]:
        for spiffe_id in ids:
            if not re.match(r"^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)*$", spiffe_id):
                raise ValueError(f"not a SPIFFE ID: {spiffe_id!r}")
        return ids

    @field_validator("api_keys")
    @classmethod
    def _hashed_keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        for key in keys:
            if not _KEY_DIGEST.match(key):
                # Never echo the value: it may be a key pasted in clear.
                raise ValueError("each key must be 'sha256:' followed by 64 lowercase hex digits")
        return keys


class TlsConfig(_Strict):
    """TLS on a listener; with `client_auth: require`, callers present a certificate (mTLS)."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    # grpcio cannot make client certificates optional on one port: list two listeners.
    client_auth: Literal["require", "none"] = "none"

    @model_validator(mode="after")
    def _ca_for_mtls(self) -> TlsConfig:
        if self.client_auth == "require" and not self.client_ca_file:
            raise ValueError("client_auth: require needs client_ca_file")
        return self


class ListenerConfig(_Strict):
    """One address to serve on, plaintext or TLS."""

    listen: str
    tls: TlsConfig | None = None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        parse_listen(value)
        return value


class HttpTlsConfig(_Strict):
    """TLS on the HTTP listener: a server certificate only."""

    cert_file: str
    key_file: str
    # Refused with a reason rather than as an unknown key: a tenant known only by a SPIFFE
    # ID (a client certificate) cannot use HTTP; mTLS stays on the gRPC listeners.
    client_auth: Any = None
    client_ca_file: Any = None

    @model_validator(mode="after")
    def _no_client_certificates(self) -> HttpTlsConfig:
        for key in ("client_auth", "client_ca_file"):
            if getattr(self, key) is not None:
                raise ValueError(
                    f"{key} is not supported on the HTTP listener: client certificates "
                    "(mTLS, SPIFFE IDs) are served only by the gRPC listeners; HTTP callers "
                    "authenticate with `authorization: Bearer` (API key or JWT)"
                )
        return self


class HttpConfig(_Strict):
    """The `http:` section: the same service over HTTP/1.1 and JSON (the Connect protocol),
    through the same pipeline, in the same process (service/http/). Off without `listen`."""

    listen: str | None = None
    tls: HttpTlsConfig | None = None
    # Browsers (gRPC-Web, connect-web) from these origins may call; none by default.
    # "*" allows any origin (credentials still travel only in the Authorization header).
    cors_allowed_origins: tuple[str, ...] = ()

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value


class JwtConfig(_Strict):
    """JWT bearer tokens: who signs them, for whom, and which claim names the tenant."""

    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    hs256_secret_env: str | None = None
    jwks_file: str | None = None
    tenant_claim: str = "tenant"
    leeway_seconds: float = Field(30.0, ge=0, le=300)

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtConfig:
        if (self.hs256_secret_env is None) == (self.jwks_file is None):
            raise ValueError("give exactly one of hs256_secret_env and jwks_file")
        return self


class AuthConfig(_Strict):
    """The `auth:` section: token kinds beyond API keys, and failed-authentication limits."""

    jwt: JwtConfig | None = None
    # Failed authentications per peer address (service/auth/failures.py): past this rate
    # the answer is RESOURCE_EXHAUSTED and only a sample is logged. Valid credentials are
    # never refused because of it.
    failures_per_second: float = Field(1.0, gt=0)
    failures_burst: int = Field(20, ge=1)


class RateLimitConfig(_Strict):
    """Token buckets per tenant, one for reads and one for writes."""

    reads_per_second: float = Field(gt=0)
    writes_per_second: float = Field(gt=0)
    burst: int = Field(ge=1)


class AuditConfig(_Strict):
    """Where the audit trail of writes goes: "-" for stdout, else a file appended to."""

    path: str = "-"


class MetricsConfig(_Strict):
    """Prometheus text at http://<listen>/metrics."""

    listen: str

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        parse_listen(value)
        return value


class LogsConfig(_Strict):
    """How the gateway logs: JSON lines, or text for a person at a terminal."""

    format: Literal["auto", "json", "text"] = "auto"  # auto: text on a terminal, else JSON
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Successful reads served from the cache are logged by sample: a line per hit costs
    # more than the hit. Writes and errors are always logged.
    hit_sample_rate: float = Field(0.01, ge=0, le=1)


class TracingConfig(_Strict):
    """OpenTelemetry spans, exported over OTLP/gRPC; off unless this section is given."""

    otlp_endpoint: str = Field(min_length=1)  # e.g. http://otel-collector:4317
    insecure: bool = True  # plaintext to a collector beside the pod
    service_name: str = "registry-gateway"
    sample_ratio: float = Field(1.0, ge=0, le=1)


class CacheConfig(_Strict):
    """The read cache and shared state. With `redis`, replicas share values, locks and limits."""

    backend: Literal["memory", "redis"] = "memory"
    ttl_seconds: float = Field(30.0, gt=0)
    negative_ttl_seconds: float = Field(10.0, ge=0)  # "no registry policy"
    max_stale_seconds: float = Field(300.0, ge=0)  # serve stale while AWS is unavailable
    max_entries: int = Field(10_000, ge=1)  # in-process copies (LRU)
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The name of the environment variable holding Redis's password (AUTH), e.g. from a
    # Kubernetes Secret: the password itself is never in the config (nor its ConfigMap).
    redis_password_env: str | None = Field(None, min_length=1)
    # Every key the gateway writes starts with this: several deployments can share a Redis.
    key_prefix: str = Field("registry-gateway:", min_length=1)
    # The expiry of a write lock in Redis, renewed every third of it while its writer holds
    # it (service/state/locks.py): a replica that dies mid-write blocks its registry's writes
    # this long at most. At least 3 s: a renewal may wait out Redis's 1 s timeout.
    lock_ttl_seconds: float = Field(10.0, ge=3, le=300)


# The bounds of the `history:` section (a slice view reads a whole history, bounded by
# `max_bytes`: service/registry/rpcs/history_view.py).
HISTORY_MAX_VERSIONS = 1000
HISTORY_MIN_BYTES = 1024 * 1024
HISTORY_MAX_BYTES = 8 * 1024 * 1024


class HistoryConfig(_Strict):
    """The `history:` section: the recent versions kept of each registry's configuration and
    policy (service/state/history.py), in the cache's store (Redis when configured)."""

    # Per author (each tenant's writes; changes made around the gateway as one), per
    # (registry, region, resource): one tenant's writes never push out another's versions.
    max_versions: int = Field(50, ge=1, le=HISTORY_MAX_VERSIONS)
    # Per (registry, region, resource), documents stored in pieces (each rule or statement
    # once): past it the author holding the most bytes gives up its oldest pieces (those
    # versions are then kept without their documents), then its oldest versions. A version
    # alone larger than this is kept without its document (its etag and author still are,
    # and it cannot be restored). At least 1 MiB: a whole replication configuration is at
    # most ~340 KB and a policy 10 KiB, so only a configuration near ECR's limit is ever
    # kept without its document. At most 8 MiB: each append reads the whole history, and
    # a larger bound would block the Redis that also holds the write locks.
    max_bytes: int = Field(HISTORY_MIN_BYTES, ge=HISTORY_MIN_BYTES, le=HISTORY_MAX_BYTES)


class DriftConfig(_Strict):
    """The `drift:` section: changes made around the gateway (service/registry/writes/drift.py)."""

    # How often every configured (registry, region) is read to see changes nobody calls
    # for (through the cache's single flight and the breaker); 0 turns the check off.
    check_seconds: float = Field(60.0, ge=0)
    # How far replicas' clocks may differ: a read from AWS begun this close before the last
    # recorded version may hold the state before it, and is not taken for drift (the next
    # read decides). NTP keeps replicas within milliseconds; one replica could use 0.
    clock_skew_seconds: float = Field(1.0, ge=0, le=60)

    @field_validator("check_seconds")
    @classmethod
    def _not_a_busy_loop(cls, value: float) -> float:
        # Each period reads two resources of every configured (registry, region) from AWS.
        if 0 < value < 0.1:
            raise ValueError("0 (off) or at least 0.1 seconds")
        return value


class GatewayConfig(_Strict):
    """The whole configuration file."""

    listen: str = "127.0.0.1:50051"
    tls: TlsConfig | None = None
    # Several listeners (e.g. mTLS and token-over-TLS side by side); replaces listen/tls.
    listeners: tuple[ListenerConfig, ...] = ()
    server: ServerConfig = ServerConfig()
    aws: AwsConfig = AwsConfig()
    auth: AuthConfig = AuthConfig()
    cache: CacheConfig = CacheConfig()
    rate_limit: RateLimitConfig | None = None
    audit: AuditConfig = AuditConfig()
    metrics: MetricsConfig | None = None
    tracing: TracingConfig | None = None
    logs: LogsConfig = LogsConfig()
    http: HttpConfig = HttpConfig()
    history: HistoryConfig = HistoryConfig()
    drift: DriftConfig = DriftConfig()
    tenants: tuple[TenantConfig, ...] = ()

    def effective_listeners(self) -> tuple[ListenerConfig, ...]:
        """The listeners to bind: `listeners`, else one from `listen` and `tls`."""
        return self.listeners or (ListenerConfig(listen=self.listen, tls=self.tls),)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("tenants")
    @classmethod
    def _unambiguous_tenants(cls, tenants: tuple[TenantConfig, ...]) -> tuple[TenantConfig, ...]:
        names: set[str] = set()
        owners: dict[str, str] = {}
        for tenant in tenants:
            if tenant.name in names:
                raise ValueError(f"tenant names must be unique: {tenant.name} appears twice")
            names.add(tenant.name)
            for digest in tenant.api_keys:
                other = owners.setdefault(digest, tenant.name)
                if other != tenant.name:
                    # One key must prove one tenant; otherwise whoever is listed first wins.
                    raise ValueError(f"tenants {other} and {tenant.name} share an API key")
            for spiffe_id in tenant.spiffe_ids:
                other = owners.setdefault(spiffe_id, tenant.name)
                if other != tenant.name:
                    raise ValueError(f"tenants {other} and {tenant.name} share {spiffe_id}")
        _unambiguous_ownership(tenants)
        _one_policy_scope_per_registry(tenants)
        _slice_writers_own_slices(tenants)
        ecr_limits.effective_shares(tenants)  # the shares of each registry fit ECR's limits
        return tenants


def _unambiguous_ownership(tenants: tuple[TenantConfig, ...]) -> None:
    """Refuse two tenants owning overlapping slices of one registry.

    Overlap is one prefix starting with the other ("payments/" and "payments/eu/"): a rule
    or statement could then belong to both, and either could replace the other's.
    """
    claims: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for tenant in tenants:
        for registry in tenant.registries:
            for prefix in registry.owned_repository_prefixes:
                claims.setdefault(("repository", registry.registry_id), []).append(
                    (tenant.name, prefix)
                )
            if registry.owned_statement_sid_prefix:
                claims.setdefault(("statement Sid", registry.registry_id), []).append(
                    (tenant.name, registry.owned_statement_sid_prefix)
                )
    for (kind, registry_id), owned in claims.items():
        for i, (tenant_a, prefix_a) in enumerate(owned):
            for tenant_b, prefix_b in owned[i + 1 :]:
                if tenant_a != tenant_b and (
                    prefix_a.startswith(prefix_b) or prefix_b.startswith(prefix_a)
                ):
                    raise ValueError(
                        f"tenants {tenant_a} and {tenant_b} own overlapping {kind} prefixes "
                        f"{prefix_a!r} and {prefix_b!r} on registry {registry_id}"
                    )


def _one_policy_scope_per_registry(tenants: tuple[TenantConfig, ...]) -> None:
    """Refuse two entries of one registry naming different policy scopes.

    ECR's registry policy scope is one setting of the account (GetAccountSetting
    REGISTRY_POLICY_SCOPE); a merged policy is checked under it, so entries that disagree
    would let one tenant's statements, valid under its scope, refuse another's writes.
    `auto` counts as one value: all entries of a registry read it, or all pin the same one.
    """
    scopes: dict[str, tuple[str, str]] = {}
    for tenant in tenants:
        for registry in tenant.registries:
            seen = scopes.setdefault(registry.registry_id, (registry.policy_scope, tenant.name))
            if seen[0] != registry.policy_scope:
                raise ValueError(
                    f"registry {registry.registry_id} has one policy scope, but tenant "
                    f"{seen[1]} names {seen[0]} and tenant {tenant.name} names "
                    f"{registry.policy_scope}"
                )


def _slice_writers_own_slices(tenants: tuple[TenantConfig, ...]) -> None:
    """Refuse a slice write granted to a tenant owning nothing it could write to.

    A slice statement may act only on the tenant's own repositories (its Resource lies
    under an owned repository prefix), so PutPolicyStatements needs repository prefixes as
    well as a Sid prefix; a rule is the tenant's only inside its repository prefixes.
    """
    needs = {
        "PutReplicationRules": ("owned_repository_prefixes",),
        "PutPolicyStatements": ("owned_repository_prefixes", "owned_statement_sid_prefix"),
    }
    for tenant in tenants:
        for registry in tenant.registries:
            for rpc, keys in needs.items():
                missing = [key for key in keys if not getattr(registry, key)]
                if rpc in registry.operations and missing:
                    raise ValueError(
                        f"tenant {tenant.name} may call {rpc} on registry "
                        f"{registry.registry_id} but has no {' and no '.join(missing)}: "
                        f"it would own nothing to write"
                    )


def parse_listen(value: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 hosts in brackets), refusing anything else."""
    match = _HOST_PORT.match(value)
    if not match or not 0 <= int(match.group(2)) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return match.group(1), int(match.group(2))


def registry_regions(config: GatewayConfig, registry: RegistryConfig) -> tuple[str, ...]:
    """The regions a registry entry allows: its own list, else the default region."""
    return registry.regions or (config.aws.region,)


def _apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, text in environ.items():
        if not name.startswith(ENV_OVERRIDE_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_OVERRIDE_PREFIX) :].split("__") if p]
        if not path:
            continue
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:  # an empty section (`server:` alone) reads as null
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"config error: {name}: {'.'.join(path)} is not a section")
            node = child
        # YAML scalars so that numbers and booleans arrive typed ("3" -> 3, "false" -> False).
        try:
            node[path[-1]] = yaml.safe_load(text) if text else text
        except yaml.YAMLError:
            raise ConfigError(f"config error: {name}: the value is not valid YAML") from None


# What an unknown key's name may look like to be echoed: the config's own keys are words.
# Anything else (digits, long, other characters) may be a secret pasted in the wrong place.
_KEY_NAME = re.compile(r"^[A-Za-z_-]{1,40}$")


def _problem(error: Mapping[str, Any]) -> tuple[str, str]:
    """(key path, message) of one pydantic error; never the input value (it may be a key
    pasted in clear), and an unknown key's name only when it looks like a config key."""
    loc = [str(p) for p in error["loc"]]
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
        if len(loc) == 1 and loc[0] in NOT_YET_SUPPORTED:
            message = "not supported by this version of the gateway yet"
        if loc and not _KEY_NAME.match(loc[-1]):
            loc[-1] = "<name not shown>"
            message = "unknown key (its name is not shown: it does not look like a config key)"
    return ".".join(loc) or "(top level)", message


def _problems(error: ValidationError) -> tuple[tuple[str, str], ...]:
    errors = error.errors(include_input=False, include_url=False)
    # A list whose only item was refused is also "too short after validation": an echo of
    # the item's own problem, not one more.
    echoes = {
        e["loc"]
        for e in errors
        if e["type"] == "too_short"
        and any(o["loc"][: len(e["loc"])] == e["loc"] and o["loc"] != e["loc"] for o in errors)
    }
    return tuple(_problem(e) for e in errors if e["loc"] not in echoes)


def _one_line(problems: tuple[tuple[str, str], ...]) -> str:
    key, message = problems[0]
    more = len(problems) - 1
    suffix = f" (and {more} more: `registry-gateway check-config` lists them)" if more else ""
    return f"config error: {key}: {message}{suffix}"


def from_mapping(raw: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Validate a parsed config (plus env overrides) into a GatewayConfig."""
    data: dict[str, Any] = _deep_copy(raw)
    _apply_env_overrides(data, os.environ if environ is None else environ)
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc)
        raise ConfigError(_one_line(problems), problems) from None


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read a YAML config file; raise ConfigError with a one-line message if unusable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config error: cannot read {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config error: {path} is not valid YAML{where}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config error: {path}: the top level must be a mapping of keys")
    return from_mapping(raw, environ)


def _deep_copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
