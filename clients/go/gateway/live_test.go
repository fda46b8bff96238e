package gateway

// The helpers against a live gateway. They run when GATEWAY_TARGET is set, as
// tests/clients/test_go_helpers.py does (a gateway on moto with its tenants, a peer that
// never answers, a port where nothing listens); otherwise they are skipped:
//
//	GATEWAY_TARGET             the gateway's plaintext gRPC listener
//	GATEWAY_API_KEY            tenant `payments`: everything on GATEWAY_REGISTRY_ID, owning the
//	                           slice `payments/` (statement Sids `Payments...`)
//	GATEWAY_SLICE_API_KEY      tenant `team`: the slice RPCs and their history only (`team/`, `Team...`)
//	GATEWAY_REGISTRY_ID        the registry; GATEWAY_FORBIDDEN_REGISTRY one the tenant may not touch
//	GATEWAY_SILENT_TARGET      a peer that accepts connections and never answers
//	GATEWAY_CLOSED_TARGET      a port where nothing listens
//	GATEWAY_UNAVAILABLE_TARGET a gateway whose AWS is unreachable (TestUnavailable only)
//	GATEWAY_LIMITED_TARGET     a gateway allowing GATEWAY_API_KEY's tenant a read every 4 s
//	                           (bursts of one), and a share of one repository filter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	registryv1 "registry-gateway.example/clients/go/ecr/registry/v1"
)

const (
	replication = registryv1.HistoryResource_HISTORY_RESOURCE_REPLICATION
	policy      = registryv1.HistoryResource_HISTORY_RESOURCE_POLICY
)

func live(t *testing.T, name string) string {
	t.Helper()
	value := os.Getenv(name)
	if value == "" {
		t.Skipf("%s is not set: the live tests run from tests/clients/test_go_helpers.py", name)
	}
	return value
}

// counter counts the RPCs a connection sent, by method name.
type counter struct {
	mu     sync.Mutex
	counts map[string]int
}

func (c *counter) interceptor(ctx context.Context, method string, req, reply interface{},
	cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	c.mu.Lock()
	c.counts[method[len("/ecr.registry.v1.RegistryConfigService/"):]]++
	c.mu.Unlock()
	return invoker(ctx, method, req, reply, cc, opts...)
}

func (c *counter) count(rpc string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[rpc]
}

