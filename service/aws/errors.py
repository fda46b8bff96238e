"""Every AWS failure as the gateway answers it: the one place AWS errors are mapped.

botocore raises ClientError (AWS answered an error code) or one of its own BotoCoreErrors
(parameter validation, no credentials, unreachable, its own timeouts). `aws_errors_mapped`
turns each into the gateway's error model (service/errors.py), as the Errors table of the
README says; nothing above service/aws/ sees a botocore exception.

A failure that left AWS without the request (the connection was never made) and one that
may have reached it (sent, then no answer: botocore's read timeout, a connection dropped)
are told apart: the first is UPSTREAM_UNREACHABLE, safe to retry; the second is
`UpstreamNoAnswer`, since a write's outcome is then unknown until read back
(service/registry/writes/settlement.py). botocore retries both kinds (its standard mode counts
them transient), and raises only the last attempt's error: `note_attempt`, on each ECR
client's `response-received` event, marks that error when an earlier attempt may have
been sent.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    ProxyConnectionError,
    SSLError,
)

from service.errors import (
    FailedPrecondition,
    GatewayError,
    Internal,
    InvalidArgument,
    NotFound,
    UpstreamFailure,
    UpstreamNoAnswer,
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

# Set (on botocore's per-request context, then on the error raised) once an attempt of the
# request may have reached AWS.
_MAYBE_SENT = "registry_gateway_maybe_sent"


def _before_sending(exc: BaseException) -> bool:
    """Whether a failed attempt certainly sent nothing: no connection was made (refused,
    unresolvable, timed out connecting, TLS or proxy refused). aiobotocore raises
    EndpointConnectionError for any aiohttp ClientConnectionError, a reset while reading
    the answer included; only aiohttp's ClientConnectorError (and a failed DNS lookup) is
    the connection itself failing (aiobotocore/httpsession.py, `send`)."""
    if isinstance(exc, EndpointConnectionError):
        cause = exc.kwargs.get("error")
        return isinstance(cause, aiohttp.ClientConnectorError | socket.gaierror)
    return isinstance(exc, ConnectTimeoutError | ProxyConnectionError | SSLError)


def note_attempt(
    exception: BaseException | None = None,
    context: MutableMapping[str, Any] | None = None,
    **_: Any,
) -> None:
    """botocore's `response-received` handler (each attempt): remember, in the request's
    context, that an attempt may have reached AWS, and mark the attempt's error with it, so
    the error botocore raises last says so even when its own attempt failed to connect."""
    if exception is None or context is None:
        return
    if not _before_sending(exception):
        context[_MAYBE_SENT] = True
    if context.get(_MAYBE_SENT):
        setattr(exception, _MAYBE_SENT, True)


def watch_attempts(client: Any) -> None:
    """Register `note_attempt` on an ECR client (aiobotocore), for every operation."""
    client.meta.events.register("response-received.ecr", note_attempt)


def maybe_sent(exc: BaseException) -> bool:
    """Whether a failed call may have reached AWS (see `note_attempt`); without the mark
    (a client not watched), judged by the error's own type."""
    return bool(getattr(exc, _MAYBE_SENT, False)) or not _before_sending(exc)


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
        if maybe_sent(exc):
            # Same reason for a read (retry it); a write reads back (settlement.py).
            return UpstreamNoAnswer(
                f"AWS ECR did not answer {operation} ({type(exc).__name__}); retry later",
                reason="UPSTREAM_UNREACHABLE",
                metadata={"operation": operation},
                retry_after_seconds=UPSTREAM_RETRY_AFTER_SECONDS,
            )
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
