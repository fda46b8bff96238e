"""The `server:` section and the listeners: addresses, TLS, the HTTP listener."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from service.config.base import Strict, parse_listen


class ServerConfig(Strict):
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
    # The event loop served on (service/app/event_loop.py): `auto` is uvloop when it is
    # installed (the image and `make install` install it), else asyncio's own; `asyncio`
    # always asyncio's; `uvloop` refuses to start without it.
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"

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


class TlsConfig(Strict):
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


class ListenerConfig(Strict):
    """One address to serve on, plaintext or TLS."""

    listen: str
    tls: TlsConfig | None = None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        parse_listen(value)
        return value


class HttpTlsConfig(Strict):
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


class HttpConfig(Strict):
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
