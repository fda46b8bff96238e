"""The committed generated code matches proto/ (regenerate with `make generate`), in both of
its Python places: the client's `registry_gateway_client.v1` and the server's
`service.gen.v1`. scripts/gen_protos.py --check needs the generator's venv (`make protoc-deps`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL_ECR = re.compile(r"^\s*(from|import)\s+ecr\b", re.M)
CLIENT_IMPORT = re.compile(r"^\s*(from|import)\s+registry_gateway_client\b", re.M)


def python_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in (ROOT / folder).rglob("*.py")]


def test_generated_code_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_nothing_imports_a_top_level_ecr_package() -> None:
    files = python_files("service", "tests", "bench", "scripts", "clients/python/src")
    assert [str(p.relative_to(ROOT)) for p in files if TOP_LEVEL_ECR.search(p.read_text())] == []


def test_the_server_does_not_import_the_client() -> None:
    # The server installs without the client distribution (pyproject.toml); bench/ measures it.
    files = python_files("service", "bench")
    assert [str(p.relative_to(ROOT)) for p in files if CLIENT_IMPORT.search(p.read_text())] == []
