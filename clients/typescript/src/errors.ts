/**
 * The client's errors: one class per status code, whatever the transport and whoever
 * decided (the gateway, the transport, a deadline the client enforced, the client itself).
 *
 * The model is google-api-core's `from_grpc_error`: one class per code, the code's class for
 * a status no more specific class claims, never the bare base class.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RequestInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";

/** The gateway's error domain (ErrorInfo.domain). */
export const DOMAIN = "registry-gateway";
/** The domain of the errors the client raises itself (as the Python client's). */
export const CLIENT_DOMAIN = "registry-gateway-client";

export interface FieldViolation {
  field: string;
  description: string;
}

export interface QuotaViolation {
  subject: string;
  description: string;
}

/**
 * A failed call, with what its google.rpc details said. Every call of a client from
 * `createRegistryClient` (and each of its helpers) throws one of its subclasses, by code:
 *
 *     GatewayError
 *     ├── Cancelled           CANCELED: the caller's AbortSignal
 *     ├── InvalidArgument     INVALID_ARGUMENT (.fieldViolations)
 *     ├── DeadlineExceeded    DEADLINE_EXCEEDED, the gateway's or the client's own timer
 *     ├── NotFound            NOT_FOUND
 *     │   └── VersionNotFound     restore: no recorded version has that etag
 *     ├── AlreadyExists       ALREADY_EXISTS
 *     ├── PermissionDenied    PERMISSION_DENIED
 *     ├── ResourceExhausted   RESOURCE_EXHAUSTED (.retryDelayMs, .quotaViolations)
 *     ├── FailedPrecondition  FAILED_PRECONDITION
 *     │   └── VersionNotRestorable  restore: the version was kept without its document
 *     ├── Aborted             ABORTED
 *     │   ├── EtagMismatch        reason ETAG_MISMATCH (.currentEtag)
 *     │   └── WriteOverwritten    reason WRITE_OVERWRITTEN (.currentEtag)
 *     ├── OutOfRange          OUT_OF_RANGE
 *     ├── Unimplemented       UNIMPLEMENTED (an RPC an older gateway lacks)
 *     ├── Internal            INTERNAL, UNKNOWN, DATA_LOSS (`code` keeps which)
 *     ├── Unavailable         UNAVAILABLE (.retryDelayMs): also a refused connection
 *     └── Unauthenticated     UNAUTHENTICATED
 *
 * `domain` says who decided: `registry-gateway` for the gateway's own answers,
 * `registry-gateway-client` for what the client decided itself (restore's
 * VERSION_NOT_FOUND, ...), "" for the transport (a refused connection, a deadline the client
 * enforced before any answer). It is a ConnectError too (`code`, `rawMessage`, `metadata`
 * — the answer's headers and trailers —, `findDetails`, `cause`).
 */
