package gateway

import "google.golang.org/grpc"

// Option sets what a helper acts on and how: the registry and region, how many conflicts
// an update tolerates, the current etag a Restore is written over, the history's page size,
// and grpc.CallOptions for every call the helper makes.
type Option func(*options)

type options struct {
	registryID  string
	region      string
	maxAttempts int
	etag        *string
	pageSize    int32
	call        []grpc.CallOption
}

func collect(opts []Option) options {
	o := options{maxAttempts: 5}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// Registry is the registry (12-digit account id) to act on; default: the tenant's only one.
func Registry(id string) Option { return func(o *options) { o.registryID = id } }

// Region is the registry's AWS Region; default: the gateway's.
func Region(region string) Option { return func(o *options) { o.region = region } }

// MaxAttempts is how many ETAG_MISMATCH conflicts an update tolerates before it returns the
// last one (default 5).
func MaxAttempts(n int) Option { return func(o *options) { o.maxAttempts = n } }

// Etag is the current etag Restore writes over: the one you decided on (from a read, or the
// history's newest version). Without it Restore reads the current etag itself first, so
// only a change made in that moment is protected.
func Etag(etag string) Option { return func(o *options) { o.etag = &etag } }

// PageSize is the versions per page a HistoryIterator asks for (1 to 50; 0: the gateway's 10).
func PageSize(n int32) Option { return func(o *options) { o.pageSize = n } }

// CallOptions are passed to every call a helper makes (e.g. grpc.Header, grpc.Trailer).
func CallOptions(opts ...grpc.CallOption) Option {
	return func(o *options) { o.call = append(o.call, opts...) }
}
