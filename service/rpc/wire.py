"""Where a request's bytes stop being a valid message: the field path of the first fault.

protobuf's parser (upb) says only "Error parsing message" or "String field had bad
UTF-8"; a caller fixing its client wants to know which field. This walks the protobuf wire
format (https://protobuf.dev/programming-guides/encoding/) against the request's
descriptor and names the first field it cannot read. It runs only after the real parser
refused the bytes (of an authenticated caller, within the RPC's byte limit), never on the
hot path, and never raises: at worst it names no field. Its work is bounded by a budget of
fields read, whatever the bytes: past it, it names no field rather than keep the event
loop (and every other caller) waiting.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from service.errors import FieldViolation

_MAX_DEPTH = 64  # protobuf's own default recursion limit is 100; ours nest four deep
# Fields (tags) read before giving up. A legitimate request holds at most ~2,000 messages
# of a few fields each, so a fault in one is found well inside this; ~1 us a field.
MAX_FIELDS = 8192


class _OverBudget(Exception):
    pass


class _Fault(Exception):
    def __init__(self, path: str, description: str) -> None:
        super().__init__(description)
        self.path = path
        self.description = description


def locate(descriptor: Descriptor, data: bytes, max_fields: int = MAX_FIELDS) -> FieldViolation:
    """The first unreadable field of `data` as a `descriptor` message, with what is wrong.

    Reads at most `max_fields` fields (tags), however long `data` is."""
    try:
        _walk(descriptor, memoryview(data), 0, len(data), "", 0, [max_fields])
    except _Fault as fault:
        return FieldViolation(fault.path, fault.description)
    except _OverBudget:
        return FieldViolation(
            "", f"is not a valid {descriptor.full_name} message (not located further)"
        )
    except Exception:  # noqa: S110 - a diagnosis must never turn a clean refusal into INTERNAL
        pass
    return FieldViolation("", f"is not a valid {descriptor.full_name} message")


def _varint(data: memoryview, pos: int, end: int, path: str, what: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise _Fault(path, f"the bytes end inside {what} (byte offset {pos})")
        if shift >= 64:
            raise _Fault(path, f"{what} at byte offset {pos} is longer than 10 bytes")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _spend(budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise _OverBudget


def _field_path(
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


def _walk(
    descriptor: Descriptor,
    data: memoryview,
    pos: int,
    end: int,
    path: str,
    depth: int,
    budget: list[int],
) -> None:
    if depth > _MAX_DEPTH:
        raise _Fault(path, f"messages are nested more than {_MAX_DEPTH} deep")
    counts: dict[int, int] = {}
    while pos < end:
        _spend(budget)
        tag, pos = _varint(data, pos, end, path, "a field tag")
        number, wire = tag >> 3, tag & 7
        field = descriptor.fields_by_number.get(number)
        here = _field_path(path, number, field, counts)
        if number == 0:
            raise _Fault(path, f"field number 0 is not valid (byte offset {pos - 1})")
        if wire == 0:
            _, pos = _varint(data, pos, end, here, "a varint")
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise _Fault(here, f"declares a fixed {size}-byte value but the bytes end first")
            pos += size
        elif wire == 2:
            size, pos = _varint(data, pos, end, here, "a length")
            if pos + size > end:
                raise _Fault(here, f"declares {size} bytes but only {end - pos} remain")
            if field is not None:
                _value(field, data, pos, pos + size, here, depth, budget)
            pos += size
        elif wire == 3:
            pos = _skip_group(data, pos, end, number, here, depth + 1, budget)
        elif wire == 4:
            raise _Fault(here, f"closes a group that was never opened (byte offset {pos - 1})")
        else:
            raise _Fault(here, f"wire type {wire} is not valid (byte offset {pos - 1})")


def _value(
    field: FieldDescriptor,
    data: memoryview,
    pos: int,
    end: int,
    path: str,
    depth: int,
    budget: list[int],
) -> None:
    if field.type == FieldDescriptor.TYPE_STRING:
        try:
            bytes(data[pos:end]).decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = data[pos + exc.start]
            raise _Fault(
                path, f"is not valid UTF-8 (byte 0x{bad:02x} at position {exc.start} of the text)"
            ) from None
    elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
        _walk(field.message_type, data, pos, end, path, depth + 1, budget)


def _skip_group(
    data: memoryview, pos: int, end: int, number: int, path: str, depth: int, budget: list[int]
) -> int:
    # Groups are long deprecated but still valid wire format for unknown fields.
    if depth > _MAX_DEPTH:
        raise _Fault(path, f"groups are nested more than {_MAX_DEPTH} deep")
    while pos < end:
        _spend(budget)
        tag, pos = _varint(data, pos, end, path, "a field tag")
        inner, wire = tag >> 3, tag & 7
        if wire == 4:
            if inner != number:
                raise _Fault(path, f"group {number} is closed as group {inner}")
            return pos
        if wire == 0:
            _, pos = _varint(data, pos, end, path, "a varint")
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            size, pos = _varint(data, pos, end, path, "a length")
            pos += size
        elif wire == 3:
            pos = _skip_group(data, pos, end, inner, path, depth + 1, budget)
        else:
            raise _Fault(path, f"wire type {wire} is not valid (byte offset {pos - 1})")
        if pos > end:
            raise _Fault(path, "a value inside a group runs past the end of the bytes")
    raise _Fault(path, f"group {number} is never closed")


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
    except (_Enough, _OverBudget):
        return found, True
    except _Fault:
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
    if depth > _MAX_DEPTH:
        raise _Fault(path, "nested too deeply")
    counts: dict[int, int] = {}
    while pos < end:
        _spend(budget)
        tag, pos = _varint(data, pos, end, path, "a field tag")
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
            _, pos = _varint(data, pos, end, path, "a varint")
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            size, pos = _varint(data, pos, end, path, "a length")
            if (
                field is not None
                and field.type == FieldDescriptor.TYPE_MESSAGE
                and field.message_type is not None
            ):
                here = _field_path(path, number, field, counts)
                _unknown(
                    field.message_type, data, pos, pos + size, here, depth + 1, found, limit, budget
                )
            pos += size
        elif wire == 3:
            pos = _skip_group(data, pos, end, number, path, depth + 1, budget)
        else:
            raise _Fault(path, f"wire type {wire} is not valid")
