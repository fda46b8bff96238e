"""The call pipeline, independent of the transport: gates a call passes before the servicer
(authentication, rate limit, upstream budget) and reporters that observe how it ended
(metrics, tracing, access log, audit). A transport (service/rpc/interceptor.py for gRPC)
adapts its requests to them; the domain never sees either."""
