"""Hot reload: tenants, keys, JWKS and TLS certificates, without a restart.

The new config is read and built whole before anything changes; a broken one is refused
with one log line and the old one stays in force. Keys that shape the process itself
(listeners, server limits, AWS, cache, rate limits, audit sink) need a restart: a reload
keeps their running values and logs which ones differ. A reload that leaves a slice prefix
of a shared registry without an owner warns and counts it (nothing is deleted). One that
shrinks a slice's share (a tenant added) warns, naming the registry and tenants: what they
wrote stays in AWS, and the next drift check (service/app/drift_check.py's
`OverShareWatch`) counts it against the new shares and reports each slice over its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from service.auth.tenancy import TenancyHolder, build_tenancy
from service.config import ConfigError, GatewayConfig, load
from service.ecr import limits
from service.observability.metrics import Metrics
from service.rpc.tls import TlsCredentials

log = logging.getLogger("registry_gateway.reload")

RESTART_ONLY = ("listen", "listeners", "server", "aws", "cache", "rate_limit", "audit")


class Reloader:
    """Re-reads the config file on demand (SIGHUP) and swaps the tenancy snapshot."""

    def __init__(
        self,
        path: str | Path,
        holder: TenancyHolder,
        tls: Sequence[TlsCredentials],
        environ: Mapping[str, str],
        metrics: Metrics | None = None,
    ) -> None:
        self._path = path
        self._holder = holder
        self._tls = tls
        self._environ = environ
        self._metrics = metrics

    def stamp(self) -> tuple[int, int, int] | None:
        """What identifies the file's current version (inode, size, mtime); None if absent."""
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def reload(self) -> bool:
        """Apply the file's current content; False (and the old config kept) if it is broken."""
        running = self._holder.current.config
        try:
            new = load(self._path, self._environ)
            kept: GatewayConfig = new.model_copy(
                update={key: getattr(running, key) for key in RESTART_ONLY}
            )
            tenancy = build_tenancy(kept, self._environ)
            certificates = [credentials.prepare() for credentials in self._tls]
        except ConfigError as exc:
            log.error("reload refused, the running config stays: %s", exc)
            return False
        # Everything is built: now switch, all at once.
        for credentials, prepared in zip(self._tls, certificates, strict=True):
            credentials.use(prepared)
        self._holder.swap(tenancy)
        self._report_unowned(running, kept)
        for registry_id, tenants in sorted(shrunk_shares(running, kept).items()):
            log.warning(
                "reload: the replication shares of %s on registry %s shrank; a slice holding "
                "more than its new share is reported by the next drift check "
                "(slice_over_share), and other tenants' writes may meet SLICES_OVER_SHARE",
                ", ".join(tenants),
                registry_id,
            )
        differ = [key for key in RESTART_ONLY if getattr(new, key) != getattr(running, key)]
        log.info(
            "config reloaded: %d tenants%s",
            len(kept.tenants),
            f"; restart to apply {', '.join(differ)}" if differ else "",
        )
        return True

    def _report_unowned(self, running: GatewayConfig, new: GatewayConfig) -> None:
        """Warn about (and count) prefixes that no tenant owns any more on a registry.

        Nothing is deleted: a merge keeps every rule and statement its writer does not own,
        so what they held stays in AWS, now changed only by a full write. An operator who
        moved or dropped a slice by mistake sees it here rather than in an incident.
        """
        for registry_id, kind, prefix in sorted(unowned_prefixes(running, new)):
            log.warning(
                "reload: %s prefix %r on registry %s is owned by no tenant any more; what it "
                "held stays in AWS and only a full %s changes it",
                kind.replace("_", " "),
                prefix,
                registry_id,
                "PutReplicationConfiguration" if kind == "repository" else "PutRegistryPolicy",
            )
            if self._metrics is not None:
                self._metrics.unowned_slices.labels(registry_id, kind).inc()


def shrunk_shares(old: GatewayConfig, new: GatewayConfig) -> dict[str, list[str]]:
    """registry_id -> the tenants (sorted) whose replication share (rules, filters or unique
    destinations) is smaller in `new` than in `old`."""
    before = limits.share_plan(old.tenants).shares
    after = limits.share_plan(new.tenants).shares
    shrunk: dict[str, list[str]] = {}
    for (tenant, registry_id), share in sorted(after.items()):
        was = before.get((tenant, registry_id))
        if was is not None and (
            share.rules < was.rules
            or share.filters < was.filters
            or share.destinations < was.destinations
        ):
            shrunk.setdefault(registry_id, []).append(tenant)
    return shrunk


def unowned_prefixes(old: GatewayConfig, new: GatewayConfig) -> set[tuple[str, str, str]]:
    """(registry_id, kind, prefix) owned in `old` and by nobody in `new`.

    A prefix is still owned when some new prefix of its kind on its registry starts it
    ("payments/" covers an old "payments/eu/"), whoever owns it now.
    """
    before, after = _claims(old), _claims(new)
    return {
        (registry_id, kind, prefix)
        for registry_id, kind, prefix in before
        if not any(
            prefix.startswith(other)
            for other_registry, other_kind, other in after
            if (other_registry, other_kind) == (registry_id, kind)
        )
    }


def _claims(config: GatewayConfig) -> set[tuple[str, str, str]]:
    claims: set[tuple[str, str, str]] = set()
    for tenant in config.tenants:
        for registry in tenant.registries:
            for prefix in registry.owned_repository_prefixes:
                claims.add((registry.registry_id, "repository", prefix))
            if registry.owned_statement_sid_prefix:
                claims.add(
                    (registry.registry_id, "statement_sid", registry.owned_statement_sid_prefix)
                )
    return claims
