"""Who is calling (authentication) and what it may touch (authorization)."""

from service.auth.api_keys import ApiKeyAuthenticator, hash_key
from service.auth.targets import Target, TargetAuthorizer

__all__ = ["ApiKeyAuthenticator", "Target", "TargetAuthorizer", "hash_key"]