export class GatewayError extends ConnectError {
  /** The code's name as grpcurl prints it, e.g. "PermissionDenied". */
  readonly codeName: string;
  /** ErrorInfo.reason, e.g. "TARGET_NOT_ALLOWED"; "" when the status had no ErrorInfo. */
  readonly reason: string;
  /** ErrorInfo.domain (see the class's comment); "" when the status had no ErrorInfo. */
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

/** CANCELED: the call was abandoned, usually through the caller's own AbortSignal. */
export class Cancelled extends GatewayError {}
/** The request is malformed; `fieldViolations` names each problem by proto field path. */
export class InvalidArgument extends GatewayError {}
/** The call's deadline passed: the gateway's answer, or the client's own timer (`timeoutMs`). */
export class DeadlineExceeded extends GatewayError {}
/** The resource does not exist, e.g. a registry without a registry policy. */
export class NotFound extends GatewayError {}
/** `restore`: no recorded version of the resource has that etag (it may have aged out). */
export class VersionNotFound extends NotFound {}
/** ALREADY_EXISTS (not answered by today's gateway; one class per code). */
export class AlreadyExists extends GatewayError {}
/** The tenant may not do this: target, replication destination or policy guardrail. */
export class PermissionDenied extends GatewayError {}
/**
 * Over the tenant's rate or the server's capacity (`retryDelayMs` set: retried), or over the
 * tenant's share of the registry's limits (no `retryDelayMs`: final); see `quotaViolations`.
 */
export class ResourceExhausted extends GatewayError {}
/** The gateway cannot do this now, e.g. its AWS credentials reach another account. */
export class FailedPrecondition extends GatewayError {}
/**
 * `restore`: the version was kept without its document (`documentOmitted`, larger than the
 * gateway's `history.max_bytes`), so it cannot be written back; nothing was written.
 */
export class VersionNotRestorable extends FailedPrecondition {}
/** The call was aborted, typically by a concurrency conflict. */
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
/** OUT_OF_RANGE (not answered by today's gateway; one class per code). */
export class OutOfRange extends GatewayError {}
/** The gateway does not do this, e.g. an RPC an older gateway lacks. */
export class Unimplemented extends GatewayError {}
/** Something unexpected (INTERNAL, UNKNOWN, DATA_LOSS): quote `requestId` to the operators. */
export class Internal extends GatewayError {}
/** The gateway, AWS or the connection is unavailable for now; `retryDelayMs` says when to retry. */
export class Unavailable extends GatewayError {}
/** No credentials, or credentials that prove nobody. */
export class Unauthenticated extends GatewayError {}

type ErrorClass = new (from: ConnectError) => GatewayError;

const ERROR_CLASSES: Record<Code, ErrorClass> = {
  [Code.Canceled]: Cancelled,
  [Code.Unknown]: Internal,
  [Code.InvalidArgument]: InvalidArgument,
  [Code.DeadlineExceeded]: DeadlineExceeded,
  [Code.NotFound]: NotFound,
  [Code.AlreadyExists]: AlreadyExists,
  [Code.PermissionDenied]: PermissionDenied,
  [Code.ResourceExhausted]: ResourceExhausted,
  [Code.FailedPrecondition]: FailedPrecondition,
  [Code.Aborted]: Aborted,
  [Code.OutOfRange]: OutOfRange,
  [Code.Unimplemented]: Unimplemented,
  [Code.Internal]: Internal,
  [Code.Unavailable]: Unavailable,
  [Code.DataLoss]: Internal,
  [Code.Unauthenticated]: Unauthenticated,
};

/** Classes more specific than their code's, by (code, ErrorInfo reason). */
const BY_REASON: ReadonlyMap<string, ErrorClass> = new Map<string, ErrorClass>([
  [`${Code.Aborted}:ETAG_MISMATCH`, EtagMismatch],
  [`${Code.Aborted}:WRITE_OVERWRITTEN`, WriteOverwritten],
  [`${Code.NotFound}:VERSION_NOT_FOUND`, VersionNotFound],
  [`${Code.FailedPrecondition}:DOCUMENT_OMITTED`, VersionNotRestorable],
]);

/** The typed error of anything a call threw (an Error, a ConnectError, a GatewayError). */
export function toGatewayError(error: unknown): GatewayError {
  if (error instanceof GatewayError) {
    return error;
  }
  const err = ConnectError.from(error);
  const [info] = err.findDetails(ErrorInfoSchema);
  const Kind = BY_REASON.get(`${err.code}:${info?.reason ?? ""}`) ?? ERROR_CLASSES[err.code] ?? Internal;
  return new Kind(err);
}

/**
 * An error the client raises itself: domain `registry-gateway-client`, no request id;
 * `field` names the request field at fault, as a field violation.
 */
export function clientError(code: Code, message: string, reason: string, field?: string): GatewayError {
  const details = [
    { desc: ErrorInfoSchema, value: { reason, domain: CLIENT_DOMAIN } },
    ...(field === undefined
      ? []
      : [{ desc: BadRequestSchema, value: { fieldViolations: [{ field, description: message }] } }]),
  ];
  return toGatewayError(new ConnectError(message, code, undefined, details));
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
  retryDelayMs?: number | undefined;
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
