"""The HTTP/JSON transport: the Connect protocol (connectrpc's generated ASGI application on
uvicorn) in front of the same pipeline and servicer as gRPC, in the same process and loop.

- transport.py: the pipeline's gates and reporters around each call (connectrpc's metadata
  interceptor) and the nine RPCs calling the servicer;
- codec.py: JSON as strict as gRPC (unknown fields refused, defaults printed), and binary,
  within each RPC's byte limit;
- errors.py: the gateway's errors as Connect error JSON with the same google.rpc details;
- listener.py: uvicorn without its own signal handlers, 304s, CORS, the deadline cap;
- connections.py: connections as a resource (caps per address, head and body timeouts,
  requests in flight counted apart from sockets, a refusal before the body ends the
  connection).
"""
