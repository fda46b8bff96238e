"""Every AWS failure as the gateway answers it: the one place AWS errors are mapped.

botocore raises ClientError (AWS answered an error code) or one of its own BotoCoreErrors
(parameter validation, no credentials, unreachable, its own timeouts). `aws_errors_mapped`
turns each into the gateway's error model (service/errors.py), as the Errors table of the
README says; nothing above service/aws/ sees a botocore exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
)

from service.errors import (
    FailedPrecondition,
    GatewayError,
    Internal,
    InvalidArgument,
    NotFound,
    UpstreamFailure,
)

# AWS error codes of the ECR model and the transport, mapped as the README's table says.
_AWS_UNAVAILABLE = frozenset(
    {
        "ServerException",
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalError",
    }
)
_AWS_INVALID = frozenset(
    {"InvalidParameterException", "ValidationException", "LimitExceededException"}
)
POLICY_NOT_FOUND = "RegistryPolicyNotFoundException"
_AWS_NOT_FOUND = frozenset({POLICY_NOT_FOUND})
_AWS_ACCESS = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "SignatureDoesNotMatch",
    }
)

# How long a caller should wait before retrying after AWS said it is unavailable.
UPSTREAM_RETRY_AFTER_SECONDS = 1.0


def policy_not_found(aws_request_id: str, operation: str) -> NotFound:
    """NOT_FOUND for a registry without a policy, with AWS's request id for the operators."""
    return NotFound(
        "the registry has no registry policy",
        reason="REGISTRY_POLICY_NOT_FOUND",
        metadata={
            "awsErrorCode": POLICY_NOT_FOUND,
            "awsRequestId": aws_request_id,
            "operation": operation,
        },
    )


def from_aws(aws_code: str, aws_message: str, aws_request_id: str, operation: str) -> GatewayError:
    """Map an AWS error (code, message, request id) of `operation` to a gateway error."""
    if aws_code in _AWS_NOT_FOUND:
        return policy_not_found(aws_request_id, operation)
    metadata = {"awsErrorCode": aws_code, "awsRequestId": aws_request_id, "operation": operation}
    if aws_code in _AWS_INVALID:
        # AWS's own message names the parameter and constraint; it holds no secrets.
        return InvalidArgument(
            f"AWS refused the request: {_clip(aws_message)}",
            reason="AWS_INVALID_PARAMETER",
            metadata=metadata,
        )
    if aws_code in _AWS_UNAVAILABLE:
        return UpstreamFailure(
            f"AWS ECR is unavailable ({aws_code}); retry later",
            metadata=metadata,
            retry_after_seconds=UPSTREAM_RETRY_AFTER_SECONDS,
        )
    if aws_code in _AWS_ACCESS:
        # The gateway's own AWS credentials are refused: an operator's problem, not the
        # caller's permission, so not PERMISSION_DENIED (which names what the tenant may not do).
        return FailedPrecondition(
            "the gateway's AWS credentials were refused for this registry; tell the operators",
            reason="UPSTREAM_ACCESS_DENIED",
            metadata=metadata,
        )
    return Internal(
        f"AWS answered an unexpected error ({aws_code})", reason="UPSTREAM_ERROR", metadata=metadata
    )


def error_code(exc: BaseException) -> str:
    """AWS's error code of a failed call (the metrics' `aws_error_code`), else the type's name."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "Unknown"))
    return type(exc).__name__


def from_client_error(exc: ClientError, operation: str) -> GatewayError:
    """The gateway error of an error code AWS answered."""
    error = exc.response.get("Error", {})
    request_id = exc.response.get("ResponseMetadata", {}).get("RequestId", "")
    code = str(error.get("Code", "Unknown"))
    if code.isdigit() and (int(code) >= 500 or int(code) == 429):
        # A bare 5xx or 429 (no ECR error body, e.g. from a load balancer): botocore names
        # the error by its HTTP status. AWS is unwell, not the request.
        code = "ServiceUnavailable"
    return from_aws(code, str(error.get("Message", "")), request_id, operation)


def from_botocore_error(exc: BotoCoreError, operation: str) -> GatewayError:
    """The gateway error of a failure botocore raised itself (AWS answered nothing)."""
    if isinstance(exc, ParamValidationError):
        # botocore's text names the parameter and the constraint, never a credential.
        return InvalidArgument(
            f"invalid parameters for AWS: {' '.join(str(exc).split())}",
            reason="AWS_PARAM_VALIDATION",
            metadata={"operation": operation},
        )
    if isinstance(exc, NoCredentialsError):
        return FailedPrecondition(
            "the gateway has no AWS credentials; tell the operators",
            reason="NO_AWS_CREDENTIALS",
            metadata={"operation": operation},
        )
    if isinstance(exc, ConnectionError | HTTPClientError):
        # botocore's own timeouts are among these (ConnectTimeoutError, ReadTimeoutError).
        return UpstreamFailure(
            f"AWS ECR could not be reached for {operation}; retry later",
            reason="UPSTREAM_UNREACHABLE",
            metadata={"operation": operation},
            retry_after_seconds=UPSTREAM_RETRY_AFTER_SECONDS,
        )
    # Anything else botocore raises itself (e.g. a response cut short): AWS did not answer
    # as it should.
    return UpstreamFailure(
        f"AWS ECR call {operation} failed ({type(exc).__name__}); retry later",
        reason="UPSTREAM_UNAVAILABLE",
        metadata={"operation": operation},
        retry_after_seconds=UPSTREAM_RETRY_AFTER_SECONDS,
    )


@contextmanager
def aws_errors_mapped(operation: str) -> Iterator[None]:
    """Around a botocore call (or client creation) of `operation`: its failures raised as
    gateway errors, without the botocore exception chained (its text may quote a request)."""
    try:
        yield
    except ClientError as exc:
        raise from_client_error(exc, operation) from None
    except BotoCoreError as exc:
        raise from_botocore_error(exc, operation) from None


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
