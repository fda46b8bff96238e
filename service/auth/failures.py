"""Failed authentications, per peer address: counted always, logged by sample, slowed past a budget.

A stranger guessing keys, or a client deployed with a revoked one, fails authentication over
and over. Each failure costs little (a digest and a lookup), but each used to write a log
line, and nothing told the sender to stop. Here each peer address has a token bucket of
failures: within it every failure is answered UNAUTHENTICATED and logged; past it the answer
is RESOURCE_EXHAUSTED with RetryInfo and only one line in `log_every` is logged (with the
count suppressed since the last).

Valid credentials are never refused because of failures: the caller is always authenticated
first, and this is consulted only when that failed. Behind a proxy many callers share one
address; one of them failing cannot lock out the others.

Hand-written rather than `limits`/`aiolimiter` for the reason service/state/ratelimit.py gives (a
refusal must answer at once with its retry delay); the table of peers is a bounded LRU
(cachetools), so a flood from many addresses costs a fixed amount of memory.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import LRUCache

from service.errors import QuotaViolation, ResourceExhausted

MAX_PEERS = 10_000


@dataclass
class _Peer:
    tokens: float
    updated: float
    suppressed: int = 0


@dataclass(frozen=True)
class FailureVerdict:
    """What to do with one failed authentication."""

    refuse: ResourceExhausted | None  # answer this instead of UNAUTHENTICATED (over budget)
    log: bool  # write the log line for this failure
    suppressed: int  # lines left out since the last one logged for this peer


def peer_address(peer: str) -> str:
    """The address of a gRPC peer string without its port (`ipv4:10.0.0.1:5555` -> `ipv4:10.0.0.1`).

    Ports change with every connection; one sender is one address."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer  # unix sockets and the like: the whole string


def address_key(host: str | None) -> str:
    """The key a peer's connections are counted under: its IPv4 address, or the /64 of its
    IPv6 address (one host is routinely given a whole /64, so an address alone would cap
    nothing), or "" when the peer has no IP address."""
    if not host:
        return ""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def peer_key(peer: str) -> str:
    """The key a gRPC peer's calls are counted under (`ipv4:10.0.0.1:5555`,
    `ipv6:[2001:db8::1]:5555`): as `address_key`, so both listeners group an IPv6 peer by
    its /64."""
    if peer.startswith("ipv4:"):
        return address_key(peer[5:].rsplit(":", 1)[0])
    if peer.startswith("ipv6:"):
        host = peer[5:].rsplit(":", 1)[0]
        return address_key(host.strip("[]").replace("%25", "%"))
    return peer  # unix sockets and the like: the whole string


class AuthFailures:
    """Token buckets of failed authentications, one per peer address."""

    def __init__(
        self,
        per_second: float,
        burst: int,
        *,
        log_every: int = 100,
        max_peers: int = MAX_PEERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = per_second
        self._burst = float(burst)
        self._log_every = log_every
        self._clock = clock
        self._peers: LRUCache[str, _Peer] = LRUCache(maxsize=max_peers)

    def failed(self, peer: str) -> FailureVerdict:
        """Record one failed authentication from `peer` (a gRPC peer string)."""
        address = peer_address(peer)
        now = self._clock()
        state = self._peers.get(address)
        if state is None:
            state = self._peers[address] = _Peer(tokens=self._burst, updated=now)
        state.tokens = min(self._burst, state.tokens + max(0.0, now - state.updated) * self._rate)
        state.updated = now
        if state.tokens >= 1.0:
            state.tokens -= 1.0
            suppressed, state.suppressed = state.suppressed, 0
            return FailureVerdict(None, True, suppressed)
        state.suppressed += 1
        log = state.suppressed % self._log_every == 0
        suppressed = state.suppressed
        if log:
            state.suppressed = 0
        retry = (1.0 - state.tokens) / self._rate
        return FailureVerdict(_over_budget(self._rate, int(self._burst), retry), log, suppressed)


def _over_budget(rate: float, burst: int, retry_after_seconds: float) -> ResourceExhausted:
    limit = f"{rate:g} per second, burst {burst}"
    return ResourceExhausted(
        "too many failed authentications from this address; check the credentials and "
        f"retry in {retry_after_seconds:.3g}s",
        reason="AUTH_FAILURES_RATE_LIMITED",
        retry_after_seconds=retry_after_seconds,
        quota_violations=(
            QuotaViolation(subject="peer address", description=f"failed authentications: {limit}"),
        ),
    )
