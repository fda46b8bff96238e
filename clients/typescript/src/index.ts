/**
 * TypeScript client of the Registry Config Gateway (service ecr.registry.v1).
 *
 * The messages and the service descriptor under ./gen are generated from proto/ by
 * `make generate` (buf generate with protoc-gen-es); the modules beside them add what every
 * caller needs around them:
 * - a transport: gRPC (HTTP/2) or Connect over HTTP/1.1 (the gateway's `http.listen`),
 *   with credentials on every call (client.ts);
 * - retries where they are safe: reads (the RPCs the contract marks
 *   `idempotency_level = NO_SIDE_EFFECTS`, read from the generated descriptors), writes
 *   that carry an `etag` or `validate_only`, after the delay the gateway's RetryInfo asks;
 *   per-call options (`noCache`, `retry`, `info`, `headers`) and `CallInfo` (call.ts);
 * - typed errors (`EtagMismatch`, `PermissionDenied`, ...) carrying the google.rpc details
 *   (ErrorInfo, BadRequest, RetryInfo, QuotaFailure, RequestInfo), for every failure
 *   (errors.ts);
 * - helpers: `updateReplicationRules`, `updatePolicyStatements`,
 *   `updateReplicationConfiguration` (read-modify-write with the etag),
 *   `iterConfigurationHistory`, `restore` (helpers.ts).
 */
export * from "./gen/ecr/registry/v1/registry_pb.js";
export { create, fromJson, toJson } from "@bufbuild/protobuf";
export { Code, ConnectError, createContextValues } from "@connectrpc/connect";
export type { CallOptions, Interceptor, Transport } from "@connectrpc/connect";
export * from "./errors.js";
export * from "./call.js";
export * from "./helpers.js";
export * from "./client.js";
