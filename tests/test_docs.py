"""The README and its guides under docs/: every command block is run by a test (or said why
not), the README stays short with a table of contents, and every link lands inside the
repository, on a heading that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.support.readme_support import (
    CURL_SECTIONS,
    GO_SECTION,
    GRPCURL_SECTIONS,
    PYTHON_SECTION,
    README,
    ROOT,
    SHOWN_NOT_RUN,
    TYPESCRIPT_SECTION,
    documents,
    read,
    section,
)

# Which test runs the blocks of each language in each (document, section).
RUN: dict[str, set[tuple[str, str]]] = {
    "sh": {*GRPCURL_SECTIONS, *CURL_SECTIONS},
    "python": {PYTHON_SECTION},
    "ts": {TYPESCRIPT_SECTION},
    "go": {GO_SECTION},
}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def fenced(document: str) -> list[tuple[str, str, str]]:
    """(language, `## ` heading above it, block) for every fenced block of a document."""
    text = read(document)
    found = []
    for match in FENCE.finditer(text):
        headings = re.findall(r"^## .*$", text[: match.start()], flags=re.M)
        found.append((match.group(1), headings[-1] if headings else "", match.group(2)))
    return found


def slugs(document: str) -> set[str]:
    """The anchors GitHub gives a document's headings, and its explicit `<a id>`s."""
    text = FENCE.sub("", read(document))
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', text))
    for heading in re.findall(r"^#+ (.*)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


@pytest.mark.parametrize("document", documents())
def test_every_command_block_is_run_or_said_why_not(document: str) -> None:
    for language, heading, block in fenced(document):
        where = (document, heading)
        if language in RUN and where not in RUN[language]:
            assert where in SHOWN_NOT_RUN, (
                f"{document} {heading!r}: a {language} block no test runs:\n{block[:200]}"
            )


def test_the_run_sections_exist_and_hold_what_they_run() -> None:
    for language, sections in RUN.items():
        for document, heading in sections:
            languages = [lang for lang, h, _ in fenced(document) if h == heading]
            assert language in languages, (document, heading, language)
    for document, heading in SHOWN_NOT_RUN:
        assert f"\n{heading}\n" in read(document), (document, heading)


def test_every_yaml_block_is_a_config_test_readme_loads() -> None:
    # tests/test_readme.py loads every yaml block of every document; each must be a mapping.
    for document in documents():
        for language, _, block in fenced(document):
            if language == "yaml":
                assert isinstance(yaml.safe_load(block), dict), (document, block[:80])


def test_the_readme_is_short_with_a_table_of_contents() -> None:
    text = read(README)
    assert len(text.splitlines()) <= 500
    contents = section(text, "## Contents")
    for heading in re.findall(r"^## (.*)$", text, flags=re.M):
        if heading != "Contents":
            slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
            assert f"](#{slug})" in contents, heading
    # Every guide is linked from the README, and the architecture before any section.
    for document in documents()[1:]:
        assert f"]({document})" in text, document
    assert text.index("](docs/architecture.md)") < text.index("\n## ")


@pytest.mark.parametrize("document", documents())
def test_every_link_lands_inside_the_repository(document: str) -> None:
    text = FENCE.sub("", read(document))
    base = (ROOT / document).parent
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        resolved = (base / path).resolve() if path else ROOT / document
        assert resolved.is_relative_to(ROOT), (document, target)
        assert resolved.exists(), (document, target)
        if anchor:
            relative = str(resolved.relative_to(ROOT))
            assert anchor in slugs(relative), (document, target)
    # No file outside the repository is cited, linked or not.
    assert not re.search(r"\.\./shared|\.\./\.\./", read(document)), document


def test_alert_runbooks_land_on_a_heading() -> None:
    for rules in ("deploy/prometheus/alerts.yaml", "deploy/k8s/prometheusrule.yaml"):
        for target in re.findall(r"runbook: \"?([^\s\"]+)", read(rules)):
            path, _, anchor = target.partition("#")
            assert (ROOT / path).exists(), (rules, target)
            if path.endswith(".md") and anchor:
                assert anchor in slugs(path), (rules, target)


def test_documents_are_found() -> None:
    assert Path(ROOT / README).exists()
    assert len(documents()) >= 8
