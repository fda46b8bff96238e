package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/golang/protobuf/ptypes/duration"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func richStatus(t *testing.T) *status.Status {
	t.Helper()
	st, err := status.New(codes.Aborted, "etag does not match").WithDetails(
		&errdetails.ErrorInfo{Reason: "ETAG_MISMATCH", Domain: Domain, Metadata: map[string]string{
			"requestId": "req-1", "currentEtag": "abc",
		}},
		&errdetails.RetryInfo{RetryDelay: &duration.Duration{Seconds: 1, Nanos: 500000000}},
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "etag", Description: "stale"}}},
		&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{Subject: "tenant:payments", Description: "writes"}}},
	)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestFromErrorDecodesTheDetails(t *testing.T) {
	e := FromError(richStatus(t).Err())
	if e.Code != codes.Aborted || e.Reason != "ETAG_MISMATCH" || e.Domain != Domain || e.RequestID != "req-1" {
		t.Fatalf("decoded %+v", e)
	}
	if e.CurrentEtag() != "abc" || e.RetryDelay != 1500*time.Millisecond {
		t.Fatalf("current etag %q, retry delay %s", e.CurrentEtag(), e.RetryDelay)
	}
	if !reflect.DeepEqual(e.FieldViolations, []FieldViolation{{"etag", "stale"}}) ||
		!reflect.DeepEqual(e.QuotaViolations, []QuotaViolation{{"tenant:payments", "writes"}}) {
		t.Fatalf("violations %+v %+v", e.FieldViolations, e.QuotaViolations)
	}
	var err error = e
	if !errors.Is(err, ErrEtagMismatch) || !errors.Is(err, ErrAborted) || errors.Is(err, ErrWriteOverwritten) {
		t.Fatal("errors.Is does not match by code and reason")
	}
	// Still a gRPC status error to code that reads statuses.
	if status.Code(err) != codes.Aborted || len(status.Convert(err).Details()) != 4 {
		t.Fatalf("status %v", status.Convert(err))
	}
	// Wrapped, it is found again.
	if FromError(fmt.Errorf("deleting: %w", err)) != e {
		t.Fatal("a wrapped *Error is not returned as it is")
	}
}

func TestFromErrorTypesWhatIsNotAStatus(t *testing.T) {
	if FromError(nil) != nil || typed(nil) != nil {
		t.Fatal("nil is not nil")
	}
	late := FromError(fmt.Errorf("waiting: %w", context.DeadlineExceeded))
	if late.Code != codes.DeadlineExceeded || !errors.Is(late, context.DeadlineExceeded) || !errors.Is(late, ErrDeadlineExceeded) {
		t.Fatalf("deadline %+v", late)
	}
	if FromError(context.Canceled).Code != codes.Canceled {
		t.Fatal("cancelled")
	}
	odd := FromError(errors.New("boom"))
	if odd.Code != codes.Unknown || !errors.Is(odd, ErrInternal) {
		t.Fatalf("unknown %+v", odd)
	}
	mine := clientError(codes.NotFound, "VERSION_NOT_FOUND", "no such version", "versionEtag")
	if !errors.Is(mine, ErrVersionNotFound) || !errors.Is(mine, ErrNotFound) || mine.Domain != ClientDomain {
		t.Fatalf("client error %+v", mine)
	}
	decoded := FromError(status.Convert(mine).Err())
	if decoded.Reason != "VERSION_NOT_FOUND" || decoded.Domain != ClientDomain || len(decoded.FieldViolations) != 1 {
		t.Fatalf("client error as a status %+v", decoded)
	}
}

func TestTheServiceConfigRetriesTheReadsOnly(t *testing.T) {
	want := []string{
		"ecr.registry.v1.RegistryConfigService/DescribeRegistry",
		"ecr.registry.v1.RegistryConfigService/GetConfigurationHistory",
		"ecr.registry.v1.RegistryConfigService/GetPolicyStatements",
		"ecr.registry.v1.RegistryConfigService/GetRegistryPolicy",
		"ecr.registry.v1.RegistryConfigService/GetReplicationRules",
	}
	if got := ReadMethods(); !reflect.DeepEqual(got, want) {
		t.Fatalf("read methods %v", got)
	}
	var parsed struct {
		MethodConfig []struct {
			Name        []struct{ Service, Method string }
			RetryPolicy struct {
				MaxAttempts          int
				RetryableStatusCodes []string
			}
		}
	}
	if err := json.Unmarshal([]byte(ServiceConfig), &parsed); err != nil || len(parsed.MethodConfig) != 1 {
		t.Fatalf("service config %s: %v", ServiceConfig, err)
	}
	config := parsed.MethodConfig[0]
	var names []string
	for _, n := range config.Name {
		names = append(names, n.Service+"/"+n.Method)
	}
	if !reflect.DeepEqual(names, want) || config.RetryPolicy.MaxAttempts != 4 ||
		!reflect.DeepEqual(config.RetryPolicy.RetryableStatusCodes, []string{"UNAVAILABLE"}) {
		t.Fatalf("service config %s", ServiceConfig)
	}
	// grpc-go validates a default service config when dialling.
	conn, err := grpc.Dial("127.0.0.1:1", append(DialOptions(), grpc.WithInsecure())...)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
}
