// A program of another module that requires the Go client: what your go.mod holds, with
// `replace` pointing at a checkout of this repository (or, without it, your module proxy).
module registry-gateway.example/clients/go/example

go 1.19

require (
	google.golang.org/grpc v1.33.3
	registry-gateway.example/clients/go v0.3.0
)

require (
	github.com/golang/protobuf v1.5.2 // indirect
	golang.org/x/net v0.7.0 // indirect
	golang.org/x/sys v0.5.0 // indirect
	golang.org/x/text v0.7.0 // indirect
	google.golang.org/genproto v0.0.0-20200526211855-cb27e3aa2013 // indirect
	google.golang.org/protobuf v1.28.1 // indirect
)

replace registry-gateway.example/clients/go => ../
