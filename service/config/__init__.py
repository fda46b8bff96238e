"""The gateway's configuration: the YAML keys the README documents, env overrides, errors.

A package by concern: `base` (the base model, `ConfigError`, listen addresses, RPC names),
the sections (`listeners`, `aws`, `tenants`, `auth`, `observability`, `state`), the checks
across tenants (`tenancy_checks`), the whole file (`gateway`) and loading it with the
environment's overrides (`loading`). Every name is re-exported here:
`from service.config import X` is the way to import it.
"""

from service.config.auth import AuthConfig, JwtConfig, RateLimitConfig
from service.config.aws import AwsConfig
from service.config.base import (
    ECR_OPERATIONS,
    NOT_YET_SUPPORTED,
    OPERATIONS,
    SLICE_OPERATIONS,
    WRITE_OPERATIONS,
    ConfigError,
    Operation,
    parse_listen,
)
from service.config.gateway import GatewayConfig, registry_regions
from service.config.listeners import (
    HttpConfig,
    HttpTlsConfig,
    ListenerConfig,
    ServerConfig,
    TlsConfig,
)
from service.config.loading import ENV_CONFIG_PATH, ENV_OVERRIDE_PREFIX, from_mapping, load
from service.config.observability import AuditConfig, LogsConfig, MetricsConfig, TracingConfig
from service.config.state import (
    HISTORY_MAX_BYTES,
    HISTORY_MAX_VERSIONS,
    HISTORY_MIN_BYTES,
    CacheConfig,
    DriftConfig,
    HistoryConfig,
)
from service.config.tenants import DestinationAllow, PolicyGuardrails, RegistryConfig, TenantConfig

__all__ = [
    "ECR_OPERATIONS",
    "ENV_CONFIG_PATH",
    "ENV_OVERRIDE_PREFIX",
    "HISTORY_MAX_BYTES",
    "HISTORY_MAX_VERSIONS",
    "HISTORY_MIN_BYTES",
    "NOT_YET_SUPPORTED",
    "OPERATIONS",
    "SLICE_OPERATIONS",
    "WRITE_OPERATIONS",
    "AuditConfig",
    "AuthConfig",
    "AwsConfig",
    "CacheConfig",
    "ConfigError",
    "DestinationAllow",
    "DriftConfig",
    "GatewayConfig",
    "HistoryConfig",
    "HttpConfig",
    "HttpTlsConfig",
    "JwtConfig",
    "ListenerConfig",
    "LogsConfig",
    "MetricsConfig",
    "Operation",
    "PolicyGuardrails",
    "RateLimitConfig",
    "RegistryConfig",
    "ServerConfig",
    "TenantConfig",
    "TlsConfig",
    "TracingConfig",
    "from_mapping",
    "load",
    "parse_listen",
    "registry_regions",
]
