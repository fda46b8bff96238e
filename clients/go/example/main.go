// Command example is a program of its own module that requires the Go client
// (registry-gateway.example/clients/go, see go.mod) and makes three kinds of call to the gateway:
// a read (DescribeRegistry), a write guarded by the read's etag (PutReplicationConfiguration)
// and the tenant's slice (GetReplicationRules, then PutReplicationRules with its etag).
// It prints what it did as one JSON object; on failure, the gRPC code and the gateway's
// ErrorInfo, and exits 1.
//
//	GATEWAY_TARGET=127.0.0.1:50051 GATEWAY_API_KEY=<key> example <destination-region> <slice-prefix>
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"

	registryv1 "registry-gateway.example/clients/go/ecr/registry/v1"
	"registry-gateway.example/clients/go/gateway"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: example <destination-region> <slice-prefix>")
		os.Exit(2)
	}
	region, prefix := os.Args[1], os.Args[2]
	target := os.Getenv("GATEWAY_TARGET")
	if target == "" {
		target = "127.0.0.1:50051"
	}
	// Plaintext, as `make serve` listens (grpc.WithInsecure is the spelling grpc-go 1.33 has):
	// the key goes on every call; errors come back as *gateway.Error.
	options := append(gateway.DialOptions(), grpc.WithInsecure(),
		grpc.WithPerRPCCredentials(gateway.Bearer{Token: os.Getenv("GATEWAY_API_KEY"), AllowInsecure: true}))
	conn, err := grpc.Dial(target, options...)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dial %s: %v\n", target, err)
		os.Exit(2)
	}
	defer conn.Close()
	client := registryv1.NewRegistryConfigServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// A read.
	registry, err := client.DescribeRegistry(ctx, &registryv1.DescribeRegistryRequest{})
	if err != nil {
		os.Exit(explain("DescribeRegistry", err))
	}
	// A write, only if nobody wrote since the read: the read's etag as precondition.
	written, err := client.PutReplicationConfiguration(ctx, &registryv1.PutReplicationConfigurationRequest{
		ReplicationConfiguration: &registryv1.ReplicationConfiguration{
			Rules: []*registryv1.ReplicationRule{rule(registry.GetRegistryId(), region, "prod")},
		},
		Etag: registry.GetEtag(),
	})
	if err != nil {
		os.Exit(explain("PutReplicationConfiguration", err))
	}
	// The same etag again is stale now: ABORTED, reason ETAG_MISMATCH.
	_, err = client.PutReplicationConfiguration(ctx, &registryv1.PutReplicationConfigurationRequest{
		ReplicationConfiguration: written.GetReplicationConfiguration(),
		Etag:                     registry.GetEtag(),
	})
	staleReason := gateway.FromError(err).Reason

	// The tenant's slice of the rules, written with the slice's etag.
	slice, err := client.GetReplicationRules(ctx, &registryv1.GetReplicationRulesRequest{})
	if err != nil {
		os.Exit(explain("GetReplicationRules", err))
	}
	sliceWritten, err := client.PutReplicationRules(ctx, &registryv1.PutReplicationRulesRequest{
		Rules: []*registryv1.ReplicationRule{rule(registry.GetRegistryId(), region, prefix)},
		Etag:  slice.GetEtag(),
	})
	if err != nil {
		os.Exit(explain("PutReplicationRules", err))
	}
	after, err := client.DescribeRegistry(ctx, &registryv1.DescribeRegistryRequest{})
	if err != nil {
		os.Exit(explain("DescribeRegistry", err))
	}

	out, _ := json.Marshal(map[string]interface{}{
		"registryId":   registry.GetRegistryId(),
		"readEtag":     registry.GetEtag(),
		"writtenEtag":  written.GetEtag(),
		"staleReason":  staleReason,
		"sliceEtag":    slice.GetEtag(),
		"sliceRules":   len(sliceWritten.GetRules()),
		"sliceNewEtag": sliceWritten.GetEtag(),
		"rulesAfter":   len(after.GetReplicationConfiguration().GetRules()),
	})
	fmt.Println(string(out))
}

func rule(registryID, region, prefix string) *registryv1.ReplicationRule {
	return &registryv1.ReplicationRule{
		Destinations:      []*registryv1.ReplicationDestination{{Region: region, RegistryId: registryID}},
		RepositoryFilters: []*registryv1.RepositoryFilter{{Filter: prefix, FilterType: "PREFIX_MATCH"}},
	}
}

// explain prints a failed call's code and the gateway's ErrorInfo; it returns the exit code.
func explain(rpc string, err error) int {
	failed := gateway.FromError(err)
	fmt.Fprintf(os.Stderr, "%s: %s %s: %s (request %s)\n", rpc, failed.Code, failed.Reason, failed.Message, failed.RequestID)
	return 1
}
