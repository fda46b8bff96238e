"""The Connect codecs of the HTTP listener: JSON exactly as strict as gRPC, and binary.

connectrpc's own JSON codec (`connectrpc.compat.google_protobuf_json_codec`) drops unknown
fields silently and leaves empty lists and defaults out of answers. These refuse what
gRPC refuses and print what the AWS CLI prints (`"rules": []`):

- a request is decoded only within its RPC's byte limit (service/rpc/request_limits.py),
  and only after the caller is authenticated: connectrpc runs the pipeline's gates (a
  metadata interceptor, service/http/transport.py) before it reads the body, and calls
  `decode` after them;
- a JSON request is parsed only when it holds no more JSON than the largest valid request
  of its RPC (service/http/json_budget.py: tokens counted at C speed), so the Python work
  of parsing, walking and building it is bounded by ECR's maxima, not by its bytes;
- JSON that does not parse, nests too deeply, repeats a key, holds a field the contract
  does not define or a value of the wrong type is INVALID_ARGUMENT with one
  FieldViolation per problem, naming the field by its proto path as validation does
  (`replication_configuration.rules[0].destinations[1].region`);
- binary bytes that do not parse are diagnosed within a budget (service/rpc/wire.py), as
  over gRPC, and their unknown fields are left to validation, as over gRPC.

A decoding error is raised as the gateway's own InvalidArgument; connectrpc wraps it (its
`unmarshal message: ...`), and the transport answers the wrapped error instead.
"""

from __future__ import annotations

import functools
import json
from typing import Any, TypeVar, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from service import catalog
from service.echo import echo
from service.errors import FieldViolation, InvalidArgument
from service.http import json_budget
from service.rpc import wire
from service.rpc.request_limits import max_request_bytes

M = TypeVar("M", bound=Message)

# Every byte of a string in the binary form may be six in JSON (`\u00XX`), which also
# covers the JSON's keys, quotes and a pretty-printer's indentation: no request a caller
# can legitimately send is larger than six times its binary bound.
JSON_EXPANSION = 6
# The most problems named in one answer (the rest are counted), as for unknown binary fields.
_VIOLATION_LIMIT = 100
_JSON_TYPES: dict[int, tuple[type, ...]] = {
    FieldDescriptor.CPPTYPE_STRING: (str,),
    FieldDescriptor.CPPTYPE_BOOL: (bool,),
}
_JSON_TYPE_NAMES = {
    FieldDescriptor.CPPTYPE_STRING: "a string",
    FieldDescriptor.CPPTYPE_BOOL: "true or false",
}


def request_limit(rpc: str, codec: str, max_message_bytes: int) -> int:
    """The most bytes a request of `rpc` may be in `codec` ("proto" or "json")."""
    binary = min(max_request_bytes(rpc), max_message_bytes)
    return binary * JSON_EXPANSION if codec == "json" else binary


def transport_limit(max_message_bytes: int) -> int:
    """The most bytes of body read at all: the largest JSON request of any RPC."""
    return max(request_limit(rpc, "json", max_message_bytes) for rpc in catalog.RPCS)


def _rpc_of(message_class: type[Message]) -> str:
    name: str = message_class.DESCRIPTOR.name
    return name.removesuffix("Request")


def _too_large(rpc: str, size: int, limit: int) -> InvalidArgument:
    # The same answer as over gRPC (service/rpc/interceptor.py).
    return InvalidArgument(
        f"the request is {size} bytes; the largest valid {rpc} request is {limit} bytes "
        "(ECR's own limits), so it was not read",
        reason="REQUEST_TOO_LARGE",
        metadata={"rpc": rpc, "limitBytes": str(limit)},
        field_violations=[FieldViolation("", f"request of {size} bytes; at most {limit}")],
    )


def _too_much_json(rpc: str, limit: int) -> InvalidArgument:
    return InvalidArgument(
        f"the request holds more than {limit} JSON tokens (strings, braces, brackets, colons "
        f"and commas), more than the largest valid {rpc} request under ECR's limits, so it "
        "was not parsed",
        reason="REQUEST_TOO_LARGE",
        metadata={"rpc": rpc, "limitJsonTokens": str(limit)},
        field_violations=[FieldViolation("", f"more than {limit} JSON tokens; at most {limit}")],
    )


def _undecodable(rpc: str, violations: list[FieldViolation]) -> InvalidArgument:
    first = violations[0]
    at = f" at {first.field}" if first.field else ""
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return InvalidArgument(
        f"the request is not a valid {rpc} request{at}: {first.description}{more}",
        reason="UNDECODABLE_REQUEST",
        field_violations=violations,
    )


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys; a caller who sent both meant something.
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return result


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


