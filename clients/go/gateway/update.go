package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand"
	"reflect"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	registryv1 "registry-gateway.example/clients/go/ecr/registry/v1"
)

// Statement is one IAM policy statement, as parsed JSON (Sid, Effect, Principal, ...).
type Statement = map[string]interface{}

// UpdateReplicationRules reads the caller's rules of a shared registry fresh (past the
// cache), gives change a copy of them, and writes what it returns with the etag of that
// read: nobody's write in between is lost. On ETAG_MISMATCH it reads and applies change
// again, up to MaxAttempts (5) times, then returns the last conflict. change may run
// several times, so it must not assume what it finds. When it returns the rules as they
// were, nothing is written and the answer holds the current rules and etag. ctx's deadline
// covers every read, write and wait; an error change returns is returned as it is, every
// other is an *Error.
func UpdateReplicationRules(
	ctx context.Context,
	client registryv1.RegistryConfigServiceClient,
	change func(rules []*registryv1.ReplicationRule) ([]*registryv1.ReplicationRule, error),
	opts ...Option,
) (*registryv1.PutReplicationRulesResponse, error) {
	o := collect(opts)
	return readModifyWrite(ctx, o, func() (*registryv1.PutReplicationRulesResponse, error) {
		current, err := client.GetReplicationRules(NoCache(ctx), &registryv1.GetReplicationRulesRequest{
			RegistryId: o.registryID, Region: o.region,
		}, o.call...)
		if err != nil {
			return nil, FromError(err)
		}
		copies := make([]*registryv1.ReplicationRule, len(current.GetRules()))
		for i, rule := range current.GetRules() {
			copies[i] = proto.Clone(rule).(*registryv1.ReplicationRule)
		}
		desired, err := change(copies)
		if err != nil {
			return nil, changeError{err}
		}
		if sameRules(desired, current.GetRules()) {
			return &registryv1.PutReplicationRulesResponse{
				RegistryId: current.GetRegistryId(), Rules: current.GetRules(), Etag: current.GetEtag(),
			}, nil
		}
		written, err := client.PutReplicationRules(ctx, &registryv1.PutReplicationRulesRequest{
			RegistryId: current.GetRegistryId(), Region: o.region, Rules: desired, Etag: current.GetEtag(),
		}, o.call...)
		return written, typed(err)
	})
}

// UpdatePolicyStatements is UpdateReplicationRules for the caller's statements of the
// registry policy, given to change as parsed JSON objects and written as statements_json.
func UpdatePolicyStatements(
	ctx context.Context,
	client registryv1.RegistryConfigServiceClient,
	change func(statements []Statement) ([]Statement, error),
	opts ...Option,
) (*registryv1.PutPolicyStatementsResponse, error) {
	o := collect(opts)
	return readModifyWrite(ctx, o, func() (*registryv1.PutPolicyStatementsResponse, error) {
		current, err := client.GetPolicyStatements(NoCache(ctx), &registryv1.GetPolicyStatementsRequest{
			RegistryId: o.registryID, Region: o.region,
		}, o.call...)
		if err != nil {
			return nil, FromError(err)
		}
		statements, err := parseStatements(current.GetStatementsJson())
		if err != nil {
			return nil, clientError(codes.Internal, "UNDECODABLE_RESPONSE", "the gateway's statements_json is not a JSON array of objects", "")
		}
		desired, err := change(statements)
		if err != nil {
			return nil, changeError{err}
		}
		encoded, err := json.Marshal(nonNil(desired))
		if err != nil {
			return nil, clientError(codes.InvalidArgument, "INVALID_ARGUMENT", "the statements change returned cannot be JSON: "+err.Error(), "statements")
		}
		// Through JSON and back: what the gateway would be sent, compared with what it has.
		var sent, held interface{}
		_ = json.Unmarshal(encoded, &sent)
		_ = json.Unmarshal([]byte(orEmptyArray(current.GetStatementsJson())), &held)
		if reflect.DeepEqual(sent, held) {
			return &registryv1.PutPolicyStatementsResponse{
				RegistryId: current.GetRegistryId(), StatementsJson: current.GetStatementsJson(), Etag: current.GetEtag(),
			}, nil
		}
		written, err := client.PutPolicyStatements(ctx, &registryv1.PutPolicyStatementsRequest{
			RegistryId: current.GetRegistryId(), Region: o.region, StatementsJson: string(encoded), Etag: current.GetEtag(),
		}, o.call...)
		return written, typed(err)
	})
}

