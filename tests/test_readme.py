"""The config examples of the README and its guides are valid configs (so the documentation
stays true): every `yaml` block of every document under `documents()`."""

from __future__ import annotations

import re

import pytest
import yaml

from service.auth.api_keys import hash_key
from service.config import from_mapping
from tests.support.readme_support import blocks, documents, read

BLOCKS = [
    (f"{document}:{i}", block)
    for document in documents()
    for i, block in enumerate(blocks(read(document), "yaml"))
]


def test_readme_has_config_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("block", [b for _, b in BLOCKS], ids=[name for name, _ in BLOCKS])
def test_readme_config_block_is_valid(block: str) -> None:
    # Placeholders for key digests stand where a real digest goes.
    text = re.sub(r"sha256:(<hex>|[0-9a-f]*…)", hash_key("example"), block)
    raw = yaml.safe_load(text)
    config = from_mapping(raw, environ={})
    assert set(raw) <= config.model_fields_set  # every key the block shows was taken
