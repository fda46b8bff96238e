"""Request validation: every problem with a request, in one answer, before AWS sees it.

Runs where the call path puts it (docs/architecture.md): after authentication and the
target check, before the content rules, the cache and AWS. The rules come from three places:

- **The AWS ECR service model botocore ships** (required members, list min/max, string
  min/max, patterns, enums), walked generically and mapped onto the proto messages by
  their JSON names, which are AWS's member names. botocore checks only required members,
  types and minimums before sending; this checks the rest. The model moves with the
  botocore pin (through aioboto3), and so do these rules.
- **Rules the model does not hold** (each cited where it is applied): the source registry
  as its own destination, duplicate destinations, the 25-destination quota, and region
  names unknown to botocore's endpoint data (`aws.allow_unknown_regions` lifts that).
- **The registry policy grammar** of `service.ecr.policy_grammar`, under the registry's scope.

A write carrying fields this gateway's contract does not know (a client on a newer proto)
is refused too, naming them: applying it without them would silently drop what was asked.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import botocore.session
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from service import wire_format
from service.auth.targets import Target
from service.aws.account_settings import PolicyScopes, Scope
from service.config import ECR_OPERATIONS, SLICE_OPERATIONS, WRITE_OPERATIONS
from service.ecr import policy_grammar, regions
from service.ecr.limits import MAX_UNIQUE_DESTINATIONS
from service.errors import INVALID_REQUEST, FieldViolation, InvalidArgument
from service.errors import MAX_VIOLATIONS as MAX_VIOLATIONS  # re-exported: the bound it keeps
from service.gen.v1 import registry_pb2 as pb

REASON = INVALID_REQUEST
# Bounds on the work one request can cause: a 4 MiB message of empty destinations must not
# cost seconds. A list longer than the model's maximum is refused for its length, so only
# its first `max` items (or _SCAN_LIMIT, for a list the model does not bound) are looked at.
_SCAN_LIMIT = 100
# Unknown fields named: enough to show what a newer client sent, never a walk of every
# field a flood holds (the walk also stops after wire_format.MAX_FIELDS fields read).
_UNKNOWN_FIELD_BUDGET = 100
# Policies longer than this get only their length reported: parsing and walking megabytes
# of JSON for a policy refused anyway would hand a caller a cheap way to burn CPU.
_GRAMMAR_LIMIT = 64 * 1024

# What a pattern means, for the shapes a person meets; other shapes show the pattern itself.
_PATTERN_MEANING = {
    "RegistryId": "must be 12 digits (an AWS account id)",
    "Region": "must be a region name of lowercase letters, digits and '-', such as 'eu-west-1'",
    "RepositoryFilterValue": (
        "must be a repository name prefix: lowercase letters and digits, separated by "
        "single '.', '_', '-' or '/'"
    ),
}


@dataclass(frozen=True)
class _Scalar:
    shape: str
    type_name: str
    min: int | None = None
    max: int | None = None
    pattern: re.Pattern[str] | None = None
    enum: tuple[str, ...] = ()


@dataclass(frozen=True)
class _List:
    shape: str
    min: int | None
    max: int | None
    member: _Node


@dataclass(frozen=True)
class _Member:
    field: str  # the proto field name (snake_case)
    aws_name: str
    required: bool
    node: _Node


@dataclass(frozen=True)
class _Struct:
    shape: str
    members: tuple[_Member, ...]


_Node: TypeAlias = "_Scalar | _List | _Struct"


def _compile(shape: Any, descriptor: Descriptor | None, depth: int = 0) -> _Node:
    """The constraints of a botocore shape, mapped onto a proto message where one matches."""
    if depth > 16:  # ECR's shapes are not recursive; a model that became so must not hang us
        raise ValueError(f"shape {shape.name} nests too deeply")
    meta = shape.metadata
    if shape.type_name == "structure":
        members: list[_Member] = []
        fields = {f.json_name: f for f in descriptor.fields} if descriptor else {}
        for aws_name, member in shape.members.items():
            field = fields.get(aws_name)
            if field is None:
                continue  # AWS has a member the contract does not carry: nothing to check
            child = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None
            members.append(
                _Member(
                    field=field.name,
                    aws_name=aws_name,
                    required=aws_name in shape.required_members,
                    node=_compile(member, child, depth + 1),
                )
            )
        return _Struct(shape.name, tuple(members))
    if shape.type_name == "list":
        return _List(
            shape.name,
            meta.get("min"),
            meta.get("max"),
            _compile(shape.member, descriptor, depth + 1),
        )
    pattern = meta.get("pattern")
    return _Scalar(
        shape=shape.name,
        type_name=shape.type_name,
        min=meta.get("min"),
        max=meta.get("max"),
        # Model patterns are not anchored ("[0-9]{12}" matches inside "x123456789012y"):
        # they are applied with fullmatch.
        pattern=re.compile(pattern) if pattern else None,
        enum=tuple(getattr(shape, "enum", None) or ()),
    )


@functools.cache
def _default_model() -> Any:
    # Loaded on first use and kept: parsing the model's JSON costs tens of milliseconds.
    return botocore.session.get_session().get_service_model("ecr")


class _Problems:
    """Collects violations; keeps the first MAX_VIOLATIONS and counts the rest."""

    def __init__(self) -> None:
        self.listed: list[FieldViolation] = []
        self.total = 0

    def add(self, path: str, description: str) -> None:
        self.total += 1
        if len(self.listed) < MAX_VIOLATIONS:
            self.listed.append(FieldViolation(path, description))

    def extend(self, violations: Sequence[FieldViolation]) -> None:
        for violation in violations:
            self.add(violation.field, violation.description)

    def raise_if_any(self, rpc: str) -> None:
        if not self.total:
            return
        first = self.listed[0]
        more = self.total - 1
        summary = f"{first.field or 'the request'}: {first.description}"
        if more:
            listed = len(self.listed) - 1
            summary += f"; and {more} more problem{'s' if more != 1 else ''}"
            if listed < more:
                summary += f" ({listed} more listed in BadRequest)"
        raise InvalidArgument(
            f"invalid {rpc} request: {summary}",
            reason=REASON,
            metadata={"rpc": rpc, "violations": str(self.total)},
            field_violations=self.listed,
        )


def _show(value: Any) -> str:
    return policy_grammar.show(value)


def _path(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


class RequestValidator:
    """Checks each request against the AWS model and the gateway's rules; raises InvalidArgument.

    `service_model` is botocore's ECR model (default: the installed one); `known_regions`
    the region names accepted (default: botocore's endpoint data for the public partitions),
    unless `allow_unknown_regions`, for private partitions whose regions botocore does not list.
    """

    def __init__(
        self,
        *,
        allow_unknown_regions: bool = False,
        service_model: Any = None,
        known_regions: frozenset[str] | None = None,
        policy_scopes: PolicyScopes | None = None,
    ) -> None:
        self._policy_scopes = policy_scopes
        model = service_model if service_model is not None else _default_model()
        self._allow_unknown_regions = allow_unknown_regions
        self._known_regions = (
            frozenset() if allow_unknown_regions else known_regions or regions.known_regions()
        )
        self._registry_id = _compile(model.shape_for("RegistryId"), None)
        self._region = _compile(model.shape_for("Region"), None)
        # The slice RPCs' rules are AWS's ReplicationRule shapes, checked as the rules of a
        # ReplicationConfiguration (list of at most 10).
        replication = _compile(
            model.shape_for("ReplicationConfiguration"), pb.ReplicationConfiguration.DESCRIPTOR
        )
        assert isinstance(replication, _Struct)
        self._replication_shape = replication
        self._inputs: dict[str, _Struct] = {}
        # The request types of reads an empty request of which passed, by descriptor (Any:
        # the upb and the pure-Python implementations type their descriptors apart).
        self._empty_reads_ok: set[Any] = set()
        for rpc in ECR_OPERATIONS:
            descriptor = _request_descriptor(rpc)
            node = _compile(model.operation_model(rpc).input_shape, descriptor)
            assert isinstance(node, _Struct)
            self._inputs[rpc] = node

    def check(self, request: Message, target: Target) -> None:
        """Raise InvalidArgument listing every problem of `request` (an RPC's request)."""
        descriptor = request.DESCRIPTOR
        empty = not request.ListFields()
        if empty and descriptor in self._empty_reads_ok:
            # Most reads carry no field at all (the tenant's only registry, the default
            # region): once one empty request of this read passed, every other one does.
            return
        rpc = descriptor.name.removesuffix("Request")
        problems = _Problems()
        if rpc in WRITE_OPERATIONS and _has_unknown_fields(request):
            found, more = wire_format.unknown_fields(
                _request_descriptor(rpc), request.SerializeToString(), _UNKNOWN_FIELD_BUDGET
            )
            # Outermost first: a field the request itself lacks says most about the client.
            problems.extend(sorted(found, key=lambda v: v.field.count(".")))
            if more:
                problems.add(
                    "",
                    f"holds more than {_UNKNOWN_FIELD_BUDGET} fields this gateway's contract "
                    "does not know; not all are listed",
                )
        # The gateway's own target fields, checked against the model's shapes for them.
        for name, node in (("registry_id", self._registry_id), ("region", self._region)):
            value = getattr(request, name, "")
            if value:
                assert isinstance(node, _Scalar)
                self._scalar(node, value, name, problems)
        model_input = self._inputs.get(rpc)
        if model_input is not None:
            self._struct(model_input, request, "", problems)
        elif rpc not in SLICE_OPERATIONS:
            # Fail loudly: an RPC added without an AWS operation needs its rules written here.
            raise LookupError(f"no validation rules for {rpc}")
        if isinstance(request, pb.PutReplicationConfigurationRequest):
            self._replication(request.replication_configuration, target, problems)
        elif isinstance(request, pb.PutReplicationRulesRequest):
            rules = pb.ReplicationConfiguration(rules=request.rules)
            self._struct(self._replication_shape, rules, "", problems)
            self._replication(rules, target, problems, field="rules")
        elif isinstance(request, pb.PutPolicyStatementsRequest):
            # The statements' grammar is checked on the merged policy, under the lock (its
            # check is this one's, under the same scope); here only that they are a JSON
            # array of objects with Sids, and that the scope is known (else fail closed).
            scope = self.policy_scope(target)
            shape = _statement_problems(request.statements_json)
            problems.extend(shape)
            if not shape and scope != "V2" and target.registry.policy_scope == "auto":
                # The slice code checks the statements under the pinned scope, V2 for
                # `auto`; under ECR's V1 they are judged here, with the same paths.
                problems.extend(_statements_under(request.statements_json, scope))
        elif isinstance(request, pb.PutRegistryPolicyRequest):
            scope = self.policy_scope(target)
            if request.policy_text and len(request.policy_text) <= _GRAMMAR_LIMIT:
                problems.extend(policy_grammar.check_policy(request.policy_text, scope))
        problems.raise_if_any(rpc)
        if empty and rpc not in WRITE_OPERATIONS:
            self._empty_reads_ok.add(descriptor)

    def policy_scope(self, target: Target) -> Scope:
        """The registry policy scope the target's policy writes are judged under: as pinned
        (policy_scope V1 or V2), else ECR's REGISTRY_POLICY_SCOPE as last read
        (service/aws/account_settings.py), FailedPrecondition (POLICY_SCOPE_UNKNOWN) while
        it cannot be read. Without `policy_scopes` (unit tests of the domain; the server
        always gives them) `auto` is ECR's default for new registries, V2."""
        if self._policy_scopes is not None:
            return self._policy_scopes.scope_for(target.registry, target.region)
        return "V1" if target.registry.policy_scope == "V1" else "V2"

    # --- the AWS model, walked generically -------------------------------------------

    def _struct(self, node: _Struct, message: Message, path: str, out: _Problems) -> None:
        for member in node.members:
            here = _path(path, member.field)
            field = message.DESCRIPTOR.fields_by_name[member.field]
            value = getattr(message, member.field)
            if field.is_repeated:
                # proto3 cannot tell an empty list from an absent one: empty is "absent",
                # so neither `required` nor a minimum applies to it (e.g. an empty
                # repositoryFilters means "no filter" and is not sent to AWS at all).
                if isinstance(member.node, _List) and len(value):
                    self._list(member.node, value, here, out)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                if message.HasField(member.field):
                    assert isinstance(member.node, _Struct)
                    self._struct(member.node, value, here, out)
                elif member.required:
                    out.add(here, "is required")
            elif isinstance(member.node, _Scalar):
                if value == "" or value is None:
                    if member.required:
                        out.add(here, "is required" + _enum_hint(member.node))
                else:
                    self._scalar(member.node, value, here, out)

    def _list(self, node: _List, items: Sequence[Any], path: str, out: _Problems) -> None:
        count = len(items)
        if node.min is not None and count < node.min:
            out.add(path, f"must hold at least {node.min} items, got {count}")
        if node.max is not None and count > node.max:
            out.add(path, f"must hold at most {node.max} items, got {count}")
        for i in range(min(count, node.max or _SCAN_LIMIT)):
            item, here = items[i], f"{path}[{i}]"
            if isinstance(node.member, _Struct):
                self._struct(node.member, item, here, out)
            elif isinstance(node.member, _Scalar):
                self._scalar(node.member, item, here, out)

    def _scalar(self, node: _Scalar, value: Any, path: str, out: _Problems) -> None:
        if not isinstance(value, str):
            if node.min is not None and value < node.min:
                out.add(path, f"must be at least {node.min}, got {value}")
            if node.max is not None and value > node.max:
                out.add(path, f"must be at most {node.max}, got {value}")
            return
        if node.enum:
            if value not in node.enum:
                out.add(path, f"must be {_one_of(node.enum)}, got {_show(value)}")
            return
        size = len(value)
        if (node.min is not None and size < node.min) or (node.max is not None and size > node.max):
            out.add(path, f"must be {_length(node)}, got {size} ({_show(value)})")
            return
        if node.pattern is not None and not node.pattern.fullmatch(value):
            meaning = _PATTERN_MEANING.get(node.shape, f"must match {node.pattern.pattern}")
            out.add(path, f"{meaning}, got {_show(value)}")
            return
        if (
            node.shape == "Region"
            and not self._allow_unknown_regions
            and value not in self._known_regions
        ):
            out.add(path, f"is not an AWS region ECR serves, got {_show(value)}")

    # --- rules the model does not hold -----------------------------------------------

    def _replication(
        self,
        configuration: pb.ReplicationConfiguration,
        target: Target,
        out: _Problems,
        field: str = "replication_configuration.rules",
    ) -> None:
        unique: set[tuple[str, str]] = set()
        for i, rule in enumerate(configuration.rules[:_SCAN_LIMIT]):
            seen: dict[tuple[str, str], int] = {}
            for j, destination in enumerate(rule.destinations[:_SCAN_LIMIT]):
                here = f"{field}[{i}].destinations[{j}]"
                key = (destination.registry_id, destination.region)
                if not all(key):
                    continue  # reported as required; as a destination it means nothing yet
                if key == (target.registry_id, target.region):
                    # ECR refuses it: "Replication destination cannot be the same as the
                    # source registry" (InvalidParameterException).
                    out.add(
                        here,
                        f"is the source registry itself ({target.registry_id} in "
                        f"{target.region}); replicate to another region or account",
                    )
                if key in seen:
                    # ECR refuses a rule naming one destination twice.
                    out.add(here, f"duplicates destinations[{seen[key]}] ({key[0]} {key[1]})")
                else:
                    seen[key] = j
                unique.add(key)
        if len(unique) > MAX_UNIQUE_DESTINATIONS:
            out.add(
                field,
                f"must name at most {MAX_UNIQUE_DESTINATIONS} unique destinations across all "
                f"rules (an ECR quota), got {len(unique)}",
            )


def _statements_under(statements_json: str, scope: Scope) -> list[FieldViolation]:
    """How the statements (a JSON array) break the policy grammar under `scope`, with paths
    into `statements_json` (as service/registry/model/slices.py's check_statement_grammar)."""
    text = f'{{"Version":"2012-10-17","Statement":{statements_json}}}'
    return [
        FieldViolation(
            v.field.replace("statements_json.Statement", "statements_json", 1), v.description
        )
        for v in policy_grammar.check_policy(text, scope, "statements_json")
    ]


def _statement_problems(statements_json: str) -> list[FieldViolation]:
    """What is wrong with `statements_json` as a JSON array of policy statements with Sids."""
    field = "statements_json"
    if len(statements_json) > _GRAMMAR_LIMIT:
        return [FieldViolation(field, f"must be at most {_GRAMMAR_LIMIT} characters")]
    if not statements_json.strip():
        # "no statements" is "[]", said explicitly, so that a client that forgot the field
        # does not delete its slice.
        return [FieldViolation(field, 'must be a JSON array of statements ("[]" for none)')]
    # Strictly, as a policy is read: duplicate keys, and nesting past the grammar's depth
    # limit, are refused here (a deep nest would otherwise reach recursive walks later).
    statements, parse_problems = policy_grammar.parse(statements_json, field)
    if parse_problems:
        return parse_problems[:MAX_VIOLATIONS]
    if not isinstance(statements, list):
        return [FieldViolation(field, f"must be a JSON array, got {type(statements).__name__}")]
    problems: list[FieldViolation] = []
    sids: dict[str, int] = {}
    for i, statement in enumerate(statements[:_SCAN_LIMIT]):
        here = f"{field}[{i}]"
        if not isinstance(statement, dict):
            problems.append(FieldViolation(here, "must be a JSON object (a policy statement)"))
            continue
        sid = statement.get("Sid")
        if not isinstance(sid, str) or not sid:
            # Ownership goes by Sid: a statement without one would belong to nobody.
            problems.append(FieldViolation(f"{here}.Sid", "is required"))
        elif sid in sids:
            problems.append(FieldViolation(f"{here}.Sid", f"duplicates [{sids[sid]}] ({sid})"))
        else:
            sids[sid] = i
    return problems


def _request_descriptor(rpc: str) -> Descriptor:
    descriptor: Descriptor = pb.DESCRIPTOR.message_types_by_name[f"{rpc}Request"]
    return descriptor


def _has_unknown_fields(message: Message) -> bool:
    """Whether `message` (or a message inside it) carries fields the contract lacks.

    All in C (upb): a copy without them is smaller. Only then are the bytes read, by a
    bounded walk (service/wire_format.py), to name them.
    """
    known = type(message)()
    known.CopyFrom(message)
    known.DiscardUnknownFields()
    return known.ByteSize() != message.ByteSize()


def _one_of(values: Sequence[str]) -> str:
    quoted = [repr(v) for v in values]
    return quoted[0] if len(quoted) == 1 else "one of " + ", ".join(quoted)


def _enum_hint(node: _Scalar) -> str:
    return f": {_one_of(node.enum)}" if node.enum else ""


def _length(node: _Scalar) -> str:
    if node.min and node.max is not None:
        return f"{node.min} to {node.max} characters"
    if node.max is not None:
        return f"at most {node.max} characters"
    return f"at least {node.min} characters"
