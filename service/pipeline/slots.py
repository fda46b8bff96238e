"""Calls in flight, counted from their headers: per tenant, in all, and per address for
the services that need no credentials.

grpc.aio's own `maximum_concurrent_rpcs` counts every call from its headers, before any
gateway code runs and before the request message arrives, so a stranger opening streams
that never send their message held every slot (issue 21, finding 4). The gateway counts
instead, once it knows who is calling (service/rpc/interceptor.py runs at the headers):

- an authenticated call takes one of its tenant's slots (`max_calls_in_flight_per_tenant`)
  and one of the server's (`max_concurrent_rpcs`, load shedding of authenticated work
  only), so a flooding tenant is refused alone, naming its own limit;
- a call to health or reflection (no credentials) takes one of its peer address's slots
  (`max_unauthenticated_calls_per_address`; IPv6 by its /64) and none of the tenants', so a
  stranger holding such calls neither reaches the tenants' slots nor other addresses'
  health checks; their total is capped apart, at `max_concurrent_rpcs`;
- a call to the service that does not authenticate takes nothing: it is refused at once.

Plain counters (one event loop; no lock), entries dropped at zero so the tables hold only
the callers with calls in flight. Refusals are ResourceExhausted with RetryInfo and one
QuotaViolation naming the limit that was reached and whose it is.
"""

from __future__ import annotations

from service.errors import QuotaViolation, ResourceExhausted

# A refused caller may retry soon: slots free as soon as a call ends.
RETRY_AFTER_SECONDS = 0.5


class CallSlots:
    """Counters of calls in flight, with the limits the server's config gives."""

    def __init__(self, max_calls: int, per_tenant: int, per_address: int) -> None:
        self.max_calls = max_calls
        self.per_tenant = per_tenant
        self.per_address = per_address
        self._calls = 0
        self._tenants: dict[str, int] = {}
        self._addresses: dict[str, int] = {}
        # Unauthenticated calls in all, apart from the tenants' count: addresses are cheap to
        # come by (an IPv6 /64 is one, but a botnet has many), so their total is capped too,
        # at the server's limit, without ever taking a tenant's slot.
        self._unauthenticated = 0

    @property
    def in_flight(self) -> int:
        """Authenticated calls in flight, every tenant's."""
        return self._calls

    def take_tenant(self, tenant: str) -> None:
        """One slot of `tenant` and one of the server's; ResourceExhausted when either is full
        (the tenant's is checked first: a flooding tenant hears its own limit)."""
        held = self._tenants.get(tenant, 0)
        if held >= self.per_tenant:
            raise _full(
                f"tenant {tenant} already has {held} calls in flight (its limit is "
                f"{self.per_tenant}); retry when one has finished",
                "TENANT_CALLS_IN_FLIGHT",
                self.per_tenant,
                f"tenant:{tenant}",
                "calls in flight per tenant",
                tenant=tenant,
            )
        if self._calls >= self.max_calls:
            raise _full(
                f"the server has {self._calls} calls in flight (its limit is "
                f"{self.max_calls}); retry shortly",
                "SERVER_CALLS_IN_FLIGHT",
                self.max_calls,
                "server",
                "calls in flight on this server",
            )
        self._tenants[tenant] = held + 1
        self._calls += 1

    def release_tenant(self, tenant: str) -> None:
        """Give back what `take_tenant` took."""
        self._calls -= 1
        held = self._tenants[tenant] - 1
        if held:
            self._tenants[tenant] = held
        else:
            del self._tenants[tenant]

    def take_address(self, address: str) -> None:
        """One slot of an unauthenticated caller's address (`ipv4:10.0.0.1`, no port)."""
        held = self._addresses.get(address, 0)
        if held >= self.per_address:
            raise _full(
                f"this address already has {held} calls in flight to the services that "
                f"need no credentials (its limit is {self.per_address}); retry when one has "
                "finished",
                "ADDRESS_CALLS_IN_FLIGHT",
                self.per_address,
                "peer address",
                "unauthenticated calls in flight per address",
            )
        if self._unauthenticated >= self.max_calls:
            raise _full(
                f"the server has {self._unauthenticated} calls in flight to the services that "
                f"need no credentials (its limit is {self.max_calls}); retry shortly",
                "SERVER_CALLS_IN_FLIGHT",
                self.max_calls,
                "server",
                "unauthenticated calls in flight",
            )
        self._addresses[address] = held + 1
        self._unauthenticated += 1

    def release_address(self, address: str) -> None:
        """Give back what `take_address` took."""
        self._unauthenticated -= 1
        held = self._addresses[address] - 1
        if held:
            self._addresses[address] = held
        else:
            del self._addresses[address]


def _full(
    message: str, reason: str, limit: int, subject: str, what: str, **metadata: str
) -> ResourceExhausted:
    """A refusal naming the limit reached and whose it is (RetryInfo, one QuotaViolation)."""
    return ResourceExhausted(
        message,
        reason=reason,
        metadata={**metadata, "limit": str(limit)},
        retry_after_seconds=RETRY_AFTER_SECONDS,
        quota_violations=(QuotaViolation(subject=subject, description=f"{what}: {limit}"),),
    )
