/**
 * TypeScript client of the Registry Config Gateway (service ecr.registry.v1).
 *
 * The messages and the service descriptor under ./gen are generated from proto/ by
 * `make generate` (buf generate with protoc-gen-es); this file adds what every caller
 * needs around them:
 * - a transport: gRPC (HTTP/2) or Connect over HTTP/1.1 (the gateway's `http.listen`),
 *   with credentials on every call;
 * - retries where they are safe: reads (the RPCs the contract marks
 *   `idempotency_level = NO_SIDE_EFFECTS`, read from the generated descriptors), writes
 *   that carry an `etag` or `validate_only`, after the delay the gateway's RetryInfo asks;
 * - typed errors (`EtagMismatch`, `PermissionDenied`, ...) carrying the google.rpc details
 *   (ErrorInfo, BadRequest, RetryInfo, QuotaFailure, RequestInfo);
 * - `updateReplicationConfiguration`, the read-modify-write with the etag;
 * - the trailers (`x-cache`, `x-request-id`).
 */
import { clone, create, equals, type DescMethod } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import {
  Code,
  ConnectError,
  createClient,
  createContextKey,
  createContextValues,
  type CallOptions,
  type ContextKey,
  type ContextValues,
  type Client,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import {
  PutReplicationConfigurationResponseSchema,
  RegistryConfigService,
  ReplicationConfigurationSchema,
  type PutReplicationConfigurationResponse,
  type ReplicationConfiguration,
} from "./gen/ecr/registry/v1/registry_pb.js";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RequestInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";

export * from "./gen/ecr/registry/v1/registry_pb.js";
export { create, fromJson, toJson } from "@bufbuild/protobuf";
export { Code, ConnectError, createContextValues };
export type { CallOptions, Interceptor, Transport };

/** The gateway's error domain (ErrorInfo.domain). */
export const DOMAIN = "registry-gateway";

// --- reads and writes, from the contract -------------------------------------------------

/** Whether an RPC is a read: the contract marks it `idempotency_level = NO_SIDE_EFFECTS`. */
export function isRead(method: Pick<DescMethod, "idempotency">): boolean {
  return method.idempotency === MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS;
}

/** The names of the read RPCs (DescribeRegistry, GetRegistryPolicy, ...), from the descriptor. */
export const READ_RPCS: readonly string[] = RegistryConfigService.methods
  .filter(isRead)
  .map((m) => m.name);

// --- errors --------------------------------------------------------------------------------

export interface FieldViolation {
  field: string;
  description: string;
}

export interface QuotaViolation {
  subject: string;
  description: string;
}

/**
 * A call the gateway (or the transport) answered with an error status, with what its
 * google.rpc details said. Every call of a client from `createRegistryClient` throws one of
 * its subclasses, by code:
 *
 *     GatewayError
 *     ├── Unauthenticated     ├── Aborted
 *     ├── PermissionDenied    │   ├── EtagMismatch   (reason ETAG_MISMATCH; .currentEtag)
 *     │                       │   └── WriteOverwritten (reason WRITE_OVERWRITTEN; .currentEtag)
 *     ├── InvalidArgument     ├── Unavailable        (.retryDelayMs)
 *     ├── NotFound            ├── ResourceExhausted  (.retryDelayMs, .quotaViolations)
 *     ├── FailedPrecondition  ├── DeadlineExceeded
 *     └── Internal            (INTERNAL, UNKNOWN and every other code)
 *
 * It is a ConnectError too (`code`, `rawMessage`, `metadata` — the trailers —, `findDetails`).
 */
export class GatewayError extends ConnectError {
  /** The code's name as grpcurl prints it, e.g. "PermissionDenied". */
  readonly codeName: string;
  /** ErrorInfo.reason, e.g. "TARGET_NOT_ALLOWED"; "" when the status had no ErrorInfo. */
  readonly reason: string;
  /** ErrorInfo.domain: `registry-gateway` for the gateway's own answers. */
  readonly domain: string;
  /** ErrorInfo.metadata: requestId, tenant, rpc, registryId, region, currentEtag, ... */
  readonly info: Readonly<Record<string, string>>;
  readonly requestId: string;
  /** RetryInfo, in milliseconds, when the gateway asked the caller to wait. */
  readonly retryDelayMs: number | undefined;
  /** BadRequest.field_violations, by proto field path. */
  readonly fieldViolations: readonly FieldViolation[];
  /** QuotaFailure.violations. */
  readonly quotaViolations: readonly QuotaViolation[];

  constructor(from: ConnectError) {
    super(from.rawMessage, from.code, from.metadata, undefined, from.cause ?? from);
    // Incoming details stay readable with findDetails().
    this.details = from.details;
    // ConnectError recognises its own kind by name (across copies of the library).
    this.name = "ConnectError";
    const [info] = from.findDetails(ErrorInfoSchema);
    const [request] = from.findDetails(RequestInfoSchema);
    const [retry] = from.findDetails(RetryInfoSchema);
    const delay = retry?.retryDelay;
    this.codeName = Code[from.code] ?? String(from.code);
    this.reason = info?.reason ?? "";
    this.domain = info?.domain ?? "";
    this.info = { ...(info?.metadata ?? {}) };
    this.requestId =
      info?.metadata["requestId"] ?? request?.requestId ?? from.metadata.get("x-request-id") ?? "";
    this.retryDelayMs =
      delay === undefined ? undefined : Number(delay.seconds) * 1000 + delay.nanos / 1e6;
    this.fieldViolations = from
      .findDetails(BadRequestSchema)
      .flatMap((b) => b.fieldViolations.map((v) => ({ field: v.field, description: v.description })));
    this.quotaViolations = from
      .findDetails(QuotaFailureSchema)
      .flatMap((q) => q.violations.map((v) => ({ subject: v.subject, description: v.description })));
  }

  // ConnectError's own check accepts any ConnectError for every subclass: use the
  // prototype chain, so that `instanceof EtagMismatch` means what it says.
  static override [Symbol.hasInstance](value: unknown): boolean {
    return Function.prototype[Symbol.hasInstance].call(this, value);
  }
}

export class Unauthenticated extends GatewayError {}
export class PermissionDenied extends GatewayError {}
export class InvalidArgument extends GatewayError {}
export class NotFound extends GatewayError {}
export class FailedPrecondition extends GatewayError {}
export class Aborted extends GatewayError {}
/** ABORTED with reason ETAG_MISMATCH: someone changed it since your read. */
export class EtagMismatch extends Aborted {
  /** The etag the gateway holds now (ErrorInfo metadata `currentEtag`). */
  get currentEtag(): string {
    return this.info["currentEtag"] ?? "";
  }
}
/**
 * ABORTED with reason WRITE_OVERWRITTEN: the write reached AWS, but its read-back found
 * another writer's state, which now stands. Read again, decide, write again; never retried.
 */
export class WriteOverwritten extends Aborted {
  /** The etag of the state that now stands (ErrorInfo metadata `currentEtag`). */
  get currentEtag(): string {
    return this.info["currentEtag"] ?? "";
  }
}
export class Unavailable extends GatewayError {}
export class ResourceExhausted extends GatewayError {}
export class DeadlineExceeded extends GatewayError {}
export class Internal extends GatewayError {}

const ERROR_CLASSES: Partial<Record<Code, new (from: ConnectError) => GatewayError>> = {
  [Code.Unauthenticated]: Unauthenticated,
  [Code.PermissionDenied]: PermissionDenied,
  [Code.InvalidArgument]: InvalidArgument,
  [Code.NotFound]: NotFound,
  [Code.FailedPrecondition]: FailedPrecondition,
  [Code.Aborted]: Aborted,
  [Code.Unavailable]: Unavailable,
  [Code.ResourceExhausted]: ResourceExhausted,
  [Code.DeadlineExceeded]: DeadlineExceeded,
};

/** The typed error of anything a call threw (an Error, a ConnectError, a GatewayError). */
export function toGatewayError(error: unknown): GatewayError {
  if (error instanceof GatewayError) {
    return error;
  }
  const err = ConnectError.from(error);
  const [info] = err.findDetails(ErrorInfoSchema);
  if (err.code === Code.Aborted && info?.reason === "ETAG_MISMATCH") {
    return new EtagMismatch(err);
  }
  if (err.code === Code.Aborted && info?.reason === "WRITE_OVERWRITTEN") {
    return new WriteOverwritten(err);
  }
  const Kind = ERROR_CLASSES[err.code] ?? Internal;
  return new Kind(err);
}

/** What the gateway's google.rpc.Status said about a failed call, as a plain object. */
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
  fieldViolations: FieldViolation[];
  quotaViolations: QuotaViolation[];
}

