"""Between AWS's JSON shapes and the proto messages (their JSON names are the same)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from service.ecr import etags
from service.gen.v1 import registry_pb2 as pb


def replication_to_aws(config: pb.ReplicationConfiguration) -> dict[str, Any]:
    """The `replicationConfiguration` parameter AWS takes, from the proto message."""
    rules = []
    for rule in config.rules:
        aws_rule: dict[str, Any] = {
            "destinations": [
                {"region": d.region, "registryId": d.registry_id} for d in rule.destinations
            ]
        }
        # proto3 cannot tell an empty list from an absent one, and AWS wants at least
        # one filter when the key is present: empty means "no filter", so omit it.
        if rule.repository_filters:
            aws_rule["repositoryFilters"] = [
                {"filter": f.filter, "filterType": f.filter_type} for f in rule.repository_filters
            ]
        rules.append(aws_rule)
    return {"rules": rules}


def replication_from_aws(aws: dict[str, Any] | None) -> pb.ReplicationConfiguration:
    """The proto message of an AWS `replicationConfiguration` (absent means no rules)."""
    message = pb.ReplicationConfiguration()
    # ignore_unknown_fields: a field AWS adds later must not break reads.
    json_format.ParseDict(aws or {"rules": []}, message, ignore_unknown_fields=True)
    return message


def describe_response(aws: dict[str, Any]) -> pb.DescribeRegistryResponse:
    """DescribeRegistryResponse, with the etag of the replication configuration AWS returned."""
    replication = aws.get("replicationConfiguration") or {"rules": []}
    return pb.DescribeRegistryResponse(
        registry_id=aws.get("registryId", ""),
        replication_configuration=replication_from_aws(replication),
        etag=etags.of_json(replication),
    )


def policy_response(registry_id: str, policy_text: str) -> pb.GetRegistryPolicyResponse:
    """GetRegistryPolicyResponse of a policy's text, with its etag."""
    return pb.GetRegistryPolicyResponse(
        registry_id=registry_id, policy_text=policy_text, etag=etags.of_policy(policy_text)
    )