@functools.cache
def _fields(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    # ProtoJSON accepts a field by its JSON name and by its proto name.
    by_name: dict[str, FieldDescriptor] = {}
    for field in descriptor.fields:
        by_name[field.json_name] = field
        by_name[field.name] = field
    return by_name


class _Walk:
    """Checks a parsed JSON value against a message descriptor, naming each problem."""

    def __init__(self) -> None:
        self.found: list[FieldViolation] = []
        self.more = False

    def add(self, path: str, description: str) -> None:
        if len(self.found) >= _VIOLATION_LIMIT:
            self.more = True
            return
        self.found.append(FieldViolation(path, description))

    def message(self, value: Any, descriptor: Descriptor, path: str) -> None:
        if not isinstance(value, dict):
            self.add(path, f"must be a JSON object, not {_kind(value)}")
            return
        fields = _fields(descriptor)
        seen: dict[str, str] = {}
        for key, item in value.items():
            field = fields.get(key)
            here = f"{path}.{key}" if path else key
            if field is None:
                self.add(
                    echo(here, 256),
                    "unknown field: this gateway's contract has no such field, and a request "
                    "is refused rather than served without it",
                )
                continue
            here = f"{path}.{field.name}" if path else field.name
            if field.name in seen:
                self.add(here, f"sent twice, as {seen[field.name]!r} and {key!r}")
                continue
            seen[field.name] = key
            if item is None:
                continue  # ProtoJSON: null is the field's default
            if field.is_repeated:
                if not isinstance(item, list):
                    self.add(here, f"must be a JSON array, not {_kind(item)}")
                    continue
                for i, element in enumerate(item):
                    self.value(element, field, f"{here}[{i}]")
            else:
                self.value(item, field, here)

    def value(self, value: Any, field: FieldDescriptor, path: str) -> None:
        if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            assert field.message_type is not None
            self.message(value, field.message_type, path)
            return
        expected = _JSON_TYPES.get(field.cpp_type)
        # Other scalar kinds (numbers, enums, bytes) are left to json_format, which knows
        # their JSON forms; the contract's requests hold only strings and booleans today.
        if expected is not None and not isinstance(value, expected):
            self.add(path, f"must be {_JSON_TYPE_NAMES[field.cpp_type]}, not {_kind(value)}")


def decode_json(data: bytes | bytearray, message_class: type[M], limit: int) -> M:
    """Parse a JSON request as strictly as gRPC parses one: see the module's docstring."""
    rpc = _rpc_of(message_class)
    if len(data) > limit:
        raise _too_large(rpc, len(data), limit)
    if not data.strip():
        # Connect sends an empty body for an empty message; `{}` is the same.
        return message_class()
    tokens = json_budget.max_json_tokens(rpc)
    if json_budget.over_budget(data, tokens):
        raise _too_much_json(rpc, tokens)
    try:
        parsed = json.loads(data, object_pairs_hook=_object)
    except _Duplicate as exc:
        raise _undecodable(
            rpc, [FieldViolation("", f"the key {echo(exc.key)!r} appears twice")]
        ) from None
    except RecursionError:
        raise _undecodable(rpc, [FieldViolation("", "JSON nested too deeply")]) from None
    except json.JSONDecodeError as exc:
        # Its message says where, never what: no caller text is echoed.
        where = f"line {exc.lineno} column {exc.colno} (byte {exc.pos})"
        raise _undecodable(rpc, [FieldViolation("", f"not JSON: {exc.msg} at {where}")]) from None
    except ValueError:
        # UnicodeDecodeError: the body is not UTF-8.
        raise _undecodable(rpc, [FieldViolation("", "not JSON: the bytes are not UTF-8")]) from None
    walk = _Walk()
    walk.message(parsed, cast(Descriptor, message_class.DESCRIPTOR), "")
    if walk.more:
        walk.found.append(
            FieldViolation("", f"more than {_VIOLATION_LIMIT} problems; not all are listed")
        )
    if walk.found:
        raise _undecodable(rpc, walk.found)
    message = message_class()
    try:
        json_format.ParseDict(parsed, message, ignore_unknown_fields=False)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        # What the walk above does not judge (a number out of range, ...): json_format's own
        # words, escaped and bounded by the error model.
        raise _undecodable(rpc, [FieldViolation("", echo(str(exc), 512))]) from None
    return message


def decode_binary(data: bytes | bytearray, message_class: type[M], limit: int) -> M:
    """Parse a binary request as the gRPC transport does (service/rpc/interceptor.py)."""
    rpc = _rpc_of(message_class)
    if len(data) > limit:
        raise _too_large(rpc, len(data), limit)
    try:
        return message_class.FromString(bytes(data))
    except (DecodeError, ValueError, RuntimeError):
        violation = wire.locate(cast(Descriptor, message_class.DESCRIPTOR), bytes(data))
        at = violation.field
        raise InvalidArgument(
            f"the request bytes are not a valid {rpc} request"
            f"{f' at {at}' if at else ''}: {violation.description}",
            reason="UNDECODABLE_REQUEST",
            field_violations=[violation],
        ) from None


def encode_json(message: Message) -> bytes:
    """A response as ProtoJSON with lowerCamelCase names, empty lists and defaults printed."""
    text: str = json_format.MessageToJson(
        message, always_print_fields_with_no_presence=True, indent=None
    )
    return text.encode()


class JsonCodec:
    """`application/json`: strict decoding within each RPC's limit; defaults printed."""

    def __init__(self, max_message_bytes: int) -> None:
        self._max_message_bytes = max_message_bytes
        self._limits: dict[type[Message], int] = {}

    def name(self) -> str:
        return "json"

    def encode(self, message: Message) -> bytes:
        return encode_json(message)

    def decode(self, data: bytes | bytearray, message_class: type[M]) -> M:
        limit = self._limits.get(message_class)
        if limit is None:
            rpc = _rpc_of(message_class)
            limit = self._limits[message_class] = request_limit(
                rpc, "json", self._max_message_bytes
            )
        return decode_json(data, message_class, limit)


class BinaryCodec:
    """`application/proto`: the bytes gRPC carries, within each RPC's limit."""

    def __init__(self, max_message_bytes: int) -> None:
        self._max_message_bytes = max_message_bytes

    def name(self) -> str:
        return "proto"

    def encode(self, message: Message) -> bytes:
        data: bytes = message.SerializeToString()
        return data

    def decode(self, data: bytes | bytearray, message_class: type[M]) -> M:
        limit = request_limit(_rpc_of(message_class), "proto", self._max_message_bytes)
        return decode_binary(data, message_class, limit)
