"""Hot reload: tenants and keys change without a restart; a broken file changes nothing."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from service.app.server import Gateway
from service.auth.api_keys import hash_key
from service.config import ConfigError
from service.gen.v1 import registry_pb2 as pb
from service.gen.v1 import registry_pb2_grpc as pb_grpc
from tests.conftest import Gate, GatewayFactory
from tests.support.certs import client_cert, make_pki
from tests.support.helpers import KEY, OTHER_KEY, config_dict, describe_status, metadata

NEW_KEY = "test-key-added-by-reload"
SLICE_WRITES = ("PutReplicationRules", "PutPolicyStatements")


def write(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


async def status_of(gateway: Gateway, key: str) -> grpc.StatusCode:
    return await describe_status(gateway.port, key)


@pytest.fixture
def config_file(tmp_path: Path, aws: str) -> tuple[Path, dict[str, Any]]:
    raw = config_dict(aws)
    return write(tmp_path / "gateway.yaml", raw), raw


async def test_added_key_works_and_revoked_key_is_refused(
    gateway_factory: GatewayFactory, config_file: tuple[Path, dict[str, Any]]
) -> None:
    path, raw = config_file
    gateway = await gateway_factory(config_path=path)
    assert await status_of(gateway, NEW_KEY) == grpc.StatusCode.UNAUTHENTICATED
    assert await status_of(gateway, OTHER_KEY) == grpc.StatusCode.OK

    raw["tenants"][0]["api_keys"].append(hash_key(NEW_KEY))
    raw["tenants"][1]["api_keys"] = []  # revoke the readonly tenant's key
    write(path, raw)
    assert gateway.reloader is not None and gateway.reloader.reload()

    assert await status_of(gateway, NEW_KEY) == grpc.StatusCode.OK
    assert await status_of(gateway, OTHER_KEY) == grpc.StatusCode.UNAUTHENTICATED
    assert await status_of(gateway, KEY) == grpc.StatusCode.OK


async def test_added_tenant_via_sighup(
    gateway_factory: GatewayFactory, config_file: tuple[Path, dict[str, Any]]
) -> None:
    path, raw = config_file
    gateway = await gateway_factory(config_path=path)
    reloaded = asyncio.Event()
    assert gateway.reloader is not None
    real_reload = gateway.reloader.reload

    def observed() -> bool:
        result = real_reload()
        reloaded.set()
        return result

    gateway.reloader.reload = observed  # type: ignore[method-assign]
    running = asyncio.ensure_future(gateway.run_until_signal())
    await asyncio.sleep(0)  # one loop turn: run_until_signal installs its handlers first
    # A copy of payments without its slice: two owners of one slice would be refused, and
    # so would slice writes without a slice.
    registries = [
        {k: v for k, v in r.items() if not k.startswith("owned_")}
        | {"operations": [op for op in r["operations"] if op not in SLICE_WRITES]}
        for r in raw["tenants"][0]["registries"]
    ]
    tenant = dict(
        raw["tenants"][0], name="newcomer", api_keys=[hash_key(NEW_KEY)], registries=registries
    )
    raw["tenants"].append(tenant)
    write(path, raw)
    os.kill(os.getpid(), signal.SIGHUP)
    await asyncio.wait_for(reloaded.wait(), timeout=10)
    assert await status_of(gateway, NEW_KEY) == grpc.StatusCode.OK
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(running, timeout=20)


@pytest.mark.parametrize(
    "breakage",
    ["tenants: [unclosed\n", "tenants:\n  - name: x\n    api_keys: ['in-clear']\n"],
    ids=["not-yaml", "invalid"],
)
async def test_broken_file_keeps_the_running_config(
    gateway_factory: GatewayFactory,
    config_file: tuple[Path, dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
    breakage: str,
) -> None:
    path, _ = config_file
    gateway = await gateway_factory(config_path=path)
    path.write_text(breakage)
    caplog.set_level(logging.INFO, logger="registry_gateway")
    assert gateway.reloader is not None and not gateway.reloader.reload()
    refusals = [r for r in caplog.records if "reload refused" in r.getMessage()]
    assert len(refusals) == 1 and "\n" not in refusals[0].getMessage()
    assert "in-clear" not in caplog.text
    assert await status_of(gateway, KEY) == grpc.StatusCode.OK


async def test_call_in_flight_finishes_under_the_old_config(
    gateway_factory: GatewayFactory,
    config_file: tuple[Path, dict[str, Any]],
    slow_describe: Gate,
) -> None:
    path, raw = config_file
    gateway = await gateway_factory(config_path=path)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        stub = pb_grpc.RegistryConfigServiceStub(ch)
        in_flight = asyncio.ensure_future(
            stub.DescribeRegistry(pb.DescribeRegistryRequest(), metadata=metadata(), timeout=20)
        )
        await asyncio.get_running_loop().run_in_executor(None, slow_describe.entered.wait, 10)
        raw["tenants"][0]["api_keys"] = []  # revoke the key of the call in flight
        write(path, raw)
        assert gateway.reloader is not None and gateway.reloader.reload()
        slow_describe.opened.set()
        assert (await in_flight).registry_id
    assert await status_of(gateway, KEY) == grpc.StatusCode.UNAUTHENTICATED


async def test_reload_picks_up_a_new_client_ca(
    gateway_factory: GatewayFactory, aws: str, tmp_path: Path
) -> None:
    old, new = make_pki(tmp_path / "old"), make_pki(tmp_path / "new")
    spiffe_id = "spiffe://corp.example/ns/payments/sa/deployer"
    raw = config_dict(aws)
    raw["tenants"][0]["spiffe_ids"] = [spiffe_id]
    ca_file = tmp_path / "clients-ca.pem"
    ca_file.write_bytes(old.ca_cert.read_bytes())
    raw["tls"] = {
        "cert_file": str(old.server_cert),
        "key_file": str(old.server_key),
        "client_ca_file": str(ca_file),
        "client_auth": "require",
    }
    path = write(tmp_path / "gateway.yaml", raw)
    gateway = await gateway_factory(config_path=path)
    cert = client_cert(new, "deployer", spiffe_id)

    async def call() -> grpc.StatusCode:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=old.ca_cert.read_bytes(),
            private_key=cert[1].read_bytes(),
            certificate_chain=cert[0].read_bytes(),
        )
        async with grpc.aio.secure_channel(f"localhost:{gateway.port}", credentials) as ch:
            stub = pb_grpc.RegistryConfigServiceStub(ch)
            try:
                await stub.DescribeRegistry(pb.DescribeRegistryRequest(), timeout=10)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    assert await call() == grpc.StatusCode.UNAVAILABLE  # the new CA is not trusted yet
    ca_file.write_bytes(new.ca_cert.read_bytes())
    assert gateway.reloader is not None and gateway.reloader.reload()
    assert await call() == grpc.StatusCode.OK


async def test_overlapping_ownership_is_refused_at_start_and_at_reload(
    gateway_factory: GatewayFactory,
    config_file: tuple[Path, dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path, raw = config_file
    gateway = await gateway_factory(config_path=path)
    # The readonly tenant now claims part of payments' slice (payments owns payments/).
    raw["tenants"][1]["registries"][0]["owned_repository_prefixes"] = ["payments/eu/"]
    write(path, raw)
    caplog.set_level(logging.INFO, logger="registry_gateway")
    assert gateway.reloader is not None and not gateway.reloader.reload()
    (refusal,) = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
    assert "tenants payments and readonly own overlapping repository prefixes" in refusal
    assert await status_of(gateway, KEY) == grpc.StatusCode.OK  # the old config serves on
    # And a gateway cannot start on it: the same loader refuses it.
    with pytest.raises(ConfigError, match="tenants payments and readonly own overlapping"):
        await gateway_factory(config_path=path)


async def test_a_changed_file_is_reloaded_when_watched(
    gateway_factory: GatewayFactory, config_file: tuple[Path, dict[str, Any]]
) -> None:
    path, raw = config_file
    raw["server"]["watch_config_seconds"] = 0.05
    write(path, raw)
    gateway = await gateway_factory(config_path=path)
    assert gateway.reloader is not None
    reloaded = asyncio.Event()
    real_reload = gateway.reloader.reload

    def observed() -> bool:
        result = real_reload()
        reloaded.set()
        return result

    gateway.reloader.reload = observed  # type: ignore[method-assign]
    raw["tenants"][0]["api_keys"].append(hash_key(NEW_KEY))
    write(path, raw)
    await asyncio.wait_for(reloaded.wait(), timeout=10)
    assert await status_of(gateway, NEW_KEY) == grpc.StatusCode.OK
