package gateway

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"

	registryv1 "registry-gateway.example/clients/go/ecr/registry/v1"
)

// Done is what HistoryIterator.Next returns after the last version.
var Done = errors.New("gateway: no more versions")

// HistoryIterator walks every recorded version of a resource, newest first, across pages:
//
//	it := gateway.NewHistoryIterator(ctx, client, registryv1.HistoryResource_HISTORY_RESOURCE_POLICY)
//	for {
//		version, err := it.Next()
//		if err == gateway.Done {
//			break
//		}
//		if err != nil {
//			return err
//		}
//		fmt.Println(version.GetEtag())
//	}
//
// Each page is one GetConfigurationHistory call, made when the previous page is used up
// (stop early and no more pages are read), under the iterator's context.
type HistoryIterator struct {
	ctx      context.Context
	client   registryv1.RegistryConfigServiceClient
	request  *registryv1.GetConfigurationHistoryRequest
	call     options
	page     []*registryv1.ConfigurationVersion
	started  bool
	last     bool
	seen     map[string]bool
	err      error
	slice    bool
	registry string
}

// NewHistoryIterator iterates over the versions of resource (Registry, Region, PageSize
// and CallOptions apply).
func NewHistoryIterator(
	ctx context.Context,
	client registryv1.RegistryConfigServiceClient,
	resource registryv1.HistoryResource,
	opts ...Option,
) *HistoryIterator {
	o := collect(opts)
	return &HistoryIterator{
		ctx:    ctx,
		client: client,
		request: &registryv1.GetConfigurationHistoryRequest{
			RegistryId: o.registryID, Region: o.region, Resource: resource, PageSize: o.pageSize,
		},
		call: o,
		seen: map[string]bool{},
	}
}

// Next is the next (older) version, Done after the last one, or the *Error of a page.
func (it *HistoryIterator) Next() (*registryv1.ConfigurationVersion, error) {
	for len(it.page) == 0 {
		if it.err != nil {
			return nil, it.err
		}
		if it.started && it.last {
			return nil, Done
		}
		it.err = it.fetch()
	}
	version := it.page[0]
	it.page = it.page[1:]
	return version, nil
}

// SliceView is whether the pages read so far show the caller's slice of each version.
func (it *HistoryIterator) SliceView() bool { return it.slice }

// RegistryID is the registry the pages read so far were of.
func (it *HistoryIterator) RegistryID() string { return it.registry }

func (it *HistoryIterator) fetch() error {
	page, err := it.client.GetConfigurationHistory(it.ctx, it.request, it.call.call...)
	if err != nil {
		return FromError(err)
	}
	it.started = true
	it.page = page.GetVersions()
	it.slice, it.registry = page.GetSliceView(), page.GetRegistryId()
	token := page.GetNextPageToken()
	if token == "" {
		it.last = true
		return nil
	}
	if it.seen[token] {
		// A server that never ends: stop rather than loop for ever.
		return clientError(codes.Internal, "PAGE_LOOP", "the gateway answered a page token twice", "")
	}
	it.seen[token] = true
	it.request.PageToken = token
	return nil
}
