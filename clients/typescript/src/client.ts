/**
 * The client: a transport with credentials, retries and typed errors, the service's RPCs
 * taking the gateway's call options, and the helpers.
 */
import { createClient, type CallOptions, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { RegistryConfigService } from "./gen/ecr/registry/v1/registry_pb.js";
import {
  callOptions,
  DEFAULT_RETRY_POLICY,
  NO_RETRY,
  retryInterceptor,
  type RegistryCallOptions,
  type RetryPolicy,
} from "./call.js";
import { toGatewayError } from "./errors.js";
import { createHelpers, type RegistryHelpers, type RegistryRpcs } from "./helpers.js";

/** Innermost wrapper of the retries: whatever an attempt throws becomes its GatewayError. */
const typedErrors: Interceptor = (next) => async (req) => {
  try {
    return await next(req);
  } catch (error) {
    throw toGatewayError(error);
  }
};

/** PEM contents (not paths) for TLS; `cert` and `key` together make it mTLS. */
export interface TlsOptions {
  ca?: string | Buffer | undefined;
  cert?: string | Buffer | undefined;
  key?: string | Buffer | undefined;
  /** The name the server certificate must carry, when dialling an address. */
  servername?: string | undefined;
}

/**
 * How calls travel:
 * - "grpc": gRPC over HTTP/2, to the gateway's gRPC listener (`listen`);
 * - "connect": the Connect protocol over HTTP/1.1 (JSON by default), to the gateway's
 *   HTTP listener (`http.listen`): what passes proxies and load balancers without HTTP/2.
 *   Reads go as GET (cacheable, `If-None-Match`), as the contract's NO_SIDE_EFFECTS allows.
 */
export type TransportKind = "grpc" | "connect";

/**
 * Every optional field also takes `undefined` (so `apiKey: process.env.GATEWAY_API_KEY`
 * compiles under `exactOptionalPropertyTypes`): undefined means the default.
 */
export interface RegistryClientOptions {
  /** `host:port` (plaintext, or TLS when `tls` is given) or a full `http(s)://` URL. */
  target: string;
  /** Default "grpc". */
  transport?: TransportKind | undefined;
  /** Connect only: the binary protobuf encoding instead of JSON (default false). */
  useBinaryFormat?: boolean | undefined;
  /** Connect only: reads as HTTP GET (default true). */
  useHttpGet?: boolean | undefined;
  /** An API key, sent as `authorization: Bearer <key>`; undefined or "": none. */
  apiKey?: string | undefined;
  /** A JWT source, asked before every attempt (so it can refresh); instead of `apiKey`. */
  tokenProvider?: (() => string | Promise<string>) | undefined;
  tls?: TlsOptions | undefined;
  /** Deadline of each call, retries included, in ms unless the call sets `timeoutMs` (10 s). */
  defaultTimeoutMs?: number | undefined;
  /** Retry policy of every call (per call: `{ retry }`); `false`: none. */
  retry?: Partial<RetryPolicy> | false | undefined;
  /** More interceptors, run inside the retries (once per attempt). */
  interceptors?: Interceptor[] | undefined;
}

/** The RPCs (one promise-returning method each, taking `RegistryCallOptions`) and the helpers. */
export type RegistryClient = RegistryRpcs & RegistryHelpers;

const DEFAULT_TIMEOUT_MS = 10_000;

/**
 * The transport `createRegistryClient` uses, for callers who build their own clients with
 * Connect's `createClient`: credentials, retries and typed errors on every attempt. A
 * deadline or an AbortSignal that ends such a call surfaces as Connect's own ConnectError;
 * the methods of `createRegistryClient` type those too.
 */
export function createRegistryTransport(options: RegistryClientOptions): Transport {
  if (options.apiKey !== undefined && options.tokenProvider !== undefined) {
    throw new Error("give apiKey or tokenProvider, not both");
  }
  const { apiKey, tokenProvider } = options;
  const bearer: Interceptor = (next) => async (req) => {
    const token = tokenProvider ? await tokenProvider() : apiKey;
    if (token) {
      req.header.set("authorization", `Bearer ${token}`);
    }
    return next(req);
  };
  const policy: RetryPolicy =
    options.retry === false ? NO_RETRY : { ...DEFAULT_RETRY_POLICY, ...(options.retry ?? {}) };
  const interceptors = [retryInterceptor(policy), typedErrors, bearer, ...(options.interceptors ?? [])];
  const scheme = options.tls ? "https" : "http";
  const baseUrl = options.target.includes("://") ? options.target : `${scheme}://${options.target}`;
  const defaultTimeoutMs = options.defaultTimeoutMs ?? DEFAULT_TIMEOUT_MS;
  const tls = options.tls ? { nodeOptions: { ...options.tls } } : {};
  const transport = options.transport ?? "grpc";
  if (transport === "connect") {
    return createConnectTransport({
      baseUrl,
      httpVersion: "1.1",
      useBinaryFormat: options.useBinaryFormat ?? false,
      useHttpGet: options.useHttpGet ?? true,
      interceptors,
      defaultTimeoutMs,
      ...tls,
    });
  }
  if (transport !== "grpc") {
    throw new Error(`transport must be "grpc" or "connect", not ${String(transport)}`);
  }
  return createGrpcTransport({ baseUrl, interceptors, defaultTimeoutMs, ...tls });
}

/**
 * A client of the gateway: credentials, safe retries and typed errors on every call. Each
 * RPC method takes the gateway's call options (`noCache`, `retry`, `info`) beside
 * Connect's, and throws only `GatewayError` subclasses, a deadline the client enforced
 * (`timeoutMs`) and the caller's AbortSignal included.
 */
export function createRegistryClient(options: RegistryClientOptions): RegistryClient {
  const raw = createClient(RegistryConfigService, createRegistryTransport(options));
  const rpcs: Record<string, unknown> = {};
  for (const method of RegistryConfigService.methods) {
    const call = raw[method.localName as keyof typeof raw] as (
      request: unknown,
      options?: CallOptions,
    ) => Promise<unknown>;
    rpcs[method.localName] = async (request: unknown, callOpts?: RegistryCallOptions) => {
      try {
        return await call(request, callOptions(callOpts));
      } catch (error) {
        // Outside the interceptors: Connect ends a call on its deadline or on the caller's
        // signal with an error of its own, replacing whatever the interceptors threw.
        throw toGatewayError(error);
      }
    };
  }
  const typed = rpcs as RegistryRpcs;
  return Object.assign(typed, createHelpers(typed, options.defaultTimeoutMs ?? DEFAULT_TIMEOUT_MS));
}

/**
 * Collects a call's trailing metadata: pass `onTrailer` (and, for the Connect transport,
 * which sends them as headers, `onHeader`) in the call options, then read
 * `get("x-cache")` (hit | miss | stale on reads) or `get("x-request-id")`. `CallInfo` does
 * the same in one object.
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
