/**
 * What a team would otherwise write by hand around the RPCs: the read-modify-write of the
 * caller's slice (or of the whole configuration) under its etag, the history across pages,
 * and restoring a recorded version. Each is built on the client's own RPC methods, so
 * credentials, retries and typed errors are the same as for a single call.
 */
import { isDeepStrictEqual } from "node:util";
import {
  clone,
  create,
  equals,
  type DescMethodUnary,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import {
  HistoryResource,
  PutPolicyStatementsResponseSchema,
  PutReplicationConfigurationResponseSchema,
  PutReplicationRulesResponseSchema,
  RegistryConfigService,
  ReplicationConfigurationSchema,
  ReplicationRuleSchema,
  type ConfigurationVersion,
  type DeleteRegistryPolicyResponse,
  type PutPolicyStatementsResponse,
  type PutRegistryPolicyResponse,
  type PutReplicationConfigurationResponse,
  type PutReplicationRulesResponse,
  type ReplicationConfiguration,
  type ReplicationRule,
} from "./gen/ecr/registry/v1/registry_pb.js";
import { backoffMs, DEFAULT_RETRY_POLICY, sleep, type CallInfo, type RegistryCallOptions } from "./call.js";
import { clientError, EtagMismatch, NotFound, toGatewayError } from "./errors.js";

type Methods = (typeof RegistryConfigService)["method"];

/** The RPCs of the service, one promise-returning method each, taking `RegistryCallOptions`. */
export type RegistryRpcs = {
  [P in keyof Methods]: Methods[P] extends DescMethodUnary<infer I, infer O>
    ? (request: MessageInitShape<I>, options?: RegistryCallOptions) => Promise<MessageShape<O>>
    : never;
};

/** A replication rule: a message, or the same as a plain object (`{ destinations, ... }`). */
export type RuleInit = MessageInitShape<typeof ReplicationRuleSchema>;
/** An IAM policy statement, as parsed JSON (`{ Sid, Effect, Principal, Action, Resource }`). */
export type PolicyStatement = Record<string, unknown>;

/** A change of the caller's rules: edit `rules` in place, or return the new list. */
export type RulesChange = (rules: ReplicationRule[]) => RuleInit[] | void | Promise<RuleInit[] | void>;
/** A change of the caller's statements: edit `statements` in place, or return the new list. */
export type StatementsChange = (
  statements: PolicyStatement[],
) => PolicyStatement[] | void | Promise<PolicyStatement[] | void>;
/** A change of the replication configuration: edit `config` in place, or return a new one. */
export type ConfigChange = (
  config: ReplicationConfiguration,
) => ReplicationConfiguration | void | Promise<ReplicationConfiguration | void>;

export interface UpdateOptions {
  registryId?: string | undefined;
  region?: string | undefined;
  /** Conflicts (ETAG_MISMATCH) tolerated before the last one is thrown (default 5). */
  maxAttempts?: number | undefined;
  /** One deadline for the whole loop (every read, write and wait), in ms; default: the client's. */
  timeoutMs?: number | undefined;
  /** Filled by each call; after the helper, by its last call (the write, when there was one). */
  info?: CallInfo | undefined;
  /** Per-call metadata sent with every read and write. */
  headers?: HeadersInit | undefined;
  /** Abandons the loop (its error is `Cancelled`). */
  signal?: AbortSignal | undefined;
}

/** A history's resource: the enum, or "replication" / "policy". */
export type ResourceName = HistoryResource | "replication" | "policy";

export interface HistoryOptions extends RegistryCallOptions {
  registryId?: string | undefined;
  region?: string | undefined;
  /** Versions per page (1 to 50; the gateway's default 10). */
  pageSize?: number | undefined;
}

export interface RestoreOptions {
  resource: ResourceName;
  /**
   * The current etag you decided on (from a read, or the history's newest version): when
   * someone changed the resource since, the write throws `EtagMismatch` and nothing is
   * written. Without it the current etag is read fresh first, so only a change in that
   * moment is protected.
   */
  etag?: string | undefined;
  registryId?: string | undefined;
  region?: string | undefined;
  /** One deadline for the history's pages, the read and the write, in ms. */
  timeoutMs?: number | undefined;
  /** Filled by the write. */
  info?: CallInfo | undefined;
  headers?: HeadersInit | undefined;
  signal?: AbortSignal | undefined;
}

/** What `restore` wrote: the response of the write it made. */
export type ReplicationRestored = PutReplicationConfigurationResponse | PutReplicationRulesResponse;
export type PolicyRestored = PutRegistryPolicyResponse | DeleteRegistryPolicyResponse | PutPolicyStatementsResponse;
export type Restored = ReplicationRestored | PolicyRestored;

export interface RegistryHelpers {
  /**
   * Read your rules of a shared registry (fresh, past the cache), `change` them, write them
   * back only if nobody wrote your slice in between (its etag); on `EtagMismatch`, again.
   *
   * `change` gets copies of your rules and edits the list in place or returns the new list
   * (messages or plain objects); it may be called several times, so it must not assume
   * what it finds. When the result equals what was read, nothing is written and the answer
   * holds the current rules and etag. One deadline (`timeoutMs`) covers every read, write
   * and wait; after `maxAttempts` conflicts the last `EtagMismatch` is thrown. What
   * `change` throws is thrown as it is.
   */
  updateReplicationRules(change: RulesChange, options?: UpdateOptions): Promise<PutReplicationRulesResponse>;
  /**
   * As `updateReplicationRules`, for your statements of the registry policy: `change` gets
   * them as parsed JSON objects; the write sends what it returns as `statementsJson`.
   */
  updatePolicyStatements(
    change: StatementsChange,
    options?: UpdateOptions,
  ): Promise<PutPolicyStatementsResponse>;
  /**
   * The same for the whole replication configuration (a registry's only tenant; a tenant of
   * a shared registry uses `updateReplicationRules`). `change` gets a copy of the current
   * configuration and edits it in place or returns a new one.
   */
  updateReplicationConfiguration(
    change: ConfigChange,
    options?: UpdateOptions,
  ): Promise<PutReplicationConfigurationResponse>;
  /**
   * Every recorded version of `resource`, newest first, across pages:
   * `for await (const version of client.iterConfigurationHistory("policy")) { ... }`.
   * Each page is one call with its own deadline and retries, made when the previous page
   * is used up (stop early and no more pages are read).
   */
  iterConfigurationHistory(resource: ResourceName, options?: HistoryOptions): AsyncIterable<ConfigurationVersion>;
  /**
   * Write back the version of `resource` whose etag is `versionEtag` (from the history), as
   * an ordinary write with an etag precondition (see `RestoreOptions.etag`). A slice tenant
   * restores its own slice with the slice RPCs. Throws `VersionNotFound` when no recorded
   * version has that etag, `VersionNotRestorable` (before any write) when the version was
   * kept without its document. Answers the write's response: for "replication"
   * `PutReplicationConfigurationResponse` (a slice tenant: `PutReplicationRulesResponse`),
   * for "policy" `PutRegistryPolicyResponse`, or `DeleteRegistryPolicyResponse` when the
   * version was "no policy" (a slice tenant: `PutPolicyStatementsResponse`).
   */
  restore(
    versionEtag: string,
    options: RestoreOptions & { resource: "replication" | HistoryResource.REPLICATION },
  ): Promise<ReplicationRestored>;
  restore(
    versionEtag: string,
    options: RestoreOptions & { resource: "policy" | HistoryResource.POLICY },
  ): Promise<PolicyRestored>;
  restore(versionEtag: string, options: RestoreOptions): Promise<Restored>;
}

/** One deadline shared by several calls and waits. */
class Deadline {
  private readonly at: number;
  constructor(timeoutMs: number) {
    this.at = Date.now() + timeoutMs;
  }
  /**
   * What is left for the next call, in ms. Spent: `DeadlineExceeded`, thrown here, since
   * Connect takes a `timeoutMs` of 0 or less to mean no deadline at all.
   */
  left(): number {
    const left = this.at - Date.now();
    if (left <= 0) {
      throw clientError(Code.DeadlineExceeded, "the deadline of the whole helper call passed", "DEADLINE_EXCEEDED");
    }
    return left;
  }
  allows(delayMs: number): boolean {
    return Date.now() + delayMs < this.at;
  }
}

function resourceValue(resource: ResourceName): HistoryResource {
  if (resource === "replication" || resource === HistoryResource.REPLICATION) {
    return HistoryResource.REPLICATION;
  }
  if (resource === "policy" || resource === HistoryResource.POLICY) {
    return HistoryResource.POLICY;
  }
  throw clientError(
    Code.InvalidArgument,
    `resource must be "replication" or "policy", not ${String(resource)}`,
    "INVALID_ARGUMENT",
    "resource",
  );
}

function statementsOf(json: string): PolicyStatement[] {
  const parsed: unknown = JSON.parse(json || "[]");
  return Array.isArray(parsed) ? (parsed as PolicyStatement[]) : [];
}

/** The helpers on top of `rpcs`; `defaultTimeoutMs` is the client's deadline. */
export function createHelpers(rpcs: RegistryRpcs, defaultTimeoutMs: number): RegistryHelpers {
  /** The options every call of a helper carries. */
  function callOf(options: UpdateOptions | RestoreOptions, deadline: Deadline): RegistryCallOptions {
    return {
      timeoutMs: deadline.left(),
      ...(options.headers === undefined ? {} : { headers: options.headers }),
      ...(options.signal === undefined ? {} : { signal: options.signal }),
      ...(options.info === undefined ? {} : { info: options.info }),
    };
  }

  /** Run `once` (read, change, write with the read's etag) until it does not conflict. */
  async function readModifyWrite<T>(
    options: UpdateOptions,
    once: (deadline: Deadline) => Promise<T>,
  ): Promise<T> {
    const maxAttempts = options.maxAttempts ?? 5;
    if (!(maxAttempts >= 1)) {
      throw clientError(Code.InvalidArgument, "maxAttempts must be at least 1", "INVALID_ARGUMENT", "maxAttempts");
    }
    const deadline = new Deadline(options.timeoutMs ?? defaultTimeoutMs);
    for (let attempt = 1; ; attempt++) {
      try {
        return await once(deadline);
      } catch (error) {
        if (!(error instanceof EtagMismatch) || attempt >= maxAttempts) {
          throw error;
        }
        const delay = backoffMs(DEFAULT_RETRY_POLICY, attempt, undefined);
        if (!deadline.allows(delay)) {
          throw error;
        }
        await sleep(delay, options.signal).catch((reason: unknown) => {
          throw toGatewayError(reason);
        });
      }
    }
  }

  function where(options: { registryId?: string | undefined; region?: string | undefined }) {
    return { registryId: options.registryId ?? "", region: options.region ?? "" };
  }

  async function* iterConfigurationHistory(
    resource: ResourceName,
    options: HistoryOptions = {},
  ): AsyncGenerator<ConfigurationVersion, void, undefined> {
    const { registryId, region, pageSize, ...call } = options;
    const kind = resourceValue(resource);
    const seen = new Set<string>();
    let pageToken = "";
    for (;;) {
      const page = await rpcs.getConfigurationHistory(
        { ...where({ registryId, region }), resource: kind, pageSize: pageSize ?? 0, pageToken },
        call,
      );
      yield* page.versions;
      pageToken = page.nextPageToken;
      if (!pageToken) {
        return;
      }
      if (seen.has(pageToken)) {
        // A server that never ends: stop rather than loop for ever.
        throw clientError(Code.Internal, "the gateway answered a page token twice", "PAGE_LOOP");
      }
      seen.add(pageToken);
    }
  }

  async function findVersion(
    versionEtag: string,
    kind: HistoryResource,
    options: RestoreOptions,
    deadline: Deadline,
  ): Promise<{ version: ConfigurationVersion; sliceView: boolean }> {
    let pageToken = "";
    // The gateway keeps a bounded history (`history.max_versions`); the page bound only
    // guards against a server that never stops answering tokens.
    for (let pages = 0; pages < 100; pages++) {
      const page = await rpcs.getConfigurationHistory(
        { ...where(options), resource: kind, pageSize: 50, pageToken },
        callOf({ ...options, info: undefined }, deadline),
      );
      const version = page.versions.find((v) => v.etag === versionEtag);
      if (version) {
        return { version, sliceView: page.sliceView };
      }
      pageToken = page.nextPageToken;
      if (!pageToken) {
        break;
      }
    }
    throw clientError(
      Code.NotFound,
      `no recorded version has etag ${JSON.stringify(versionEtag.slice(0, 64))}`,
      "VERSION_NOT_FOUND",
    );
  }

  async function restore(versionEtag: string, options: RestoreOptions): Promise<Restored> {
    if (!versionEtag) {
      throw clientError(
        Code.InvalidArgument,
        "versionEtag is empty: pass the etag of a recorded version",
        "INVALID_ARGUMENT",
        "versionEtag",
      );
    }
    const kind = resourceValue(options.resource);
    const deadline = new Deadline(options.timeoutMs ?? defaultTimeoutMs);
    const { version, sliceView } = await findVersion(versionEtag, kind, options, deadline);
    if (version.documentOmitted) {
      // Its empty document would be written as "no rules" / "no policy".
      throw clientError(
        Code.FailedPrecondition,
        `version ${JSON.stringify(versionEtag.slice(0, 64))} was kept without its document (larger ` +
          "than the gateway's history.max_bytes): it cannot be restored; nothing was written",
        "DOCUMENT_OMITTED",
      );
    }
    const target = where(options);
    const read = () => ({ ...callOf({ ...options, info: undefined }, deadline), noCache: true });
    const write = () => callOf(options, deadline);
    if (kind === HistoryResource.REPLICATION && sliceView) {
      const etag = options.etag ?? (await rpcs.getReplicationRules(target, read())).etag;
      const rules = version.replicationConfiguration?.rules ?? [];
      return rpcs.putReplicationRules({ ...target, rules, etag }, write());
    }
    if (sliceView) {
      const etag = options.etag ?? (await rpcs.getPolicyStatements(target, read())).etag;
      return rpcs.putPolicyStatements({ ...target, statementsJson: version.statementsJson || "[]", etag }, write());
    }
    if (kind === HistoryResource.REPLICATION) {
      const etag = options.etag ?? (await rpcs.describeRegistry(target, read())).etag;
      const replicationConfiguration = version.replicationConfiguration ?? create(ReplicationConfigurationSchema);
      return rpcs.putReplicationConfiguration({ ...target, replicationConfiguration, etag }, write());
    }
    let etag = options.etag;
    if (etag === undefined) {
      try {
        etag = (await rpcs.getRegistryPolicy(target, read())).etag;
      } catch (error) {
        if (!(error instanceof NotFound)) {
          throw error;
        }
        etag = "absent"; // the etag of no policy
      }
    }
    if (!version.policyText) {
      return rpcs.deleteRegistryPolicy({ ...target, etag }, write());
    }
    return rpcs.putRegistryPolicy({ ...target, policyText: version.policyText, etag }, write());
  }

  return {
    updateReplicationRules(change, options = {}) {
      return readModifyWrite(options, async (deadline) => {
        const current = await rpcs.getReplicationRules(where(options), {
          ...callOf(options, deadline),
          noCache: true,
        });
        const rules = current.rules.map((r) => clone(ReplicationRuleSchema, r));
        const desired = ((await change(rules)) ?? rules).map((r) => create(ReplicationRuleSchema, r));
        const same =
          desired.length === current.rules.length &&
          desired.every((r, i) => {
            const was = current.rules[i];
            return was !== undefined && equals(ReplicationRuleSchema, r, was);
          });
        if (same) {
          return create(PutReplicationRulesResponseSchema, {
            registryId: current.registryId,
            rules: current.rules,
            etag: current.etag,
          });
        }
        return rpcs.putReplicationRules(
          { registryId: current.registryId, region: options.region ?? "", rules: desired, etag: current.etag },
          callOf(options, deadline),
        );
      });
    },

    updatePolicyStatements(change, options = {}) {
      return readModifyWrite(options, async (deadline) => {
        const current = await rpcs.getPolicyStatements(where(options), {
          ...callOf(options, deadline),
          noCache: true,
        });
        const statements = statementsOf(current.statementsJson);
        const changed = (await change(statements)) ?? statements;
        // Through JSON and back: what the gateway would be sent, compared with what it has.
        const statementsJson = JSON.stringify(changed);
        if (isDeepStrictEqual(JSON.parse(statementsJson), statementsOf(current.statementsJson))) {
          return create(PutPolicyStatementsResponseSchema, {
            registryId: current.registryId,
            statementsJson: current.statementsJson,
            etag: current.etag,
          });
        }
        return rpcs.putPolicyStatements(
          { registryId: current.registryId, region: options.region ?? "", statementsJson, etag: current.etag },
          callOf(options, deadline),
        );
      });
    },

    updateReplicationConfiguration(change, options = {}) {
      return readModifyWrite(options, async (deadline) => {
        // Past the cache: a stale read could make "nothing changed" look true.
        const current = await rpcs.describeRegistry(where(options), {
          ...callOf(options, deadline),
          noCache: true,
        });
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
        return rpcs.putReplicationConfiguration(
          {
            replicationConfiguration: desired,
            registryId: current.registryId,
            region: options.region ?? "",
            etag: current.etag,
          },
          callOf(options, deadline),
        );
      });
    },

    iterConfigurationHistory,
    restore: restore as RegistryHelpers["restore"],
  };
}
