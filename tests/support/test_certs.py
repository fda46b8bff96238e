"""The test PKI of tests/support/certs.py: what it signs, what it names, and that grpcio
accepts it."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.support.certs import Pki, client_cert, make_pki

SPIFFE_ID = "spiffe://corp.example/ns/payments/sa/deployer"
PEER_METHOD = "/test.Peer/Who"


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def test_client_cert_has_the_spiffe_id_and_is_signed_by_the_ca(pki: Pki) -> None:
    cert_path, key_path = client_cert(pki, "deployer", SPIFFE_ID)
    cert = load(cert_path)
    assert uri_sans(cert) == [SPIFFE_ID]
    cert.verify_directly_issued_by(load(pki.ca_cert))
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_client_cert_without_spiffe_id_has_no_uri(pki: Pki) -> None:
    cert = load(client_cert(pki, "anonymous", None)[0])
    assert uri_sans(cert) == []
    cert.verify_directly_issued_by(load(pki.ca_cert))


def test_foreign_client_cert_is_not_signed_by_the_ca(pki: Pki) -> None:
    cert = load(client_cert(pki, "intruder", SPIFFE_ID, foreign=True)[0])
    assert uri_sans(cert) == [SPIFFE_ID]
    cert.verify_directly_issued_by(load(pki.foreign_ca_cert))
    with pytest.raises((InvalidSignature, ValueError)):
        cert.verify_directly_issued_by(load(pki.ca_cert))


def test_server_cert_names_localhost_and_loopback(pki: Pki) -> None:
    cert = load(pki.server_cert)
    cert.verify_directly_issued_by(load(pki.ca_cert))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_grpc_credentials_build_from_the_files(pki: Pki) -> None:
    cert_path, key_path = client_cert(pki, "deployer", SPIFFE_ID)
    server = grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
        root_certificates=pki.ca_cert.read_bytes(),
        require_client_auth=True,
    )
    channel = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_cert.read_bytes(),
        private_key=key_path.read_bytes(),
        certificate_chain=cert_path.read_bytes(),
    )
    assert isinstance(server, grpc.ServerCredentials)
    assert isinstance(channel, grpc.ChannelCredentials)


async def _who(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    """Answers the SPIFFE ID grpcio read off the caller's verified certificate."""
    return b",".join(context.auth_context().get("peer_spiffe_id", ()))


@pytest.fixture
async def mtls_port(pki: Pki) -> AsyncIterator[int]:
    """A grpc.aio server on 127.0.0.1 that requires a client certificate from the CA."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(_who)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Peer", {"Who": handler}),)
    )
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
        root_certificates=pki.ca_cert.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    yield port
    await server.stop(None)


async def _call(pki: Pki, target: str, cert_path: Path, key_path: Path) -> bytes:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_cert.read_bytes(),
        private_key=key_path.read_bytes(),
        certificate_chain=cert_path.read_bytes(),
    )
    async with grpc.aio.secure_channel(target, credentials) as channel:
        who: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(PEER_METHOD)
        answer = await who(b"", timeout=10)
        assert isinstance(answer, bytes)
        return answer


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_mtls_handshake_shows_the_spiffe_id(pki: Pki, mtls_port: int, host: str) -> None:
    """The server cert verifies under both names it carries; grpcio sees the client's ID."""
    cert_path, key_path = client_cert(pki, "deployer", SPIFFE_ID)
    assert await _call(pki, f"{host}:{mtls_port}", cert_path, key_path) == SPIFFE_ID.encode()


async def test_mtls_refuses_a_foreign_client_cert(pki: Pki, mtls_port: int) -> None:
    cert_path, key_path = client_cert(pki, "intruder", SPIFFE_ID, foreign=True)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(pki, f"127.0.0.1:{mtls_port}", cert_path, key_path)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
