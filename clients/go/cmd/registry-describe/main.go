// Command registry-describe makes one authorized call to the Registry Config Gateway with
// the generated Go stubs: DescribeRegistry, printed as JSON with the x-cache trailer. On
// failure it prints the gRPC code and the gateway's ErrorInfo, and exits 1.
//
//	GATEWAY_TARGET=127.0.0.1:50051 GATEWAY_API_KEY=<key> registry-describe [registry-id]
package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	registryv1 "registry-gateway/clients/go/ecr/registry/v1"
)

func main() {
	target := os.Getenv("GATEWAY_TARGET")
	if target == "" {
		target = "127.0.0.1:50051"
	}
	// Plaintext, as `make serve` listens; use grpc.WithTransportCredentials for TLS.
	conn, err := grpc.Dial(target, grpc.WithInsecure())
	if err != nil {
		fmt.Fprintf(os.Stderr, "dial %s: %v\n", target, err)
		os.Exit(2)
	}
	defer conn.Close()
	client := registryv1.NewRegistryConfigServiceClient(conn)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+os.Getenv("GATEWAY_API_KEY"))
	request := &registryv1.DescribeRegistryRequest{}
	if len(os.Args) > 1 {
		request.RegistryId = os.Args[1]
	}
	var trailer metadata.MD
	response, err := client.DescribeRegistry(ctx, request, grpc.Trailer(&trailer))
	if err != nil {
		os.Exit(explain(err))
	}
	body, err := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(response)
	if err != nil {
		fmt.Fprintf(os.Stderr, "encode: %v\n", err)
		os.Exit(2)
	}
	fmt.Printf("{\"response\": %s, \"xCache\": %q}\n", body, strings.Join(trailer.Get("x-cache"), ","))
}

// explain prints a failed call's code and the gateway's ErrorInfo; it returns the exit code.
func explain(err error) int {
	st := status.Convert(err)
	reason, requestID := "", ""
	for _, detail := range st.Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok {
			reason, requestID = info.GetReason(), info.GetMetadata()["requestId"]
		}
	}
	fmt.Fprintf(os.Stderr, "%s %s: %s (request %s)\n", st.Code(), reason, st.Message(), requestID)
	return 1
}
