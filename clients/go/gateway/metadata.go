package gateway

import (
	"context"
	"strings"

	"google.golang.org/grpc/metadata"
)

// UnverifiedDestinationsKey is the trailer in which a replication write
// (PutReplicationConfiguration, PutReplicationRules; dry runs too) names the destinations in
// another account that it went through without the gateway verifying that their registry
// policy accepts replication from the source: `account/region`, comma-separated.
const UnverifiedDestinationsKey = "x-unverified-destinations"

// Bearer sends `authorization: Bearer <Token>` (an API key or a JWT) on every call:
// grpc.WithPerRPCCredentials(gateway.Bearer{Token: key}). It asks for TLS unless
// AllowInsecure says the connection may be plaintext (e.g. `make serve` on loopback).
type Bearer struct {
	Token         string
	AllowInsecure bool
}

// GetRequestMetadata is the authorization header of every call.
func (b Bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.Token}, nil
}

// RequireTransportSecurity is true unless AllowInsecure.
func (b Bearer) RequireTransportSecurity() bool { return !b.AllowInsecure }

// NoCache makes the reads under ctx fresh from AWS, past the gateway's cache
// (`cache-control: no-cache`; it counts against the tenant's calls past the cache).
func NoCache(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "cache-control", "no-cache")
}

// UnverifiedDestinations are the cross-account replication destinations (`account/region`)
// a write went through without the gateway verifying that their registry policy accepts
// replication (the trailer UnverifiedDestinationsKey, read with grpc.Trailer(&trailer), or
// CallOptions(grpc.Trailer(&trailer)) on a helper); nil when every destination was verified.
// The response's UnverifiedDestinations field holds the same, as messages.
func UnverifiedDestinations(trailer metadata.MD) []string {
	var found []string
	for _, value := range trailer.Get(UnverifiedDestinationsKey) {
		for _, destination := range strings.Split(value, ",") {
			if destination != "" {
				found = append(found, destination)
			}
		}
	}
	return found
}
