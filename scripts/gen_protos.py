"""Regenerate the committed code for proto/: Python into clients/python/src, TypeScript
into clients/typescript/src/gen, Go into clients/go/ecr.

One command (`make generate`) and one place per language:
- Python: the stubs, their typed .pyi (mypy-protobuf) and a descriptor set with source
  info, which the server's reflection serves so that `grpcurl describe` shows the proto
  comments; and `*_connect.py` (protoc-gen-connectrpc, `protobuf=google`: for the same
  google.protobuf messages), the Connect ASGI application the HTTP listener serves
  (service/http/) and a Connect client.
- TypeScript: `buf generate` with buf.gen.yaml and the locally installed protoc-gen-es
  (`npm ci` in clients/typescript first; no Buf Schema Registry), for proto/ and for
  google/rpc/error_details.proto (taken from googleapis-common-protos, pinned in the lock),
  which the client needs to decode the gateway's ErrorInfo, BadRequest and RetryInfo.
- Go: `buf generate --template buf.gen.go.yaml` with Debian's protoc-gen-go and
  protoc-gen-go-grpc (scripts/go_toolchain.sh installs them).
`--check` regenerates into a temporary folder and fails when the committed files differ.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from google.rpc import error_details_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT / "clients" / "python" / "src"
PACKAGE_DIR = Path("ecr") / "registry" / "v1"
DESCRIPTOR_NAME = "registry_descriptor.binpb"
BUF = Path(sys.executable).parent / "buf"
TS_GEN = Path("clients") / "typescript" / "src" / "gen"  # `out` in buf.gen.yaml
PROTOC_GEN_ES = ROOT / "clients" / "typescript" / "node_modules" / ".bin" / "protoc-gen-es"
GO_GEN = Path("clients") / "go" / "ecr"  # `out` in buf.gen.go.yaml, plus the package path
GO_PLUGINS = ("protoc-gen-go", "protoc-gen-go-grpc")
# The proto of google.rpc's error details, as shipped beside its Python module.
ERROR_DETAILS_PROTO = Path(error_details_pb2.__file__).parent / "error_details.proto"


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
        f"--plugin=protoc-gen-connectrpc={bindir / 'protoc-gen-connectrpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        # google.protobuf messages (registry_pb2), not protobuf-py's: one runtime for both.
        "--connectrpc_opt=protobuf=google",
        f"--connectrpc_out={out}",
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


def generate_typescript(out: Path) -> None:
    """Run `buf generate` (buf.gen.yaml) for proto/ and google.rpc's error details; the
    template's `out` paths land under `out` (the repository root for real)."""
    if not PROTOC_GEN_ES.exists():
        raise SystemExit(
            f"{PROTOC_GEN_ES.relative_to(ROOT)} missing: run `make ts-deps` "
            "(npm ci in clients/typescript) first"
        )
    if not BUF.exists():
        raise SystemExit(f"{BUF} missing: install the dev extra (buf-bin)")
    with tempfile.TemporaryDirectory() as tmp:
        # Only the one file: the rest of googleapis-common-protos is not needed.
        rpc = Path(tmp) / "google" / "rpc"
        rpc.mkdir(parents=True)
        shutil.copy(ERROR_DETAILS_PROTO, rpc / "error_details.proto")
        for input_args in ([], [tmp]):
            subprocess.run(
                [str(BUF), "generate", *input_args, "--template", "buf.gen.yaml", "-o", str(out)],
                cwd=ROOT,
                check=True,
                timeout=300,
            )


def generate_go(out: Path) -> None:
    """Run `buf generate --template buf.gen.go.yaml`; its `out` lands under `out`."""
    missing = [name for name in GO_PLUGINS if shutil.which(name) is None]
    if missing:
        raise SystemExit(f"{', '.join(missing)} missing: run scripts/go_toolchain.sh first")
    subprocess.run(
        [str(BUF), "generate", "--template", "buf.gen.go.yaml", "-o", str(out)],
        cwd=ROOT,
        check=True,
        timeout=300,
    )


def stale_files(committed: Path, fresh: Path) -> list[str]:
    """Names of files that differ between a committed tree and a fresh generation of it."""
    problems: list[str] = []
    for path in sorted(fresh.rglob("*")):
        if path.is_dir():
            continue
        rel = path.relative_to(fresh)
        other = committed / rel
        if not other.exists() or not filecmp.cmp(path, other, shallow=False):
            problems.append(str(rel))
    for path in sorted(committed.rglob("*")):
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
            python, typescript, go = (Path(tmp) / lang for lang in ("python", "ts", "go"))
            generate(python)
            generate_typescript(typescript)
            generate_go(go)
            problems = [
                *(f"clients/python/src/ecr/{n}" for n in stale_files(OUT / "ecr", python / "ecr")),
                *(f"{TS_GEN}/{n}" for n in stale_files(ROOT / TS_GEN, typescript / TS_GEN)),
                *(f"{GO_GEN}/{n}" for n in stale_files(ROOT / GO_GEN, go / GO_GEN)),
            ]
        if problems:
            print("generated code is stale; run `make generate`:", *problems, sep="\n  ")
            return 1
        print("generated code is up to date (Python, TypeScript, Go)")
        return 0
    shutil.rmtree(OUT / "ecr", ignore_errors=True)
    generate(OUT)
    shutil.rmtree(ROOT / TS_GEN, ignore_errors=True)
    generate_typescript(ROOT)
    shutil.rmtree(ROOT / GO_GEN, ignore_errors=True)
    generate_go(ROOT)
    print(f"generated into {OUT.relative_to(ROOT)}, {TS_GEN} and {GO_GEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
