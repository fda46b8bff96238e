package gateway

import (
	"context"

	"google.golang.org/grpc/metadata"
)

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
