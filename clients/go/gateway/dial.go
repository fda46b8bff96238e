package gateway

import (
	"context"
	"encoding/json"
	"math/rand"
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/descriptorpb"

	registryv1 "registry-gateway.example/clients/go/ecr/registry/v1"
)

// ReadMethods are the read RPCs, as "Service/Method": those the contract marks
// `idempotency_level = NO_SIDE_EFFECTS`, read from the generated descriptor.
func ReadMethods() []string {
	service := registryv1.File_ecr_registry_v1_registry_proto.Services().ByName("RegistryConfigService")
	var reads []string
	methods := service.Methods()
	for i := 0; i < methods.Len(); i++ {
		method := methods.Get(i)
		options, _ := method.Options().(*descriptorpb.MethodOptions)
		if options.GetIdempotencyLevel() == descriptorpb.MethodOptions_NO_SIDE_EFFECTS {
			reads = append(reads, string(service.FullName())+"/"+string(method.Name()))
		}
	}
	sort.Strings(reads)
	return reads
}

// ServiceConfig is the default service config of DialOptions: the read RPCs are retried
// on UNAVAILABLE (AWS throttling or unreachable, a replica draining), up to 4 attempts
// with exponential backoff from 0.1 s to 5 s, within the call's deadline; writes never
// (a blind repeat could undo someone else's change). grpc-go's own retries neither read
// the gateway's RetryInfo nor tell a transient RESOURCE_EXHAUSTED from a final one, so
// RESOURCE_EXHAUSTED is left to UnaryClientInterceptor.
//
// grpc-go retries by itself from 1.40; from 1.33 to 1.39 only with GRPC_GO_RETRY=on in
// the environment of the process.
var ServiceConfig = serviceConfig(ReadMethods())

func serviceConfig(reads []string) string {
	type name struct {
		Service string `json:"service"`
		Method  string `json:"method"`
	}
	names := make([]name, 0, len(reads))
	for _, read := range reads {
		for i := len(read) - 1; i >= 0; i-- {
			if read[i] == '/' {
				names = append(names, name{read[:i], read[i+1:]})
				break
			}
		}
	}
	config := map[string]interface{}{
		"methodConfig": []interface{}{map[string]interface{}{
			"name": names,
			"retryPolicy": map[string]interface{}{
				"maxAttempts":          4,
				"initialBackoff":       "0.1s",
				"maxBackoff":           "5s",
				"backoffMultiplier":    2,
				"retryableStatusCodes": []string{"UNAVAILABLE"},
			},
		}},
	}
	encoded, err := json.Marshal(config)
	if err != nil {
		panic(err) // a literal of maps and strings always encodes
	}
	return string(encoded)
}

// UnaryClientInterceptor turns every error of a call into an *Error (see FromError), and
// retries a read RPC refused RESOURCE_EXHAUSTED with a RetryInfo (Error.Transient: the
// tenant over its rate, its calls in flight), up to 4 attempts, each wait at least the
// RetryDelay the gateway asked, all within the call's deadline. A RESOURCE_EXHAUSTED
// without RetryInfo (a tenant's share of the registry's limits) is returned at once, and
// writes are never retried.
func UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	reads := map[string]bool{}
	for _, read := range ReadMethods() {
		reads["/"+read] = true
	}
	return retrying(reads, exhaustedAttempts, wait)
}

// exhaustedAttempts counts the first, as ServiceConfig's maxAttempts does for UNAVAILABLE.
const exhaustedAttempts = 4

// retryWait is the wait after refusal number attempt (from 1): backoff's (update.go), never
// sooner than the gateway's RetryDelay (plus up to a tenth of it, so that callers told the
// same delay spread), as the Python and TypeScript clients wait.
func retryWait(attempt int, retryDelay time.Duration) time.Duration {
	delay := backoff(attempt)
	if delay < retryDelay {
		delay = retryDelay + time.Duration(rand.Int63n(int64(retryDelay)/10+1))
	}
	return delay
}

// wait sleeps d, or returns the context's error once it is done.
func wait(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

// retrying is UnaryClientInterceptor's retry of the methods in reads, with its attempts and
// its way to wait (a test's passes no time). A wait cut short by the context returns the
// last refusal, which says more than the context's error.
func retrying(reads map[string]bool, attempts int,
	sleep func(context.Context, time.Duration) error) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply interface{}, cc *grpc.ClientConn,
		invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		for attempt := 1; ; attempt++ {
			err := invoker(ctx, method, req, reply, cc, opts...)
			if err == nil {
				return nil
			}
			failed := FromError(err)
			// UNAVAILABLE is grpc-go's to retry (ServiceConfig), inside invoker.
			if !reads[method] || failed.Code != codes.ResourceExhausted || !failed.Transient() ||
				attempt >= attempts {
				return failed
			}
			delay := retryWait(attempt, failed.RetryDelay)
			if deadline, ok := ctx.Deadline(); ok && !time.Now().Add(delay).Before(deadline) {
				return failed
			}
			if sleep(ctx, delay) != nil {
				return failed
			}
		}
	}
}

// DialOptions are what a connection to the gateway wants besides its address and
// credentials: the default ServiceConfig and the interceptor that types errors.
//
//	conn, err := grpc.Dial(target, append(gateway.DialOptions(), grpc.WithInsecure())...)
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithDefaultServiceConfig(ServiceConfig),
		grpc.WithChainUnaryInterceptor(UnaryClientInterceptor()),
	}
}
