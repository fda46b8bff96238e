"""Test PKI made on the fly: a CA, a server certificate for localhost, SPIFFE client certificates.

Everything is generated with `cryptography` into a directory the test owns (tmp_path), so no
key material is committed and nothing outlives the test. Keys are ECDSA P-256: generating
one takes well under a millisecond, where an RSA key takes tens.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_DNS_NAME = "localhost"
SERVER_IP = "127.0.0.1"
# Backdated so that a peer whose clock is a little behind still accepts the certificates.
_BACKDATE = datetime.timedelta(minutes=5)
_LIFETIME = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files `make_pki` wrote. The foreign CA is unrelated to the CA: the
    gateway must refuse the client certificates it signs."""

    dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    foreign_ca_cert: Path
    foreign_ca_key: Path


def make_pki(dir: Path) -> Pki:
    """Write a CA, a server certificate (localhost, 127.0.0.1) it signs, and a foreign CA."""
    dir.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _make_ca("Registry Gateway Test CA")
    foreign_key, foreign_cert = _make_ca("Foreign Test CA")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(
        subject=SERVER_DNS_NAME,
        public_key=server_key.public_key(),
        issuer_cert=ca_cert,
        issuer_key=ca_key,
        san=[
            x509.DNSName(SERVER_DNS_NAME),
            x509.IPAddress(ipaddress.ip_address(SERVER_IP)),
        ],
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )
    return Pki(
        dir=dir,
        ca_cert=_write_cert(dir / "ca.pem", ca_cert),
        ca_key=_write_key(dir / "ca.key", ca_key),
        server_cert=_write_cert(dir / "server.pem", server_cert),
        server_key=_write_key(dir / "server.key", server_key),
        foreign_ca_cert=_write_cert(dir / "foreign-ca.pem", foreign_cert),
        foreign_ca_key=_write_key(dir / "foreign-ca.key", foreign_key),
    )


def client_cert(
    pki: Pki, name: str, spiffe_id: str | None, *, foreign: bool = False
) -> tuple[Path, Path]:
    """Write `<name>.pem` and `<name>.key`: a client certificate with CN `name` and, when
    given, `spiffe_id` as its only URI SAN; signed by the CA, or by the foreign CA."""
    issuer_cert = _read_cert(pki.foreign_ca_cert if foreign else pki.ca_cert)
    issuer_key = _read_key(pki.foreign_ca_key if foreign else pki.ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(
        subject=name,
        public_key=key.public_key(),
        issuer_cert=issuer_cert,
        issuer_key=issuer_key,
        san=[x509.UniformResourceIdentifier(spiffe_id)] if spiffe_id is not None else [],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    return _write_cert(pki.dir / f"{name}.pem", cert), _write_key(pki.dir / f"{name}.key", key)


def _make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue(
    *,
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer_cert: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    san: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)  # a private key: readable by its owner only, like a real one
    return path


def _read_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _read_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key
