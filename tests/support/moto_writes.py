"""Counting the write requests moto receives, and making moto behave like ECR where it differs.

Counting happens on moto's response layer (one call per HTTP request that reached the
ECR API), so it is independent of any patch of the backend's behaviour underneath.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pytest
from moto.ecr.models import ECRBackend
from moto.ecr.responses import ECRResponse

WRITES = ("put_registry_policy", "delete_registry_policy", "put_replication_configuration")


class MotoWrites:
    """How many write requests of each kind moto received since the fixture started."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    @property
    def total(self) -> int:
        """All writes of every kind."""
        return sum(self.calls.values())


def count_writes(monkeypatch: pytest.MonkeyPatch) -> MotoWrites:
    """Patch moto's ECR response handlers to count each write request that reaches them."""
    writes = MotoWrites()
    for name in WRITES:
        original = getattr(ECRResponse, name)

        def counted(self: ECRResponse, _name: str = name, _original: Any = original) -> Any:
            writes.calls[_name] += 1
            return _original(self)

        monkeypatch.setattr(ECRResponse, name, counted)
    return writes


def behave_like_ecr(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lift two moto 5.x restrictions ECR does not have.

    moto refuses more than one replication rule ("This feature is disabled"; ECR takes 10)
    and allows only ecr:CreateRepository and ecr:ReplicateImage in a registry policy (ECR's
    V2 scope allows every ECR action; moto also answers HTTP 500 on NotAction or a Statement
    given as an object). The gateway validates these itself, so moto only has to store.
    """

    def put_replication(self: ECRBackend, replication_config: dict[str, Any]) -> dict[str, Any]:
        self.replication_config = replication_config
        return {"replicationConfiguration": replication_config}

    def any_action(self: ECRBackend, policy_text: str) -> None:
        return None

    monkeypatch.setattr(ECRBackend, "put_replication_configuration", put_replication)
    monkeypatch.setattr(ECRBackend, "_validate_registry_policy_action", any_action)


def store_principals_as_ecr(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make moto store a registry policy as ECR does: a 12-digit account id in an `AWS`
    principal becomes the account's root ARN, and the text comes back reformatted.

    moto stores the text as sent. IAM's docs: "When you save a resource-based policy that
    includes the shortened account ID, the service might convert it to the principal ARN"
    (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_principal.html#principal-accounts);
    ECR does, and answers the policy pretty-printed.
    """
    original = ECRBackend.put_registry_policy

    def rewritten(self: ECRBackend, policy_text: str) -> dict[str, Any]:
        answer: dict[str, Any] = original(self, policy_text)
        policy = json.loads(policy_text)
        statements = policy.get("Statement", [])
        for statement in statements if isinstance(statements, list) else [statements]:
            for element in ("Principal", "NotPrincipal"):
                principal = statement.get(element)
                if isinstance(principal, dict) and "AWS" in principal:
                    names = principal["AWS"]
                    as_list = names if isinstance(names, list) else [names]
                    roots = [
                        f"arn:{self.partition}:iam::{n}:root"
                        if isinstance(n, str) and re.fullmatch(r"\d{12}", n)
                        else n
                        for n in as_list
                    ]
                    principal["AWS"] = roots if isinstance(names, list) else roots[0]
        self.registry_policy = json.dumps(policy, indent=2)
        return answer

    monkeypatch.setattr(ECRBackend, "put_registry_policy", rewritten)


def configured(snapshot: dict[str, Any]) -> dict[str, Any]:
    """An `aws_state` snapshot without the registries that hold nothing.

    moto creates a registry's backend on first use, empty: that is no change of state.
    """
    return {k: v for k, v in snapshot.items() if v != (None, repr({"rules": []}))}
