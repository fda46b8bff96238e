"""Bounded echoes: caller text escaped and cut before it is repeated anywhere."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service import echo as echo_mod
from service.echo import ECHO_LIMIT, echo, safe_request_id


def test_plain_text_comes_back_unchanged() -> None:
    assert echo("123456789012") == "123456789012"
    assert echo("eu-west-1") == "eu-west-1"
    assert echo("Zürich 東京 ✓") == "Zürich 東京 ✓"  # printable non-ASCII is kept
    assert echo("") == ""
    assert ECHO_LIMIT == 128


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("us-east-1\x00", "us-east-1\\x00"),
        ("a\nb\rc\td", "a\\x0ab\\x0dc\\x09d"),
        ("\x1b[2J", "\\x1b[2J"),
        ("\x7f\x85\xa0", "\\x7f\\x85\\xa0"),  # DEL, NEL, no-break space
        ("line\u2028para\u2029", "line\\u2028para\\u2029"),
        ("\u202aa\u202bb\u202cc\u202dd\u202ee", "\\u202aa\\u202bb\\u202cc\\u202dd\\u202ee"),
        ("\u2066a\u2067b\u2068c\u2069", "\\u2066a\\u2067b\\u2068c\\u2069"),
        ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
        ("tag\U000e0041", "tag\\U000e0041"),
        ("lone\ud800", "lone\\ud800"),
    ],
)
def test_unprintable_characters_are_escaped(raw: str, shown: str) -> None:
    assert echo(raw) == shown


def test_long_text_is_cut_with_an_ellipsis() -> None:
    shown = echo("7" * 20_000)
    assert len(shown) == ECHO_LIMIT
    assert shown == "7" * (ECHO_LIMIT - 1) + "…"
    assert echo("x" * ECHO_LIMIT) == "x" * ECHO_LIMIT  # exactly the limit: not cut
    assert echo("abcdef", limit=4) == "abc…"
    assert echo("abcdef", limit=1) == "…"


def test_the_cut_counts_escapes_and_never_splits_one() -> None:
    shown = echo("\x00" * 100, limit=10)
    assert shown == "\\x00\\x00…"  # 9 characters: a third escape would not fit whole
    assert len(echo("\x00" * 100)) <= ECHO_LIMIT
    assert echo("ab\x00", limit=6) == "ab\\x00"  # escaped text of exactly the limit fits


def test_huge_input_costs_only_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    escaped: list[str] = []
    original = echo_mod._escaped

    def counting(char: str) -> str:
        escaped.append(char)
        return original(char)

    monkeypatch.setattr(echo_mod, "_escaped", counting)
    assert len(echo("\n" * 4_000_000)) <= ECHO_LIMIT
    assert len(escaped) <= ECHO_LIMIT + 1
    escaped.clear()
    assert echo(b"a" * 4_000_000, limit=16) == "a" * 15 + "…"
    assert len(escaped) <= 17


def test_other_values_are_shown_as_text() -> None:
    assert echo(42) == "42"
    assert echo(None) == "None"
    assert echo(b"reg\x00istry") == "reg\\x00istry"
    assert echo(b"\xff") == "\ufffd"
    assert echo(10**5000) == "<int>"  # str() refuses it; echo must not raise


def test_limit_below_one_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="limit"):
        echo("x", limit=0)


@given(st.text(), st.integers(min_value=1, max_value=300))
def test_echo_is_bounded_printable_and_idempotent(text: str, limit: int) -> None:
    shown = echo(text, limit)
    assert len(shown) <= limit
    assert shown.isprintable()
    assert echo(shown, limit) == shown
    if text.isprintable() and len(text) <= limit:
        assert shown == text


@pytest.mark.parametrize(
    "value",
    ["0af4c3e2b1d94f5e8a7b6c5d4e3f2a1b", "req-42", "a.b_c~d:e+f/g=h-i", "x" * 128, "Z"],
)
def test_safe_request_ids(value: str) -> None:
    assert safe_request_id(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x" * 129,
        "x tenant=admin rpc=DeleteRegistryPolicy code=OK",
        "abc\n",
        "abc\r\nx-forged: 1",
        'say"hi"',
        "naïve",
        "a,b",
        "a;b",
        "\u2028",
        "x" * 4_000_000,
    ],
)
def test_unsafe_request_ids(value: str) -> None:
    assert not safe_request_id(value)
