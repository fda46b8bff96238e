"""Between AWS's JSON and the proto messages, and the etags computed on AWS's JSON."""

from __future__ import annotations

from typing import Any

from service.ecr import convert, etags
from service.gen.v1 import registry_pb2 as pb

ACCOUNT = "123456789012"
AWS_RULES: dict[str, Any] = {
    "rules": [
        {
            "destinations": [{"region": "eu-west-1", "registryId": ACCOUNT}],
            "repositoryFilters": [{"filter": "prod/", "filterType": "PREFIX_MATCH"}],
        },
        {"destinations": [{"region": "us-west-2", "registryId": ACCOUNT}]},
    ]
}


def test_aws_json_round_trips_through_the_message() -> None:
    message = convert.replication_from_aws(AWS_RULES)
    assert message.rules[0].repository_filters[0].filter == "prod/"
    assert not message.rules[1].repository_filters
    assert convert.replication_to_aws(message) == AWS_RULES


def test_the_message_round_trips_through_aws_json() -> None:
    message = pb.ReplicationConfiguration(
        rules=[
            pb.ReplicationRule(
                destinations=[
                    pb.ReplicationDestination(region="eu-west-1", registry_id=ACCOUNT),
                    pb.ReplicationDestination(region="us-west-2", registry_id=ACCOUNT),
                ],
                repository_filters=[
                    pb.RepositoryFilter(filter="a/", filter_type="PREFIX_MATCH"),
                    pb.RepositoryFilter(filter="b/", filter_type="PREFIX_MATCH"),
                ],
            )
        ]
    )
    assert convert.replication_from_aws(convert.replication_to_aws(message)) == message


def test_no_filters_is_sent_as_an_absent_key() -> None:
    # AWS wants at least one filter when the key is there; empty means "every repository".
    aws = convert.replication_to_aws(
        pb.ReplicationConfiguration(
            rules=[pb.ReplicationRule(destinations=[pb.ReplicationDestination(region="x")])]
        )
    )
    assert aws == {"rules": [{"destinations": [{"region": "x", "registryId": ""}]}]}


def test_absent_configuration_is_no_rules() -> None:
    assert convert.replication_from_aws(None) == pb.ReplicationConfiguration()
    described = convert.describe_response({"registryId": ACCOUNT})
    assert described.registry_id == ACCOUNT
    assert not described.replication_configuration.rules
    assert described.etag == etags.of_json({"rules": []})


def test_describe_etag_is_the_digest_of_aws_json_whatever_its_key_order() -> None:
    reordered = {
        "rules": [
            {
                "repositoryFilters": [{"filterType": "PREFIX_MATCH", "filter": "prod/"}],
                "destinations": [{"registryId": ACCOUNT, "region": "eu-west-1"}],
            },
            {"destinations": [{"registryId": ACCOUNT, "region": "us-west-2"}]},
        ]
    }
    one = convert.describe_response({"registryId": ACCOUNT, "replicationConfiguration": AWS_RULES})
    other = convert.describe_response(
        {"registryId": ACCOUNT, "replicationConfiguration": reordered}
    )
    assert one.etag == other.etag == etags.of_json(AWS_RULES)
    moved = {"rules": list(reversed(AWS_RULES["rules"]))}
    assert convert.describe_response({"replicationConfiguration": moved}).etag != one.etag


def test_fields_aws_adds_later_do_not_break_reads() -> None:
    aws = {
        "rules": [{"destinations": [{"region": "eu-west-1", "registryId": ACCOUNT, "new": 1}]}],
        "futureField": True,
    }
    message = convert.replication_from_aws(aws)
    assert message.rules[0].destinations[0].region == "eu-west-1"
