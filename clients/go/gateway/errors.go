package gateway

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/golang/protobuf/proto"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Domain is the gateway's ErrorInfo domain; ClientDomain that of the errors this package
// makes itself (as the Python and TypeScript clients').
const (
	Domain       = "registry-gateway"
	ClientDomain = "registry-gateway-client"
)

// FieldViolation is one problem with one request field, named by its proto field path.
type FieldViolation struct {
	Field       string
	Description string
}

// QuotaViolation is one quota the call ran past: whose (Subject) and which limit.
type QuotaViolation struct {
	Subject     string
	Description string
}

// Error is a failed call, with what its google.rpc.Status said. Every error the helpers of
// this package return (but what a change function returns) is an *Error, and so is every
// error of a connection dialled with DialOptions. It answers GRPCStatus, so status.Code and
// status.Convert keep working on it.
//
// Domain says who decided: Domain for the gateway's own answers, ClientDomain for what this
// package decided (VERSION_NOT_FOUND, ...), "" for the transport (a refused connection, a
// deadline that passed before any answer).
type Error struct {
	Code    codes.Code
	Message string
	// Reason is ErrorInfo.reason, e.g. "TARGET_NOT_ALLOWED"; "" when there was no ErrorInfo.
	Reason string
	Domain string
	// Metadata is ErrorInfo.metadata: requestId, tenant, rpc, registryId, region, currentEtag, ...
	Metadata  map[string]string
	RequestID string
	// RetryDelay is RetryInfo.retry_delay, when the gateway asked the caller to wait (else 0).
	RetryDelay      time.Duration
	FieldViolations []FieldViolation
	QuotaViolations []QuotaViolation

	status *status.Status
	cause  error
	// retryInfo: the status carried a RetryInfo (RetryDelay alone cannot say: it may be 0).
	retryInfo bool
}

// Transient says whether the same call may succeed later: UNAVAILABLE, or RESOURCE_EXHAUSTED
// that the gateway sent with a RetryInfo (the tenant over its rate, its calls or writes in
// flight). A RESOURCE_EXHAUSTED without one is final: a request past the tenant's share of
// the registry's limits (REPLICATION_QUOTA_EXCEEDED) gets the same answer however often it
// is sent, and grpc's own size limits carry no details. The gateway says what is transient
// with that detail, so the rule is its presence, not a list of reasons (the same rule as
// the Python and TypeScript clients).
func (e *Error) Transient() bool {
	if e.Code == codes.ResourceExhausted {
		return e.retryInfo
	}
	return e.Code == codes.Unavailable
}

// Error says the code, the reason and the message.
func (e *Error) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("%s: %s", e.Code, e.Message)
	}
	return fmt.Sprintf("%s %s: %s", e.Code, e.Reason, e.Message)
}

// GRPCStatus is the status the error was decoded from, details included.
func (e *Error) GRPCStatus() *status.Status {
	if e.status == nil {
		return status.New(e.Code, e.Message)
	}
	return e.status
}

// Unwrap is what caused the error on the client, e.g. context.DeadlineExceeded; else nil.
func (e *Error) Unwrap() error { return e.cause }

// Is matches the sentinels: the same code and, when target names one, the same reason.
// ErrInternal also matches UNKNOWN and DATA_LOSS.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok || t == nil {
		return false
	}
	if t.Reason != "" && t.Reason != e.Reason {
		return false
	}
	if t.Code == codes.Internal {
		return e.Code == codes.Internal || e.Code == codes.Unknown || e.Code == codes.DataLoss
	}
	return t.Code == e.Code
}

// CurrentEtag is the etag the gateway holds now (ETAG_MISMATCH, WRITE_OVERWRITTEN, ...).
func (e *Error) CurrentEtag() string { return e.Metadata["currentEtag"] }

