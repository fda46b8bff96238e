"""Where a request's bytes stop being a valid message: the field path of the first fault.

protobuf's parser (upb) says only "Error parsing message" or "String field had bad
UTF-8"; a caller fixing its client wants to know which field. This walks the protobuf wire
format (https://protobuf.dev/programming-guides/encoding/) against the request's
descriptor and names the first field it cannot read. It runs only after the real parser
refused the bytes (of an authenticated caller, within the RPC's byte limit), never on the
hot path, and never raises: at worst it names no field. Its work is bounded by a budget of
fields read, whatever the bytes: past it, it names no field rather than keep the event
loop (and every other caller) waiting. The wire format's primitives, shared with the
validation's walk for unknown fields, are service/wire_format.py's.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from service.errors import FieldViolation
from service.wire_format import MAX_DEPTH, Fault, OverBudget, field_path, skip_group, spend, varint
from service.wire_format import MAX_FIELDS as MAX_FIELDS  # the budget's default, re-exported


def locate(descriptor: Descriptor, data: bytes, max_fields: int = MAX_FIELDS) -> FieldViolation:
    """The first unreadable field of `data` as a `descriptor` message, with what is wrong.

    Reads at most `max_fields` fields (tags), however long `data` is."""
    try:
        _walk(descriptor, memoryview(data), 0, len(data), "", 0, [max_fields])
    except Fault as fault:
        return FieldViolation(fault.path, fault.description)
    except OverBudget:
        return FieldViolation(
            "", f"is not a valid {descriptor.full_name} message (not located further)"
        )
    except Exception:  # noqa: S110 - a diagnosis must never turn a clean refusal into INTERNAL
        pass
    return FieldViolation("", f"is not a valid {descriptor.full_name} message")


def _walk(
    descriptor: Descriptor,
    data: memoryview,
    pos: int,
    end: int,
    path: str,
    depth: int,
    budget: list[int],
) -> None:
    if depth > MAX_DEPTH:
        raise Fault(path, f"messages are nested more than {MAX_DEPTH} deep")
    counts: dict[int, int] = {}
    while pos < end:
        spend(budget)
        tag, pos = varint(data, pos, end, path, "a field tag")
        number, wire = tag >> 3, tag & 7
        field = descriptor.fields_by_number.get(number)
        here = field_path(path, number, field, counts)
        if number == 0:
            raise Fault(path, f"field number 0 is not valid (byte offset {pos - 1})")
        if wire == 0:
            _, pos = varint(data, pos, end, here, "a varint")
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise Fault(here, f"declares a fixed {size}-byte value but the bytes end first")
            pos += size
        elif wire == 2:
            size, pos = varint(data, pos, end, here, "a length")
            if pos + size > end:
                raise Fault(here, f"declares {size} bytes but only {end - pos} remain")
            if field is not None:
                _value(field, data, pos, pos + size, here, depth, budget)
            pos += size
        elif wire == 3:
            pos = skip_group(data, pos, end, number, here, depth + 1, budget)
        elif wire == 4:
            raise Fault(here, f"closes a group that was never opened (byte offset {pos - 1})")
        else:
            raise Fault(here, f"wire type {wire} is not valid (byte offset {pos - 1})")


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
            raise Fault(
                path, f"is not valid UTF-8 (byte 0x{bad:02x} at position {exc.start} of the text)"
            ) from None
    elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
        _walk(field.message_type, data, pos, end, path, depth + 1, budget)