// UpdateReplicationConfiguration is the same for the whole replication configuration (a
// registry's only tenant; a tenant of a shared registry uses UpdateReplicationRules).
func UpdateReplicationConfiguration(
	ctx context.Context,
	client registryv1.RegistryConfigServiceClient,
	change func(config *registryv1.ReplicationConfiguration) (*registryv1.ReplicationConfiguration, error),
	opts ...Option,
) (*registryv1.PutReplicationConfigurationResponse, error) {
	o := collect(opts)
	return readModifyWrite(ctx, o, func() (*registryv1.PutReplicationConfigurationResponse, error) {
		current, err := client.DescribeRegistry(NoCache(ctx), &registryv1.DescribeRegistryRequest{
			RegistryId: o.registryID, Region: o.region,
		}, o.call...)
		if err != nil {
			return nil, FromError(err)
		}
		before := current.GetReplicationConfiguration()
		if before == nil {
			before = &registryv1.ReplicationConfiguration{}
		}
		desired, err := change(proto.Clone(before).(*registryv1.ReplicationConfiguration))
		if err != nil {
			return nil, changeError{err}
		}
		if desired == nil {
			desired = &registryv1.ReplicationConfiguration{}
		}
		if proto.Equal(desired, before) {
			return &registryv1.PutReplicationConfigurationResponse{
				RegistryId: current.GetRegistryId(), ReplicationConfiguration: before, Etag: current.GetEtag(),
			}, nil
		}
		written, err := client.PutReplicationConfiguration(ctx, &registryv1.PutReplicationConfigurationRequest{
			RegistryId: current.GetRegistryId(), Region: o.region, ReplicationConfiguration: desired, Etag: current.GetEtag(),
		}, o.call...)
		return written, typed(err)
	})
}

// changeError carries what a change function returned out of the loop, untouched.
type changeError struct{ err error }

func (c changeError) Error() string { return c.err.Error() }

// readModifyWrite runs once until it does not conflict, at most o.maxAttempts times, all
// under ctx's deadline.
func readModifyWrite[T any](ctx context.Context, o options, once func() (T, error)) (T, error) {
	var zero T
	if o.maxAttempts < 1 {
		return zero, clientError(codes.InvalidArgument, "INVALID_ARGUMENT", "MaxAttempts must be at least 1", "MaxAttempts")
	}
	for attempt := 1; ; attempt++ {
		written, err := once()
		if err == nil {
			return written, nil
		}
		if changed, ok := err.(changeError); ok {
			return zero, changed.err
		}
		if !errors.Is(err, ErrEtagMismatch) || attempt >= o.maxAttempts {
			return zero, err
		}
		delay := backoff(attempt)
		if deadline, ok := ctx.Deadline(); ok && time.Now().Add(delay).After(deadline) {
			return zero, err
		}
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return zero, FromError(ctx.Err())
		case <-timer.C:
		}
	}
}

// backoff is the wait after conflict number attempt: random up to 0.1 s * 2^(attempt-1),
// at most 5 s, so that writers who collided spread out.
func backoff(attempt int) time.Duration {
	limit := 100 * time.Millisecond << uint(attempt-1)
	if limit > 5*time.Second || limit <= 0 {
		limit = 5 * time.Second
	}
	return time.Duration(rand.Int63n(int64(limit)))
}

func sameRules(a, b []*registryv1.ReplicationRule) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func orEmptyArray(statementsJSON string) string {
	if statementsJSON == "" {
		return "[]"
	}
	return statementsJSON
}

func parseStatements(statementsJSON string) ([]Statement, error) {
	var statements []Statement
	if err := json.Unmarshal([]byte(orEmptyArray(statementsJSON)), &statements); err != nil {
		return nil, err
	}
	return nonNil(statements), nil
}

// nonNil makes "no statements" the JSON array [], never null.
func nonNil(statements []Statement) []Statement {
	if statements == nil {
		return []Statement{}
	}
	return statements
}
