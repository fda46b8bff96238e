package gateway

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	registryv1 "registry-gateway.example/clients/go/ecr/registry/v1"
)

// Restored is what Restore wrote: the etag after the write, and the write's response
// (*PutReplicationConfigurationResponse or, for a slice tenant, *PutReplicationRulesResponse;
// *PutRegistryPolicyResponse, *DeleteRegistryPolicyResponse when the version was "no
// policy", or, for a slice tenant, *PutPolicyStatementsResponse).
type Restored struct {
	Etag     string
	Response proto.Message
}

// Restore writes back the version of resource whose etag is versionEtag (from the
// history), as an ordinary write with an etag precondition: Etag(current) is the current
// etag you decided on, and a change since then fails the write with ETAG_MISMATCH, nothing
// written; without it the current etag is read fresh first. A tenant that reads whole
// documents restores the whole document; a slice tenant its own slice, with the slice RPCs.
// Errors: ErrVersionNotFound when no recorded version has versionEtag, and
// ErrVersionNotRestorable (before any write) when the version was kept without its
// document. ctx's deadline covers the history's pages, the read and the write.
func Restore(
	ctx context.Context,
	client registryv1.RegistryConfigServiceClient,
	versionEtag string,
	resource registryv1.HistoryResource,
	opts ...Option,
) (*Restored, error) {
	o := collect(opts)
	if versionEtag == "" {
		return nil, clientError(codes.InvalidArgument, "INVALID_ARGUMENT",
			"versionEtag is empty: pass the etag of a recorded version", "versionEtag")
	}
	if resource != registryv1.HistoryResource_HISTORY_RESOURCE_REPLICATION &&
		resource != registryv1.HistoryResource_HISTORY_RESOURCE_POLICY {
		return nil, clientError(codes.InvalidArgument, "INVALID_ARGUMENT",
			fmt.Sprintf("resource must be REPLICATION or POLICY, not %s", resource), "resource")
	}
	version, slice, err := findVersion(ctx, client, versionEtag, resource, o)
	if err != nil {
		return nil, err
	}
	if version.GetDocumentOmitted() {
		// Its empty document would be written as "no rules" / "no policy".
		return nil, clientError(codes.FailedPrecondition, "DOCUMENT_OMITTED", fmt.Sprintf(
			"version %q was kept without its document (larger than the gateway's history.max_bytes): "+
				"it cannot be restored; nothing was written", clip(versionEtag)), "")
	}
	registry, region := o.registryID, o.region
	fresh := NoCache(ctx)
	replication := resource == registryv1.HistoryResource_HISTORY_RESOURCE_REPLICATION
	switch {
	case replication && slice:
		etag, err := currentEtag(o, func() (string, error) {
			r, err := client.GetReplicationRules(fresh, &registryv1.GetReplicationRulesRequest{RegistryId: registry, Region: region}, o.call...)
			return r.GetEtag(), err
		})
		if err != nil {
			return nil, err
		}
		written, err := client.PutReplicationRules(ctx, &registryv1.PutReplicationRulesRequest{
			RegistryId: registry, Region: region, Rules: version.GetReplicationConfiguration().GetRules(), Etag: etag,
		}, o.call...)
		return restored(written, err)
	case slice:
		etag, err := currentEtag(o, func() (string, error) {
			r, err := client.GetPolicyStatements(fresh, &registryv1.GetPolicyStatementsRequest{RegistryId: registry, Region: region}, o.call...)
			return r.GetEtag(), err
		})
		if err != nil {
			return nil, err
		}
		written, err := client.PutPolicyStatements(ctx, &registryv1.PutPolicyStatementsRequest{
			RegistryId: registry, Region: region, StatementsJson: orEmptyArray(version.GetStatementsJson()), Etag: etag,
		}, o.call...)
		return restored(written, err)
	case replication:
		etag, err := currentEtag(o, func() (string, error) {
			r, err := client.DescribeRegistry(fresh, &registryv1.DescribeRegistryRequest{RegistryId: registry, Region: region}, o.call...)
			return r.GetEtag(), err
		})
		if err != nil {
			return nil, err
		}
		config := version.GetReplicationConfiguration()
		if config == nil {
			config = &registryv1.ReplicationConfiguration{}
		}
		written, err := client.PutReplicationConfiguration(ctx, &registryv1.PutReplicationConfigurationRequest{
			RegistryId: registry, Region: region, ReplicationConfiguration: config, Etag: etag,
		}, o.call...)
		return restored(written, err)
	}
	etag, err := currentEtag(o, func() (string, error) {
		r, err := client.GetRegistryPolicy(fresh, &registryv1.GetRegistryPolicyRequest{RegistryId: registry, Region: region}, o.call...)
		if errors.Is(FromError(err), ErrNotFound) {
			return "absent", nil // the etag of no policy
		}
		return r.GetEtag(), err
	})
	if err != nil {
		return nil, err
	}
	if version.GetPolicyText() == "" {
		written, err := client.DeleteRegistryPolicy(ctx, &registryv1.DeleteRegistryPolicyRequest{
			RegistryId: registry, Region: region, Etag: etag,
		}, o.call...)
		return restored(written, err)
	}
	written, err := client.PutRegistryPolicy(ctx, &registryv1.PutRegistryPolicyRequest{
		RegistryId: registry, Region: region, PolicyText: version.GetPolicyText(), Etag: etag,
	}, o.call...)
	return restored(written, err)
}

// etagged is every response Restore answers.
type etagged interface {
	proto.Message
	GetEtag() string
}

func restored[T etagged](written T, err error) (*Restored, error) {
	if err != nil {
		return nil, FromError(err)
	}
	return &Restored{Etag: written.GetEtag(), Response: written}, nil
}

func currentEtag(o options, read func() (string, error)) (string, error) {
	if o.etag != nil {
		return *o.etag, nil
	}
	etag, err := read()
	return etag, typed(err)
}

func findVersion(
	ctx context.Context,
	client registryv1.RegistryConfigServiceClient,
	versionEtag string,
	resource registryv1.HistoryResource,
	o options,
) (*registryv1.ConfigurationVersion, bool, error) {
	// Pages of 50; the gateway keeps a bounded history (`history.max_versions`), and the
	// iterator stops a server that answers a page token twice.
	it := NewHistoryIterator(ctx, client, resource, Registry(o.registryID), Region(o.region),
		PageSize(50), CallOptions(o.call...))
	for {
		version, err := it.Next()
		if err == Done {
			return nil, false, clientError(codes.NotFound, "VERSION_NOT_FOUND",
				fmt.Sprintf("no recorded version has etag %q", clip(versionEtag)), "")
		}
		if err != nil {
			return nil, false, err
		}
		if version.GetEtag() == versionEtag {
			return version, it.SliceView(), nil
		}
	}
}

// clip bounds caller text echoed in a message.
func clip(text string) string {
	if len(text) > 64 {
		return text[:64]
	}
	return text
}
