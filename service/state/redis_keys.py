"""Every Redis key the gateway writes is built here, and the client type every user shares.

A key is `<prefix><group>[:<part>...]`: the group is what a script or a transaction keeps
together (a registry and region: `<registry>:<region>`; a tenant for its rate limit and
budget). On one Redis (a URL, or the primary Sentinel names) that is the whole key, exactly
as before Redis Cluster was supported: history and locks survive an upgrade, and a rolling
deploy's old and new replicas share one lock per registry.

On a Redis Cluster (`cache.redis_cluster_nodes`) the group is a hash tag, `<prefix>{<group>}
[:<part>...]`: the cluster hashes only what lies between the first `{` and the next `}`, so
every key of one group is in one hash slot, on one node, and the scripts that touch several
of them (the cache's read and store, the history's append and page, MULTI/EXEC) are allowed
there (a cluster refuses keys of several slots with CROSSSLOT:
https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#hash-tags).
Groups spread registries and tenants over the nodes. The key prefix holds no `{` in cluster
mode (service/config/state.py), or the tag would be the prefix's.

The mode is read off the client itself (`RedisCluster` or not), so no user of Redis can
build a key of the other mode.
"""

from __future__ import annotations

from typing import TypeAlias

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

# What every user of Redis is given: one Redis (URL, Sentinel) or a cluster.
RedisClient: TypeAlias = redis.Redis | RedisCluster


def is_cluster(client: RedisClient) -> bool:
    """Whether `client` is a Redis Cluster's (its keys carry hash tags)."""
    return isinstance(client, RedisCluster)


class RedisKeys:
    """The keys under one prefix, hash-tagged by group on a cluster."""

    def __init__(self, prefix: str, *, cluster: bool) -> None:
        self.prefix = prefix
        self.cluster = cluster

    @classmethod
    def of(cls, client: RedisClient, prefix: str) -> RedisKeys:
        """The keys for `client`'s mode."""
        return cls(prefix, cluster=is_cluster(client))

    def key(self, group: str, *parts: str) -> str:
        """`<prefix><group>:<part>...`, the group a hash tag on a cluster."""
        head = f"{{{group}}}" if self.cluster else group
        return ":".join((f"{self.prefix}{head}", *parts))