// The sentinels for errors.Is: one per code, and a few by reason.
var (
	ErrCancelled          = &Error{Code: codes.Canceled}
	ErrInvalidArgument    = &Error{Code: codes.InvalidArgument}
	ErrDeadlineExceeded   = &Error{Code: codes.DeadlineExceeded}
	ErrNotFound           = &Error{Code: codes.NotFound}
	ErrAlreadyExists      = &Error{Code: codes.AlreadyExists}
	ErrPermissionDenied   = &Error{Code: codes.PermissionDenied}
	ErrResourceExhausted  = &Error{Code: codes.ResourceExhausted}
	ErrFailedPrecondition = &Error{Code: codes.FailedPrecondition}
	ErrAborted            = &Error{Code: codes.Aborted}
	ErrOutOfRange         = &Error{Code: codes.OutOfRange}
	ErrUnimplemented      = &Error{Code: codes.Unimplemented}
	ErrInternal           = &Error{Code: codes.Internal}
	ErrUnavailable        = &Error{Code: codes.Unavailable}
	ErrUnauthenticated    = &Error{Code: codes.Unauthenticated}

	// ErrEtagMismatch: the etag precondition did not hold; someone wrote since your read.
	ErrEtagMismatch = &Error{Code: codes.Aborted, Reason: "ETAG_MISMATCH"}
	// ErrWriteOverwritten: the write reached AWS but another writer's state stands.
	ErrWriteOverwritten = &Error{Code: codes.Aborted, Reason: "WRITE_OVERWRITTEN"}
	// ErrVersionNotFound: Restore found no recorded version with that etag.
	ErrVersionNotFound = &Error{Code: codes.NotFound, Reason: "VERSION_NOT_FOUND"}
	// ErrVersionNotRestorable: the version was kept without its document; nothing written.
	ErrVersionNotRestorable = &Error{Code: codes.FailedPrecondition, Reason: "DOCUMENT_OMITTED"}
	// ErrDestinationNotAccepting: a replication destination in another account does not let
	// the source replicate into it (its Metadata: destinationRegistryId, destinationRegion,
	// missingActions; the Message holds the statement to add to its policy); nothing written.
	ErrDestinationNotAccepting = &Error{Code: codes.FailedPrecondition, Reason: "DESTINATION_NOT_ACCEPTING"}
)

// FromError decodes any error of a call into an *Error; nil for nil. An *Error (anywhere
// in the chain) is returned as it is; a context error becomes DEADLINE_EXCEEDED or
// CANCELLED; an error without a status becomes UNKNOWN, keeping it as its cause.
func FromError(err error) *Error {
	if err == nil {
		return nil
	}
	var typed *Error
	if errors.As(err, &typed) {
		return typed
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Code: codes.DeadlineExceeded, Message: err.Error(), cause: err}
	case errors.Is(err, context.Canceled):
		return &Error{Code: codes.Canceled, Message: err.Error(), cause: err}
	}
	st, ok := status.FromError(err)
	if !ok {
		return &Error{Code: codes.Unknown, Message: err.Error(), cause: err}
	}
	return fromStatus(st)
}

// typed is FromError as an error: nil stays nil (a nil *Error is not a nil error).
func typed(err error) error {
	if err == nil {
		return nil
	}
	return FromError(err)
}

func fromStatus(st *status.Status) *Error {
	e := &Error{Code: st.Code(), Message: st.Message(), Metadata: map[string]string{}, status: st}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			e.Reason, e.Domain = d.GetReason(), d.GetDomain()
			for k, v := range d.GetMetadata() {
				e.Metadata[k] = v
			}
		case *errdetails.RequestInfo:
			if e.RequestID == "" {
				e.RequestID = d.GetRequestId()
			}
		case *errdetails.RetryInfo:
			e.retryInfo = true
			delay := d.GetRetryDelay()
			e.RetryDelay = time.Duration(delay.GetSeconds())*time.Second + time.Duration(delay.GetNanos())
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				e.FieldViolations = append(e.FieldViolations, FieldViolation{v.GetField(), v.GetDescription()})
			}
		case *errdetails.QuotaFailure:
			for _, v := range d.GetViolations() {
				e.QuotaViolations = append(e.QuotaViolations, QuotaViolation{v.GetSubject(), v.GetDescription()})
			}
		}
	}
	if id := e.Metadata["requestId"]; id != "" {
		e.RequestID = id
	}
	return e
}

// clientError is an error this package decides itself: ClientDomain, no request id; field,
// when given, names the argument at fault as a field violation.
func clientError(code codes.Code, reason, message, field string) *Error {
	e := &Error{Code: code, Message: message, Reason: reason, Domain: ClientDomain, Metadata: map[string]string{}}
	details := []proto.Message{&errdetails.ErrorInfo{Reason: reason, Domain: ClientDomain}}
	if field != "" {
		e.FieldViolations = []FieldViolation{{field, message}}
		violation := &errdetails.BadRequest_FieldViolation{Field: field, Description: message}
		details = append(details, &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{violation}})
	}
	// The same as a status, for code that reads statuses (status.Convert(err).Details()).
	if st, err := status.New(code, message).WithDetails(details...); err == nil {
		e.status = st
	}
	return e
}
