"""mTLS: a client certificate's SPIFFE ID names the tenant; tokens ride a TLS-only listener.

Two listeners on one server, as a deployment needing both would run: one that requires a
client certificate (grpcio cannot make it optional on one port), one TLS without.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from service.app.server import Gateway
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import GatewayFactory
from tests.support.certs import Pki, client_cert, make_pki
from tests.support.helpers import ACCOUNT, KEY, config_dict, metadata, rich_error

SPIFFE_ID = "spiffe://corp.example/ns/payments/sa/deployer"
UNMAPPED_ID = "spiffe://corp.example/ns/intruder/sa/deployer"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
async def mtls_gateway(gateway_factory: GatewayFactory, aws: str, pki: Pki) -> Gateway:
    raw: dict[str, Any] = config_dict(aws)
    raw["tenants"][0]["spiffe_ids"] = [SPIFFE_ID]
    server_tls = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    raw["listeners"] = [
        {
            "listen": "127.0.0.1:0",
            "tls": {**server_tls, "client_ca_file": str(pki.ca_cert), "client_auth": "require"},
        },
        {"listen": "127.0.0.1:0", "tls": {**server_tls, "client_auth": "none"}},
    ]
    return await gateway_factory(raw)


def channel(pki: Pki, port: int, cert: tuple[Path, Path] | None = None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_cert.read_bytes(),
        private_key=cert[1].read_bytes() if cert else None,
        certificate_chain=cert[0].read_bytes() if cert else None,
    )
    return grpc.aio.secure_channel(f"localhost:{port}", credentials)


async def describe(ch: grpc.aio.Channel, md: Any = ()) -> pb.DescribeRegistryResponse:
    async with ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        response: pb.DescribeRegistryResponse = await stub.DescribeRegistry(
            pb.DescribeRegistryRequest(), metadata=md, timeout=10
        )
        return response


async def test_mapped_spiffe_id_is_the_tenant(mtls_gateway: Gateway, pki: Pki) -> None:
    cert = client_cert(pki, "deployer", SPIFFE_ID)
    response = await describe(channel(pki, mtls_gateway.ports[0], cert))
    assert response.registry_id == ACCOUNT


@pytest.mark.parametrize(
    ("spiffe_id", "reason"),
    [(UNMAPPED_ID, "UNKNOWN_SPIFFE_ID"), (None, "CERTIFICATE_WITHOUT_SPIFFE_ID")],
    ids=["unmapped", "no-uri-san"],
)
async def test_certificate_without_a_mapped_id_is_refused(
    mtls_gateway: Gateway, pki: Pki, spiffe_id: str | None, reason: str
) -> None:
    cert = client_cert(pki, "intruder", spiffe_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        # A valid API key beside the certificate does not help: the certificate decides.
        await describe(channel(pki, mtls_gateway.ports[0], cert), metadata())
    err = rich_error(caught.value)
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
    assert err.info.reason == reason


@pytest.mark.parametrize("foreign", [False, True], ids=["no-certificate", "foreign-ca"])
async def test_mtls_listener_refuses_the_handshake(
    mtls_gateway: Gateway, pki: Pki, foreign: bool
) -> None:
    cert = client_cert(pki, "stranger", SPIFFE_ID, foreign=True) if foreign else None
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await describe(channel(pki, mtls_gateway.ports[0], cert), metadata())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_tls_listener_carries_tokens(mtls_gateway: Gateway, pki: Pki) -> None:
    response = await describe(channel(pki, mtls_gateway.ports[1]), metadata(KEY))
    assert response.registry_id == ACCOUNT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await describe(channel(pki, mtls_gateway.ports[1]))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