/** Decode the rich error details of any error a call threw. */
export function gatewayError(error: unknown): GatewayErrorDetails {
  const err = toGatewayError(error);
  return {
    code: err.code,
    codeName: err.codeName,
    message: err.rawMessage,
    reason: err.reason,
    domain: err.domain,
    metadata: { ...err.info },
    requestId: err.requestId,
    retryDelayMs: err.retryDelayMs,
    fieldViolations: [...err.fieldViolations],
    quotaViolations: [...err.quotaViolations],
  };
}

// --- retries -------------------------------------------------------------------------------

/**
 * How often and how patiently a call is retried. Only UNAVAILABLE and RESOURCE_EXHAUSTED
 * are retried (AWS throttling or down, the tenant over its rate), and only when a repeat
 * cannot undo someone else's change: reads, and writes with an `etag` (a repeat at worst
 * answers ETAG_MISMATCH) or `validate_only`. The n-th wait is random up to
 * `min(maxBackoffMs, initialBackoffMs * multiplier**(n-1))`, never shorter than the
 * gateway's RetryInfo delay, and never past the call's deadline (`timeoutMs`).
 */
export interface RetryPolicy {
  /** Counts the first attempt: 1 never retries. */
  maxAttempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  multiplier: number;
  /** Retry writes without an etag too (a repeat may then overwrite a change made in between). */
  retryWritesWithoutEtag: boolean;
}

