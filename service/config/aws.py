"""The `aws:` section: how the gateway reaches AWS."""

from __future__ import annotations

from pydantic import Field

from service.config.base import Strict


class AwsConfig(Strict):
    """The `aws:` section: default region, endpoint, retries and timeouts."""

    region: str = Field("us-east-1", pattern=r"^[0-9a-z-]{2,25}$")
    endpoint_url: str | None = None
    max_attempts: int = Field(3, ge=1, le=10)
    connect_timeout_seconds: float = Field(2.0, gt=0)
    read_timeout_seconds: float = Field(10.0, gt=0)
    # Region names are checked against botocore's endpoint data; private partitions
    # (ISO, sovereign clouds) have regions it does not list.
    allow_unknown_regions: bool = False
    # Circuit breaker per (account, region): opens after this many consecutive failures,
    # stays open this long, then lets a probe through.
    breaker_threshold: int = Field(5, ge=1)
    breaker_open_seconds: float = Field(30.0, gt=0)
    # Bulkhead: AWS calls in flight per (account, region); a call waits for a slot until
    # this margin before its deadline.
    max_concurrent_calls: int = Field(64, ge=1)
    bulkhead_margin_seconds: float = Field(0.05, ge=0)
    # The most of those slots one tenant may hold at once (a fraction; at least one slot),
    # so a tenant flooding AWS with calls cannot starve the others of the same account.
    max_tenant_share: float = Field(0.5, gt=0, le=1)
    # Calls past the cache (no-cache reads, every write) per tenant, always on
    # (service/state/ratelimit.py UpstreamBudget), so one tenant cannot bring AWS throttling, and
    # with it the shared breaker, on everyone.
    tenant_upstream_per_second: float = Field(5.0, gt=0)
    tenant_upstream_burst: int = Field(20, ge=1)
    # The start-up probes and policy-scope reads of every (account, region) run this many at
    # a time (service/bounded_gather.py); one waiting past connect_timeout_seconds gives its
    # place to the next, so an account that does not answer holds no other back.
    probe_concurrency: int = Field(16, ge=1, le=1024)
    # An ECR client unused this long is closed (and made again on its next call, without a
    # new account check or policy-scope read); 0 keeps every client open.
    client_idle_seconds: float = Field(600.0, ge=0)
