"""Why an AWS account does not answer as it should: the start-up probe's diagnosis.

The lifecycle (service/app/server.py) probes every (account, region) with STS
GetCallerIdentity (service/aws/upstream.py `Upstream.reachable`) and says, per account,
what `diagnose` makes of the result: a REASON and a sentence for operators.
"""

from __future__ import annotations

from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ProxyConnectionError,
    ReadTimeoutError,
)

from service.aws.upstream import Reachability
from service.echo import echo
from service.errors import GatewayError

# AWS error codes saying the gateway's own credentials are refused (STS, or the role's).
_ACCESS_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidAccessKeyId",
    }
)
# What the gateway's own refusals (service/aws/upstream.py) mean for the diagnosis.
_GATEWAY_REASONS = {"NO_AWS_CREDENTIALS": "NO_CREDENTIALS"}


def diagnose(result: Reachability, timeout_seconds: float) -> tuple[str, str] | None:
    """Why an account did not answer as it should, as (REASON, a sentence for operators);
    None when it did. Never a credential: botocore and AWS name none in these errors."""
    exc = result.error
    if exc is None:
        return None
    if isinstance(exc, TimeoutError | ConnectTimeoutError | ReadTimeoutError):
        where = getattr(exc, "kwargs", {}).get("endpoint_url")
        at = f" at {where}" if where else ""
        return (
            "TIMEOUT",
            f"STS GetCallerIdentity{at} did not answer within {timeout_seconds:g} s "
            "(network path, proxy or VPC endpoint?)",
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return (
            "NO_CREDENTIALS",
            f"no usable AWS credentials ({type(exc).__name__}): none found in the "
            "environment, profile, web identity (IRSA) or instance/pod role",
        )
    if isinstance(exc, EndpointConnectionError | ProxyConnectionError):
        where = exc.kwargs.get("endpoint_url") or exc.kwargs.get("proxy_url") or "AWS"
        return "ENDPOINT_REFUSED", f"cannot connect to {echo(where)}: refused or unreachable"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        said = echo(str(error.get("Message", "")), 300)
        operation = exc.operation_name
        if code in _ACCESS_DENIED_CODES:
            return (
                "ACCESS_DENIED",
                f"AWS refused the gateway's credentials on {operation}: {code}: {said}",
            )
        return "AWS_ERROR", f"AWS answered {operation} with {code}: {said}"
    if isinstance(exc, GatewayError):
        reason = exc.reason or "REFUSED"
        return _GATEWAY_REASONS.get(reason, reason), exc.message
    return "AWS_CLIENT_ERROR", f"{type(exc).__name__}: {echo(str(exc), 300)}"
