"""Regenerate the committed Python code for proto/ into clients/python/src.

One command (`make generate`) and one place: the stubs, their typed .pyi (mypy-protobuf)
and a descriptor set with source info, which the server's reflection serves so that
`grpcurl describe` shows the proto comments. `--check` regenerates into a temporary
folder and fails when the committed files differ.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT / "clients" / "python" / "src"
PACKAGE_DIR = Path("ecr") / "registry" / "v1"
DESCRIPTOR_NAME = "registry_descriptor.binpb"


def generate(out: Path) -> None:
    """Run protoc (from grpcio-tools) with the mypy-protobuf plugins into `out`."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    # The plugins sit beside this interpreter (the venv's bin/), which need not be on PATH.
    bindir = Path(sys.executable).parent
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        f"--descriptor_set_out={out / PACKAGE_DIR / DESCRIPTOR_NAME}",
        "--include_source_info",
        *protos,
    ]
    (out / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Regular packages (not namespace ones) so setuptools and mypy find them plainly.
    for part in (Path("ecr"), Path("ecr") / "registry", PACKAGE_DIR):
        (out / part / "__init__.py").write_text("")
    (out / "ecr" / "py.typed").write_text("")


def stale_files(committed: Path, fresh: Path) -> list[str]:
    """Names of files that differ between the committed tree and a fresh generation."""
    problems: list[str] = []
    for path in sorted(fresh.rglob("*")):
        if path.is_dir():
            continue
        rel = path.relative_to(fresh)
        other = committed / rel
        if not other.exists() or not filecmp.cmp(path, other, shallow=False):
            problems.append(str(rel))
    for path in sorted((committed / "ecr").rglob("*")):
        generated = fresh / path.relative_to(committed)
        if path.is_file() and "__pycache__" not in path.parts and not generated.exists():
            problems.append(f"{path.relative_to(committed)} (not generated any more)")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when committed code is stale")
    opts = parser.parse_args()
    if opts.check:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            problems = stale_files(OUT, Path(tmp))
        if problems:
            print("generated code is stale; run `make generate`:", *problems, sep="\n  ")
            return 1
        print("generated code is up to date")
        return 0
    shutil.rmtree(OUT / "ecr", ignore_errors=True)
    generate(OUT)
    print(f"generated into {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
