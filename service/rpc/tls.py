"""TLS credentials for a listener, re-read from their files on reload.

grpcio's dynamic server credentials ask a fetcher for a new certificate configuration at
each new handshake; a reload loads the files once and hands the result to the next
handshake, so connections made after a reload use the new certificates and CA.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from service.config import ConfigError, TlsConfig


class TlsCredentials:
    """Server credentials for one TLS listener, reloadable."""

    def __init__(self, tls: TlsConfig) -> None:
        self._tls = tls
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._initial = self._load()

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials to bind with `add_secure_port`."""
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self._fetch,  # type: ignore[arg-type]  # grpcio takes None as "unchanged"
            require_client_authentication=self._tls.client_auth == "require",
        )

    def prepare(self) -> grpc.ServerCertificateConfiguration:
        """Read the files again (ConfigError if unusable), without using them yet."""
        return self._load()

    def use(self, configuration: grpc.ServerCertificateConfiguration) -> None:
        """Hand a prepared configuration to the next handshake."""
        self._pending = configuration

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        pending, self._pending = self._pending, None
        return pending

    def _load(self) -> grpc.ServerCertificateConfiguration:
        tls = self._tls
        key, cert = _read(tls.key_file, "tls.key_file"), _read(tls.cert_file, "tls.cert_file")
        ca = _read(tls.client_ca_file, "tls.client_ca_file") if tls.client_ca_file else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)


def _read(path: str, key: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"config error: {key}: cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise ConfigError(f"config error: {key}: {path} is not PEM")
    return data
