package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/golang/protobuf/proto"
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

// exhausted is RESOURCE_EXHAUSTED as the gateway answers it: with a RetryInfo of retryDelay
// for a rate or a slot, none (retryDelay < 0) for a tenant's share.
func exhausted(t *testing.T, reason string, retryDelay time.Duration) error {
	t.Helper()
	details := []proto.Message{&errdetails.ErrorInfo{Reason: reason, Domain: Domain}}
	if retryDelay >= 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: &duration.Duration{
			Seconds: int64(retryDelay / time.Second), Nanos: int32(retryDelay % time.Second)}})
	}
	st, err := status.New(codes.ResourceExhausted, reason).WithDetails(details...)
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

func TestTheInterceptorRetriesOnlyTransientResourceExhausted(t *testing.T) {
	const read = "/ecr.registry.v1.RegistryConfigService/DescribeRegistry"
	const write = "/ecr.registry.v1.RegistryConfigService/PutReplicationRules"
	rateLimited := exhausted(t, "RATE_LIMITED", 20*time.Millisecond)
	share := exhausted(t, "REPLICATION_QUOTA_EXCEEDED", -1)
	if !FromError(rateLimited).Transient() || !FromError(exhausted(t, "TENANT_CALLS_IN_FLIGHT", 0)).Transient() {
		t.Fatal("RESOURCE_EXHAUSTED with a RetryInfo is transient")
	}
	if FromError(share).Transient() || FromError(status.Error(codes.ResourceExhausted, "too large")).Transient() {
		t.Fatal("RESOURCE_EXHAUSTED without RetryInfo is final")
	}
	if !FromError(status.Error(codes.Unavailable, "down")).Transient() || FromError(status.Error(codes.Aborted, "x")).Transient() {
		t.Fatal("UNAVAILABLE is transient, ABORTED is not")
	}
	reads := map[string]bool{read: true}
	for _, c := range []struct {
		name     string
		method   string
		answers  []error
		attempts int
		code     codes.Code
	}{
		{"a rate limit is retried up to 4 attempts", read, []error{rateLimited}, 4, codes.ResourceExhausted},
		{"a rate limit then an answer", read, []error{rateLimited, nil}, 2, codes.OK},
		{"a share refusal is final", read, []error{share}, 1, codes.ResourceExhausted},
		{"grpc's own RESOURCE_EXHAUSTED is final", read, []error{status.Error(codes.ResourceExhausted, "too large")}, 1, codes.ResourceExhausted},
		{"a write is never retried", write, []error{rateLimited}, 1, codes.ResourceExhausted},
		{"UNAVAILABLE is grpc-go's to retry", read, []error{status.Error(codes.Unavailable, "down")}, 1, codes.Unavailable},
	} {
		t.Run(c.name, func(t *testing.T) {
			attempts := 0
			invoker := func(ctx context.Context, method string, req, reply interface{}, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
				// The last answer repeats.
				i := attempts
				if i >= len(c.answers) {
					i = len(c.answers) - 1
				}
				attempts++
				return c.answers[i]
			}
			var waits []time.Duration
			sleep := func(ctx context.Context, d time.Duration) error {
				waits = append(waits, d)
				return nil
			}
			err := retrying(reads, 4, sleep)(context.Background(), c.method, nil, nil, nil, invoker)
			if attempts != c.attempts || status.Code(err) != c.code {
				t.Fatalf("%d attempts, %v", attempts, err)
			}
			if err != nil && !errors.Is(err, &Error{Code: c.code}) {
				t.Fatalf("not typed: %T %v", err, err)
			}
			for _, d := range waits {
				if d < 20*time.Millisecond {
					t.Fatalf("waited %s, less than the RetryInfo asked", d)
				}
			}
		})
	}
	// A wait that would pass the call's deadline is not taken.
	attempts := 0
	invoker := func(ctx context.Context, method string, req, reply interface{}, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
		attempts++
		return exhausted(t, "RATE_LIMITED", time.Hour)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := retrying(reads, 4, wait)(ctx, read, nil, nil, nil, invoker); attempts != 1 || !errors.Is(err, ErrResourceExhausted) {
		t.Fatalf("%d attempts, %v", attempts, err)
	}
}