export const DEFAULT_RETRY_POLICY: Readonly<RetryPolicy> = Object.freeze({
  maxAttempts: 4,
  initialBackoffMs: 100,
  maxBackoffMs: 5_000,
  multiplier: 2,
  retryWritesWithoutEtag: false,
});

/** Never retry. */
export const NO_RETRY: Readonly<RetryPolicy> = Object.freeze({
  ...DEFAULT_RETRY_POLICY,
  maxAttempts: 1,
});

const RETRYABLE = new Set<Code>([Code.Unavailable, Code.ResourceExhausted]);

/** Milliseconds to wait after failed attempt number `attempt` (counted from 1). */
export function backoffMs(
  policy: RetryPolicy,
  attempt: number,
  retryDelayMs: number | undefined,
  rand: () => number = Math.random,
): number {
  const cap = Math.min(
    policy.maxBackoffMs,
    policy.initialBackoffMs * policy.multiplier ** (attempt - 1),
  );
  const delay = cap * rand();
  if (retryDelayMs !== undefined && retryDelayMs > 0 && delay < retryDelayMs) {
    // Never sooner than asked; a little jitter so that callers told the same delay spread.
    return retryDelayMs * (1 + 0.1 * rand());
  }
  return delay;
}

/** Whether repeating this request cannot undo someone else's change. */
export function retrySafe(method: Pick<DescMethod, "idempotency">, message: unknown, policy: RetryPolicy): boolean {
  if (isRead(method)) {
    return true;
  }
  const fields = message as { etag?: unknown; validateOnly?: unknown };
  if ((typeof fields.etag === "string" && fields.etag !== "") || fields.validateOnly === true) {
    return true;
  }
  return policy.retryWritesWithoutEtag;
}

