"""ECR's REGISTRY_POLICY_SCOPE as the gateway knows it (service/aws/account_settings.py): a
scope unknown for a passing reason answers UNAVAILABLE with RetryInfo and is read again,
without a storm of reads; one AWS refused to give answers FAILED_PRECONDITION."""

from __future__ import annotations

import grpc
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from service.aws.account_settings import REREAD_SECONDS, PolicyScopes, aws_unavailable
from service.config import RegistryConfig
from service.errors import FailedPrecondition, GatewayError, Unavailable, UpstreamFailure

ACCOUNT = "123456789012"
REGION = "us-east-1"
REGISTRY = RegistryConfig(registry_id=ACCOUNT, regions=(REGION,))


def client_error(code: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"RequestId": "r"}},
        "GetAccountSetting",
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Scopes:
    """PolicyScopes on a clock the test moves, counting the reads it asks for."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.asked: list[tuple[str, str]] = []
        self.scopes = PolicyScopes(
            on_missing=lambda registry, region: self.asked.append((registry.registry_id, region)),
            clock=self.clock,
        )

    def refusal(self) -> GatewayError:
        with pytest.raises(GatewayError) as caught:
            self.scopes.scope_for(REGISTRY, REGION)
        return caught.value


def assert_retry_later(error: GatewayError) -> None:
    assert isinstance(error, Unavailable)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "POLICY_SCOPE_UNKNOWN")
    assert error.retry_after_seconds == REREAD_SECONDS
    assert error.metadata == {"registryId": ACCOUNT, "region": REGION}


@pytest.mark.parametrize(
    ("failure", "passes"),
    [
        (TimeoutError(), True),
        (client_error("ThrottlingException"), True),
        (client_error("ServerException"), True),
        (client_error("503"), True),
        (EndpointConnectionError(endpoint_url="http://aws"), True),
        (client_error("AccessDeniedException"), False),
        (client_error("ValidationException"), False),
        (ValueError("unexpected"), False),
    ],
)
def test_which_failures_pass(failure: BaseException, passes: bool) -> None:
    assert aws_unavailable(failure) is passes


def test_not_read_yet_is_unavailable_and_read_once() -> None:
    scopes = Scopes()
    for _ in range(5):
        assert_retry_later(scopes.refusal())
    assert scopes.asked == [(ACCOUNT, REGION)]  # one read under way serves every write
    scopes.scopes.record(REGISTRY, REGION, "V1")
    assert scopes.scopes.scope_for(REGISTRY, REGION) == "V1"


def test_aws_unavailable_is_retried_at_most_once_a_reread_period() -> None:
    scopes = Scopes()
    scopes.scopes.unreadable(REGISTRY, REGION, "throttled", cause=client_error("Throttling"))
    # Just answered: the next read waits REREAD_SECONDS, however many writes come.
    for _ in range(5):
        assert_retry_later(scopes.refusal())
    assert scopes.asked == []
    scopes.clock.now += REREAD_SECONDS
    for _ in range(5):
        assert_retry_later(scopes.refusal())
    assert len(scopes.asked) == 1
    # Still unavailable when it answers: again once the period has passed.
    scopes.scopes.unreadable(REGISTRY, REGION, "unreachable", cause=TimeoutError())
    scopes.clock.now += REREAD_SECONDS / 2
    assert_retry_later(scopes.refusal())
    assert len(scopes.asked) == 1
    scopes.clock.now += REREAD_SECONDS
    assert_retry_later(scopes.refusal())
    assert len(scopes.asked) == 2
    # AWS answers: written under what it said.
    scopes.scopes.record(REGISTRY, REGION, "V2")
    assert scopes.scopes.scope_for(REGISTRY, REGION) == "V2"


def test_a_read_never_answered_does_not_hold_the_next_forever() -> None:
    scopes = Scopes()
    assert_retry_later(scopes.refusal())
    scopes.clock.now += 30
    assert_retry_later(scopes.refusal())
    assert len(scopes.asked) == 1
    scopes.clock.now += 31  # the first read's task was lost
    assert_retry_later(scopes.refusal())
    assert len(scopes.asked) == 2


def test_a_refused_read_is_a_failed_precondition_and_not_read_again() -> None:
    scopes = Scopes()
    scopes.scopes.unreadable(
        REGISTRY, REGION, "AccessDeniedException: m", cause=client_error("AccessDeniedException")
    )
    for _ in range(3):
        scopes.clock.now += REREAD_SECONDS * 2
        error = scopes.refusal()
        assert isinstance(error, FailedPrecondition)
        assert (error.code, error.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "POLICY_SCOPE_UNKNOWN",
        )
        assert error.retry_after_seconds is None
        assert "AccessDeniedException" in error.message
    assert scopes.asked == []  # the operators' to fix; a reload reads it again


def test_an_unknown_answer_is_a_failed_precondition() -> None:
    scopes = Scopes()
    scopes.scopes.record(REGISTRY, REGION, "V3")
    assert isinstance(scopes.refusal(), FailedPrecondition)
    assert scopes.asked == []


def test_the_accounts_own_refusal_is_the_answer_and_read_again_when_it_passes() -> None:
    scopes = Scopes()
    mismatch = FailedPrecondition("another account", reason="ACCOUNT_MISMATCH")
    scopes.scopes.unreadable(REGISTRY, REGION, "mismatch", refused=mismatch)
    scopes.clock.now += REREAD_SECONDS
    assert scopes.refusal() is mismatch
    assert scopes.asked == []
    # The account's client could not be made because AWS was unreachable: that answer, and
    # a read again so that the retry it invites can succeed.
    unreachable = UpstreamFailure("unreachable", retry_after_seconds=1.0)
    scopes.scopes.unreadable(REGISTRY, REGION, "unreachable", refused=unreachable)
    scopes.clock.now += REREAD_SECONDS
    assert scopes.refusal() is unreachable
    assert scopes.asked == [(ACCOUNT, REGION)]


def test_a_pinned_scope_needs_no_read() -> None:
    scopes = Scopes()
    pinned = RegistryConfig(registry_id=ACCOUNT, regions=(REGION,), policy_scope="V1")
    scopes.scopes.unreadable(pinned, REGION, "throttled", cause=TimeoutError())
    assert scopes.scopes.scope_for(pinned, REGION) == "V1"
    assert scopes.asked == []
