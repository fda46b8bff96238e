"""Reflection serves the google.rpc error-detail types, so generic clients decode them.

Every failed call carries an ErrorInfo (and, for INVALID_ARGUMENT, a BadRequest) packed in
`google.protobuf.Any`. A client that resolves an `Any` through server reflection asks for
the file holding `google.rpc.ErrorInfo`; the gateway answers google/rpc/error_details.proto
and status.proto (service/rpc/reflection.py).

`buf curl` (1.75) prints a gRPC error through connect-go's ErrorWriter, which decodes a
detail only from the types compiled into the buf binary (google.rpc is not among them) and
never asks reflection: its test is a strict xfail that turns red the day buf starts
decoding. grpcurl does resolve details through reflection, so it is the one asserted.
Both run as child processes with `asyncio.create_subprocess_exec` (the gateway serves from
this test's event loop; a blocking `subprocess.run` would starve it).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from service.app.server import Gateway
from service.rpc.reflection import ERROR_DETAIL_FILES
from tests.support.helpers import KEY

BIN = Path(sys.executable).parent
METHOD = "ecr.registry.v1.RegistryConfigService/PutRegistryPolicy"
INVALID = {"policyText": "not json"}


async def run(*argv: str) -> tuple[int, str, str]:
    """Run one command to completion without blocking the loop."""
    assert Path(argv[0]).exists(), f"{argv[0]} missing: install the dev extra"
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def test_error_detail_files_are_the_google_rpc_ones() -> None:
    assert ERROR_DETAIL_FILES == ("google/rpc/error_details.proto", "google/rpc/status.proto")


@pytest.mark.parametrize(
    "symbol", ["google.rpc.ErrorInfo", "google.rpc.BadRequest", "google.rpc.Status"]
)
async def test_reflection_describes_the_error_types(gateway: Gateway, symbol: str) -> None:
    code, out, err = await run(
        str(BIN / "grpcurl"), "-plaintext", "-max-time", "20",
        f"127.0.0.1:{gateway.port}", "describe", symbol,
    )  # fmt: skip
    assert code == 0, err
    assert f"{symbol} is a message" in out, out


async def test_grpcurl_shows_error_details_decoded(gateway: Gateway) -> None:
    code, out, err = await run(
        str(BIN / "grpcurl"), "-plaintext", "-max-time", "20",
        "-H", f"authorization: Bearer {KEY}", "-d", json.dumps(INVALID),
        f"127.0.0.1:{gateway.port}", METHOD,
    )  # fmt: skip
    assert code == 64 + 3, (out, err)  # grpcurl exits 64 + the status code
    details = [
        json.loads(line.split(")", 1)[1])
        for line in err.splitlines()
        if line.strip()[:1].isdigit() and ")" in line
    ]
    by_type = {d["@type"].rsplit("/", 1)[1]: d for d in details}
    assert by_type["google.rpc.ErrorInfo"]["reason"] == "INVALID_REQUEST", err
    fields = [
        v["field"]
        for v in by_type["google.rpc.BadRequest"].get("fieldViolations")
        or by_type["google.rpc.BadRequest"]["field_violations"]
    ]
    assert "policy_text" in fields, err


async def buf_curl(gateway: Gateway, method: str, body: dict[str, Any]) -> tuple[int, str, str]:
    """`buf curl --protocol grpc --http2-prior-knowledge` one call (schema by reflection)."""
    return await run(
        str(BIN / "buf"), "curl", "--protocol", "grpc", "--http2-prior-knowledge",
        "--timeout", "20s", "-H", f"authorization: Bearer {KEY}", "-d", json.dumps(body),
        f"http://127.0.0.1:{gateway.port}/{method}",
    )  # fmt: skip


async def test_buf_curl_reaches_the_gateway_by_reflection(gateway: Gateway) -> None:
    code, out, err = await buf_curl(gateway, METHOD, INVALID)
    assert code != 0, out
    error = json.loads(err)
    assert error["code"] == "invalid_argument", err
    types = [detail["type"] for detail in error["details"]]
    assert "google.rpc.ErrorInfo" in types and "google.rpc.BadRequest" in types, err


@pytest.mark.xfail(
    strict=True,
    reason="buf curl 1.75 decodes gRPC error details only from types compiled into buf "
    "(connect-go ErrorWriter), never through reflection",
)
async def test_buf_curl_shows_error_details_decoded(gateway: Gateway) -> None:
    _, _, err = await buf_curl(gateway, METHOD, INVALID)
    by_type = {detail["type"]: detail for detail in json.loads(err)["details"]}
    assert by_type["google.rpc.ErrorInfo"]["debug"]["reason"] == "INVALID_REQUEST", err
    violations = by_type["google.rpc.BadRequest"]["debug"]["fieldViolations"]
    assert "policy_text" in [v["field"] for v in violations], err
