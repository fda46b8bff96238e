"""The config file: the YAML keys the README documents, env overrides, one-line refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from service.app import cli
from service.auth.api_keys import hash_key
from service.config import ConfigError, GatewayConfig, from_mapping, load
from service.ecr import limits
from tests.support.helpers import ACCOUNT, KEY

MINIMAL = f"""\
listen: 127.0.0.1:6000
aws:
  region: eu-west-1
tenants:
  - name: payments
    api_keys: ["{hash_key(KEY)}"]
    registries:
      - registry_id: "{ACCOUNT}"
        regions: [eu-west-1]
        operations: [DescribeRegistry, GetRegistryPolicy]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def tenant(**overrides: Any) -> dict[str, Any]:
    """One valid tenant entry, with some keys replaced."""
    return {
        "name": "payments",
        "api_keys": [hash_key(KEY)],
        "registries": [{"registry_id": ACCOUNT}],
        **overrides,
    }


def refusal(raw: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    """The message of the ConfigError a mapping is refused with; it must be one line."""
    with pytest.raises(ConfigError) as caught:
        from_mapping(raw, environ={} if environ is None else environ)
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith("config error:"), message
    return message


def load_refusal(path: Path) -> str:
    """The one-line ConfigError a file is refused with; it names the file."""
    with pytest.raises(ConfigError) as caught:
        load(path, environ={})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("config error:")
    assert str(path) in message
    return message


def test_minimal_yaml_loads(tmp_path: Path) -> None:
    config = load(write(tmp_path, MINIMAL), environ={})
    assert isinstance(config, GatewayConfig)
    assert config.listen == "127.0.0.1:6000"
    assert config.aws.region == "eu-west-1"
    [payments] = config.tenants
    assert payments.name == "payments"
    assert payments.api_keys == (hash_key(KEY),)
    [registry] = payments.registries
    assert registry.registry_id == ACCOUNT
    assert registry.operations == ("DescribeRegistry", "GetRegistryPolicy")
    # Keys not given keep their documented defaults.
    assert config.aws.max_attempts == 3
    assert config.server.reflection is True
    assert config.server.default_deadline_seconds == 10.0


def test_env_overrides_apply_with_types(tmp_path: Path) -> None:
    config = load(
        write(tmp_path, MINIMAL),
        environ={
            "REGISTRY_GATEWAY__AWS__MAX_ATTEMPTS": "5",
            "REGISTRY_GATEWAY__SERVER__REFLECTION": "false",
            "UNRELATED": "1",
        },
    )
    assert config.aws.max_attempts == 5
    assert type(config.aws.max_attempts) is int
    assert config.server.reflection is False
    # The rest of the file is untouched by the overrides.
    assert config.aws.region == "eu-west-1"
    assert config.tenants[0].name == "payments"


def test_env_override_of_a_key_the_file_lacks() -> None:
    config = from_mapping(
        {"tenants": [tenant()]}, environ={"REGISTRY_GATEWAY__SERVER__MAX_DEADLINE_SECONDS": "30"}
    )
    assert config.server.max_deadline_seconds == 30.0


def test_env_override_with_a_wrong_type_names_the_key() -> None:
    message = refusal({"tenants": [tenant()]}, {"REGISTRY_GATEWAY__AWS__MAX_ATTEMPTS": "many"})
    assert "aws.max_attempts" in message


def test_env_override_is_not_read_from_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit `environ` is the only environment consulted."""
    monkeypatch.setenv("REGISTRY_GATEWAY__AWS__MAX_ATTEMPTS", "7")
    assert from_mapping({"tenants": [tenant()]}, environ={}).aws.max_attempts == 3


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"listn": "127.0.0.1:1"}, "listn"),
        ({"server": {"reflexion": False}}, "server.reflexion"),
        ({"tenants": [tenant(api_key=hash_key(KEY))]}, "tenants.0.api_key"),
    ],
    ids=["top-level", "in-section", "in-tenant"],
)
def test_unknown_key_is_refused(raw: dict[str, Any], key: str) -> None:
    message = refusal(raw)
    assert message.startswith(f"config error: {key}: "), message
    assert "unknown key" in message


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"aws": {"max_attempts": "three"}}, "aws.max_attempts"),
        ({"server": {"reflection": "sometimes"}}, "server.reflection"),
        ({"server": {"max_concurrent_rpcs": 0}}, "server.max_concurrent_rpcs"),
        ({"tenants": [tenant(registries=[{"registry_id": "12345"}])]}, "registry_id"),
        ({"listen": "no-port-here"}, "listen"),
    ],
    ids=["string-for-int", "string-for-bool", "out-of-range", "short-account-id", "listen"],
)
def test_wrong_type_or_value_is_refused(raw: dict[str, Any], key: str) -> None:
    message = refusal(raw)
    assert key in message.split(": ")[1], message


@pytest.mark.parametrize("section", ["tracings", "metric"])
def test_unknown_section_is_refused(section: str) -> None:
    message = refusal({section: {"anything": 1}, "tenants": [tenant()]})
    assert message.startswith(f"config error: {section}: "), message
    assert "unknown key" in message


def test_clear_api_key_is_refused_without_echoing_it() -> None:
    clear = "pk-live-4f9c2d-clear-text-key"
    message = refusal({"tenants": [tenant(api_keys=[hash_key(KEY), clear])]})
    assert "tenants.0.api_keys" in message
    assert "sha256:" in message  # says what form is expected
    assert clear not in message
    assert "4f9c2d" not in message


def test_uppercase_hex_digest_is_refused() -> None:
    """The digest is compared as `hash_key` writes it: lowercase hex."""
    message = refusal({"tenants": [tenant(api_keys=[hash_key(KEY).upper()])]})
    assert "tenants.0.api_keys" in message


def test_invalid_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "aws:\n  region: us-east-1\nserver: [\n")
    message = load_refusal(path)
    assert "not valid YAML" in message
    assert "line 4" in message


def test_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    load_refusal(path)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, "- listen: 127.0.0.1:1\n"), environ={})
    assert str(caught.value).startswith("config error:")
    assert "mapping" in str(caught.value)


def test_unquoted_registry_id_becomes_a_12_digit_string(tmp_path: Path) -> None:
    text = MINIMAL.replace(f'registry_id: "{ACCOUNT}"', f"registry_id: {ACCOUNT}")
    assert f"registry_id: {ACCOUNT}\n" in text
    config = load(write(tmp_path, text), environ={})
    assert config.tenants[0].registries[0].registry_id == ACCOUNT


def test_unquoted_zero_led_registry_id_is_not_read_as_octal(tmp_path: Path) -> None:
    text = MINIMAL.replace(f'registry_id: "{ACCOUNT}"', "registry_id: 012345670123")
    try:
        config = load(write(tmp_path, text), environ={})
    except ConfigError as refused:
        # Refusing ("quote the account id") would be as good as reading it right.
        assert "registry_id" in str(refused)
        return
    assert config.tenants[0].registries[0].registry_id == "012345670123"


def test_default_deadline_above_max_is_refused() -> None:
    message = refusal(
        {"server": {"default_deadline_seconds": 90, "max_deadline_seconds": 60}},
    )
    assert "server" in message
    assert "default_deadline_seconds" in message


def test_default_deadline_equal_to_max_is_allowed() -> None:
    config = from_mapping(
        {"server": {"default_deadline_seconds": 60, "max_deadline_seconds": 60}}, environ={}
    )
    assert config.server.default_deadline_seconds == config.server.max_deadline_seconds == 60


def test_env_override_can_break_the_deadline_rule() -> None:
    message = refusal(
        {"server": {"default_deadline_seconds": 10}},
        {"REGISTRY_GATEWAY__SERVER__MAX_DEADLINE_SECONDS": "5"},
    )
    assert "default_deadline_seconds" in message


def test_duplicate_tenant_names_are_refused() -> None:
    other_key = hash_key("another-key")
    message = refusal({"tenants": [tenant(), tenant(api_keys=[other_key])]})
    assert "tenant names must be unique" in message


def test_env_override_that_is_not_yaml_is_a_config_error() -> None:
    message = refusal({"tenants": [tenant()]}, {"REGISTRY_GATEWAY__AWS__REGION": "["})
    assert "REGISTRY_GATEWAY__AWS__REGION" in message


def test_one_key_in_two_tenants_is_refused() -> None:
    message = refusal(
        {"tenants": [tenant(name="a"), tenant(name="b")]},
    )
    assert "tenants" in message and "share an API key" in message
    assert KEY not in message


def test_env_override_into_an_empty_section(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n")
    cfg = load(path, environ={"REGISTRY_GATEWAY__SERVER__REFLECTION": "false"})
    assert cfg.server.reflection is False


def owning(name: str, key: str, *, prefixes: list[str], sid: str | None = None) -> dict[str, Any]:
    """A tenant owning a slice of ACCOUNT's registry."""
    registry: dict[str, Any] = {"registry_id": ACCOUNT, "owned_repository_prefixes": prefixes}
    if sid is not None:
        registry["owned_statement_sid_prefix"] = sid
    return {"name": name, "api_keys": [hash_key(key)], "registries": [registry]}


@pytest.mark.parametrize(
    ("a", "b", "kind"),
    [
        ({"prefixes": ["payments/"]}, {"prefixes": ["billing/", "payments/eu/"]}, "repository"),
        ({"prefixes": ["team"]}, {"prefixes": ["team/"]}, "repository"),
        ({"prefixes": [], "sid": "Pay"}, {"prefixes": [], "sid": "Payments"}, "statement Sid"),
    ],
    ids=["nested", "shorter", "sid"],
)
def test_overlapping_ownership_is_refused_naming_both_tenants(
    a: dict[str, Any], b: dict[str, Any], kind: str
) -> None:
    message = refusal({"tenants": [owning("a", "key-a", **a), owning("b", "key-b", **b)]})
    assert "\n" not in message
    assert f"tenants a and b own overlapping {kind} prefixes" in message
    assert ACCOUNT in message


def test_disjoint_ownership_and_other_registries_load() -> None:
    other = owning("b", "key-b", prefixes=["payments/"], sid="Payments")
    other["registries"][0]["registry_id"] = "111111111111"  # the same prefix, elsewhere
    config = from_mapping(
        {
            "tenants": [
                owning("a", "key-a", prefixes=["payments/", "pay/"], sid="Payments"),
                owning("c", "key-c", prefixes=["billing/"], sid="Billing"),
                other,
            ]
        },
        environ={},
    )
    assert config.tenants[0].registries[0].owned_statement_sid_prefix == "Payments"


@pytest.mark.parametrize(
    ("key", "value"),
    [("owned_statement_sid_prefix", "Pay-ments"), ("owned_repository_prefixes", ["Payments/"])],
)
def test_ownership_values_are_checked(key: str, value: Any) -> None:
    registry = {"registry_id": ACCOUNT, key: value}
    message = refusal({"tenants": [tenant(registries=[registry])]})
    assert key in message


def test_one_registry_has_one_policy_scope() -> None:
    # ECR's scope is a setting of the account: entries that disagree would let one tenant's
    # statements, valid under its scope, fail another's merged policy.
    first = tenant(name="payments")
    second = tenant(name="billing", api_keys=[hash_key("billing-key")])
    first["registries"][0]["policy_scope"] = "V2"
    second["registries"][0]["policy_scope"] = "V1"
    message = refusal({"tenants": [first, second]})
    assert "has one policy scope" in message and "payments" in message and "billing" in message
    second["registries"][0]["policy_scope"] = "V2"
    assert from_mapping({"tenants": [first, second]}, environ={})


# --- shares of a packed registry (service/ecr/limits.py) ----------------------------------

EU = {"registry_id": ACCOUNT, "regions": ["eu-west-1"]}
WEST = {"registry_id": ACCOUNT, "regions": ["us-west-2"]}
PARTNER = {"registry_id": "210987654321", "regions": ["us-west-2"]}
# Four destination sets every team may use (a YAML anchor in a real file).
CATALOG = [[EU], [WEST], [EU, WEST], [EU, PARTNER]]


def teams(count: int, **entry: Any) -> dict[str, Any]:
    """`count` tenants on one registry, each owning team<i>/, with `entry`'s keys."""
    return {
        "tenants": [
            {
                "name": f"team{i:03d}",
                "api_keys": [hash_key(f"key-{i}")],
                "registries": [
                    {
                        "registry_id": ACCOUNT,
                        "owned_repository_prefixes": [f"team{i:03d}/"],
                        "operations": ["GetReplicationRules", "PutReplicationRules"],
                        **entry,
                    }
                ],
            }
            for i in range(count)
        ]
    }


def test_twelve_teams_replicating_to_one_region_load() -> None:
    # The example, refused while one tenant rule was one ECR rule: with packing,
    # their filters share one rule (or two: a filter may replicate nowhere).
    config = from_mapping(teams(12, replication_destinations=[EU]), environ={})
    plan = limits.share_plan(config.tenants)
    case = plan.worst_cases[ACCOUNT]
    assert (case.destination_sets, case.destinations) == (2, 1)
    assert case.rules <= limits.MAX_RULES and case.filters == 12 * 75
    assert plan.shares[("team000", ACCOUNT)].filters == 75


def test_hundreds_of_teams_sharing_a_catalog_load() -> None:
    config = from_mapping(
        teams(200, replication_destinations=[EU, WEST, PARTNER], destination_sets=CATALOG),
        environ={},
    )
    plan = limits.share_plan(config.tenants)
    case = plan.worst_cases[ACCOUNT]
    # 4 sets: 703 filters always pack into 10 rules, 3 for each of 200 teams.
    assert (case.destination_sets, case.filters, case.rules, case.destinations) == (4, 600, 9, 3)
    share = plan.shares[("team199", ACCOUNT)]
    assert (share.filters, share.rules) == (3, limits.MAX_RULES)
    assert share.destination_sets is not None and len(share.destination_sets) == 4
    # Without the catalog, every subset of three destinations counts (8 sets): 307 filters
    # always fit, one each for 200 teams, none for 400.
    bare = from_mapping(teams(200, replication_destinations=[EU, WEST, PARTNER]), environ={})
    assert limits.share_plan(bare.tenants).shares[("team199", ACCOUNT)].filters == 1
    message = refusal(teams(400, replication_destinations=[EU, WEST, PARTNER]))
    assert "too few to split among tenants team000, team001" in message
    assert "max_filters" in message and "destination_sets" in message


def test_explicit_filter_shares_must_fit_the_registrys_capacity() -> None:
    raw = teams(2, replication_destinations=[EU], destination_sets=[[EU]])
    raw["tenants"][0]["registries"][0]["max_filters"] = 990
    raw["tenants"][1]["registries"][0]["max_filters"] = 11
    message = refusal(raw)
    assert "the max_filters of tenants team000 990, team001 11 add up to 1001" in message
    raw["tenants"][1]["registries"][0]["max_filters"] = 10
    plan = limits.share_plan(from_mapping(raw, environ={}).tenants)
    assert plan.worst_cases[ACCOUNT].rules == limits.MAX_RULES


def test_a_catalog_set_outside_the_allow_list_is_refused() -> None:
    raw = teams(1, replication_destinations=[EU], destination_sets=[[EU], [EU, WEST]])
    message = refusal(raw)
    assert "destination_sets[1]" in message and "us-west-2" in message
    assert "replication_destinations do not allow" in message


@pytest.mark.parametrize("key", ["max_filters", "destination_sets"])
def test_a_packing_share_without_a_rule_slice_is_refused(key: str) -> None:
    value: Any = 5 if key == "max_filters" else [[EU]]
    registry = {"registry_id": ACCOUNT, "replication_destinations": [EU], key: value}
    message = refusal({"tenants": [tenant(registries=[registry])]})
    assert f"{key} on registry {ACCOUNT} limits a slice it does not hold" in message


def test_check_config_prints_each_registrys_worst_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = teams(200, replication_destinations=[EU, WEST, PARTNER], destination_sets=CATALOG)
    path = write(tmp_path, yaml.safe_dump(raw))
    assert cli.main(["check-config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{path}: ok (200 tenants")
    assert lines[1] == (
        f"registry {ACCOUNT}: if every slice used its whole share: 9 of 10 rules (600 filters "
        "of 200 rule slice(s) over at most 4 destination set(s)), 3 of 25 unique "
        "destinations, 0 of 10201 policy statement characters"
    )
