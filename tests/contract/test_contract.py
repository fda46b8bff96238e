"""`buf breaking` guards the released contract: a rename or renumbering fails the suite.

`make test` runs `buf breaking --against proto/released/registry.binpb` (the image of the
last released contract, `make release-contract` refreshes it on a release). These tests
prove the check bites: they break a scratch copy of proto/ on purpose, one way at a time,
and expect buf to refuse it, while additive changes pass.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
BUF = Path(sys.executable).parent / "buf"
RELEASED = ROOT / "proto" / "released" / "registry.binpb"
PROTO = Path("proto") / "ecr" / "registry" / "v1" / "registry.proto"
FIVE = {
    "DescribeRegistry",
    "GetRegistryPolicy",
    "PutRegistryPolicy",
    "DeleteRegistryPolicy",
    "PutReplicationConfiguration",
}


def buf_breaking(workspace: Path) -> subprocess.CompletedProcess[str]:
    """`buf breaking` of a workspace against the committed image, as `make test` runs it."""
    assert BUF.exists(), f"{BUF} missing: install the dev extra (buf-bin)"
    return subprocess.run(
        [str(BUF), "breaking", "--against", str(RELEASED), "--error-format", "text"],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A copy of buf.yaml and the .proto files, to break without touching the real ones."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    for source in (ROOT / "proto").rglob("*.proto"):
        target = tmp_path / source.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    return tmp_path


def edit(old: str, new: str) -> Callable[[str], str]:
    """A change of the proto text that must find exactly what it replaces."""

    def apply(text: str) -> str:
        assert text.count(old) == 1, f"the proto no longer holds {old!r}: update this test"
        return text.replace(old, new)

    return apply


def rename_everywhere(old: str, new: str) -> Callable[[str], str]:
    """A rename of a type and of every use of it."""

    def apply(text: str) -> str:
        assert old in text, f"the proto no longer holds {old!r}: update this test"
        return text.replace(old, new)

    return apply


BREAKING = {
    "field-renamed": (
        edit(
            "  string policy_text = 1;\n  // The registry",
            "  string policy_json = 1;\n  // The registry",
        ),
        "policy_text",
    ),
    "field-renumbered": (
        edit(
            "  bool validate_only = 5;\n}\n\n// Response of PutRegistryPolicy",
            "  bool validate_only = 6;\n}\n\n// Response of PutRegistryPolicy",
        ),
        "validate_only",
    ),
    "field-type-changed": (
        edit("  string filter_type = 2;", "  int32 filter_type = 2;"),
        "filter_type",
    ),
    "rpc-renamed": (
        edit("rpc DescribeRegistry(", "rpc DescribeRegistries("),
        "DescribeRegistry",
    ),
    "message-renamed": (rename_everywhere("RepositoryFilter", "RepoFilter"), "RepositoryFilter"),
}


@pytest.mark.parametrize("case", sorted(BREAKING))
def test_a_breaking_change_fails(scratch: Path, case: str) -> None:
    change, named = BREAKING[case]
    path = scratch / PROTO
    before = path.read_text()
    after = change(before)
    assert after != before
    path.write_text(after)
    result = buf_breaking(scratch)
    assert result.returncode != 0, f"buf breaking accepted {case}"
    assert named in result.stdout + result.stderr


ADDITIVE = {
    "new-field": edit(
        "  bool validate_only = 4;\n}",
        "  bool validate_only = 4;\n  // Why.\n  string note = 5;\n}",
    ),
    "new-rpc": edit(
        "service RegistryConfigService {\n",
        "service RegistryConfigService {\n"
        "  // Lists the repositories.\n"
        "  rpc ListRepositories(DescribeRegistryRequest) returns (DescribeRegistryResponse);\n",
    ),
}


@pytest.mark.parametrize("case", sorted(ADDITIVE))
def test_an_additive_change_passes(scratch: Path, case: str) -> None:
    path = scratch / PROTO
    before = path.read_text()
    path.write_text(ADDITIVE[case](before))
    result = buf_breaking(scratch)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_working_tree_keeps_the_released_contract() -> None:
    result = buf_breaking(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_released_image_holds_the_service() -> None:
    # A buf image is wire-compatible with a FileDescriptorSet (ImageFile extends
    # FileDescriptorProto), so protobuf itself reads it.
    image = descriptor_pb2.FileDescriptorSet.FromString(RELEASED.read_bytes())
    (ours,) = [f for f in image.file if f.package == "ecr.registry.v1"]
    (service,) = ours.service
    assert service.name == "RegistryConfigService"
    assert {m.name for m in service.method} >= FIVE
