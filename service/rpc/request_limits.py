"""How many bytes a request of each RPC may be, derived from ECR's own limits.

grpc.aio would parse every request on the event loop before any gateway code runs, even
one from a stranger without credentials. The gateway therefore takes requests as raw bytes
and parses them only after the caller is authenticated, and only when they are no larger
than the largest request a legitimate caller can send under ECR's limits: a registry policy
is at most 10,240 characters; a replication configuration at most 10 rules of at most 100
destinations and 100 repository filters of at most 256 characters (the ECR API model
botocore ships, shapes `RegistryPolicyText`, `ReplicationRuleList`,
`ReplicationDestinationList`, `RepositoryFilterList`, `RepositoryFilterValue`). Anything
larger is refused unread: parsing it could only lead to the same refusal, later and dearer.

The bound of each RPC is computed from its request descriptor, so a field added to the
contract is counted (and must be given a bound here: an unbounded string fails loudly).
"""

from __future__ import annotations

import functools

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from service.gen.v1 import registry_pb2 as pb

# UTF-8 takes at most 4 bytes a character; AWS counts policy length in characters.
_UTF8_MAX = 4
_POLICY_CHARS = 10_240
# Longest string of each field, in bytes. Etags are the gateway's own (32 hex digits, or
# "absent"); 128 leaves room for a longer digest later.
_STRING_BYTES = {
    "registry_id": 12,
    "region": 25,
    "etag": 128,
    "filter": 256,
    "filter_type": 32,
    "policy_text": _POLICY_CHARS * _UTF8_MAX,
    # A slice's statements fit inside one policy; pretty-printed JSON may double the
    # characters of the compact form a policy counts, so allow twice the policy.
    "statements_json": 2 * _POLICY_CHARS * _UTF8_MAX,
    # GetConfigurationHistory's token: the gateway's own, at most 64 ASCII characters
    # (service/registry/rpcs/history_view.py, MAX_PAGE_TOKEN_CHARS).
    "page_token": 64,
}
_REPEATED = {"rules": 10, "destinations": 100, "repository_filters": 100}
# For a client whose proto is a little newer (an extra field or two): refused by
# validation with a clear answer rather than unread.
HEADROOM_BYTES = 1024


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _field_bytes(field: FieldDescriptor) -> int:
    tag = _varint_size(field.number << 3)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        body = _message_bytes(field.message_type)
    elif field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        if field.name not in _STRING_BYTES:
            raise LookupError(f"no byte bound for string field {field.full_name}")
        body = _STRING_BYTES[field.name]
    else:
        return tag + 10  # any scalar: a varint of at most 10 bytes, or a fixed 4/8
    one = tag + _varint_size(body) + body
    if field.is_repeated:
        if field.name not in _REPEATED:
            raise LookupError(f"no count bound for repeated field {field.full_name}")
        return one * _REPEATED[field.name]
    return one


def _message_bytes(descriptor: Descriptor) -> int:
    return sum(_field_bytes(field) for field in descriptor.fields)


@functools.cache
def max_request_bytes(rpc: str) -> int:
    """The most bytes a legitimate request of `rpc` can take, plus a little headroom."""
    descriptor = pb.DESCRIPTOR.message_types_by_name[f"{rpc}Request"]
    return _message_bytes(descriptor) + HEADROOM_BYTES


def largest_request_bytes() -> int:
    """The bound of the RPC with the largest requests: what the transport need accept."""
    service = pb.DESCRIPTOR.services_by_name["RegistryConfigService"]
    return max(max_request_bytes(method.name) for method in service.methods)


def max_elements(field: FieldDescriptor) -> int:
    """The most elements the repeated `field` holds in a legitimate request (LookupError for
    a repeated field without a bound, as for the byte bound)."""
    if field.name not in _REPEATED:
        raise LookupError(f"no count bound for repeated field {field.full_name}")
    return _REPEATED[field.name]
