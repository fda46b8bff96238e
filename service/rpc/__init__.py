"""The gRPC side: the call pipeline (interceptor), the servicer, wire-level checks, reflection,
TLS.
"""