/**
 * What one call did: how many attempts it took, and the response headers and trailers of
 * the last one. `get("x-cache")` / `get("x-request-id")` read either: gRPC sends them as
 * trailers, Connect over HTTP/1.1 as headers. Pass it with `callOptions({ info })`.
 */
export class CallInfo {
  attempts = 0;
  header: Headers = new Headers();
  trailer: Headers = new Headers();
  get(name: string): string {
    return this.trailer.get(name) ?? this.header.get(name) ?? "";
  }
}

/** Per-call retry policy (merged over the client's), set through `callOptions`. */
export const RETRY_POLICY: ContextKey<Partial<RetryPolicy> | undefined> = createContextKey<
  Partial<RetryPolicy> | undefined
>(undefined, { description: "registry gateway retry policy" });
/** Per-call CallInfo, set through `callOptions`. */
export const CALL_INFO: ContextKey<CallInfo | undefined> = createContextKey<CallInfo | undefined>(
  undefined,
  { description: "registry gateway call info" },
);

export interface RegistryCallOptions extends CallOptions {
  /** Send `cache-control: no-cache`: a read fresh from AWS, past the gateway's cache. */
  noCache?: boolean;
  /** This call's retry policy, over the client's. `false`: no retries. */
  retry?: Partial<RetryPolicy> | false;
  /** Filled with the attempts and trailers of the call. */
  info?: CallInfo;
}

/** Connect CallOptions from the gateway's own per-call options. */
export function callOptions(options: RegistryCallOptions): CallOptions {
  const { noCache, retry, info, ...rest } = options;
  const contextValues: ContextValues = rest.contextValues ?? createContextValues();
  if (retry !== undefined) {
    contextValues.set(RETRY_POLICY, retry === false ? NO_RETRY : retry);
  }
  if (info !== undefined) {
    contextValues.set(CALL_INFO, info);
  }
  const headers = new Headers(rest.headers);
  if (noCache) {
    headers.set("cache-control", "no-cache");
  }
  return { ...rest, headers, contextValues };
}

/** The deadline a call's timeout header says, as Date.now() milliseconds. */
function deadlineOf(header: Headers, started: number): number | undefined {
  const connect = header.get("connect-timeout-ms");
  if (connect !== null) {
    return started + Number(connect);
  }
  const grpc = header.get("grpc-timeout");
  const match = grpc === null ? null : /^(\d+)([HMSmun])$/.exec(grpc);
  if (!match) {
    return undefined;
  }
  const unitMs: Record<string, number> = { H: 3.6e6, M: 6e4, S: 1e3, m: 1, u: 1e-3, n: 1e-6 };
  return started + Number(match[1]) * (unitMs[match[2] ?? "m"] ?? 1);
}

