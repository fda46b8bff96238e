"""ECR's GetAccountSetting in moto, which lacks it (moto 5.x answers no such action).

The gateway reads REGISTRY_POLICY_SCOPE of each account (service/aws/account_settings.py)
when it makes the account's client. conftest.py installs this handler for the whole
session, so every test's moto answers like a new ECR registry does: V2. A test that needs
another answer sets `set_policy_scope` (V1), or makes the read fail with `refuse_reads`.
"""

from __future__ import annotations

from typing import Any

import pytest
from moto.core.exceptions import JsonRESTError
from moto.ecr.models import ECRBackend, ecr_backends
from moto.ecr.responses import ECRResponse

SETTING = "REGISTRY_POLICY_SCOPE"
DEFAULT_SCOPE = "V2"
# Set on the backend (an account's ECR in one region); a moto reset drops it, back to V2.
ATTRIBUTE = "gateway_tests_policy_scope"


def _get_account_setting(self: ECRResponse) -> str:
    name = self._get_param("name")
    if name != SETTING:
        raise JsonRESTError("ValidationException", f"unsupported account setting {name}")
    value = getattr(self.ecr_backend, ATTRIBUTE, DEFAULT_SCOPE)
    return f'{{"name": "{SETTING}", "value": "{value}"}}'


def install() -> Any:
    """Give moto's ECR a GetAccountSetting; answers what to call to take it away again."""
    had = "get_account_setting" in vars(ECRResponse)
    ECRResponse.get_account_setting = _get_account_setting  # type: ignore[attr-defined]

    def uninstall() -> None:
        if not had:
            del ECRResponse.get_account_setting  # type: ignore[attr-defined]

    return uninstall


def set_policy_scope(account: str, region: str, scope: str) -> None:
    """What GetAccountSetting(REGISTRY_POLICY_SCOPE) answers for `account` in `region`."""
    backend: ECRBackend = ecr_backends[account][region]
    setattr(backend, ATTRIBUTE, scope)


def refuse_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """GetAccountSetting answers AccessDeniedException (no ecr:GetAccountSetting)."""

    def denied(self: ECRResponse) -> str:
        raise JsonRESTError(
            "AccessDeniedException",
            "User is not authorized to perform: ecr:GetAccountSetting",
        )

    monkeypatch.setattr(ECRResponse, "get_account_setting", denied)
