// Package gateway is what a Go service needs around the generated stubs of the Registry
// Config Gateway (package registryv1):
//
//   - errors: FromError decodes any error of a call (the gateway's status with its
//     google.rpc details, a deadline, a cancellation, a refused connection) into an *Error
//     with the code, ErrorInfo reason and metadata, request id, RetryInfo delay and field
//     and quota violations; errors.Is matches it against ErrEtagMismatch, ErrNotFound, ...;
//   - dialling: DialOptions gives a default service config that retries the read RPCs on
//     UNAVAILABLE, and an interceptor that types every error and retries the read RPCs on
//     RESOURCE_EXHAUSTED with a RetryInfo (Error.Transient); Bearer sends an API key or a
//     JWT on every call; NoCache reads past the gateway's cache;
//   - helpers: UpdateReplicationRules and UpdatePolicyStatements (read-modify-write of the
//     caller's slice under its etag, one deadline for the loop), UpdateReplicationConfiguration,
//     HistoryIterator (every recorded version across pages) and Restore.
//
// Every helper takes the generated client (registryv1.RegistryConfigServiceClient), so it
// works on any connection, and its context's deadline covers all of its calls and waits.
package gateway

// Version is the contract's version this package was released with (CHANGELOG.md).
const Version = "0.3.0"