/** Each attempt says how long is left of the call's one deadline. */
function setRemaining(header: Headers, remainingMs: number): void {
  const ms = Math.max(1, Math.floor(remainingMs));
  if (header.has("connect-timeout-ms")) {
    header.set("connect-timeout-ms", String(ms));
  } else if (header.has("grpc-timeout")) {
    header.set("grpc-timeout", `${ms}m`);
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** The interceptor that retries (see RetryPolicy) and fills CallInfo. */
export function retryInterceptor(policy: RetryPolicy = DEFAULT_RETRY_POLICY): Interceptor {
  return (next) => async (req) => {
    const info = req.contextValues.get(CALL_INFO);
    const effective: RetryPolicy = { ...policy, ...(req.contextValues.get(RETRY_POLICY) ?? {}) };
    const safe = !req.stream && retrySafe(req.method, req.message, effective);
    const started = Date.now();
    const deadline = deadlineOf(req.header, started);
    for (let attempt = 1; ; attempt++) {
      if (info) {
        info.attempts = attempt;
      }
      if (attempt > 1 && deadline !== undefined) {
        setRemaining(req.header, deadline - Date.now());
      }
      try {
        const res = await next(req);
        if (info) {
          info.header = res.header;
          info.trailer = res.trailer;
        }
        return res;
      } catch (error) {
        const err = toGatewayError(error);
        if (info) {
          info.header = new Headers();
          info.trailer = err.metadata;
        }
        if (!safe || !RETRYABLE.has(err.code) || attempt >= effective.maxAttempts) {
          throw err;
        }
        const delay = backoffMs(effective, attempt, err.retryDelayMs);
        if (deadline !== undefined && Date.now() + delay >= deadline) {
          throw err;
        }
        await sleep(delay, req.signal).catch(() => {
          throw err;
        });
      }
    }
  };
}

/** Outermost: whatever a call throws becomes its GatewayError subclass. */
const typedErrors: Interceptor = (next) => async (req) => {
  try {
    return await next(req);
  } catch (error) {
    throw toGatewayError(error);
  }
};

// --- the client ----------------------------------------------------------------------------

/** PEM contents (not paths) for TLS; `cert` and `key` together make it mTLS. */
export interface TlsOptions {
  ca?: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
  /** The name the server certificate must carry, when dialling an address. */
  servername?: string;
}

/**
 * How calls travel:
 * - "grpc": gRPC over HTTP/2, to the gateway's gRPC listener (`listen`);
 * - "connect": the Connect protocol over HTTP/1.1 (JSON by default), to the gateway's
 *   HTTP listener (`http.listen`): what passes proxies and load balancers without HTTP/2.
 *   Reads go as GET (cacheable, `If-None-Match`), as the contract's NO_SIDE_EFFECTS allows.
 */
export type TransportKind = "grpc" | "connect";

export interface RegistryClientOptions {
  /** `host:port` (plaintext, or TLS when `tls` is given) or a full `http(s)://` URL. */
  target: string;
  /** Default "grpc". */
  transport?: TransportKind;
  /** Connect only: the binary protobuf encoding instead of JSON (default false). */
  useBinaryFormat?: boolean;
  /** Connect only: reads as HTTP GET (default true). */
  useHttpGet?: boolean;
  /** An API key, sent as `authorization: Bearer <key>`. */
  apiKey?: string;
  /** A JWT source, asked before every attempt (so it can refresh); instead of `apiKey`. */
  tokenProvider?: () => string | Promise<string>;
  tls?: TlsOptions;
  /** Deadline of each call, retries included, in ms unless the call sets `timeoutMs` (10 s). */
  defaultTimeoutMs?: number;
  /** Retry policy of every call (per call: `callOptions({ retry })`); `false`: none. */
  retry?: Partial<RetryPolicy> | false;
  /** More interceptors, run inside the retries (once per attempt). */
  interceptors?: Interceptor[];
}

/** A change of the replication configuration: edit `config` in place, or return a new one. */
export type ConfigChange = (
  config: ReplicationConfiguration,
) => ReplicationConfiguration | void | Promise<ReplicationConfiguration | void>;

export interface UpdateOptions {
  registryId?: string;
  region?: string;
  /** Conflicts (ETAG_MISMATCH) tolerated before the last one is thrown (default 5). */
  maxAttempts?: number;
  /** Deadline of each read and each write, in ms. */
  timeoutMs?: number;
  /** Filled by the write. */
  info?: CallInfo;
}

export interface RegistryHelpers {
  /**
   * Read, `change`, write back only if nobody wrote in between; repeat on a conflict.
   *
   * `change` gets a copy of the current configuration and edits it in place (or returns a
   * new one); it may be called several times, so it must not assume what it finds. The
   * write carries the etag of the read, so a concurrent change is never overwritten: on
   * `EtagMismatch` the configuration is read again, fresh from AWS, and `change` applied to
   * that. After `maxAttempts` conflicts the last `EtagMismatch` is thrown. When `change`
   * leaves the configuration as it was, nothing is written and the answer holds the current
   * configuration and etag.
   */
  updateReplicationConfiguration(
    change: ConfigChange,
    options?: UpdateOptions,
  ): Promise<PutReplicationConfigurationResponse>;
}

/** The generated client (one promise-returning method per RPC) and the helpers. */
export type RegistryClient = Client<typeof RegistryConfigService> & RegistryHelpers;

/** The transport `createRegistryClient` uses, for callers who build their own clients. */
export function createRegistryTransport(options: RegistryClientOptions): Transport {
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
  const policy: RetryPolicy =
    options.retry === false ? NO_RETRY : { ...DEFAULT_RETRY_POLICY, ...(options.retry ?? {}) };
  const interceptors = [typedErrors, retryInterceptor(policy), bearer, ...(options.interceptors ?? [])];
  const scheme = options.tls ? "https" : "http";
  const baseUrl = options.target.includes("://") ? options.target : `${scheme}://${options.target}`;
  const defaultTimeoutMs = options.defaultTimeoutMs ?? 10_000;
  const nodeOptions = options.tls ? { ...options.tls } : undefined;
  if ((options.transport ?? "grpc") === "connect") {
    return createConnectTransport({
      baseUrl,
      httpVersion: "1.1",
      useBinaryFormat: options.useBinaryFormat ?? false,
      useHttpGet: options.useHttpGet ?? true,
      interceptors,
      defaultTimeoutMs,
      nodeOptions,
    });
  }
  if (options.transport !== undefined && options.transport !== "grpc") {
    throw new Error(`transport must be "grpc" or "connect", not ${String(options.transport)}`);
  }
  return createGrpcTransport({ baseUrl, interceptors, defaultTimeoutMs, nodeOptions });
}

/** A client of the gateway, with credentials, safe retries and typed errors on every call. */
export function createRegistryClient(options: RegistryClientOptions): RegistryClient {
  const client = createClient(RegistryConfigService, createRegistryTransport(options));
  const helpers: RegistryHelpers = {
    async updateReplicationConfiguration(change, update = {}) {
      const maxAttempts = update.maxAttempts ?? 5;
      if (!(maxAttempts >= 1)) {
        throw new Error("maxAttempts must be at least 1");
      }
      const target = { registryId: update.registryId ?? "", region: update.region ?? "" };
      for (let attempt = 1; ; attempt++) {
        // After a conflict the cache may still hold what we lost to: read past it.
        const current = await client.describeRegistry(
          target,
          callOptions({ noCache: attempt > 1, timeoutMs: update.timeoutMs }),
        );
        const before = current.replicationConfiguration ?? create(ReplicationConfigurationSchema);
        const config = clone(ReplicationConfigurationSchema, before);
        const desired = (await change(config)) ?? config;
        if (equals(ReplicationConfigurationSchema, desired, before)) {
          return create(PutReplicationConfigurationResponseSchema, {
            registryId: current.registryId,
            replicationConfiguration: before,
            etag: current.etag,
          });
        }
        try {
          return await client.putReplicationConfiguration(
            {
              replicationConfiguration: desired,
              registryId: current.registryId,
              region: target.region,
              etag: current.etag,
            },
            callOptions({ timeoutMs: update.timeoutMs, info: update.info }),
          );
        } catch (error) {
          if (!(error instanceof EtagMismatch) || attempt >= maxAttempts) {
            throw error;
          }
          await new Promise((resolve) => setTimeout(resolve, backoffMs(DEFAULT_RETRY_POLICY, attempt, undefined)));
        }
      }
    },
  };
  return Object.assign(client, helpers);
}

/**
 * Collects a call's trailing metadata: pass `onTrailer` (and, for the Connect transport,
 * which sends them as headers, `onHeader`) in the call options, then read
 * `get("x-cache")` (hit | miss | stale on reads) or `get("x-request-id")`.
 */
export function trailers(): {
  onHeader: (h: Headers) => void;
  onTrailer: (t: Headers) => void;
  get: (name: string) => string;
} {
  let header = new Headers();
  let trailer = new Headers();
  return {
    onHeader: (h: Headers) => {
      header = h;
    },
    onTrailer: (t: Headers) => {
      trailer = t;
    },
    get: (name: string) => trailer.get(name) ?? header.get(name) ?? "",
  };
}
