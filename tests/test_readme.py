"""The README's config examples are valid configs (so the documentation stays true)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from service.auth.api_keys import hash_key
from service.config import from_mapping

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```yaml\n(.*?)```", README, flags=re.S)


def test_readme_has_config_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_config_block_is_valid(block: str) -> None:
    # Placeholders for key digests stand where a real digest goes.
    text = re.sub(r"sha256:(<hex>|[0-9a-f]*…)", hash_key("example"), block)
    raw = yaml.safe_load(text)
    config = from_mapping(raw, environ={})
    assert set(raw) <= config.model_fields_set  # every key the block shows was taken
