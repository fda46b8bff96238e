"""The embedded default: an in-process moto server as AWS and one demo tenant.

For trying the gateway and for `make serve` only; moto comes from the `embedded` extra and
is never in the production image.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioboto3

from service.auth.api_keys import hash_key
from service.config import OPERATIONS, GatewayConfig, from_mapping

DEMO_KEY_ENV = "REGISTRY_GATEWAY_DEMO_KEY"
DEMO_TENANT = "demo"
# moto's default account: credentials that name no other account act on this one.
DEMO_ACCOUNT = "123456789012"
DEMO_REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
# A second account in the embedded moto, reached by role (moto's STS honours AssumeRole),
# for trying cross-account replication: the demo tenant may replicate to it, and the
# gateway can read its registry policy (docs/validation.md, "Cross-account destinations").
DEMO_PARTNER_ACCOUNT = "111122223333"
DEMO_PARTNER_REGION = "eu-west-1"
# The HTTP/JSON (Connect) listener of `make serve`, beside gRPC's 127.0.0.1:50051.
DEMO_HTTP_LISTEN = "127.0.0.1:8080"
SERVICE_PATH = "ecr.registry.v1.RegistryConfigService"
# moto accepts any credentials; these keep the embedded gateway off the machine's real ones.
FAKE_ACCESS_KEY = "testing"
FAKE_SECRET_KEY = "testing"  # noqa: S105 - a placeholder moto accepts, not a secret


@dataclass
class EmbeddedAws:
    """A running moto server on 127.0.0.1 and a free port."""

    server: Any
    endpoint_url: str

    def stop(self) -> None:
        """Stop the moto server."""
        self.server.stop()


def start_moto() -> EmbeddedAws:
    """Start moto's threaded server on 127.0.0.1, on a free port."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise SystemExit(
            "--embedded needs moto: install the 'embedded' extra (pip install '.[embedded]')"
        ) from exc
    # werkzeug logs a line per request moto serves: noise beside the gateway's own log.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    _answer_account_settings()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return EmbeddedAws(server=server, endpoint_url=f"http://{host}:{port}")


def _answer_account_settings() -> None:
    """Give moto's ECR the GetAccountSetting it lacks (moto 5.x has no such action), answering
    REGISTRY_POLICY_SCOPE as a new ECR registry does (V2), so `policy_scope: auto` (the
    default) can read it in embedded mode as it does from ECR."""
    from moto.ecr.responses import ECRResponse

    def get_account_setting(self: ECRResponse) -> str:
        name = str(self._get_param("name"))
        value = "V2" if name == "REGISTRY_POLICY_SCOPE" else ""
        return json.dumps({"name": name, "value": value})

    if "get_account_setting" not in vars(ECRResponse):
        ECRResponse.get_account_setting = get_account_setting  # type: ignore[attr-defined]


def session_factory() -> aioboto3.Session:
    """aioboto3 sessions with moto's placeholder credentials."""
    return aioboto3.Session(
        aws_access_key_id=FAKE_ACCESS_KEY, aws_secret_access_key=FAKE_SECRET_KEY
    )


def demo_key(environ: Mapping[str, str] | None = None) -> str:
    """The demo API key: from REGISTRY_GATEWAY_DEMO_KEY when set, else a fresh random one."""
    env = os.environ if environ is None else environ
    return env.get(DEMO_KEY_ENV) or secrets.token_urlsafe(24)


def demo_config(
    endpoint_url: str, key: str, environ: Mapping[str, str] | None = None
) -> GatewayConfig:
    """The embedded config: AWS at `endpoint_url`, one demo tenant allowed everything."""
    raw: dict[str, Any] = {
        "aws": {"region": DEMO_REGIONS[0], "endpoint_url": endpoint_url, "max_attempts": 2},
        "http": {"listen": DEMO_HTTP_LISTEN},
        "tenants": [
            {
                "name": DEMO_TENANT,
                "api_keys": [hash_key(key)],
                "registries": [
                    {
                        "registry_id": DEMO_ACCOUNT,
                        "regions": list(DEMO_REGIONS),
                        "operations": list(OPERATIONS),
                        # A slice for trying the slice RPCs (README, "Shared registries").
                        "owned_repository_prefixes": ["prod/"],
                        "owned_statement_sid_prefix": "Demo",
                        "replication_destinations": [
                            {"registry_id": DEMO_ACCOUNT, "regions": list(DEMO_REGIONS)},
                            {
                                "registry_id": DEMO_PARTNER_ACCOUNT,
                                "regions": [DEMO_PARTNER_REGION],
                            },
                        ],
                    }
                ],
            },
            {
                # The partner account's own tenant, with a key nobody is told: it is there
                # so that the gateway holds credentials for the destination account.
                "name": "demo-partner",
                "api_keys": [hash_key(secrets.token_urlsafe(24))],
                "registries": [
                    {
                        "registry_id": DEMO_PARTNER_ACCOUNT,
                        "role_arn": f"arn:aws:iam::{DEMO_PARTNER_ACCOUNT}:role/registry-gateway",
                        "regions": [DEMO_PARTNER_REGION],
                        "operations": ["GetRegistryPolicy"],
                    }
                ],
            },
        ],
    }
    return from_mapping(raw, environ)


def banner(listen: str, key: str, key_from_env: bool, http_listen: str | None = None) -> str:
    """What the terminal shows: where it listens, the demo key, and a grpcurl (and, with
    the HTTP listener, a curl) to paste."""
    origin = (
        f"from ${DEMO_KEY_ENV}" if key_from_env else f"generated; set ${DEMO_KEY_ENV} to fix it"
    )
    lines = [
        "",
        f"Registry Config Gateway (embedded: moto as AWS, account {DEMO_ACCOUNT}) on {listen}",
    ]
    if http_listen is not None:
        lines.append(f"HTTP/JSON (Connect) on http://{http_listen}")
    lines += [
        f"demo tenant API key ({origin}): {key}",
        "try:",
        f"  {grpcurl_program()} -plaintext -H 'authorization: Bearer {key}' {listen} "
        f"{SERVICE_PATH}/DescribeRegistry",
    ]
    if http_listen is not None:
        lines.append(curl_command(http_listen, key))
    return "\n".join([*lines, ""])


def grpcurl_program(
    path: str | None = None, bin_dir: Path | None = None, cwd: Path | None = None
) -> str:
    """grpcurl as it runs when pasted: `grpcurl` when the shell finds this environment's
    (or any) on PATH, else the one beside this Python (`.venv/bin/grpcurl` from a checkout,
    where `make serve` installs it), relative to the working directory when under it."""
    bin_dir = Path(sys.executable).parent if bin_dir is None else bin_dir
    beside = bin_dir / "grpcurl"
    if shutil.which("grpcurl", path=path) is not None or not beside.exists():
        return "grpcurl"
    cwd = Path.cwd() if cwd is None else cwd
    try:
        shown = str(beside.relative_to(cwd))
    except ValueError:
        shown = str(beside)
    return shlex.quote(shown)


def curl_command(http_listen: str, key: str) -> str:
    """A curl of DescribeRegistry over the HTTP listener, as pasted from the banner."""
    return (
        f"  curl -sS -H 'authorization: Bearer {key}' -H 'content-type: application/json' "
        f"-d '{{}}' http://{http_listen}/{SERVICE_PATH}/DescribeRegistry"
    )
