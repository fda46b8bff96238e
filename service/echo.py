"""Bounded echoes: caller text made safe to repeat in a status, a log line or an audit line.

A caller's value echoed whole can make the answer larger than gRPC lets metadata be (the
caller then gets RESOURCE_EXHAUSTED instead of its error), and one echoed raw can carry
control characters, line separators or bidi overrides into a terminal or a log. `echo`
escapes and cuts; `safe_request_id` says whether a request id may be repeated verbatim.

No library is used: `reprlib` elides in the middle with "..." and quotes the text, and
`repr`/`unicode_escape` also escape backslashes and quotes (and `unicode_escape` every
non-ASCII letter), which breaks the property the callers rely on: `echo` is idempotent,
so a value echoed where an error is built and again by `to_status` comes out the same.
The Unicode knowledge itself is the standard library's (`str.isprintable`).
"""

from __future__ import annotations

import re

ECHO_LIMIT = 128

_ELLIPSIS = "…"
_MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(r"[A-Za-z0-9._~:+/=-]+")


def _escaped(char: str) -> str:
    # str.isprintable is False for every C* category (controls, format characters such as
    # the bidi overrides U+202A-202E and isolates U+2066-2069, surrogates, private use,
    # unassigned) and every Z* category except the space (so U+2028/2029 and U+00A0).
    if char.isprintable():
        return char
    point = ord(char)
    if point < 0x100:
        return f"\\x{point:02x}"
    if point < 0x10000:
        return f"\\u{point:04x}"
    return f"\\U{point:08x}"


def _text(value: object, bound: int) -> str:
    if isinstance(value, str):
        return value[:bound]
    if isinstance(value, bytes | bytearray | memoryview):
        # Clipped before decoding, so a huge buffer costs no more than a short one.
        return bytes(value[:bound]).decode("utf-8", errors="replace")
    try:
        return str(value)[:bound]
    except ValueError:
        # int.__str__ refuses integers of more than 4,300 digits.
        return f"<{type(value).__name__}>"


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """`value` as text fit to repeat to a caller or a log: at most `limit` characters.

    Non-printable characters (controls, U+2028/2029, bidi overrides and isolates, ...)
    become `\\xNN`, `\\uNNNN` or `\\UNNNNNNNN`; text longer than `limit` after escaping is
    cut, without splitting an escape, and ends with "…". Backslashes are left alone, so
    `echo(echo(v)) == echo(v)`. Work is O(limit) for a str or bytes of any length; other
    objects go through `str()` first.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    # Every character yields at least one, so `limit + 1` of them decide whether to cut.
    text = _text(value, limit + 1)
    if len(text) <= limit and text.isprintable():
        return text  # the common case, at C speed
    pieces: list[str] = []
    length = 0
    for char in text:
        piece = _escaped(char)
        length += len(piece)
        if length > limit:
            break
        pieces.append(piece)
    else:
        return "".join(pieces)
    # Too long: drop whole pieces until the ellipsis fits.
    length -= len(piece)
    while pieces and length > limit - len(_ELLIPSIS):
        length -= len(pieces.pop())
    return "".join(pieces) + _ELLIPSIS


def safe_request_id(value: str) -> bool:
    """Whether `value` may be repeated verbatim in a log field and a header: 1 to 128
    characters from `A-Z a-z 0-9 . _ ~ : + / = -`."""
    return 0 < len(value) <= _MAX_REQUEST_ID and _REQUEST_ID.fullmatch(value) is not None
