"""Registry Config Gateway: an asyncio gRPC gateway in front of ECR's registry configuration."""

from service.config import GatewayConfig
from service.server import Gateway

__all__ = ["Gateway", "GatewayConfig"]
