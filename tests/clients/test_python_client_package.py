"""`clients/python` installs and imports on its own: grpcio, protobuf and google.rpc only.

The wheel is built for real (setuptools, no network: `--no-build-isolation`), unpacked, and
imported by a fresh interpreter that sees nothing but that wheel, grpc and google/
(protobuf and googleapis-common-protos): not the server, not grpcio-status, not the venv.
Its generated code is `registry_gateway_client.v1`, never a top-level `ecr`. Installed into
real venvs at both ends of its ranges: tests/clients/test_python_client_compat.py.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"
PACKAGE = CLIENT / "src" / "registry_gateway_client"
ALLOWED_DISTRIBUTIONS = {"grpcio", "protobuf", "googleapis-common-protos"}
# Top-level imports the client may use: the stdlib, its deps' modules, and its own package.
ALLOWED_THIRD_PARTY = {"grpc", "google", "registry_gateway_client"}
# The modules of the `connect` extra (the generated Connect client, and the clients' Connect
# transports built on it), and what they import.
CONNECT_MODULE = PACKAGE / "v1" / "registry_connect.py"
CONNECT_MODULES = {
    CONNECT_MODULE,
    PACKAGE / "_aio_connect.py",
    PACKAGE / "_sync_connect.py",
}
CONNECT_THIRD_PARTY = {"connectrpc", "pyqwest"}
CONNECT_NAMES = {"registry_connect", "_aio_connect", "_sync_connect", *CONNECT_THIRD_PARTY}


def requirement_name(requirement: str) -> str:
    """`grpcio>=1.85,<2 ; extra == "x"` -> `grpcio`."""
    match = re.match(r"[A-Za-z0-9_.-]+", requirement.strip())
    assert match, requirement
    return match.group(0).lower().replace("_", "-")


def installed_closure(names: set[str]) -> set[str]:
    """The distributions `names` need when installed, theirs included (extras left out)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for requirement in metadata.requires(name) or ():
            if "extra ==" not in requirement:
                todo.append(requirement_name(requirement))
    return seen


def top_level_paths(distribution: str) -> set[Path]:
    """The top-level modules and packages a distribution installed into site-packages."""
    dist = metadata.distribution(distribution)
    tops: set[Path] = set()
    for file in dist.files or ():
        first = file.parts[0]
        if first.endswith((".dist-info", ".pth")) or first in {"..", "__pycache__"}:
            continue
        tops.add(Path(str(dist.locate_file(first))))
    return tops


def build_client_wheel(dest: Path) -> Path:
    """The client's wheel, built from a copy of clients/python (so that setuptools' build/
    and egg-info land in `dest`, not in the tree, and parallel builds do not meet)."""
    source = dest / "source"
    shutil.copytree(
        CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(dest / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (dest / "dist").glob("registry_gateway_client-*.whl")
    return wheel


def test_dependencies_are_only_grpcio_protobuf_and_google_rpc() -> None:
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    names = {requirement_name(dep) for dep in project["dependencies"]}
    assert names == ALLOWED_DISTRIBUTIONS
    extras = project["optional-dependencies"]
    assert {k: {requirement_name(d) for d in v} for k, v in extras.items()} == {
        "connect": {"connectrpc"},
        "typing": {"types-protobuf", "types-grpcio"},
    }


def imported_top_levels(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"__future__"}


def imported_names(path: Path, *, module_level: bool = False) -> set[str]:
    """Every dotted part of every module a file imports, and every name it imports from one
    (a docstring naming a module is no import); with `module_level`, only the imports run
    when the module is imported (not those inside a function)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(part for alias in node.names for part in alias.name.split("."))
        elif isinstance(node, ast.ImportFrom):
            names.update((node.module or "").split("."))
            names.update(alias.name for alias in node.names)
    return names


def test_the_client_imports_nothing_else() -> None:
    paths = sorted(PACKAGE.rglob("*.py"))
    assert set(paths) >= CONNECT_MODULES
    third_party = set().union(*(imported_top_levels(p) for p in paths if p not in CONNECT_MODULES))
    assert third_party <= ALLOWED_THIRD_PARTY, third_party - ALLOWED_THIRD_PARTY
    for module in CONNECT_MODULES:
        connect = imported_top_levels(module)
        assert connect <= ALLOWED_THIRD_PARTY | CONNECT_THIRD_PARTY, (module, connect)
    # Importing the package imports nothing of the extra: the client works without it. The
    # clients import their Connect transport inside a function, when given an http(s) target.
    for path in paths:
        if path not in CONNECT_MODULES:
            assert not imported_names(path, module_level=True) & CONNECT_NAMES, path
    lazy = {p.name for p in paths if p not in CONNECT_MODULES and imported_names(p) & CONNECT_NAMES}
    assert lazy == {"_aio.py", "_sync.py"}


def test_the_wheel_imports_with_only_its_dependencies(tmp_path: Path) -> None:
    wheel = build_client_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    for needed in (
        "registry_gateway_client/py.typed",
        "registry_gateway_client/_aio.py",
        "registry_gateway_client/v1/registry_pb2.pyi",
        "registry_gateway_client/v1/registry_pb2_grpc.pyi",
        "registry_gateway_client/v1/registry_descriptor.binpb",
        "registry_gateway_client/v1/registry_connect.py",
        "registry_gateway_client/_aio_connect.py",
        "registry_gateway_client/_sync_connect.py",
    ):
        assert needed in names, f"{needed} missing from {wheel.name}"
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"registry_gateway_client"}

    # A directory holding only what the declared dependencies install, linked from this
    # venv. google/ is shared by protobuf and googleapis-common-protos: one link holds both.
    deps = tmp_path / "deps"
    deps.mkdir()
    for distribution in sorted(installed_closure(ALLOWED_DISTRIBUTIONS)):
        for top in top_level_paths(distribution):
            link = deps / top.name
            if not link.exists():
                link.symlink_to(top)
    assert not (deps / "grpc_status").exists() and not (deps / "service").exists()
    probe = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import registry_gateway_client as c, registry_gateway_client.v1.registry_pb2 as pb
assert c.__file__.startswith(sys.argv[1]), c.__file__
from google.rpc import error_details_pb2
bad = [m for m in ('service', 'grpc_status', 'moto', 'connectrpc') if m in sys.modules]
assert not bad, bad
# An http(s) target needs the `connect` extra, which this interpreter lacks: said so.
try:
    c.SyncRegistryConfigClient('http://127.0.0.1:1')
except ImportError as e:
    assert "[connect]" in str(e), e
else:
    raise AssertionError('an http target without the connect extra')
print(c.RegistryConfigClient.__name__, pb.DescribeRegistryRequest.DESCRIPTOR.full_name)
"""
    ran = subprocess.run(
        # -S: no site-packages; -E: no PYTHON* variables; -s: no user site.
        [sys.executable, "-S", "-E", "-s", "-c", probe, str(tmp_path / "site"), str(deps)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["RegistryConfigClient", "ecr.registry.v1.DescribeRegistryRequest"]
