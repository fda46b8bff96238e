"""Protobuf's wire format (https://protobuf.dev/programming-guides/encoding/), read within a
budget: the primitives every walk of a message's bytes shares, and the walk that names the
fields a message that parsed carries but its descriptor does not define (`unknown_fields`).

Neutral ground: the domain's request validation (service/registry/rpcs/validation.py) names
a write's unknown fields with it, and the transports' diagnosis of bytes the parser refused
(service/rpc/wire.py) walks with the same primitives. It imports nothing of the gateway but
its error type. The work of any walk is bounded by a budget of fields read, whatever the
bytes.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from service.errors import FieldViolation

MAX_DEPTH = 64  # protobuf's own default recursion limit is 100; ours nest four deep
# Fields (tags) read before giving up. A legitimate request holds at most ~2,000 messages
# of a few fields each, so a fault in one is found well inside this; ~1 us a field.
MAX_FIELDS = 8192


class OverBudget(Exception):
    """The walk read its budget of fields."""


class Fault(Exception):
    """Where the bytes stop being a valid message, and what is wrong there."""

    def __init__(self, path: str, description: str) -> None:
        super().__init__(description)
        self.path = path
        self.description = description


def varint(data: memoryview, pos: int, end: int, path: str, what: str) -> tuple[int, int]:
    """The varint at `pos`, and the position after it (Fault: bytes end or overlong)."""
    value = shift = 0
    while True:
        if pos >= end:
            raise Fault(path, f"the bytes end inside {what} (byte offset {pos})")
        if shift >= 64:
            raise Fault(path, f"{what} at byte offset {pos} is longer than 10 bytes")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def spend(budget: list[int]) -> None:
    """One field read of the budget (OverBudget once it is spent)."""
    budget[0] -= 1
    if budget[0] < 0:
        raise OverBudget


def field_path(
    path: str, number: int, field: FieldDescriptor | None, counts: dict[int, int]
) -> str:
    """The proto path of a field met in the bytes (`rules[2]` for the third of a repeated
    field, counted in `counts`; the bare number for a field the contract lacks)."""
    if field is None:
        return f"{path}.{number}" if path else str(number)
    here = f"{path}.{field.name}" if path else field.name
    if field.is_repeated:
        index = counts.get(number, 0)
        counts[number] = index + 1
        here = f"{here}[{index}]"
    return here


def skip_group(
    data: memoryview, pos: int, end: int, number: int, path: str, depth: int, budget: list[int]
) -> int:
    """The position after the group `number` that starts at `pos`, skipped.

    Groups are long deprecated but still valid wire format for unknown fields."""
    if depth > MAX_DEPTH:
        raise Fault(path, f"groups are nested more than {MAX_DEPTH} deep")
    while pos < end:
        spend(budget)
        tag, pos = varint(data, pos, end, path, "a field tag")
        inner, wire = tag >> 3, tag & 7
        if wire == 4:
            if inner != number:
                raise Fault(path, f"group {number} is closed as group {inner}")
            return pos
        if wire == 0:
            _, pos = varint(data, pos, end, path, "a varint")
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            size, pos = varint(data, pos, end, path, "a length")
            pos += size
        elif wire == 3:
            pos = skip_group(data, pos, end, inner, path, depth + 1, budget)
        else:
            raise Fault(path, f"wire type {wire} is not valid (byte offset {pos - 1})")
        if pos > end:
            raise Fault(path, "a value inside a group runs past the end of the bytes")
    raise Fault(path, f"group {number} is never closed")


# The wire type each field type is written with (packed repeated scalars: 2 as well).
_WIRE_OF_TYPE = {
    FieldDescriptor.TYPE_DOUBLE: 1,
    FieldDescriptor.TYPE_FIXED64: 1,
    FieldDescriptor.TYPE_SFIXED64: 1,
    FieldDescriptor.TYPE_FLOAT: 5,
    FieldDescriptor.TYPE_FIXED32: 5,
    FieldDescriptor.TYPE_SFIXED32: 5,
    FieldDescriptor.TYPE_STRING: 2,
    FieldDescriptor.TYPE_BYTES: 2,
    FieldDescriptor.TYPE_MESSAGE: 2,
    FieldDescriptor.TYPE_GROUP: 3,
}
_WIRE_NAMES = {0: "varint", 1: "64-bit", 2: "length-delimited", 3: "group", 5: "32-bit"}


class _Enough(Exception):
    pass


def unknown_fields(
    descriptor: Descriptor, data: bytes, limit: int, max_fields: int = MAX_FIELDS
) -> tuple[list[FieldViolation], bool]:
    """The fields of `data` (a message that parsed) the descriptor does not define, or
    that arrive with another wire type than theirs: at most `limit` of them, reading at
    most `max_fields` fields; and whether there may be more.

    protobuf's own UnknownFieldSet builds a Python object for every unknown field of a
    message at once (100,000 of them: tens of milliseconds on the event loop); this reads
    the bytes and stops at the cap.
    """
    found: list[FieldViolation] = []
    try:
        _unknown(descriptor, memoryview(data), 0, len(data), "", 0, found, limit, [max_fields])
    except (_Enough, OverBudget):
        return found, True
    except Fault:
        pass  # the bytes parsed, so this is not expected; report what was seen
    return found, False


def _unknown(
    descriptor: Descriptor,
    data: memoryview,
    pos: int,
    end: int,
    path: str,
    depth: int,
    found: list[FieldViolation],
    limit: int,
    budget: list[int],
) -> None:
    if depth > MAX_DEPTH:
        raise Fault(path, "nested too deeply")
    counts: dict[int, int] = {}
    while pos < end:
        spend(budget)
        tag, pos = varint(data, pos, end, path, "a field tag")
        number, wire = tag >> 3, tag & 7
        field = descriptor.fields_by_number.get(number)
        expected = None if field is None else _WIRE_OF_TYPE.get(field.type, 0)
        packed = field is not None and field.is_repeated and wire == 2 and expected in (0, 1, 5)
        if field is None or (wire != expected and not packed):
            if len(found) >= limit:
                raise _Enough
            name = _WIRE_NAMES.get(wire, str(wire))
            if field is None:
                found.append(
                    FieldViolation(
                        f"{path}.{number}" if path else str(number),
                        f"unknown field {number} ({name}): this gateway's contract has no "
                        "such field; a write is refused rather than applied without it",
                    )
                )
            else:
                found.append(
                    FieldViolation(
                        f"{path}.{field.name}" if path else field.name,
                        f"was sent as a {name} value, which is not how this field is "
                        "encoded; is the client's proto the same as the server's?",
                    )
                )
        if wire == 0:
            _, pos = varint(data, pos, end, path, "a varint")
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            size, pos = varint(data, pos, end, path, "a length")
            if (
                field is not None
                and field.type == FieldDescriptor.TYPE_MESSAGE
                and field.message_type is not None
            ):
                here = field_path(path, number, field, counts)
                _unknown(
                    field.message_type, data, pos, pos + size, here, depth + 1, found, limit, budget
                )
            pos += size
        elif wire == 3:
            pos = skip_group(data, pos, end, number, path, depth + 1, budget)
        else:
            raise Fault(path, f"wire type {wire} is not valid")
