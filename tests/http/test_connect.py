"""What is HTTP's alone: GET with ETag and 304, CORS, the binary codec, the config, the
listener's life (start, drain, TLS), and the pipeline's reporters seeing HTTP calls."""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app.server import Gateway
from service.config import ConfigError, from_mapping
from service.gen.v1 import registry_pb2 as pb
from service.rpc.servicer import RegistryConfigServicer
from tests.conftest import Gate, GatewayFactory, wait_until
from tests.http.conftest import http_config
from tests.http.support import SERVICE, connect_answer
from tests.support.certs import make_pki
from tests.support.helpers import KEY, OTHER_ACCOUNT, OTHER_KEY, POLICY, config_dict

AUTH = {"authorization": f"Bearer {KEY}"}
JSON = {"content-type": "application/json"}


def get_url(rpc: str, message: dict[str, Any] | None = None) -> str:
    """Connect's GET form of a call (reads only): the message in the query."""
    query = urllib.parse.urlencode({"encoding": "json", "message": json.dumps(message or {})})
    return f"/{SERVICE}/{rpc}?{query}"


async def test_reads_by_get_with_etag_and_304(http: httpx.AsyncClient) -> None:
    first = await http.get(get_url("DescribeRegistry"), headers=AUTH)
    assert first.status_code == 200, first.text
    etag = first.headers["etag"]
    assert etag == f'"{json.loads(first.text)["etag"]}"'
    same = await http.get(get_url("DescribeRegistry"), headers={**AUTH, "if-none-match": etag})
    assert same.status_code == 304 and same.content == b""
    assert same.headers["etag"] == etag and same.headers["x-request-id"]
    weak_list = f'"other", W/{etag}'
    listed = await http.get(
        get_url("DescribeRegistry"), headers={**AUTH, "if-none-match": weak_list}
    )
    assert listed.status_code == 304
    other = await http.get(get_url("DescribeRegistry"), headers={**AUTH, "if-none-match": '"x"'})
    assert other.status_code == 200
    # A POST is not a conditional request: it always answers the message.
    posted = await http.post(
        f"/{SERVICE}/DescribeRegistry",
        content=b"{}",
        headers={**AUTH, **JSON, "if-none-match": etag},
    )
    assert posted.status_code == 200 and posted.headers["etag"] == etag


async def test_a_304_reveals_nothing_to_a_stranger(http: httpx.AsyncClient) -> None:
    first = await http.get(get_url("DescribeRegistry"), headers=AUTH)
    etag = first.headers["etag"]
    stranger = await http.get(
        get_url("DescribeRegistry"), headers={"authorization": "Bearer nope", "if-none-match": etag}
    )
    assert stranger.status_code == 401
    # An authenticated tenant, but not allowed that registry: denied, not "not modified".
    denied = await http.get(
        get_url("DescribeRegistry", {"registryId": OTHER_ACCOUNT}),
        headers={**AUTH, "if-none-match": "*"},
    )
    assert denied.status_code == 403
    # Another tenant allowed the same registry gets its 304 too: the etag is of the data.
    allowed = await http.get(
        get_url("DescribeRegistry"),
        headers={"authorization": f"Bearer {OTHER_KEY}", "if-none-match": etag},
    )
    assert allowed.status_code == 304


async def test_writes_cannot_be_made_by_get(http: httpx.AsyncClient) -> None:
    reply = await http.get(get_url("PutRegistryPolicy", {"policyText": POLICY}), headers=AUTH)
    assert reply.status_code == 405 and reply.headers["allow"] == "POST"


async def test_slice_reads_answer_their_etag(http: httpx.AsyncClient) -> None:
    rules = await http.get(get_url("GetReplicationRules"), headers=AUTH)
    assert rules.status_code == 200
    body = json.loads(rules.text)
    # Empty lists are printed, as the AWS CLI prints them.
    assert body["rules"] == [] and rules.headers["etag"] == f'"{body["etag"]}"'


async def test_binary_codec_round_trip(http: httpx.AsyncClient) -> None:
    reply = await http.post(
        f"/{SERVICE}/DescribeRegistry",
        content=pb.DescribeRegistryRequest().SerializeToString(),
        headers={**AUTH, "content-type": "application/proto"},
    )
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/proto"
    assert pb.DescribeRegistryResponse.FromString(reply.content).registry_id


async def test_unexpected_errors_answer_only_the_request_id(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: Any, request: Any, context: Any) -> Any:
        raise RuntimeError("secret-token-in-the-exception-text")

    monkeypatch.setattr(RegistryConfigServicer, "DescribeRegistry", broken)
    reply = await http.post(f"/{SERVICE}/DescribeRegistry", content=b"{}", headers={**AUTH, **JSON})
    assert reply.status_code == 500
    assert "secret" not in reply.text
    answer = connect_answer("DescribeRegistry", reply)
    assert answer.info.reason == "INTERNAL"
    assert reply.headers["x-request-id"] in answer.message


async def test_cors_is_off_by_default(http: httpx.AsyncClient) -> None:
    origin = {"origin": "https://console.example"}
    reply = await http.post(
        f"/{SERVICE}/DescribeRegistry", content=b"{}", headers={**AUTH, **JSON, **origin}
    )
    assert reply.status_code == 200
    assert not any(k.startswith("access-control-") for k in reply.headers)
    preflight = await http.options(f"/{SERVICE}/DescribeRegistry", headers=origin)
    assert "access-control-allow-origin" not in preflight.headers


