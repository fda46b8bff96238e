"""Hot reload: tenants, keys, JWKS and TLS certificates, without a restart.

The new config is read and built whole before anything changes; a broken one is refused
with one log line and the old one stays in force. Keys that shape the process itself
(listeners, server limits, AWS, cache, rate limits, audit sink) need a restart: a reload
keeps their running values and logs which ones differ.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from service.config import ConfigError, GatewayConfig, load
from service.tenancy import TenancyHolder, build_tenancy
from service.tls import TlsCredentials

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
    ) -> None:
        self._path = path
        self._holder = holder
        self._tls = tls
        self._environ = environ

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
        differ = [key for key in RESTART_ONLY if getattr(new, key) != getattr(running, key)]
        log.info(
            "config reloaded: %d tenants%s",
            len(kept.tenants),
            f"; restart to apply {', '.join(differ)}" if differ else "",
        )
        return True
