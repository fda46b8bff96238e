"""Registry Config Gateway: an asyncio gRPC gateway in front of ECR's registry configuration."""

from service.app.server import Gateway
from service.config import GatewayConfig

__all__ = ["Gateway", "GatewayConfig"]
