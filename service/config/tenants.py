"""A tenant and its registries: who it is, what it owns and may do (one tenant at a time;
the checks across tenants are in service/config/tenancy_checks.py)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from service.config.base import Operation, Strict
from service.ecr import limits as ecr_limits

_KEY_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class DestinationAllow(Strict):
    """Replication destinations a registry entry may replicate to: one registry, some regions."""

    registry_id: str = Field(pattern=r"^[0-9]{12}$")
    regions: tuple[str, ...] = Field(min_length=1)

    @field_validator("registry_id", mode="before")
    @classmethod
    def _id_as_string(cls, value: Any) -> Any:
        return _account_id(value)


class RegistryConfig(Strict):
    """One registry a tenant may act on, and what it may do there."""

    registry_id: str = Field(pattern=r"^[0-9]{12}$")
    role_arn: str | None = Field(None, pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$")
    external_id_env: str | None = None
    # ECR's REGISTRY_POLICY_SCOPE of the account: `auto` reads it (GetAccountSetting) when
    # the account's client is made and on reload, and refuses policy writes while it cannot;
    # V1 or V2 pins it (a pin AWS disagrees with is logged and counted).
    policy_scope: Literal["auto", "V1", "V2"] = "auto"
    regions: tuple[str, ...] = ()
    operations: tuple[Operation, ...] = ()
    # Deny by default: with none listed, PutReplicationConfiguration may only clear replication.
    replication_destinations: tuple[DestinationAllow, ...] = ()
    # This tenant's slice of a shared registry (PutReplicationRules): the rules whose every
    # repository filter starts with one of these. Repository names are lowercase.
    owned_repository_prefixes: tuple[
        Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[a-z0-9][a-z0-9._/-]*$")],
        ...,
    ] = ()
    # Its slice of the registry policy (PutPolicyStatements): statements whose Sid starts
    # with this. IAM Sids are alphanumeric, so the prefix is too.
    owned_statement_sid_prefix: str | None = Field(None, pattern=r"^[A-Za-z0-9]{1,100}$")
    # This slice's share of ECR's registry-wide limits (service/ecr/limits.py); absent, an
    # equal part of what the other slices' explicit shares leave.
    max_rules: int | None = Field(None, ge=1, le=ecr_limits.MAX_RULES)
    max_destinations: int | None = Field(None, ge=1, le=ecr_limits.MAX_UNIQUE_DESTINATIONS)
    max_policy_chars: int | None = Field(None, ge=1, le=ecr_limits.POLICY_STATEMENT_CHARS)
    # The repository filters this slice's rules may hold; absent, an equal part of what the
    # registry's rules can always hold once packed (service/ecr/limits.py).
    max_filters: int | None = Field(
        None, ge=1, le=ecr_limits.MAX_RULES * ecr_limits.MAX_FILTERS_PER_RULE
    )
    # A catalog: the only destination sets (each a list of registries and regions, as in
    # `replication_destinations`) this slice's filters may replicate to. Tenants sharing a
    # catalog (a YAML anchor) share its sets, which is what lets hundreds of slices fit
    # ECR's 10 rules; each set must lie inside `replication_destinations`.
    destination_sets: (
        tuple[Annotated[tuple[DestinationAllow, ...], Field(max_length=25)], ...] | None
    ) = Field(None, max_length=100)

    @field_validator("registry_id", mode="before")
    @classmethod
    def _id_as_string(cls, value: Any) -> Any:
        return _account_id(value)


def _account_id(value: Any) -> Any:
    # YAML reads an unquoted 111111111111 as an int; an account id is a string. A 0-led
    # one may have been read as octal (YAML 1.1), so a short int is refused, not padded.
    if isinstance(value, int) and not isinstance(value, bool):
        if len(str(value)) != 12:
            raise ValueError(
                "quote account ids in YAML ('012345678901'): unquoted, they are numbers"
            )
        return str(value)
    return value


class PolicyGuardrails(Strict):
    """What a tenant's registry policies may grant."""

    allow_wildcard_principal: bool = False
    # When given, every AWS principal must belong to one of these accounts.
    principal_accounts: tuple[str, ...] | None = None

    @field_validator("principal_accounts", mode="before")
    @classmethod
    def _ids_as_strings(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(_account_id(v) for v in value)
        return value


class TenantConfig(Strict):
    """A tenant: how it proves who it is, and its registries."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    api_keys: tuple[str, ...] = ()
    spiffe_ids: tuple[str, ...] = ()
    policy_guardrails: PolicyGuardrails = PolicyGuardrails()
    registries: tuple[RegistryConfig, ...] = Field(min_length=1)

    @field_validator("spiffe_ids")
    @classmethod
    def _spiffe(cls, ids: tuple[str, ...]) -> tuple[str, ...]:
        for spiffe_id in ids:
            if not re.match(r"^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)*$", spiffe_id):
                raise ValueError(f"not a SPIFFE ID: {spiffe_id!r}")
        return ids

    @field_validator("api_keys")
    @classmethod
    def _hashed_keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        for key in keys:
            if not _KEY_DIGEST.match(key):
                # Never echo the value: it may be a key pasted in clear.
                raise ValueError("each key must be 'sha256:' followed by 64 lowercase hex digits")
        return keys
