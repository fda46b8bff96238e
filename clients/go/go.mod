// The Go client of the Registry Config Gateway: messages and gRPC stubs generated from
// proto/ (`make generate`), importable as registry-gateway.example/clients/go/ecr/registry/v1,
// and the helper package registry-gateway.example/clients/go/gateway (typed errors, a default
// service config, the slice helpers, the history iterator, restore). The module path is a
// placeholder under the reserved .example domain: an organisation serves it from its own
// module proxy or sets its own path (README.md, "Module path"). The versions are the least
// that Debian bookworm's packages satisfy (grpc-go 1.33, protobuf-go 1.28), with which it is
// built and tested offline (scripts/go_toolchain.sh, tests/clients/test_go_*.py); newer ones
// of the same major versions work too.
module registry-gateway.example/clients/go

go 1.19

require (
	github.com/golang/protobuf v1.5.2
	google.golang.org/genproto v0.0.0-20200526211855-cb27e3aa2013
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)

require (
	golang.org/x/net v0.7.0 // indirect
	golang.org/x/sys v0.5.0 // indirect
	golang.org/x/text v0.7.0 // indirect
)