async def test_cors_when_configured(gateway_factory: GatewayFactory, aws: str) -> None:
    raw = http_config(aws)
    raw["http"]["cors_allowed_origins"] = ["https://console.example"]
    gateway = await gateway_factory(raw)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as http:
        preflight = await http.options(
            f"/{SERVICE}/DescribeRegistry",
            headers={
                "origin": "https://console.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://console.example"
        assert "authorization" in preflight.headers["access-control-allow-headers"]
        call = await http.post(
            f"/{SERVICE}/DescribeRegistry",
            content=b"{}",
            headers={**AUTH, **JSON, "origin": "https://console.example"},
        )
        assert call.headers["access-control-allow-origin"] == "https://console.example"
        assert "x-request-id" in call.headers["access-control-expose-headers"]
        stranger = await http.post(
            f"/{SERVICE}/DescribeRegistry",
            content=b"{}",
            headers={**AUTH, **JSON, "origin": "https://evil.example"},
        )
        assert "access-control-allow-origin" not in stranger.headers


def test_the_http_section(aws: str) -> None:
    assert from_mapping(config_dict(aws), {}).http.listen is None  # off when absent
    raw = http_config(aws)
    raw["http"]["tls"] = {"cert_file": "c", "key_file": "k", "client_auth": "require"}
    with pytest.raises(ConfigError, match="client_auth is not supported on the HTTP listener"):
        from_mapping(raw, {})
    raw["http"] = {"listen": "nowhere"}
    with pytest.raises(ConfigError, match=r"http\.listen"):
        from_mapping(raw, {})


async def test_http_is_off_without_listen(gateway: Gateway) -> None:
    assert gateway.http is None and gateway.http_port == 0


async def test_tls(gateway_factory: GatewayFactory, aws: str, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    raw = http_config(aws)
    raw["http"]["tls"] = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    gateway = await gateway_factory(raw)
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    async with httpx.AsyncClient(
        base_url=f"https://localhost:{gateway.http_port}", verify=context
    ) as http:
        reply = await http.post(
            f"/{SERVICE}/DescribeRegistry", content=b"{}", headers={**AUTH, **JSON}
        )
    assert reply.status_code == 200, reply.text


async def test_metrics_and_audit_see_http_calls(
    gateway_factory: GatewayFactory, aws: str, tmp_path: Path
) -> None:
    raw = http_config(aws)
    raw["audit"] = {"path": str(tmp_path / "audit.jsonl")}
    gateway = await gateway_factory(raw)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as http:
        await http.post(f"/{SERVICE}/DescribeRegistry", content=b"{}", headers={**AUTH, **JSON})
        await http.post(f"/{SERVICE}/DescribeRegistry", content=b"{}", headers=JSON)
        await http.post(
            f"/{SERVICE}/PutRegistryPolicy",
            content=json.dumps({"policyText": POLICY}).encode(),
            headers={**AUTH, **JSON, "x-request-id": "audited-over-http"},
        )
    labels = {
        "grpc_type": "unary",
        "grpc_service": SERVICE,
        "grpc_method": "DescribeRegistry",
    }
    registry = gateway.metrics.registry
    handled = "grpc_server_handled_total"
    assert registry.get_sample_value(handled, {**labels, "grpc_code": "OK"}) == 1
    assert registry.get_sample_value(handled, {**labels, "grpc_code": "Unauthenticated"}) == 1
    assert registry.get_sample_value("grpc_server_started_total", labels) == 2
    by_protocol = {**labels, "protocol": "connect"}
    del by_protocol["grpc_type"]
    http_handled = "registry_gateway_http_handled_total"
    assert registry.get_sample_value(http_handled, {**by_protocol, "grpc_code": "OK"}) == 1
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(a["request_id"], a["rpc"], a["outcome"]) for a in lines] == [
        ("audited-over-http", "PutRegistryPolicy", "OK")
    ]


async def test_shutdown_drains_http_calls_in_flight(
    gateway_factory: GatewayFactory, aws: str, slow_describe: Gate
) -> None:
    gateway = await gateway_factory(http_config(aws, grace_seconds=5))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as http:
        call = asyncio.create_task(
            http.post(f"/{SERVICE}/DescribeRegistry", content=b"{}", headers={**AUTH, **JSON})
        )
        await wait_until(slow_describe.entered.is_set, what="the call to reach AWS")
        shutdown = asyncio.create_task(gateway.shutdown())
        await asyncio.sleep(0.3)
        assert not call.done()  # still served while stopping
        slow_describe.opened.set()
        reply = await call
        assert reply.status_code == 200, reply.text
        await asyncio.wait_for(shutdown, timeout=10)
        with pytest.raises(httpx.ConnectError):
            await http.post(f"/{SERVICE}/DescribeRegistry", content=b"{}", headers=AUTH)


async def test_keep_alive_answers_do_not_wait_on_nagle(http: httpx.AsyncClient) -> None:
    # Without TCP_NODELAY on the accepted sockets, each answer after the first on a
    # connection waits for the client's delayed ACK (~40 ms): 10 calls would take 0.4 s.
    await http.post(f"/{SERVICE}/DescribeRegistry", content=b"{}", headers={**AUTH, **JSON})
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(10):
        reply = await http.post(
            f"/{SERVICE}/DescribeRegistry", content=b"{}", headers={**AUTH, **JSON}
        )
        assert reply.status_code == 200
    assert loop.time() - started < 0.3
