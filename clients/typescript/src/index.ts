/**
 * TypeScript client of the Registry Config Gateway (gRPC service ecr.registry.v1).
 *
 * The messages and the service descriptor under ./gen are generated from proto/ by
 * `make generate` (buf generate with protoc-gen-es); this file adds what every caller
 * needs around them: a gRPC transport with credentials, the rich error details the
 * gateway sends (google.rpc ErrorInfo, BadRequest, RetryInfo), and the trailers
 * (`x-cache`, `x-request-id`).
 */
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { RegistryConfigService } from "./gen/ecr/registry/v1/registry_pb.js";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RequestInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";

export * from "./gen/ecr/registry/v1/registry_pb.js";
export { Code, ConnectError };

/** The gateway's error domain (ErrorInfo.domain). */
export const DOMAIN = "registry-gateway";

/** PEM contents (not paths) for TLS; `cert` and `key` together make it mTLS. */
export interface TlsOptions {
  ca?: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
  /** The name the server certificate must carry, when dialling an address. */
  servername?: string;
}

export interface RegistryClientOptions {
  /** `host:port` (plaintext, or TLS when `tls` is given) or a full `http(s)://` URL. */
  target: string;
  /** An API key, sent as `authorization: Bearer <key>`. */
  apiKey?: string;
  /** A JWT source, asked before every call (so it can refresh); instead of `apiKey`. */
  tokenProvider?: () => string | Promise<string>;
  tls?: TlsOptions;
  /** Deadline of each call in milliseconds unless the call sets `timeoutMs` (default 10 s). */
  defaultTimeoutMs?: number;
}

/** The generated client: one promise-returning method per RPC (`describeRegistry`, ...). */
export type RegistryClient = Client<typeof RegistryConfigService>;

/** A client of the gateway over gRPC (HTTP/2), with credentials on every call. */
export function createRegistryClient(options: RegistryClientOptions): RegistryClient {
  if (options.apiKey !== undefined && options.tokenProvider !== undefined) {
    throw new Error("give apiKey or tokenProvider, not both");
  }
  const bearer: Interceptor = (next) => async (req) => {
    const token = options.tokenProvider ? await options.tokenProvider() : options.apiKey;
    if (token) {
      req.header.set("authorization", `Bearer ${token}`);
    }
    return next(req);
  };
  const scheme = options.tls ? "https" : "http";
  const baseUrl = options.target.includes("://") ? options.target : `${scheme}://${options.target}`;
  const transport = createGrpcTransport({
    baseUrl,
    interceptors: [bearer],
    defaultTimeoutMs: options.defaultTimeoutMs ?? 10_000,
    nodeOptions: options.tls ? { ...options.tls } : undefined,
  });
  return createClient(RegistryConfigService, transport);
}

/** What the gateway's google.rpc.Status said about a failed call. */
export interface GatewayErrorDetails {
  code: Code;
  /** gRPC code name as grpcurl prints it, e.g. "PermissionDenied". */
  codeName: string;
  message: string;
  /** ErrorInfo.reason, e.g. "TARGET_NOT_ALLOWED"; "" when the status had no ErrorInfo. */
  reason: string;
  domain: string;
  /** ErrorInfo.metadata: requestId, tenant, rpc, registryId, region, currentEtag, ... */
  metadata: Record<string, string>;
  requestId: string;
  /** RetryInfo, in milliseconds, when the gateway asked the caller to wait. */
  retryDelayMs?: number;
  fieldViolations: { field: string; description: string }[];
  quotaViolations: { subject: string; description: string }[];
}

/** Decode the rich error details of any error a call threw. */
export function gatewayError(error: unknown): GatewayErrorDetails {
  const err = ConnectError.from(error);
  const [info] = err.findDetails(ErrorInfoSchema);
  const [request] = err.findDetails(RequestInfoSchema);
  const [retry] = err.findDetails(RetryInfoSchema);
  const bad = err.findDetails(BadRequestSchema);
  const quota = err.findDetails(QuotaFailureSchema);
  const delay = retry?.retryDelay;
  return {
    code: err.code,
    codeName: Code[err.code],
    message: err.rawMessage,
    reason: info?.reason ?? "",
    domain: info?.domain ?? "",
    metadata: { ...(info?.metadata ?? {}) },
    requestId: info?.metadata["requestId"] ?? request?.requestId ?? "",
    retryDelayMs:
      delay === undefined ? undefined : Number(delay.seconds) * 1000 + delay.nanos / 1e6,
    fieldViolations: bad.flatMap((b) =>
      b.fieldViolations.map((v) => ({ field: v.field, description: v.description })),
    ),
    quotaViolations: quota.flatMap((q) =>
      q.violations.map((v) => ({ subject: v.subject, description: v.description })),
    ),
  };
}

/**
 * Collects a call's trailing metadata: pass `onTrailer` in the call options, then read
 * `get("x-cache")` (hit | miss | stale on reads) or `get("x-request-id")`.
 */
export function trailers(): { onTrailer: (t: Headers) => void; get: (name: string) => string } {
  let received = new Headers();
  return {
    onTrailer: (t: Headers) => {
      received = t;
    },
    get: (name: string) => received.get(name) ?? "",
  };
}
