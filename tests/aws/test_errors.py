"""botocore's failures as gateway errors (service/aws/errors.py); `from_aws`'s table itself
is tested in tests/test_errors.py."""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from service.aws.errors import (
    aws_errors_mapped,
    error_code,
    from_botocore_error,
    from_client_error,
)
from service.errors import (
    FailedPrecondition,
    GatewayError,
    InvalidArgument,
    NotFound,
    UpstreamFailure,
)


def client_error(code: str, message: str = "m", request_id: str = "aws-1") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"RequestId": request_id},
        },
        "PutRegistryPolicy",
    )


def test_a_client_error_keeps_aws_code_and_request_id() -> None:
    error = from_client_error(client_error("InvalidParameterException", "bad"), "put_x")
    assert isinstance(error, InvalidArgument)
    assert error.reason == "AWS_INVALID_PARAMETER"
    assert error.metadata == {
        "awsErrorCode": "InvalidParameterException",
        "awsRequestId": "aws-1",
        "operation": "put_x",
    }
    assert "bad" in error.message


@pytest.mark.parametrize("status", ["500", "502", "503", "429"])
def test_a_bare_http_status_from_a_proxy_is_aws_unavailable(status: str) -> None:
    error = from_client_error(client_error(status), "describe_registry")
    assert isinstance(error, UpstreamFailure)
    assert error.metadata["awsErrorCode"] == "ServiceUnavailable"
    assert error.retry_after_seconds is not None


def test_a_bare_4xx_is_not_aws_being_unwell() -> None:
    error = from_client_error(client_error("404"), "describe_registry")
    assert not isinstance(error, UpstreamFailure)
    assert error.reason == "UPSTREAM_ERROR"


@pytest.mark.parametrize(
    ("exc", "kind", "reason"),
    [
        (
            ParamValidationError(report="Invalid length for parameter policyText"),
            InvalidArgument,
            "AWS_PARAM_VALIDATION",
        ),
        (NoCredentialsError(), FailedPrecondition, "NO_AWS_CREDENTIALS"),
        (
            EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
            UpstreamFailure,
            "UPSTREAM_UNREACHABLE",
        ),
        # botocore's timeouts are connection failures too.
        (
            ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
            UpstreamFailure,
            "UPSTREAM_UNREACHABLE",
        ),
        (
            IncompleteReadError(actual_bytes=1, expected_bytes=2),
            UpstreamFailure,
            "UPSTREAM_UNAVAILABLE",
        ),
    ],
)
def test_botocore_failures(exc: Exception, kind: type[GatewayError], reason: str) -> None:
    error = from_botocore_error(exc, "put_registry_policy")
    assert isinstance(error, kind)
    assert error.reason == reason
    assert error.metadata["operation"] == "put_registry_policy"


def test_mapped_raises_the_gateway_error_without_the_botocore_one() -> None:
    with pytest.raises(NotFound) as caught, aws_errors_mapped("get_registry_policy"):
        raise client_error("RegistryPolicyNotFoundException", request_id="aws-7")
    assert caught.value.metadata["awsRequestId"] == "aws-7"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    # Anything else passes through untouched.
    with pytest.raises(KeyError), aws_errors_mapped("x"):
        raise KeyError("not AWS")


def test_error_code_labels_the_metrics() -> None:
    assert error_code(client_error("ThrottlingException")) == "ThrottlingException"
    assert error_code(TimeoutError()) == "TimeoutError"
