"""The `cache:`, `history:` and `drift:` sections: shared state and what is kept of it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from service.config.base import Strict, parse_listen


def _host_ports(nodes: tuple[str, ...]) -> tuple[str, ...]:
    for node in nodes:
        parse_listen(node)  # HOST:PORT, IPv6 hosts in brackets
    if len(set(nodes)) != len(nodes):
        raise ValueError("a node is listed twice")
    return nodes


class RedisSentinelConfig(Strict):
    """`cache.redis_sentinel`: the primary is asked of these sentinels, and asked again after
    a failover (service/state/redis_circuit.py)."""

    master_name: str = Field(min_length=1)
    nodes: tuple[str, ...] = Field(min_length=1, max_length=16)  # "host:port" of each sentinel
    # The environment variable holding the sentinels' own password (`requirepass` in
    # sentinel.conf), if they have one; the primary's is `cache.redis_password_env`.
    password_env: str | None = Field(None, min_length=1)

    @field_validator("nodes")
    @classmethod
    def _nodes(cls, nodes: tuple[str, ...]) -> tuple[str, ...]:
        return _host_ports(nodes)


class RedisTlsConfig(Strict):
    """`cache.redis_tls`: TLS to Redis (and to the sentinels or cluster nodes). Files are read
    at start-up, not by `check-config`."""

    ca_file: str | None = Field(None, min_length=1)  # else the system's CAs
    cert_file: str | None = Field(None, min_length=1)  # a client certificate (mutual TLS)
    key_file: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _pair(self) -> RedisTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


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
    # The environment variable holding the Redis ACL user name (AUTH user password).
    redis_username_env: str | None = Field(None, min_length=1)
    # One of three modes: `redis_url` (one Redis), `redis_sentinel` (the primary found
    # through sentinels) or `redis_cluster_nodes` (a Redis Cluster, any of its nodes).
    redis_sentinel: RedisSentinelConfig | None = None
    redis_cluster_nodes: tuple[str, ...] | None = Field(None, min_length=1, max_length=64)
    # With `redis_cluster_nodes` the nodes are the cluster's entry points (the rest are found
    # from them, and found again after a failover); keys are hash-tagged per registry and
    # region, per tenant (service/state/redis_keys.py). The password is every node's.
    # TLS in every mode (a `rediss://` URL alone uses the system's CAs).
    redis_tls: RedisTlsConfig | None = None
    # Every key the gateway writes starts with this: several deployments can share a Redis.
    key_prefix: str = Field("registry-gateway:", min_length=1)
    # The expiry of a write lock in Redis, renewed every third of it while its writer holds
    # it (service/state/locks.py): a replica that dies mid-write blocks its registry's writes
    # this long at most. At least 3 s: a renewal may wait out Redis's 1 s timeout.
    lock_ttl_seconds: float = Field(10.0, ge=3, le=300)
    # Slice writes (PutReplicationRules, PutPolicyStatements) queued on one registry's lock
    # are applied together, at most this many in one read-modify-write (one fresh read, one
    # put, one read-back; service/registry/writes/group_commit.py). 1: each write alone.
    max_writes_per_batch: int = Field(50, ge=1, le=1000)
    # With Redis: a replica whose slice writes find the lock held by another replica hands
    # them to it, to go in its next batch, rather than waiting for the lock in turn
    # (service/registry/writes/handoff.py). Off: each replica batches its own writes only.
    hand_over_writes: bool = True

    @field_validator("redis_cluster_nodes")
    @classmethod
    def _cluster_nodes(cls, nodes: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if nodes is None else _host_ports(nodes)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        return url

    @model_validator(mode="after")
    def _one_mode(self) -> CacheConfig:
        # Two ways to find Redis in one config: whichever the gateway chose, the other was
        # what somebody meant, so neither is guessed.
        modes = [
            key
            for key, given in (
                ("redis_url", "redis_url" in self.model_fields_set),
                ("redis_sentinel", self.redis_sentinel is not None),
                ("redis_cluster_nodes", self.redis_cluster_nodes is not None),
            )
            if given
        ]
        if len(modes) > 1:
            raise ValueError(f"conflicting Redis modes: {' and '.join(modes)}; choose one")
        if (
            self.redis_tls is not None
            and self.redis_mode() == "url"
            and not self.redis_url.startswith("rediss://")
        ):
            raise ValueError("redis_tls needs a rediss:// redis_url (or redis_sentinel)")
        if self.redis_cluster_nodes is not None and (
            "{" in self.key_prefix or "}" in self.key_prefix
        ):
            # A cluster hashes the first {...} of a key: the prefix's would put every key
            # in one slot, or split the gateway's own hash tags (service/state/redis_keys.py).
            raise ValueError("key_prefix: no { or } with redis_cluster_nodes (hash tags)")
        return self

    def redis_mode(self) -> Literal["url", "sentinel", "cluster"]:
        """How Redis is found."""
        if self.redis_sentinel is not None:
            return "sentinel"
        return "cluster" if self.redis_cluster_nodes is not None else "url"


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
