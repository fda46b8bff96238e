"""The whole configuration file (`GatewayConfig`) and what is read off it."""

from __future__ import annotations

from pydantic import field_validator

from service.config.auth import AuthConfig, RateLimitConfig
from service.config.aws import AwsConfig
from service.config.base import Strict, parse_listen
from service.config.listeners import HttpConfig, ListenerConfig, ServerConfig, TlsConfig
from service.config.observability import AuditConfig, LogsConfig, MetricsConfig, TracingConfig
from service.config.state import CacheConfig, DriftConfig, HistoryConfig
from service.config.tenancy_checks import check_tenants
from service.config.tenants import RegistryConfig, TenantConfig


class GatewayConfig(Strict):
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
        check_tenants(tenants)
        return tenants


def registry_regions(config: GatewayConfig, registry: RegistryConfig) -> tuple[str, ...]:
    """The regions a registry entry allows: its own list, else the default region."""
    return registry.regions or (config.aws.region,)
