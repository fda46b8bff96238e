"""The operator's commands, run as operators run them (a real subprocess): `--version`,
`check-config`, `config-schema` and `hash-key`."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# From the dev lock (kubernetes-validate needs it); it ships no type stubs.
import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from service.auth.api_keys import hash_key
from tests.e2e.test_cli import CONSOLE_SCRIPT, env
from tests.support.helpers import config_dict

ROOT = Path(__file__).resolve().parent.parent.parent
# Values that look like secrets pasted in the wrong place: none may ever be printed.
CLEAR_KEY = "clear-text-api-key-Zq81"
SECRET_NAMED_KEY = "Zk3p9QxV7bN2mL8rT4wY6uA1sD5fG0hJ"
SECRET_ENV_VALUE = "env-secret-Qm9x2"


async def run(
    *args: str, stdin: str | None = None, environ: dict[str, str] | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        CONSOLE_SCRIPT,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ or env(),
    )
    out, err = await asyncio.wait_for(
        proc.communicate(stdin.encode() if stdin is not None else None), timeout=60
    )
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write(tmp_path: Path, raw: dict[str, Any] | str) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return str(path)


# --- --version -------------------------------------------------------------------------------


def checkout_commit() -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


async def test_version_names_the_package_version_and_the_checkouts_commit() -> None:
    from importlib.metadata import version

    code, out, err = await run("--version")
    assert code == 0, err
    assert out.startswith(f"registry-gateway {version('registry-config-gateway')} (commit ")
    # Run from this checkout: its HEAD (marked -dirty while files are being edited).
    commit = re.search(r"\(commit ([^)]+)\)", out)
    assert commit is not None
    assert commit.group(1).removesuffix("-dirty") == checkout_commit()


async def test_version_takes_the_commit_from_the_image_env_and_never_fails_without_git() -> None:
    code, out, _ = await run("--version", environ=env(REGISTRY_GATEWAY_COMMIT="0123abcd4567"))
    assert code == 0 and out.strip().endswith("(commit 0123abcd4567)")
    # No git on PATH, no env: unknown, still exit 0.
    code, out, err = await run(
        "--version", environ={**env(), "PATH": str(Path(sys.executable).parent)}
    )
    assert code == 0, err
    assert out.strip().endswith("(commit unknown)") and "Traceback" not in err
    # A value that is no commit (spaces, quotes) is not believed.
    code, out, _ = await run(
        "--version", environ={**env(REGISTRY_GATEWAY_COMMIT='a b"c'), "PATH": "/nonexistent"}
    )
    assert out.strip().endswith("(commit unknown)")


# --- check-config ----------------------------------------------------------------------------


async def test_check_config_lists_every_problem_with_its_key_and_no_secret(
    tmp_path: Path,
) -> None:
    raw = config_dict("http://127.0.0.1:9")
    raw["server"]["max_deadline_seconds"] = "soon"
    raw["server"]["bogus"] = 1
    raw["cache"] = {"backend": "mongo"}
    raw["tenants"][0]["api_keys"] = [CLEAR_KEY]
    raw["tenants"][1]["registries"][0]["registry_id"] = "12"
    raw["tenants"][1][SECRET_NAMED_KEY] = "oops"
    path = write(tmp_path, raw)
    code, out, err = await run(
        "check-config", path, environ=env(REGISTRY_GATEWAY__AUTH__FAILURES_BURST=SECRET_ENV_VALUE)
    )
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[-1] == f"{path}: 7 problems"
    keys = [line.split(": ")[1] for line in lines[:-1]]
    assert keys == [
        "server.max_deadline_seconds",
        "server.bogus",
        "auth.failures_burst",
        "cache.backend",
        "tenants.0.api_keys",
        "tenants.1.registries.0.registry_id",
        "tenants.1.<name not shown>",
    ]
    assert all(line.startswith("config error: ") for line in lines[:-1])
    for secret in (CLEAR_KEY, SECRET_NAMED_KEY, SECRET_ENV_VALUE):
        assert secret not in out + err
    assert "Traceback" not in out + err

    # The same as JSON for CI, with the overrides named (their values never).
    code, out, err = await run(
        "check-config",
        "--json",
        path,
        environ=env(REGISTRY_GATEWAY__AUTH__FAILURES_BURST=SECRET_ENV_VALUE),
    )
    assert code == 1
    result = json.loads(out)
    assert result["ok"] is False and result["path"] == path
    assert [p["key"] for p in result["problems"]] == keys
    assert result["env_overrides"] == ["REGISTRY_GATEWAY__AUTH__FAILURES_BURST"]
    for secret in (CLEAR_KEY, SECRET_NAMED_KEY, SECRET_ENV_VALUE):
        assert secret not in out + err


async def test_serve_still_says_one_line_and_points_at_check_config(tmp_path: Path) -> None:
    path = write(tmp_path, "server: {max_deadline_seconds: soon, bogus: 1}\n")
    code, _, err = await run("serve", "--config", path)
    assert code == 2
    assert err.strip().splitlines() == [
        "config error: server.max_deadline_seconds: Input should be a valid number, unable "
        "to parse string as a number (and 1 more: `registry-gateway check-config` lists them)"
    ]


async def test_check_config_passes_a_good_config_offline(tmp_path: Path) -> None:
    # Nothing answers at these addresses: the check must not need them.
    raw = config_dict("http://127.0.0.1:9")
    raw["cache"] = {"backend": "redis", "redis_url": "redis://127.0.0.1:9/0"}
    path = write(tmp_path, raw)
    code, out, err = await run("check-config", path)
    assert code == 0, err
    assert out.startswith(f"{path}: ok (2 tenants, 2 registry entries")
    code, out, _ = await run("check-config", "--json", environ=env(REGISTRY_GATEWAY_CONFIG=path))
    assert code == 0 and json.loads(out) == {
        "path": path,
        "ok": True,
        "problems": [],
        "env_overrides": [],
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "cannot read"),
        ("listen: [not, an, address\n", "not valid YAML at line"),
        ("- a list\n", "the top level must be a mapping"),
        (
            "tenants:\n"
            "  - {name: a, registries: [{registry_id: '111111111111'}]}\n"
            "  - {name: a, registries: [{registry_id: '111111111111'}]}\n",
            "tenants: tenant names must be unique: a appears twice",
        ),
    ],
    ids=["missing-file", "broken-yaml", "not-a-mapping", "cross-field"],
)
async def test_check_config_fails_on_files_it_cannot_use(
    tmp_path: Path, text: str | None, expected: str
) -> None:
    path = write(tmp_path, text) if text is not None else str(tmp_path / "absent.yaml")
    code, out, err = await run("check-config", path)
    assert code == 1
    assert expected in err and err.strip().endswith(f"{path}: 1 problem")
    assert "Traceback" not in out + err


async def test_check_config_checks_the_otel_variables_serve_would_refuse(tmp_path: Path) -> None:
    path = write(tmp_path, config_dict("http://127.0.0.1:9"))
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    code, _, err = await run("check-config", path, environ=env(**otel))
    assert code == 1
    assert "config error: OTEL_EXPORTER_OTLP_PROTOCOL: this gateway exports OTLP over gRPC" in err
    code, _, err = await run(
        "check-config", path, environ=env(**{**otel, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    )
    assert code == 0, err


async def test_check_config_without_a_path_is_a_usage_error() -> None:
    code, _, err = await run("check-config")
    assert code == 2 and "REGISTRY_GATEWAY_CONFIG" in err


# --- config-schema ---------------------------------------------------------------------------


async def test_config_schema_is_a_json_schema_the_configs_agree_with() -> None:
    code, out, err = await run("config-schema")
    assert code == 0, err
    schema = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = config_dict("http://127.0.0.1:9")
    assert list(validator.iter_errors(good)) == []
    bad = config_dict("http://127.0.0.1:9")
    bad["server"]["bogus"] = 1
    bad["tenants"][0]["registries"][0]["operations"] = ["DescribeRegistry", "Frobnicate"]
    bad["cache"] = {"backend": "mongo"}
    paths = {"/".join(str(p) for p in e.absolute_path) for e in validator.iter_errors(bad)}
    assert {"server", "cache/backend", "tenants/0/registries/0/operations/1"} <= paths


# --- hash-key --------------------------------------------------------------------------------


@pytest.mark.parametrize("typed", ["my-key", "my-key\n", "  my-key \r\n"])
async def test_hash_key_reads_the_key_from_stdin(typed: str) -> None:
    code, out, err = await run("hash-key", stdin=typed)
    assert code == 0, err
    assert out.strip() == hash_key("my-key")
    assert "my-key" not in out + err


async def test_hash_key_refuses_a_key_argument_and_says_why() -> None:
    code, out, err = await run("hash-key", "my-key")
    assert code == 2 and out == ""
    assert "shell history" in err and "ps" in err and "stdin" in err
    assert "my-key" not in err


@pytest.mark.parametrize(
    "typed", ["", "\n", "first-Qx1\nsecond-Qx2\n", "part-Qx3 part-Qx4", "Qx5" * 2000]
)
async def test_hash_key_refuses_what_cannot_be_a_key_without_echoing_it(typed: str) -> None:
    code, out, err = await run("hash-key", stdin=typed)
    assert code == 1 and out == ""
    assert err.startswith("error: ")
    assert "Qx" not in err


async def test_hash_key_generate_prints_a_new_key_and_its_config_form() -> None:
    code, out, _ = await run("hash-key", "--generate")
    assert code == 0
    key_line, digest_line = out.strip().splitlines()
    key = key_line.removeprefix("key:").strip()
    assert len(key) >= 32
    assert digest_line.removeprefix("config:").strip() == hash_key(key)
    _, again, _ = await run("hash-key", "--generate")
    assert again != out


def test_hash_key_at_a_terminal_prompts_without_echo() -> None:
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [CONSOLE_SCRIPT, "hash-key"],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=env(),
        start_new_session=True,  # no controlling terminal: getpass uses stdin, the pty
    )
    os.close(secondary)
    seen = b""
    try:
        seen = read_until(primary, b"not echoed")
        os.write(primary, b"typed-secret-Qz7\n")
        seen += read_until(primary, b"sha256:", then_line=True)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)
    assert hash_key("typed-secret-Qz7").encode() in seen
    assert b"typed-secret-Qz7" not in seen  # the terminal did not echo it


def read_until(fd: int, marker: bytes, then_line: bool = False) -> bytes:
    """Read the pty until `marker` (and the rest of its line), bounded by a deadline."""
    deadline = time.monotonic() + 30
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the pty
                break
            data += chunk
        if marker in data and (not then_line or data.split(marker, 1)[1].count(b"\n")):
            return data
    raise AssertionError(f"{marker!r} not seen on the terminal: {data!r}")
