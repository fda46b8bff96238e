"""The `cache:`, `history:` and `drift:` sections: shared state and what is kept of it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from service.config.base import Strict


class CacheConfig(Strict):
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


class HistoryConfig(Strict):
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


class DriftConfig(Strict):
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
