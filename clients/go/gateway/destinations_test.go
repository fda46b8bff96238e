package gateway

// Unverified and refused replication destinations (issue 24). TestDestinationsLive runs
// against a live gateway when GATEWAY_DESTINATIONS_TARGET is set, as
// tests/clients/test_go_destinations.py does (a gateway on moto whose config also names the
// destination account, tests/e2e/test_destination_acceptance.py's two_accounts):
//
//	GATEWAY_DESTINATIONS_TARGET   the gateway's plaintext gRPC listener
//	GATEWAY_API_KEY               tenant `payments`: everything on GATEWAY_REGISTRY_ID, owning `payments/`
//	GATEWAY_REGISTRY_ID           the source registry
//	GATEWAY_OUTSIDE_DESTINATION   `account/region` of an account the config has no registry of
//	GATEWAY_REFUSING_DESTINATION  `account/region` of a configured registry with no policy there

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	registryv1 "registry-gateway.example/clients/go/ecr/registry/v1"
)

func TestUnverifiedDestinationsFromTheTrailer(t *testing.T) {
	cases := []struct {
		trailer metadata.MD
		want    []string
	}{
		{metadata.MD{}, nil},
		{metadata.Pairs(UnverifiedDestinationsKey, ""), nil},
		{metadata.Pairs(UnverifiedDestinationsKey, "210987654321/us-west-2"), []string{"210987654321/us-west-2"}},
		{
			metadata.Pairs(UnverifiedDestinationsKey, "222222222222/eu-west-1,210987654321/us-west-2"),
			[]string{"222222222222/eu-west-1", "210987654321/us-west-2"},
		},
		// A proxy may split one header into several values: each is read.
		{
			metadata.Pairs(UnverifiedDestinationsKey, "222222222222/eu-west-1", UnverifiedDestinationsKey, "210987654321/us-west-2"),
			[]string{"222222222222/eu-west-1", "210987654321/us-west-2"},
		},
		{metadata.Pairs("x-cache", "hit"), nil},
	}
	for _, c := range cases {
		if got := UnverifiedDestinations(c.trailer); !reflect.DeepEqual(got, c.want) {
			t.Errorf("UnverifiedDestinations(%v) = %v, want %v", c.trailer, got, c.want)
		}
	}
}

// destination parses `account/region`.
func destination(t *testing.T, text string) *registryv1.ReplicationDestination {
	t.Helper()
	parts := strings.SplitN(text, "/", 2)
	if len(parts) != 2 {
		t.Fatalf("not account/region: %q", text)
	}
	return &registryv1.ReplicationDestination{RegistryId: parts[0], Region: parts[1]}
}

func named(destinations []*registryv1.ReplicationDestination) []string {
	var out []string
	for _, d := range destinations {
		out = append(out, d.GetRegistryId()+"/"+d.GetRegion())
	}
	return out
}

func configuration(to ...*registryv1.ReplicationDestination) *registryv1.ReplicationConfiguration {
	return &registryv1.ReplicationConfiguration{Rules: []*registryv1.ReplicationRule{{Destinations: to}}}
}

