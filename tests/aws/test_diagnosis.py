"""The start-up diagnosis lives with the AWS code (service/aws/diagnosis.py); the lifecycle
(service/app/server.py) only logs what it says. End to end:
tests/e2e/test_startup_diagnostics.py."""

from __future__ import annotations

from botocore.exceptions import ClientError, NoCredentialsError

from service.app import server
from service.aws.diagnosis import diagnose
from service.aws.upstream import Reachability


def test_the_lifecycle_uses_the_aws_diagnosis() -> None:
    assert server.diagnose is diagnose


def test_each_kind_of_failure_has_its_reason_and_no_secret() -> None:
    refused = ClientError(
        {"Error": {"Code": "InvalidClientTokenId", "Message": "The token is invalid"}},
        "GetCallerIdentity",
    )
    found = {
        "none": diagnose(Reachability(answered=True), 2.0),
        "no credentials": diagnose(Reachability(False, NoCredentialsError()), 2.0),
        "refused": diagnose(Reachability(True, refused), 2.0),
        "timeout": diagnose(Reachability(False, TimeoutError()), 2.0),
    }
    assert found["none"] is None
    assert found["no credentials"] is not None and found["no credentials"][0] == "NO_CREDENTIALS"
    assert found["refused"] == (
        "ACCESS_DENIED",
        "AWS refused the gateway's credentials on GetCallerIdentity: "
        "InvalidClientTokenId: The token is invalid",
    )
    assert found["timeout"] is not None and found["timeout"][0] == "TIMEOUT"
    assert "within 2 s" in found["timeout"][1]
