"""The per-method call counts the metrics reporter keeps (service/observability/metrics.py
`MethodMetrics`): OK is counted apart from the other codes (found by identity, not hashed),
and the exposition is what it was: every code's count and `_created`, in the order each
code was first seen, whichever comes first; denials counted by reason."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import generate_latest

from service.observability.metrics import Metrics
from service.pipeline.reporters import MetricsReporter, Outcome

SERVICE = "ecr.registry.v1.RegistryConfigService"
METHOD = f"/{SERVICE}/DescribeRegistry"
LABELS = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "DescribeRegistry"}
HANDLED = "grpc_server_handled_total"
Code = grpc.StatusCode
GO_NAMES = {
    Code.OK: "OK",
    Code.NOT_FOUND: "NotFound",
    Code.UNAUTHENTICATED: "Unauthenticated",
    Code.PERMISSION_DENIED: "PermissionDenied",
    Code.INVALID_ARGUMENT: "InvalidArgument",
    Code.UNAVAILABLE: "Unavailable",
}


def ended(code: grpc.StatusCode, seconds: float = 0.001) -> Outcome:
    reason = None if code is Code.OK else code.name
    return Outcome(METHOD, "DescribeRegistry", "r1", None, None, None, code, reason, seconds)


def handled_lines(metrics: Metrics) -> list[str]:
    """The grpc_server_handled_total sample lines of the exposition, in their order."""
    text = generate_latest(metrics.registry).decode()
    return [line for line in text.splitlines() if line.startswith(HANDLED + "{")]


@pytest.mark.parametrize(
    "codes",
    [
        [Code.NOT_FOUND, Code.OK, Code.OK, Code.UNAUTHENTICATED, Code.NOT_FOUND, Code.OK],
        [Code.OK, Code.PERMISSION_DENIED, Code.OK, Code.OK, Code.INVALID_ARGUMENT],
        [Code.UNAVAILABLE, Code.UNAVAILABLE],
        [Code.OK],
    ],
    ids=["ok-second", "ok-first", "no-ok", "only-ok"],
)
def test_each_code_counted_in_the_order_first_seen(codes: list[grpc.StatusCode]) -> None:
    metrics = Metrics()
    reporter = MetricsReporter(metrics)
    for code in codes:
        reporter.post_call(ended(code))
    first_seen = list(dict.fromkeys(codes))
    counted = metrics.for_method(METHOD).handled_counts()
    assert counted == [(code, codes.count(code)) for code in first_seen]
    for code in first_seen:
        labels = {**LABELS, "grpc_code": GO_NAMES[code]}
        assert metrics.registry.get_sample_value(HANDLED, labels) == codes.count(code)
        created = metrics.registry.get_sample_value("grpc_server_handled_created", labels)
        assert created is not None and created > 0
    # The exposition lists the codes as first seen, OK among them where it came.
    exposed = [line.split('grpc_code="')[1].split('"')[0] for line in handled_lines(metrics)]
    assert exposed == [GO_NAMES[code] for code in first_seen]
    buckets = metrics.registry.get_sample_value("grpc_server_handling_seconds_count", LABELS)
    assert buckets == len(codes)


def test_only_unauthenticated_and_permission_denied_count_as_denied() -> None:
    metrics = Metrics()
    reporter = MetricsReporter(metrics)
    for code in (Code.OK, Code.UNAUTHENTICATED, Code.PERMISSION_DENIED, Code.NOT_FOUND):
        reporter.post_call(ended(code))
    denied = "registry_gateway_authz_denied_total"
    assert metrics.registry.get_sample_value(denied, {"reason": "UNAUTHENTICATED"}) == 1
    assert metrics.registry.get_sample_value(denied, {"reason": "PERMISSION_DENIED"}) == 1
    assert metrics.registry.get_sample_value(denied, {"reason": "NOT_FOUND"}) is None
    assert metrics.registry.get_sample_value(denied, {"reason": "OK"}) is None
