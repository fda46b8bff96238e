"""Server reflection that also serves the proto comments, so `grpcurl describe` shows them.

grpcio-reflection serializes descriptors with CopyToProto, which drops source info (and so
every comment); for our own proto file we answer the descriptor set `make generate` wrote
with `--include_source_info` instead.

It also serves the `google.rpc` error-detail types (google/rpc/error_details.proto and
status.proto, from googleapis-common-protos, imported here so the descriptor pool holds
them whatever else was imported): clients that resolve a status detail's `Any` through
reflection (grpcurl) show ErrorInfo and BadRequest decoded instead of base64.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as rpb

DESCRIPTOR_PACKAGE = "service.gen.v1"  # the Python package holding the descriptor set
DESCRIPTOR_FILE = "registry_descriptor.binpb"
# The files of the error details every failed call carries (service/errors.py).
ERROR_DETAIL_FILES = (error_details_pb2.DESCRIPTOR.name, status_pb2.DESCRIPTOR.name)


def _commented_files() -> dict[str, bytes]:
    data = resources.files(DESCRIPTOR_PACKAGE).joinpath(DESCRIPTOR_FILE).read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(data).file
    return {f.name: f.SerializeToString() for f in files}


class CommentedReflectionServicer(reflection.aio.ReflectionServicer):
    """grpcio-reflection's aio servicer, answering our file with its comments."""

    def __init__(self, service_names: Iterable[str]) -> None:
        super().__init__(service_names)
        self._commented = _commented_files()

    def _with_comments(self, response: Any) -> Any:
        if not response.HasField("file_descriptor_response"):
            return response
        files = response.file_descriptor_response.file_descriptor_proto
        for i, raw in enumerate(files):
            name = descriptor_pb2.FileDescriptorProto.FromString(raw).name
            if name in self._commented:
                files[i] = self._commented[name]
        return response

    def _file_by_filename(self, request: rpb.ServerReflectionRequest, filename: str) -> Any:
        return self._with_comments(super()._file_by_filename(request, filename))  # type: ignore[misc]

    def _file_containing_symbol(self, request: rpb.ServerReflectionRequest, symbol: str) -> Any:
        return self._with_comments(super()._file_containing_symbol(request, symbol))  # type: ignore[misc]


def enable(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Add reflection (v1alpha, what grpcurl 1.8 asks for) listing `service_names`."""
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(  # type: ignore[no-untyped-call]
        CommentedReflectionServicer([*service_names, reflection.SERVICE_NAME]), server
    )
