"""How much JSON a request of each RPC may hold, counted before any of it is parsed.

The byte limit alone does not bound the work of a JSON body: 2 MB of `{},` are 680,000
objects, and each costs `json.loads` a dict, the codec's walk a visit and `json_format`
a message, all in Python (seconds of one event loop, shared by every tenant). The binary
form of the same request is refused by its byte limit or parsed by upb in C, then judged
by validation, which looks at no more elements than ECR allows.

So a JSON body is first counted by its *tokens*: strings (keys and values) and the
structural characters `{`, `[`, `:` and `,` outside strings. A value of the largest
legitimate request (ECR's maxima: 10 rules, 100 destinations and 100 repository filters
a rule; service/rpc/request_limits.py) brings at most four of them: its key, the `:`
after it, the `,` before it, and its own `{`, `[` or string. A body with more tokens than
four times the values of the largest valid request of its RPC (plus headroom for a newer
client's few extra fields, refused by name later) can only be refused: it is refused
unparsed, in C-speed passes over its bytes (`bytes.count`, `replace`, `split`), whose work
is linear in the bytes the RPC's byte limit already bounds. What is parsed then holds at
most a few thousand values: the walk and `json_format` cost about what a legitimate
request of the largest size costs, whatever the caller sent.

Counting outside strings needs no tokenizer: with escaped backslashes and escaped quotes
taken out (left to right, as JSON reads its escapes), the quotes left are the strings'
own, and the pieces between them alternate outside, inside. On a body that is not JSON
the count may be off, but only after the first error, where `json.loads` stops anyway: a
prefix it accepts is read the same way by this count.
"""

from __future__ import annotations

import functools

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from service.gen.v1 import registry_pb2 as pb
from service.rpc.request_limits import max_elements

# Tokens a value brings at most: its own `{`, `[` or string, its key, `:` and `,`.
TOKENS_PER_VALUE = 4
# Values beyond the largest valid request: a client whose contract is a little newer
# (a few unknown fields) hears which fields, not "too large".
HEADROOM_VALUES = 100
_STRUCTURE = (b"{", b"[", b":", b",")


def _field_values(field: FieldDescriptor) -> int:
    one = (
        _message_values(field.message_type)
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None
        else 1
    )
    if field.is_repeated:
        return 1 + max_elements(field) * one  # the array, and its elements
    return one


def _message_values(descriptor: Descriptor) -> int:
    return 1 + sum(_field_values(field) for field in descriptor.fields)


@functools.cache
def max_json_tokens(rpc: str) -> int:
    """The most tokens (see the module's docstring) a JSON request of `rpc` may hold."""
    values = _message_values(pb.DESCRIPTOR.message_types_by_name[f"{rpc}Request"])
    return TOKENS_PER_VALUE * (values + HEADROOM_VALUES)


def over_budget(data: bytes | bytearray, limit: int) -> bool:
    """Whether the JSON text `data` holds more than `limit` tokens. Work: a few C-speed
    passes over `data`, and never more than `limit` pieces of it built."""
    raw = bytes(data)
    # Counted in the raw bytes, everything is counted (escaped quotes, and structure inside
    # strings too): at most the limit there, at most the limit outside strings.
    quotes = raw.count(b'"')
    if quotes // 2 + sum(raw.count(c) for c in _STRUCTURE) <= limit:
        return False
    plain = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    strings = plain.count(b'"') // 2
    if strings > limit:
        return True
    outside = b"".join(plain.split(b'"')[::2])
    return strings + sum(outside.count(c) for c in _STRUCTURE) > limit
