package gateway

import (
	"context"
	"encoding/json"
	"sort"

	"google.golang.org/grpc"
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
// (a blind repeat could undo someone else's change). grpc-go's own retries do not read
// the gateway's RetryInfo, so RESOURCE_EXHAUSTED (the tenant over its rate) is left to
// the caller, with Error.RetryDelay saying how long to wait.
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

// UnaryClientInterceptor turns every error of a call into an *Error (see FromError).
func UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply interface{}, cc *grpc.ClientConn,
		invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if err := invoker(ctx, method, req, reply, cc, opts...); err != nil {
			return FromError(err)
		}
		return nil
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