func TestDestinationsLive(t *testing.T) {
	client, _ := dial(t, live(t, "GATEWAY_DESTINATIONS_TARGET"), live(t, "GATEWAY_API_KEY"))
	registryID := live(t, "GATEWAY_REGISTRY_ID")
	outside := live(t, "GATEWAY_OUTSIDE_DESTINATION")
	refusing := live(t, "GATEWAY_REFUSING_DESTINATION")
	same := &registryv1.ReplicationDestination{RegistryId: registryID, Region: "eu-west-1"}
	ctx := within(t, 30*time.Second)

	t.Run("a dry run names the unverified destination in its trailer and its plan", func(t *testing.T) {
		var trailer metadata.MD
		answer, err := client.PutReplicationConfiguration(ctx, &registryv1.PutReplicationConfigurationRequest{
			ReplicationConfiguration: configuration(same, destination(t, outside)),
			ValidateOnly:             true,
		}, grpc.Trailer(&trailer))
		if err != nil {
			t.Fatal(err)
		}
		if got := UnverifiedDestinations(trailer); !reflect.DeepEqual(got, []string{outside}) {
			t.Errorf("trailer: %v, want [%s]", got, outside)
		}
		if got := named(answer.GetUnverifiedDestinations()); !reflect.DeepEqual(got, []string{outside}) {
			t.Errorf("plan: %v, want [%s]", got, outside)
		}
		if len(answer.GetChanges()) == 0 {
			t.Error("a dry run answers its plan's changes")
		}
	})

	t.Run("a same-account destination is never unverified", func(t *testing.T) {
		var trailer metadata.MD
		answer, err := client.PutReplicationConfiguration(ctx, &registryv1.PutReplicationConfigurationRequest{
			ReplicationConfiguration: configuration(same),
			ValidateOnly:             true,
		}, grpc.Trailer(&trailer))
		if err != nil {
			t.Fatal(err)
		}
		if got := UnverifiedDestinations(trailer); got != nil {
			t.Errorf("trailer: %v, want none", got)
		}
		if len(answer.GetUnverifiedDestinations()) != 0 {
			t.Errorf("plan: %v, want none", answer.GetUnverifiedDestinations())
		}
	})

	t.Run("the slice RPC's plan names the caller's unverified destinations", func(t *testing.T) {
		var trailer metadata.MD
		mine := &registryv1.ReplicationRule{
			Destinations:      []*registryv1.ReplicationDestination{destination(t, outside)},
			RepositoryFilters: []*registryv1.RepositoryFilter{{Filter: "payments/", FilterType: "PREFIX_MATCH"}},
		}
		answer, err := client.PutReplicationRules(ctx, &registryv1.PutReplicationRulesRequest{
			Rules: []*registryv1.ReplicationRule{mine}, ValidateOnly: true,
		}, grpc.Trailer(&trailer))
		if err != nil {
			t.Fatal(err)
		}
		if got := UnverifiedDestinations(trailer); !reflect.DeepEqual(got, []string{outside}) {
			t.Errorf("trailer: %v, want [%s]", got, outside)
		}
		if got := named(answer.GetUnverifiedDestinations()); !reflect.DeepEqual(got, []string{outside}) {
			t.Errorf("plan: %v, want [%s]", got, outside)
		}
	})

	t.Run("a destination that does not accept is a typed refusal with the statement to add", func(t *testing.T) {
		for _, validateOnly := range []bool{true, false} {
			_, err := client.PutReplicationConfiguration(ctx, &registryv1.PutReplicationConfigurationRequest{
				ReplicationConfiguration: configuration(destination(t, refusing)),
				ValidateOnly:             validateOnly,
			})
			if !errors.Is(err, ErrDestinationNotAccepting) || !errors.Is(err, ErrFailedPrecondition) {
				t.Fatalf("validateOnly=%v: %v, want DESTINATION_NOT_ACCEPTING", validateOnly, err)
			}
			refused := failure(t, err)
			want := destination(t, refusing)
			if refused.Metadata["destinationRegistryId"] != want.GetRegistryId() ||
				refused.Metadata["destinationRegion"] != want.GetRegion() {
				t.Errorf("metadata %v does not name %s", refused.Metadata, refusing)
			}
			if refused.Metadata["missingActions"] != "ecr:CreateRepository,ecr:ReplicateImage" {
				t.Errorf("missingActions %q", refused.Metadata["missingActions"])
			}
			message := refused.Message
			var statement map[string]interface{}
			text := message[strings.Index(message, "{") : strings.LastIndex(message, "}")+1]
			if err := json.Unmarshal([]byte(text), &statement); err != nil {
				t.Fatalf("the statement to add is not JSON: %v: %s", err, message)
			}
			if statement["Effect"] != "Allow" {
				t.Errorf("statement %v", statement)
			}
		}
	})
}
