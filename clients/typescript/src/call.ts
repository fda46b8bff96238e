/**
 * One call: its options (`noCache`, `retry`, `info`), the retries where they are safe, and
 * what the call answered besides its message (`CallInfo`).
 */
import type { DescMethod } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import {
  Code,
  createContextKey,
  createContextValues,
  type CallOptions,
  type ContextKey,
  type ContextValues,
  type Interceptor,
} from "@connectrpc/connect";
import { RegistryConfigService } from "./gen/ecr/registry/v1/registry_pb.js";
import { toGatewayError, type GatewayError } from "./errors.js";

/** Whether an RPC is a read: the contract marks it `idempotency_level = NO_SIDE_EFFECTS`. */
export function isRead(method: Pick<DescMethod, "idempotency">): boolean {
  return method.idempotency === MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS;
}

/** The names of the read RPCs (DescribeRegistry, GetRegistryPolicy, ...), from the descriptor. */
export const READ_RPCS: readonly string[] = RegistryConfigService.methods
  .filter(isRead)
  .map((m) => m.name);

/** What a retry hook is told before each wait: what failed, why, and how long it waits. */
export interface RetryEvent {
  /** The RPC, e.g. "DescribeRegistry". */
  rpc: string;
  /** The attempt that failed, counted from 1. */
  attempt: number;
  error: GatewayError;
  /** How long the client waits before the next attempt. */
  delayMs: number;
}

/**
 * How often and how patiently a call is retried. Only UNAVAILABLE, and RESOURCE_EXHAUSTED
 * that carries a RetryInfo, are retried (AWS throttling or down, the tenant over its rate or
 * its calls in flight: see `retryable`), and only when a repeat cannot undo someone else's
 * change: reads, and writes with an `etag` (a repeat at worst
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
  /** Called before each wait: log it, count it (e.g. `(e) => console.warn(e.rpc, e.error.codeName)`). */
  onRetry?: ((event: RetryEvent) => void) | undefined;
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

/**
 * Whether an error is worth another attempt: UNAVAILABLE, and RESOURCE_EXHAUSTED only when
 * the gateway sent a RetryInfo with it (a rate limit, a slot, writes in flight: transient).
 * Without one it is final: a request past the tenant's share of the registry's limits
 * (REPLICATION_QUOTA_EXCEEDED) gets the same answer however often it is sent, and the
 * transport's own size limits carry no details. RetryInfo's presence, not a list of
 * reasons: the gateway says what is transient (the same rule as the Python and Go clients).
 */
export function retryable(err: Pick<GatewayError, "code" | "retryDelayMs">): boolean {
  if (err.code === Code.ResourceExhausted) {
    return err.retryDelayMs !== undefined;
  }
  return err.code === Code.Unavailable;
}

/** Milliseconds to wait after failed attempt number `attempt` (counted from 1). */
export function backoffMs(
  policy: Pick<RetryPolicy, "initialBackoffMs" | "maxBackoffMs" | "multiplier">,
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
export function retrySafe(
  method: Pick<DescMethod, "idempotency">,
  message: unknown,
  policy: Pick<RetryPolicy, "retryWritesWithoutEtag">,
): boolean {
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
 * What one call did: how many attempts it took, and what the last one answered besides its
 * message. The gateway's per-call facts are in one place whatever the transport: `cache`
 * (`x-cache`: hit | miss | stale on reads), `requestId` (`x-request-id`), and `metadata`,
 * the answer's headers and trailers together (gRPC sends these as trailers, Connect over
 * HTTP/1.1 as headers). `header` and `trailer` are the transport's own view. Pass it with
 * `{ info }` in a call's options.
 */
export class CallInfo {
  attempts = 0;
  header: Headers = new Headers();
  trailer: Headers = new Headers();
  /** The headers and trailers of the last attempt's answer in one (a trailer wins). */
  get metadata(): Headers {
    const merged = new Headers(this.header);
    this.trailer.forEach((value, name) => merged.set(name, value));
    return merged;
  }
  /** One value of `metadata`, "" when absent. */
  get(name: string): string {
    return this.trailer.get(name) ?? this.header.get(name) ?? "";
  }
  /** How the gateway's cache served a read: "hit", "miss" or "stale" ("" for writes). */
  get cache(): string {
    return this.get("x-cache");
  }
  /** The request id the gateway logged the call under. */
  get requestId(): string {
    return this.get("x-request-id");
  }
  /**
   * The cross-account replication destinations (`account/region`) a write went through
   * without the gateway verifying that their registry policy accepts replication
   * (`x-unverified-destinations`); empty when every destination was verified.
   */
  get unverifiedDestinations(): string[] {
    const value = this.get("x-unverified-destinations");
    return value === "" ? [] : value.split(",");
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

/**
 * A call's options: Connect's (`timeoutMs`, `signal`, `headers` — per-call metadata —,
 * `onHeader`, `onTrailer`, `contextValues`) and the gateway's own. Every method of a
 * `RegistryClient` takes them directly.
 */
export interface RegistryCallOptions extends CallOptions {
  /** Send `cache-control: no-cache`: a read fresh from AWS, past the gateway's cache. */
  noCache?: boolean | undefined;
  /** This call's retry policy, over the client's. `false`: no retries. */
  retry?: Partial<RetryPolicy> | false | undefined;
  /** Filled with the attempts and trailers of the call. */
  info?: CallInfo | undefined;
}

/** Connect CallOptions from the gateway's own per-call options (for clients built by hand). */
export function callOptions(options: RegistryCallOptions = {}): CallOptions {
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

/** Wait `ms`, or reject with the signal's reason once it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
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
        if (!safe || !retryable(err) || attempt >= effective.maxAttempts) {
          throw err;
        }
        const delay = backoffMs(effective, attempt, err.retryDelayMs);
        if (deadline !== undefined && Date.now() + delay >= deadline) {
          throw err;
        }
        effective.onRetry?.({ rpc: req.method.name, attempt, error: err, delayMs: delay });
        await sleep(delay, req.signal).catch(() => {
          throw err;
        });
      }
    }
  };
}