// dial connects as a dependent would: DialOptions, the key on every call; and counts calls.
func dial(t *testing.T, target, key string) (registryv1.RegistryConfigServiceClient, *counter) {
	t.Helper()
	calls := &counter{counts: map[string]int{}}
	options := append(DialOptions(), grpc.WithInsecure(), grpc.WithChainUnaryInterceptor(calls.interceptor))
	if key != "" {
		options = append(options, grpc.WithPerRPCCredentials(Bearer{Token: key, AllowInsecure: true}))
	}
	conn, err := grpc.Dial(target, options...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return registryv1.NewRegistryConfigServiceClient(conn), calls
}

func within(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// failure is the *Error a call that must fail returned.
func failure(t *testing.T, err error) *Error {
	t.Helper()
	if err == nil {
		t.Fatal("the call succeeded")
	}
	var typed *Error
	if !errors.As(err, &typed) {
		t.Fatalf("not a *gateway.Error: %T %v", err, err)
	}
	return typed
}

func rule(prefix string) *registryv1.ReplicationRule {
	return &registryv1.ReplicationRule{
		Destinations:      []*registryv1.ReplicationDestination{{Region: "eu-west-1", RegistryId: os.Getenv("GATEWAY_REGISTRY_ID")}},
		RepositoryFilters: []*registryv1.RepositoryFilter{{Filter: prefix, FilterType: "PREFIX_MATCH"}},
	}
}

func filters(rules []*registryv1.ReplicationRule) []string {
	out := []string{}
	for _, r := range rules {
		for _, f := range r.GetRepositoryFilters() {
			out = append(out, f.GetFilter())
		}
	}
	return out
}

func statement(sid, prefix string) Statement {
	registry := os.Getenv("GATEWAY_REGISTRY_ID")
	return Statement{
		"Sid":       sid,
		"Effect":    "Allow",
		"Principal": map[string]interface{}{"AWS": "arn:aws:iam::" + registry + ":root"},
		"Action":    []interface{}{"ecr:ReplicateImage"},
		"Resource":  "arn:aws:ecr:us-east-1:" + registry + ":repository/" + prefix + "*",
	}
}

func sids(statementsJSON string) []string {
	var parsed []Statement
	_ = json.Unmarshal([]byte(statementsJSON), &parsed)
	out := []string{}
	for _, s := range parsed {
		out = append(out, fmt.Sprint(s["Sid"]))
	}
	return out
}

func TestLiveEveryFailureIsAnError(t *testing.T) {
	target := live(t, "GATEWAY_TARGET")
	client, _ := dial(t, target, live(t, "GATEWAY_API_KEY"))
	ctx := within(t, 30*time.Second)
	forbidden := live(t, "GATEWAY_FORBIDDEN_REGISTRY")

	_, err := client.DescribeRegistry(ctx, &registryv1.DescribeRegistryRequest{RegistryId: forbidden})
	denied := failure(t, err)
	if !errors.Is(err, ErrPermissionDenied) || denied.Reason != "TARGET_NOT_ALLOWED" || denied.Domain != Domain ||
		denied.RequestID == "" || denied.Metadata["registryId"] != forbidden || status.Code(err) != codes.PermissionDenied {
		t.Fatalf("denied: %+v", denied)
	}
	_, err = client.PutRegistryPolicy(ctx, &registryv1.PutRegistryPolicyRequest{PolicyText: "not JSON"})
	invalid := failure(t, err)
	if !errors.Is(err, ErrInvalidArgument) || len(invalid.FieldViolations) == 0 || invalid.FieldViolations[0].Field != "policy_text" {
		t.Fatalf("invalid: %+v", invalid)
	}
	_, err = client.DeleteRegistryPolicy(ctx, &registryv1.DeleteRegistryPolicyRequest{Etag: "an-old-etag"})
	if stale := failure(t, err); !errors.Is(err, ErrEtagMismatch) || stale.CurrentEtag() == "" {
		t.Fatalf("stale: %+v", stale)
	}
	anonymous, _ := dial(t, target, "")
	_, err = anonymous.DescribeRegistry(ctx, &registryv1.DescribeRegistryRequest{})
	if refused := failure(t, err); !errors.Is(err, ErrUnauthenticated) || refused.Domain != Domain {
		t.Fatalf("anonymous: %+v", refused)
	}
	// A peer that never answers: only the context's deadline ends the call.
	hung, _ := dial(t, live(t, "GATEWAY_SILENT_TARGET"), "key")
	_, err = hung.DescribeRegistry(within(t, 300*time.Millisecond), &registryv1.DescribeRegistryRequest{})
	if late := failure(t, err); !errors.Is(err, ErrDeadlineExceeded) || late.Domain != "" {
		t.Fatalf("deadline: %+v", late)
	}
	nobody, _ := dial(t, live(t, "GATEWAY_CLOSED_TARGET"), "key")
	_, err = nobody.GetRegistryPolicy(ctx, &registryv1.GetRegistryPolicyRequest{})
	if refused := failure(t, err); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("refused connection: %+v", refused)
	}
}

func TestLiveEveryReadTakesNoCache(t *testing.T) {
	client, _ := dial(t, live(t, "GATEWAY_TARGET"), live(t, "GATEWAY_API_KEY"))
	ctx := within(t, 30*time.Second)
	current, err := client.GetRegistryPolicy(NoCache(ctx), &registryv1.GetRegistryPolicyRequest{})
	etag := current.GetEtag()
	if errors.Is(err, ErrNotFound) {
		etag = "absent"
	} else if err != nil {
		t.Fatal(err)
	}
	policyText := `{"Version":"2012-10-17","Statement":[` + mustJSON(t, statement("Whole", "")) + `]}`
	put, err := client.PutRegistryPolicy(ctx, &registryv1.PutRegistryPolicyRequest{PolicyText: policyText, Etag: etag})
	if err != nil {
		t.Fatal(err)
	}
	reads := map[string]func(context.Context, grpc.CallOption) error{
		"DescribeRegistry": func(ctx context.Context, o grpc.CallOption) error {
			_, err := client.DescribeRegistry(ctx, &registryv1.DescribeRegistryRequest{}, o)
			return err
		},
		"GetRegistryPolicy": func(ctx context.Context, o grpc.CallOption) error {
			_, err := client.GetRegistryPolicy(ctx, &registryv1.GetRegistryPolicyRequest{}, o)
			return err
		},
		"GetReplicationRules": func(ctx context.Context, o grpc.CallOption) error {
			_, err := client.GetReplicationRules(ctx, &registryv1.GetReplicationRulesRequest{}, o)
			return err
		},
		"GetPolicyStatements": func(ctx context.Context, o grpc.CallOption) error {
			_, err := client.GetPolicyStatements(ctx, &registryv1.GetPolicyStatementsRequest{}, o)
			return err
		},
	}
	for rpc, read := range reads {
		var cached, fresh metadata.MD
		if err := read(ctx, grpc.Trailer(&cached)); err != nil {
			t.Fatal(rpc, err)
		}
		if err := read(ctx, grpc.Trailer(&cached)); err != nil {
			t.Fatal(rpc, err)
		}
		if err := read(NoCache(ctx), grpc.Trailer(&fresh)); err != nil {
			t.Fatal(rpc, err)
		}
		if got := [2][]string{cached.Get("x-cache"), fresh.Get("x-cache")}; !reflect.DeepEqual(got, [2][]string{{"hit"}, {"miss"}}) {
			t.Fatalf("%s: x-cache %v", rpc, got)
		}
	}
	if _, err := client.DeleteRegistryPolicy(ctx, &registryv1.DeleteRegistryPolicyRequest{Etag: put.GetEtag()}); err != nil {
		t.Fatal(err)
	}
}

func mustJSON(t *testing.T, v interface{}) string {
	t.Helper()
	encoded, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(encoded)
}

func TestLiveUpdateReplicationRules(t *testing.T) {
	client, calls := dial(t, live(t, "GATEWAY_TARGET"), live(t, "GATEWAY_API_KEY"))
	ctx := within(t, 60*time.Second)
	clear := func(rules []*registryv1.ReplicationRule) ([]*registryv1.ReplicationRule, error) { return nil, nil }
	if _, err := UpdateReplicationRules(ctx, client, clear); err != nil {
		t.Fatal(err)
	}
	writes := calls.count("PutReplicationRules")
	added, err := UpdateReplicationRules(ctx, client, func(rules []*registryv1.ReplicationRule) ([]*registryv1.ReplicationRule, error) {
		return append(rules, rule("payments/a")), nil
	})
	if err != nil || !reflect.DeepEqual(filters(added.GetRules()), []string{"payments/a"}) || calls.count("PutReplicationRules") != writes+1 {
		t.Fatalf("added %v, %v", added, err)
	}
	// Nothing changed: nothing written, the current etag answered.
	same, err := UpdateReplicationRules(ctx, client, func(rules []*registryv1.ReplicationRule) ([]*registryv1.ReplicationRule, error) {
		return rules, nil
	})
	if err != nil || same.GetEtag() != added.GetEtag() || calls.count("PutReplicationRules") != writes+1 {
		t.Fatalf("same %v, %v", same, err)
	}
	// A colleague writes the slice between our read and our write: read again, apply again.
	runs := 0
	merged, err := UpdateReplicationRules(ctx, client, func(rules []*registryv1.ReplicationRule) ([]*registryv1.ReplicationRule, error) {
		runs++
		if runs == 1 {
			now, err := client.GetReplicationRules(NoCache(ctx), &registryv1.GetReplicationRulesRequest{})
			if err != nil {
				return nil, err
			}
			if _, err := client.PutReplicationRules(ctx, &registryv1.PutReplicationRulesRequest{
				Rules: []*registryv1.ReplicationRule{rule("payments/colleague")}, Etag: now.GetEtag(),
			}); err != nil {
				return nil, err
			}
		}
		return append(rules, rule("payments/mine")), nil
	})
	if err != nil || runs != 2 || !reflect.DeepEqual(filters(merged.GetRules()), []string{"payments/colleague", "payments/mine"}) {
		t.Fatalf("merged %v after %d runs: %v", merged, runs, err)
	}
	// Past MaxAttempts conflicts, the last ETAG_MISMATCH.
	_, err = UpdateReplicationRules(ctx, client, func(rules []*registryv1.ReplicationRule) ([]*registryv1.ReplicationRule, error) {
		now, err := client.GetReplicationRules(NoCache(ctx), &registryv1.GetReplicationRulesRequest{})
		if err != nil {
			return nil, err
		}
		_, err = client.PutReplicationRules(ctx, &registryv1.PutReplicationRulesRequest{
			Rules: []*registryv1.ReplicationRule{rule(fmt.Sprintf("payments/c%d", time.Now().UnixNano()))}, Etag: now.GetEtag(),
		})
		return nil, err
	}, MaxAttempts(2))
	if !errors.Is(err, ErrEtagMismatch) {
		t.Fatalf("lost: %v", err)
	}
	// What change returns is returned as it is.
	mine := errors.New("my change failed")
	if _, err := UpdateReplicationRules(ctx, client, func([]*registryv1.ReplicationRule) ([]*registryv1.ReplicationRule, error) {
		return nil, mine
	}); err != mine {
		t.Fatalf("change's error: %v", err)
	}
	if _, err := UpdateReplicationRules(ctx, client, clear); err != nil {
		t.Fatal(err)
	}
}

func TestLiveOneDeadlineForTheWholeLoop(t *testing.T) {
	client, _ := dial(t, live(t, "GATEWAY_TARGET"), live(t, "GATEWAY_API_KEY"))
	before, err := client.GetReplicationRules(NoCache(within(t, 10*time.Second)), &registryv1.GetReplicationRulesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// The read alone has time, and the write would; the read, the change and the write together do not.
	_, err = UpdateReplicationRules(within(t, 3*time.Second), client, func(rules []*registryv1.ReplicationRule) ([]*registryv1.ReplicationRule, error) {
		time.Sleep(3500 * time.Millisecond)
		return append(rules, rule("payments/late")), nil
	})
	if !errors.Is(err, ErrDeadlineExceeded) {
		t.Fatalf("late: %T %v", err, err)
	}
	after, err := client.GetReplicationRules(NoCache(within(t, 10*time.Second)), &registryv1.GetReplicationRulesRequest{})
	if err != nil || after.GetEtag() != before.GetEtag() {
		t.Fatalf("written after the deadline: %v, %v", after, err)
	}
}

func TestLiveUpdatePolicyStatements(t *testing.T) {
	client, calls := dial(t, live(t, "GATEWAY_TARGET"), live(t, "GATEWAY_API_KEY"))
	ctx := within(t, 60*time.Second)
	none := func([]Statement) ([]Statement, error) { return nil, nil }
	if _, err := UpdatePolicyStatements(ctx, client, none); err != nil {
		t.Fatal(err)
	}
	writes := calls.count("PutPolicyStatements")
	added, err := UpdatePolicyStatements(ctx, client, func(statements []Statement) ([]Statement, error) {
		return append(statements, statement("PaymentsOne", "payments/")), nil
	})
	if err != nil || !reflect.DeepEqual(sids(added.GetStatementsJson()), []string{"PaymentsOne"}) {
		t.Fatalf("added %v, %v", added, err)
	}
	same, err := UpdatePolicyStatements(ctx, client, func(statements []Statement) ([]Statement, error) { return statements, nil })
	if err != nil || same.GetEtag() != added.GetEtag() || calls.count("PutPolicyStatements") != writes+1 {
		t.Fatalf("same %v, %v (writes %d)", same, err, calls.count("PutPolicyStatements")-writes)
	}
	runs := 0
	merged, err := UpdatePolicyStatements(ctx, client, func(statements []Statement) ([]Statement, error) {
		runs++
		if runs == 1 {
			now, err := client.GetPolicyStatements(NoCache(ctx), &registryv1.GetPolicyStatementsRequest{})
			if err != nil {
				return nil, err
			}
			theirs := append(append([]Statement{}, statements...), statement("PaymentsTheirs", "payments/"))
			if _, err := client.PutPolicyStatements(ctx, &registryv1.PutPolicyStatementsRequest{
				StatementsJson: mustJSON(t, theirs), Etag: now.GetEtag(),
			}); err != nil {
				return nil, err
			}
		}
		return append(statements, statement("PaymentsMine", "payments/")), nil
	})
	if err != nil || runs != 2 || !reflect.DeepEqual(sids(merged.GetStatementsJson()), []string{"PaymentsOne", "PaymentsTheirs", "PaymentsMine"}) {
		t.Fatalf("merged %v after %d runs: %v", merged, runs, err)
	}
	cleared, err := UpdatePolicyStatements(ctx, client, none)
	if err != nil || cleared.GetStatementsJson() != "[]" {
		t.Fatalf("cleared %v, %v", cleared, err)
	}
}

func TestLiveHistoryIterator(t *testing.T) {
	client, calls := dial(t, live(t, "GATEWAY_TARGET"), live(t, "GATEWAY_API_KEY"))
	ctx := within(t, 60*time.Second)
	all, err := client.GetConfigurationHistory(ctx, &registryv1.GetConfigurationHistoryRequest{Resource: policy, PageSize: 50})
	if err != nil || len(all.GetVersions()) < 3 {
		t.Fatalf("history %v, %v", all, err)
	}
	pages := calls.count("GetConfigurationHistory")
	var etags []string
	it := NewHistoryIterator(ctx, client, policy, PageSize(1))
	for {
		version, err := it.Next()
		if err == Done {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		etags = append(etags, version.GetEtag())
	}
	var want []string
	for _, v := range all.GetVersions() {
		want = append(want, v.GetEtag())
	}
	if !reflect.DeepEqual(etags, want) || calls.count("GetConfigurationHistory") != pages+len(want) {
		t.Fatalf("iterated %v, want %v (%d pages)", etags, want, calls.count("GetConfigurationHistory")-pages)
	}
	if _, err := it.Next(); err != Done {
		t.Fatalf("after the end: %v", err)
	}
	// Stop early: no more pages are read.
	before := calls.count("GetConfigurationHistory")
	if first, err := NewHistoryIterator(ctx, client, policy, PageSize(1)).Next(); err != nil || first.GetEtag() != want[0] {
		t.Fatalf("first %v, %v", first, err)
	}
	if calls.count("GetConfigurationHistory") != before+1 {
		t.Fatal("a page read ahead")
	}
	_, err = NewHistoryIterator(ctx, client, registryv1.HistoryResource_HISTORY_RESOURCE_UNSPECIFIED).Next()
	if !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("unspecified resource: %v", err)
	}
}

func TestLiveRestore(t *testing.T) {
	client, _ := dial(t, live(t, "GATEWAY_TARGET"), live(t, "GATEWAY_API_KEY"))
	ctx := within(t, 60*time.Second)
	start, err := client.DescribeRegistry(NoCache(ctx), &registryv1.DescribeRegistryRequest{})
	if err != nil {
		t.Fatal(err)
	}
	put := func(prefix, etag string) *registryv1.PutReplicationConfigurationResponse {
		written, err := client.PutReplicationConfiguration(ctx, &registryv1.PutReplicationConfigurationRequest{
			ReplicationConfiguration: &registryv1.ReplicationConfiguration{Rules: []*registryv1.ReplicationRule{rule(prefix)}},
			Etag:                     etag,
		})
		if err != nil {
			t.Fatal(err)
		}
		return written
	}
	first := put("restore-a", start.GetEtag())
	second := put("restore-b", first.GetEtag())
	_, err = Restore(ctx, client, first.GetEtag(), replication, Etag(first.GetEtag()))
	if stale := failure(t, err); !errors.Is(err, ErrEtagMismatch) || stale.CurrentEtag() != second.GetEtag() {
		t.Fatalf("stale: %+v", stale)
	}
	restored, err := Restore(ctx, client, first.GetEtag(), replication, Etag(second.GetEtag()))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := restored.Response.(*registryv1.PutReplicationConfigurationResponse); !ok {
		t.Fatalf("restored %T", restored.Response)
	}
	now, err := client.DescribeRegistry(NoCache(ctx), &registryv1.DescribeRegistryRequest{})
	if err != nil || now.GetEtag() != restored.Etag || !reflect.DeepEqual(filters(now.GetReplicationConfiguration().GetRules()), []string{"restore-a"}) {
		t.Fatalf("now %v, %v", now, err)
	}
	// Without Etag the current etag is read first.
	if back, err := Restore(ctx, client, second.GetEtag(), replication); err != nil || back.Etag != second.GetEtag() {
		t.Fatalf("back %v, %v", back, err)
	}
	_, err = Restore(ctx, client, "no-such-etag", replication)
	if missing := failure(t, err); !errors.Is(err, ErrVersionNotFound) || !errors.Is(err, ErrNotFound) || missing.Domain != ClientDomain {
		t.Fatalf("missing: %+v", missing)
	}
	_, err = Restore(ctx, client, "", policy)
	if empty := failure(t, err); !errors.Is(err, ErrInvalidArgument) || empty.FieldViolations[0].Field != "versionEtag" {
		t.Fatalf("empty: %+v", empty)
	}

	// "No policy" restored deletes the policy.
	policyText := `{"Version":"2012-10-17","Statement":[` + mustJSON(t, statement("Whole", "")) + `]}`
	written, err := client.PutRegistryPolicy(ctx, &registryv1.PutRegistryPolicyRequest{PolicyText: policyText, Etag: "absent"})
	if err != nil {
		t.Fatal(err)
	}
	deleted, err := Restore(ctx, client, "absent", policy, Etag(written.GetEtag()))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := deleted.Response.(*registryv1.DeleteRegistryPolicyResponse); !ok || deleted.Etag != "absent" {
		t.Fatalf("deleted %T %q", deleted.Response, deleted.Etag)
	}
}

func TestLiveASliceTenantRestoresItsSlice(t *testing.T) {
	team, _ := dial(t, live(t, "GATEWAY_TARGET"), live(t, "GATEWAY_SLICE_API_KEY"))
	ctx := within(t, 60*time.Second)
	set := func(prefixes ...string) *registryv1.PutReplicationRulesResponse {
		written, err := UpdateReplicationRules(ctx, team, func([]*registryv1.ReplicationRule) ([]*registryv1.ReplicationRule, error) {
			var rules []*registryv1.ReplicationRule
			for _, p := range prefixes {
				rules = append(rules, rule(p))
			}
			return rules, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return written
	}
	set()
	one := set("team/one")
	two := set("team/one", "team/two")
	it := NewHistoryIterator(ctx, team, replication)
	newest, err := it.Next()
	if err != nil || newest.GetEtag() != two.GetEtag() || !it.SliceView() {
		t.Fatalf("newest %v (slice view %v): %v", newest, it.SliceView(), err)
	}
	restored, err := Restore(ctx, team, one.GetEtag(), replication)
	if err != nil {
		t.Fatal(err)
	}
	rules, ok := restored.Response.(*registryv1.PutReplicationRulesResponse)
	if !ok || !reflect.DeepEqual(filters(rules.GetRules()), []string{"team/one"}) {
		t.Fatalf("restored %v", restored.Response)
	}

	mine, err := UpdatePolicyStatements(ctx, team, func([]Statement) ([]Statement, error) {
		return []Statement{statement("TeamOne", "team/")}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := UpdatePolicyStatements(ctx, team, func(s []Statement) ([]Statement, error) {
		return append(s, statement("TeamTwo", "team/")), nil
	}); err != nil {
		t.Fatal(err)
	}
	back, err := Restore(ctx, team, mine.GetEtag(), policy)
	if err != nil {
		t.Fatal(err)
	}
	statements, ok := back.Response.(*registryv1.PutPolicyStatementsResponse)
	if !ok || !reflect.DeepEqual(sids(statements.GetStatementsJson()), []string{"TeamOne"}) {
		t.Fatalf("restored %v", back.Response)
	}
	set()
	if _, err := UpdatePolicyStatements(ctx, team, func([]Statement) ([]Statement, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
}

// TestUnavailable makes one read and one write of a gateway whose AWS is unreachable; the
// suite counts the attempts the gateway saw (the read's, retried by ServiceConfig when
// grpc-go retries: from 1.40, or with GRPC_GO_RETRY=on).
func TestUnavailable(t *testing.T) {
	client, _ := dial(t, live(t, "GATEWAY_UNAVAILABLE_TARGET"), live(t, "GATEWAY_API_KEY"))
	ctx := within(t, 60*time.Second)
	_, err := client.DescribeRegistry(ctx, &registryv1.DescribeRegistryRequest{})
	if down := failure(t, err); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("read: %+v", down)
	}
	policyText := `{"Version":"2012-10-17","Statement":[` + mustJSON(t, statement("Whole", "")) + `]}`
	_, err = client.PutRegistryPolicy(ctx, &registryv1.PutRegistryPolicyRequest{PolicyText: policyText})
	if down := failure(t, err); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("write: %+v", down)
	}
}

// TestLiveResourceExhausted: a read refused for the tenant's rate (RESOURCE_EXHAUSTED with a
// RetryInfo) is retried after the delay the gateway asked; a write past the tenant's share
// (RESOURCE_EXHAUSTED without RetryInfo: final) is sent once.
func TestLiveResourceExhausted(t *testing.T) {
	client, calls := dial(t, live(t, "GATEWAY_LIMITED_TARGET"), live(t, "GATEWAY_API_KEY"))
	ctx := within(t, 60*time.Second)
	if _, err := client.DescribeRegistry(ctx, &registryv1.DescribeRegistryRequest{}); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	if _, err := client.DescribeRegistry(ctx, &registryv1.DescribeRegistryRequest{}); err != nil {
		t.Fatalf("the rate-limited read: %v", err)
	}
	if calls.count("DescribeRegistry") != 3 || time.Since(started) < time.Second {
		t.Fatalf("%d reads sent, answered after %s", calls.count("DescribeRegistry"), time.Since(started))
	}
	// A deadline shorter than the wait asked: refused at once, saying how long to wait.
	short, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err := client.DescribeRegistry(short, &registryv1.DescribeRegistryRequest{})
	if limited := failure(t, err); limited.Reason != "RATE_LIMITED" || !limited.Transient() || limited.RetryDelay <= 0 {
		t.Fatalf("over the rate: %+v", limited)
	}
	if calls.count("DescribeRegistry") != 4 {
		t.Fatalf("%d reads sent", calls.count("DescribeRegistry"))
	}
	two := rule("payments/a")
	two.RepositoryFilters = append(two.RepositoryFilters, rule("payments/b").RepositoryFilters...)
	_, err = client.PutReplicationRules(ctx, &registryv1.PutReplicationRulesRequest{
		Rules: []*registryv1.ReplicationRule{two},
	})
	refused := failure(t, err)
	if !errors.Is(err, ErrResourceExhausted) || refused.Reason != "REPLICATION_QUOTA_EXCEEDED" ||
		refused.Transient() || refused.RetryDelay != 0 || len(refused.QuotaViolations) == 0 {
		t.Fatalf("past the share: %+v", refused)
	}
	if calls.count("PutReplicationRules") != 1 {
		t.Fatalf("%d writes sent", calls.count("PutReplicationRules"))
	}
}
