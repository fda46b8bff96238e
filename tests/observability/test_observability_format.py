"""Log formats: no caller text can forge a field or break a line, in either format."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest

from service.observability.logs import JsonFormatter, KeyValueFormatter

FORGED = "x tenant=admin rpc=DeleteRegistryPolicy code=OK"
# A key=value field of the text format: a bare token, or a JSON string.
FIELD = re.compile(r'(?:^| )([a-z_]+)=("(?:[^"\\]|\\.)*"|[^\s"]+)')


def record(message: str = "call failed", *args: object, **fields: Any) -> logging.LogRecord:
    made = logging.LogRecord(
        "registry_gateway.calls", logging.INFO, __file__, 1, message, args, None
    )
    for key, value in fields.items():
        setattr(made, key, value)
    return made


def text_fields(line: str) -> list[tuple[str, str]]:
    """Every key=value of a text line, values decoded; a forged field would show up here."""
    return [(k, json.loads(v) if v.startswith('"') else v) for k, v in FIELD.findall(line)]


def test_a_hostile_value_is_one_quoted_value() -> None:
    line = KeyValueFormatter("%(message)s").format(
        record(request_id=FORGED, tenant="payments", rpc="DescribeRegistry", code="NOT_FOUND")
    )
    assert f"request_id={json.dumps(FORGED)}" in line
    assert text_fields(line) == [
        ("request_id", FORGED),
        ("tenant", "payments"),
        ("rpc", "DescribeRegistry"),
        ("code", "NOT_FOUND"),
    ]


@pytest.mark.parametrize(
    "value",
    ['a"b', "a\\b", "", " ", "a=b", "eu-west-1\nrpc=X", "\u2028tenant=admin", "x\r\x1b[2K"],
)
def test_values_that_are_not_plain_tokens_are_quoted(value: str) -> None:
    line = KeyValueFormatter("%(message)s").format(record(region=value, tenant="payments"))
    assert "\n" not in line and "\r" not in line and "\u2028" not in line
    fields = text_fields(line)
    assert [k for k, _ in fields] == ["tenant", "region"]
    assert fields[0] == ("tenant", "payments")
    assert line.split(" region=", 1)[1].startswith('"')


@pytest.mark.parametrize(
    "value", ["123456789012", "eu-west-1", "127.0.0.1:50051", "a/b@c+d", "12.5", 3.25]
)
def test_plain_tokens_stay_bare(value: object) -> None:
    line = KeyValueFormatter("%(message)s").format(record(listen=value))
    assert line.endswith(f" listen={value}")


def test_a_long_value_is_bounded_in_both_formats() -> None:
    text = KeyValueFormatter("%(message)s").format(record(registry_id="1" * 20_000))
    assert len(text) < 200
    line = json.loads(JsonFormatter().format(record(registry_id="1" * 20_000)))
    assert line["registry_id"] == "1" * 127 + "…"


def test_the_message_is_escaped_in_both_formats() -> None:
    hostile = "refused: %s"
    arg = "bad\nINFO registry_gateway forged line\u2028\x1b[31m"
    text = KeyValueFormatter("%(levelname)s %(message)s").format(record(hostile, arg))
    assert text == "INFO refused: bad\\x0aINFO registry_gateway forged line\\u2028\\x1b[31m"
    raw = JsonFormatter().format(record(hostile, arg))
    assert "\n" not in raw and "\u2028" not in raw
    assert (
        json.loads(raw)["message"]
        == "refused: bad\\x0aINFO registry_gateway forged line\\u2028\\x1b[31m"
    )


def test_json_fields_keep_their_types() -> None:
    line = json.loads(JsonFormatter().format(record(duration_ms=1.5, tenant="payments")))
    assert line["duration_ms"] == 1.5 and line["tenant"] == "payments"
