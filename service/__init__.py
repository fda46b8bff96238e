"""Registry Config Gateway: an asyncio gRPC gateway in front of ECR's registry configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.app.server import Gateway
    from service.config import GatewayConfig

__all__ = ["Gateway", "GatewayConfig"]


def __getattr__(name: str) -> Any:
    # Loaded on first use (PEP 562), not with the package: importing any `service.*` module
    # would otherwise load the whole server (aioboto3, grpc, ~1 s), which the CLI's
    # `--version`, `hash-key`, `check-config` and `config-schema` never need.
    if name == "Gateway":
        from service.app.server import Gateway

        return Gateway
    if name == "GatewayConfig":
        from service.config import GatewayConfig

        return GatewayConfig
    raise AttributeError(f"module 'service' has no attribute {name!r}")
