"""The registry's layers, read from the source: each imports only what lies below it.

model/ is the pure ownership model and plans (nothing of writes/ or rpcs/), writes/ reads
and writes in AWS (nothing of rpcs/), and no module of the domain reads the transport (the
call in flight, the gRPC or HTTP side, the pipeline): what a write needs of its caller comes
in as data (service/registry/writes/context.py). ECR's leaf facts (service/ecr/) sit below
the config, auth and aws that import them. No circle is hidden behind `TYPE_CHECKING`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"
TRANSPORT = ("service.call", "service.rpc", "service.http", "service.pipeline", "service.app")


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, guarded or not (`from a import b` counts `a` and `a.b`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _modules(folder: str) -> list[Path]:
    return sorted((SERVICE / folder).rglob("*.py"))


def _reaching(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        name
        for name in _imports(path)
        if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden)
    )


@pytest.mark.parametrize("path", _modules("registry/model"), ids=lambda p: p.name)
def test_the_model_imports_nothing_above_it(path: Path) -> None:
    forbidden = ("service.registry.writes", "service.registry.rpcs", *TRANSPORT)
    assert _reaching(path, forbidden) == []


@pytest.mark.parametrize("path", _modules("registry/writes"), ids=lambda p: p.name)
def test_the_writes_import_neither_the_rpcs_nor_the_transport(path: Path) -> None:
    assert _reaching(path, ("service.registry.rpcs", *TRANSPORT)) == []


@pytest.mark.parametrize("path", _modules("registry/rpcs"), ids=lambda p: p.name)
def test_the_rpcs_domain_side_reads_no_transport(path: Path) -> None:
    assert _reaching(path, TRANSPORT) == []


@pytest.mark.parametrize("path", _modules("ecr"), ids=lambda p: p.name)
def test_ecr_facts_import_nothing_that_imports_them(path: Path) -> None:
    forbidden = ("service.config", "service.auth", "service.aws", "service.registry")
    assert _reaching(path, forbidden) == []


def test_the_registry_package_has_no_module_at_its_root_but_its_init() -> None:
    # Every module sits in a layer; one at the root would be across them.
    assert [p.name for p in (SERVICE / "registry").glob("*.py")] == ["__init__.py"]


@pytest.mark.parametrize(
    "path", [*_modules("registry"), *_modules("ecr")], ids=lambda p: str(p.relative_to(SERVICE))
)
def test_no_import_is_hidden_behind_type_checking(path: Path) -> None:
    assert "TYPE_CHECKING" not in path.read_text()
