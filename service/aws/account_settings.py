"""ECR's REGISTRY_POLICY_SCOPE per (account, region): what AWS said, and the scope to use.

A registry policy is judged under the account's scope (V1: only ecr:CreateRepository,
ecr:ReplicateImage and ecr:BatchImportUpstreamImage; V2: every ECR action). `policy_scope:
auto` (the default) uses what ECR's GetAccountSetting answered, read when the account's
client is made (service/aws/upstream.py) and again on reload. While it is unknown, policy
writes of that registry fail closed (POLICY_SCOPE_UNKNOWN); reads go on. How they fail
says whether retrying helps:

- not read yet, or AWS unavailable (throttled, failing, unreachable, too slow): UNAVAILABLE
  with RetryInfo, and the setting is read again in the background (at most one read at a
  time per account and region, one a second), so a client's retry finds it;
- AWS refused the read (no ecr:GetAccountSetting) or answered something unknown:
  FAILED_PRECONDITION, for the operators (read again on reload);
- the account itself refused (ACCOUNT_MISMATCH, no credentials): that refusal.

A pinned V1 or V2 is used as pinned; when AWS answers otherwise, that is logged and counted
(registry_gateway_policy_scope_mismatch).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from botocore.exceptions import BotoCoreError, ClientError

from service.aws.errors import UPSTREAM_RETRY_AFTER_SECONDS, from_botocore_error, from_client_error
from service.config import RegistryConfig
from service.errors import FailedPrecondition, GatewayError, Unavailable
from service.observability.metrics import Metrics

log = logging.getLogger("registry_gateway.account_settings")

SETTING = "REGISTRY_POLICY_SCOPE"
Scope = Literal["V1", "V2"]
SCOPES: tuple[Scope, ...] = ("V1", "V2")
NOT_READ = "it has not been read yet, it is being read now"
# A write finding the setting unknown for a passing reason asks for another read at most
# this often per (account, region), and tells its caller to retry after as long.
REREAD_SECONDS = UPSTREAM_RETRY_AFTER_SECONDS
# A read asked for and never answered (its task lost) no longer holds the next one back.
_READ_ABANDONED_SECONDS = 60.0


@dataclass(frozen=True)
class Unreadable:
    """Why the setting could not be read; `refused`: the gateway's own refusal of the
    account (e.g. ACCOUNT_MISMATCH), answered as such rather than as an unknown scope;
    `passing`: AWS was unavailable (a retry may find it read)."""

    why: str
    refused: GatewayError | None = None
    passing: bool = False


def aws_unavailable(exc: BaseException) -> bool:
    """Whether a failed read of the setting says AWS is unavailable for now (throttled,
    failing, unreachable, too slow), as the gateway maps AWS's errors
    (service/aws/errors.py), rather than that the read is refused."""
    if isinstance(exc, TimeoutError | Unavailable):
        return True
    if isinstance(exc, ClientError):
        return isinstance(from_client_error(exc, "get_account_setting"), Unavailable)
    if isinstance(exc, BotoCoreError):
        return isinstance(from_botocore_error(exc, "get_account_setting"), Unavailable)
    return False


class PolicyScopes:
    """The REGISTRY_POLICY_SCOPE AWS answered per (account, region), and the one to use."""

    def __init__(
        self,
        metrics: Metrics | None = None,
        *,
        on_missing: Callable[[RegistryConfig, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # on_missing: read the setting in the background (a write found it not read yet,
        # or unreadable for a passing reason); its answer comes back as record/unreadable.
        self._metrics = metrics
        self._on_missing = on_missing
        self._clock = clock
        self._read: dict[tuple[str, str], Scope | Unreadable] = {}
        self._asked: dict[tuple[str, str], float] = {}  # a read asked for, not answered yet
        self._answered: dict[tuple[str, str], float] = {}  # when the last read ended

    def record(self, registry: RegistryConfig, region: str, value: str) -> None:
        """What GetAccountSetting answered for the registry's account in `region`."""
        key = (registry.registry_id, region)
        if value not in SCOPES:
            self.unreadable(registry, region, f"ECR answered the unknown scope {value!r}")
            return
        scope: Scope = "V1" if value == "V1" else "V2"
        self._read[key] = scope
        self._ended(key)
        pinned = registry.policy_scope
        if pinned != "auto" and pinned != scope:
            log.warning(
                "registry %s pins policy scope %s, but ECR's %s in %s is %s",
                registry.registry_id,
                pinned,
                SETTING,
                region,
                scope,
                extra={"registry_id": registry.registry_id, "region": region},
            )
            if self._metrics is not None:
                self._metrics.policy_scope_mismatch.labels(registry.registry_id, region).inc()

    def unreadable(
        self,
        registry: RegistryConfig,
        region: str,
        why: str,
        refused: GatewayError | None = None,
        *,
        cause: BaseException | None = None,
    ) -> None:
        """GetAccountSetting failed for the registry's account in `region`; `cause`: the
        failure (or `refused`), which tells whether it may pass."""
        key = (registry.registry_id, region)
        failure = cause if cause is not None else refused
        passes = failure is not None and aws_unavailable(failure)
        self._read[key] = Unreadable(why, refused, passes)
        self._ended(key)
        log.warning(
            "cannot read ECR's %s of registry %s in %s: %s%s",
            SETTING,
            registry.registry_id,
            region,
            why,
            "; its policy writes are refused until it can"
            if registry.policy_scope == "auto"
            else f"; using the pinned {registry.policy_scope}",
            extra={"registry_id": registry.registry_id, "region": region},
        )

    def read(self, registry_id: str, region: str) -> Scope | Unreadable | None:
        """What was last read (None: never tried)."""
        return self._read.get((registry_id, region))

    def scope_for(self, registry: RegistryConfig, region: str) -> Scope:
        """The scope a policy write of this registry is judged under. When it is `auto` and
        AWS's is unknown: Unavailable (POLICY_SCOPE_UNKNOWN, RetryInfo) while it is not read
        yet or AWS is unavailable (a read is asked for), FailedPrecondition
        (POLICY_SCOPE_UNKNOWN) when AWS refused the read, or the account's own refusal."""
        if registry.policy_scope != "auto":
            return registry.policy_scope
        key = (registry.registry_id, region)
        read = self._read.get(key)
        if isinstance(read, str):
            return read
        retry = read is None or read.passing
        if retry:
            self._read_again(registry, region)
        if read is not None and read.refused is not None:
            # The account itself is refused (wrong credentials, or AWS unreachable when its
            # client was made): that is the answer. A fresh traceback each time it is raised.
            raise read.refused.with_traceback(None)
        why = read.why if read is not None else NOT_READ
        metadata = {"registryId": registry.registry_id, "region": region}
        if retry:
            # Clients retry UNAVAILABLE, not FAILED_PRECONDITION: this one passes.
            raise Unavailable(
                f"the registry policy scope of registry {registry.registry_id} in {region} is "
                f"not known yet ({SETTING}: {why}); it is being read again, retry the write",
                reason="POLICY_SCOPE_UNKNOWN",
                metadata=metadata,
                retry_after_seconds=REREAD_SECONDS,
            )
        raise FailedPrecondition(
            f"the registry policy scope of registry {registry.registry_id} in {region} is "
            f"unknown ({SETTING}: {why}); policy writes are refused until the gateway can "
            f"read it (ecr:GetAccountSetting), or the config pins policy_scope V1 or V2",
            reason="POLICY_SCOPE_UNKNOWN",
            metadata=metadata,
        )

    def _read_again(self, registry: RegistryConfig, region: str) -> None:
        """Ask for a background read, unless one is under way or the last ended less than
        REREAD_SECONDS ago: writes arriving while AWS is down make no storm of reads."""
        if self._on_missing is None:
            return
        key, now = (registry.registry_id, region), self._clock()
        asked = self._asked.get(key)
        if asked is not None and now - asked < _READ_ABANDONED_SECONDS:
            return
        ended = self._answered.get(key)
        if ended is not None and now - ended < REREAD_SECONDS:
            return
        self._asked[key] = now
        self._on_missing(registry, region)

    def _ended(self, key: tuple[str, str]) -> None:
        self._asked.pop(key, None)
        self._answered[key] = self._clock()
