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

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"

	registryv1 "registry-gateway.example/clients/go/ecr/registry/v1"
	"registry-gateway.example/clients/go/gateway"
)

func main() {
	target := os.Getenv("GATEWAY_TARGET")
	if target == "" {
		target = "127.0.0.1:50051"
	}
	// Plaintext, as `make serve` listens; use grpc.WithTransportCredentials for TLS.
	conn, err := grpc.Dial(target, append(gateway.DialOptions(), grpc.WithInsecure())...)
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
	failed := gateway.FromError(err)
	fmt.Fprintf(os.Stderr, "%s %s: %s (request %s)\n", failed.Code, failed.Reason, failed.Message, failed.RequestID)
	return 1
}
