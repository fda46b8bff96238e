"""Etags: digests of a configuration exactly as AWS returns it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

# The fixed etag of a registry without a policy: `etag: "absent"` on PutRegistryPolicy
# means "create only if there is none".
ABSENT = "absent"


def of_json(value: Any) -> str:
    """A stable digest of a JSON-able value (key order and whitespace do not matter)."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def of_policy(policy_text: str | None) -> str:
    """The etag of a registry policy as AWS returns it; ABSENT when there is none."""
    if policy_text is None:
        return ABSENT
    return hashlib.sha256(policy_text.encode("utf-8")).hexdigest()[:32]
