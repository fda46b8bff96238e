/**
 * The TypeScript client's helpers and its error hierarchy against a live gateway, over both
 * transports. It starts nothing: tests/clients/test_typescript_helpers.py starts a gateway
 * on moto (gRPC and HTTP listeners), a TCP peer that accepts and never answers, and runs
 * `node --test` on the compiled file with:
 *   GATEWAY_TARGET, GATEWAY_HTTP_TARGET   the gateway's gRPC and HTTP listeners
 *   GATEWAY_API_KEY        tenant `payments`: everything on GATEWAY_REGISTRY_ID, owning the
 *                          slice `payments/` (statement Sids `Payments...`)
 *   GATEWAY_SLICE_API_KEY  tenant `team`: only the slice RPCs and the history (a slice view),
 *                          owning `team/` (Sids `Team...`)
 *   GATEWAY_REGISTRY_ID    the registry
 *   GATEWAY_SILENT_TARGET  host:port of a peer that accepts connections and never answers
 *   GATEWAY_CLOSED_TARGET  host:port where nothing listens
 * The tests of one transport run in order on one registry; each reads what it depends on.
 */
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import {
  CallInfo,
  CLIENT_DOMAIN,
  Cancelled,
  Code,
  create,
  createRegistryClient,
  DeadlineExceeded,
  EtagMismatch,
  GatewayError,
  HistoryResource,
  InvalidArgument,
  NotFound,
  ReplicationRuleSchema,
  Unavailable,
  VersionNotFound,
  type Interceptor,
  type RegistryClientOptions,
  type RetryEvent,
  type TransportKind,
} from "../src/index.js";

function env(name: string): string {
  const value = process.env[name];
  assert.ok(value, `${name} must be set (the Python suite sets it)`);
  return value;
}

const registryId = env("GATEWAY_REGISTRY_ID");
const apiKey = env("GATEWAY_API_KEY");
const sliceKey = env("GATEWAY_SLICE_API_KEY");
const silent = env("GATEWAY_SILENT_TARGET");
const closed = env("GATEWAY_CLOSED_TARGET");
const TRANSPORTS: readonly TransportKind[] = ["grpc", "connect"];
const targets: Record<TransportKind, string> = {
  grpc: env("GATEWAY_TARGET"),
  connect: env("GATEWAY_HTTP_TARGET"),
};

/** Counts the RPCs a client sent (once per attempt), by name. */
class Recorder {
  readonly counts = new Map<string, number>();
  readonly interceptor: Interceptor = (next) => async (req) => {
    this.counts.set(req.method.name, this.count(req.method.name) + 1);
    return next(req);
  };
  count(rpc: string): number {
    return this.counts.get(rpc) ?? 0;
  }
}

function client(transport: TransportKind, options: Partial<RegistryClientOptions> = {}) {
  return createRegistryClient({ target: targets[transport], transport, apiKey, ...options });
}

function rule(prefix: string, region = "eu-west-1") {
  return create(ReplicationRuleSchema, {
    destinations: [{ region, registryId }],
    repositoryFilters: [{ filter: prefix, filterType: "PREFIX_MATCH" }],
  });
}

function statement(sid: string, prefix: string) {
  return {
    Sid: sid,
    Effect: "Allow",
    Principal: { AWS: `arn:aws:iam::${registryId}:root` },
    Action: ["ecr:ReplicateImage"],
    Resource: `arn:aws:ecr:us-east-1:${registryId}:repository/${prefix}*`,
  };
}

/** A whole registry policy the tenant `payments` may write. */
function policy(): string {
  return JSON.stringify({ Version: "2012-10-17", Statement: [statement("Whole", "")] });
}

// A tenant's rules read back in their canonical form: its filters of one destination set
// share one rule, sorted; the filters, in order, are what the tests compare.
function filters(rules: readonly { repositoryFilters: readonly { filter: string }[] }[]): string[] {
  return rules.flatMap((r) => r.repositoryFilters.map((f) => f.filter));
}

/** Fails the test when a call that should fail does not, and returns what it threw. */
async function failure(call: Promise<unknown>): Promise<GatewayError> {
  try {
    await call;
  } catch (error) {
    assert.ok(error instanceof GatewayError, `not a GatewayError: ${String(error)}`);
    return error;
  }
  assert.fail("the call succeeded");
}

for (const transport of TRANSPORTS) {
  const recorder = new Recorder();
  const gateway = client(transport, { interceptors: [recorder.interceptor] });

  test(`[${transport}] a deadline the client enforces is a DeadlineExceeded`, async () => {
    // The peer never answers: only the client's own timer can end these calls.
    const hung = client(transport, { target: silent });
    const perCall = await failure(hung.describeRegistry({}, { timeoutMs: 300 }));
    assert.ok(perCall instanceof DeadlineExceeded, `${perCall.constructor.name}: ${perCall.message}`);
    assert.equal(perCall.code, Code.DeadlineExceeded);
    assert.equal(perCall.domain, "");
    const byDefault = client(transport, { target: silent, defaultTimeoutMs: 300 });
    const write = await failure(byDefault.putRegistryPolicy({ policyText: "{}", etag: "absent" }));
    assert.ok(write instanceof DeadlineExceeded, write.constructor.name);
    const helper = await failure(hung.updateReplicationRules(() => [], { timeoutMs: 300 }));
    assert.ok(helper instanceof DeadlineExceeded, helper.constructor.name);
  });

  test(`[${transport}] the caller's AbortSignal is a Cancelled`, async () => {
    const hung = client(transport, { target: silent });
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 100);
    const cancelled = await failure(hung.getRegistryPolicy({}, { signal: controller.signal }));
    assert.ok(cancelled instanceof Cancelled, `${cancelled.constructor.name}: ${cancelled.message}`);
    assert.equal(cancelled.code, Code.Canceled);
  });

  test(`[${transport}] a refused connection is an Unavailable, retried with a hook per retry`, async () => {
    const events: RetryEvent[] = [];
    const nobody = client(transport, {
      target: closed,
      retry: { maxAttempts: 3, initialBackoffMs: 10, onRetry: (e) => events.push(e) },
    });
    const info = new CallInfo();
    const refused = await failure(nobody.describeRegistry({}, { info }));
    assert.ok(refused instanceof Unavailable, `${refused.constructor.name}: ${refused.message}`);
    assert.equal(info.attempts, 3);
    assert.deepEqual(
      events.map((e) => [e.rpc, e.attempt, e.error.code]),
      [
        ["DescribeRegistry", 1, Code.Unavailable],
        ["DescribeRegistry", 2, Code.Unavailable],
      ],
    );
    assert.ok(events.every((e) => e.delayMs >= 0));
  });

  test(`[${transport}] x-cache and the request id are in one place: CallInfo`, async () => {
    const fresh = new CallInfo();
    await gateway.describeRegistry({}, { noCache: true, info: fresh });
    assert.equal(fresh.cache, "miss");
    assert.equal(fresh.metadata.get("x-cache"), "miss");
    assert.match(fresh.requestId, /\S/);
    assert.equal(fresh.metadata.get("x-request-id"), fresh.requestId);
    const cached = new CallInfo();
    await gateway.describeRegistry({}, { info: cached });
    assert.equal(cached.cache, "hit");
    assert.equal(cached.metadata.get("x-cache"), "hit");
  });

  test(`[${transport}] a write names the destinations it could not verify: CallInfo`, async () => {
    // 210987654321/us-west-2: the tenant's allowed destination outside the gateway's config
    // (tests/support/helpers.py), whose registry policy the gateway cannot read.
    const outside = new CallInfo();
    const plan = await gateway.putReplicationConfiguration(
      {
        replicationConfiguration: {
          rules: [{ destinations: [{ region: "us-west-2", registryId: "210987654321" }] }],
        },
        validateOnly: true,
      },
      { info: outside },
    );
    assert.deepEqual(outside.unverifiedDestinations, ["210987654321/us-west-2"]);
    // The dry run's plan names them too (the response's unverifiedDestinations).
    assert.deepEqual(
      plan.unverifiedDestinations.map((d) => `${d.registryId}/${d.region}`),
      ["210987654321/us-west-2"],
    );
    const same = new CallInfo();
    const verified = await gateway.putReplicationConfiguration(
      {
        replicationConfiguration: { rules: [{ destinations: [{ region: "eu-west-1", registryId }] }] },
        validateOnly: true,
      },
      { info: same },
    );
    assert.deepEqual(same.unverifiedDestinations, []);
    assert.deepEqual(verified.unverifiedDestinations, []);
  });

  test(`[${transport}] every read takes noCache`, async () => {
    const reads = {
      DescribeRegistry: (o: { noCache: boolean; info: CallInfo }) => gateway.describeRegistry({}, o),
      GetReplicationRules: (o: { noCache: boolean; info: CallInfo }) => gateway.getReplicationRules({}, o),
      GetPolicyStatements: (o: { noCache: boolean; info: CallInfo }) => gateway.getPolicyStatements({}, o),
    };
    for (const [rpc, read] of Object.entries(reads)) {
      await read({ noCache: false, info: new CallInfo() });
      const fresh = new CallInfo();
      await read({ noCache: true, info: fresh });
      assert.equal(fresh.cache, "miss", rpc);
    }
    // GetRegistryPolicy: a policy to read, removed afterwards.
    const none = await gateway.getRegistryPolicy({}, { noCache: true }).then(
      (p) => p.etag,
      () => "absent",
    );
    const put = await gateway.putRegistryPolicy({ policyText: policy(), etag: none });
    await gateway.getRegistryPolicy({});
    const policyRead = new CallInfo();
    await gateway.getRegistryPolicy({}, { noCache: true, info: policyRead });
    assert.equal(policyRead.cache, "miss");
    await gateway.deleteRegistryPolicy({ etag: put.etag });
    // The history is read from its store, not the cache: accepted, and no x-cache.
    const history = new CallInfo();
    await gateway.getConfigurationHistory(
      { resource: HistoryResource.REPLICATION },
      { noCache: true, info: history },
    );
    assert.equal(history.cache, "");
  });

  test(`[${transport}] updateReplicationRules: read fresh, change, write with the slice's etag`, async () => {
    await gateway.updateReplicationRules(() => []);
    const writes = recorder.count("PutReplicationRules");
    const info = new CallInfo();
    const added = await gateway.updateReplicationRules(
      (rules) => {
        rules.push(rule("payments/a"));
      },
      { info },
    );
    assert.deepEqual(filters(added.rules), ["payments/a"]);
    assert.equal(recorder.count("PutReplicationRules"), writes + 1);
    assert.equal(info.attempts, 1);
    // Nothing changed: nothing written, the current etag answered.
    const same = await gateway.updateReplicationRules((rules) => rules);
    assert.equal(same.etag, added.etag);
    assert.deepEqual(filters(same.rules), ["payments/a"]);
    assert.equal(recorder.count("PutReplicationRules"), writes + 1);
    // Plain objects as well as messages.
    const plain = await gateway.updateReplicationRules((rules) => [
      ...rules,
      {
        destinations: [{ region: "eu-west-1", registryId }],
        repositoryFilters: [{ filter: "payments/b", filterType: "PREFIX_MATCH" }],
      },
    ]);
    assert.deepEqual(filters(plain.rules), ["payments/a", "payments/b"]);
    // A colleague writes the slice between our read and our write: ETAG_MISMATCH, read
    // again (fresh), change applied to what they wrote, written.
    let calls = 0;
    const merged = await gateway.updateReplicationRules(async (rules) => {
      calls += 1;
      if (calls === 1) {
        const now = await gateway.getReplicationRules({}, { noCache: true });
        await gateway.putReplicationRules({ rules: [rule("payments/colleague")], etag: now.etag });
      }
      rules.push(rule("payments/mine"));
    });
    assert.equal(calls, 2);
    assert.deepEqual(filters(merged.rules), ["payments/colleague", "payments/mine"]);
    // Past maxAttempts conflicts, the last EtagMismatch.
    const lost = await failure(
      gateway.updateReplicationRules(
        async (rules) => {
          const now = await gateway.getReplicationRules({}, { noCache: true });
          await gateway.putReplicationRules({ rules: [rule(`payments/c${Date.now()}`)], etag: now.etag });
          rules.length = 0;
        },
        { maxAttempts: 2 },
      ),
    );
    assert.ok(lost instanceof EtagMismatch);
    await gateway.updateReplicationRules(() => []);
  });

  test(`[${transport}] updateReplicationRules: one deadline for the whole loop`, async () => {
    const before = await gateway.getReplicationRules({}, { noCache: true });
    // Each call alone would have time; the read, the change and the write together do not.
    const late = await failure(
      gateway.updateReplicationRules(
        async (rules) => {
          await sleep(3_500);
          rules.push(rule("payments/late"));
        },
        { timeoutMs: 3_000 },
      ),
    );
    assert.ok(late instanceof DeadlineExceeded, `${late.constructor.name}: ${late.message}`);
    const after = await gateway.getReplicationRules({}, { noCache: true });
    assert.equal(after.etag, before.etag);
  });

  test(`[${transport}] updatePolicyStatements: statements as JSON objects, with the etag`, async () => {
    await gateway.updatePolicyStatements(() => []);
    const writes = recorder.count("PutPolicyStatements");
    const added = await gateway.updatePolicyStatements((statements) => {
      statements.push(statement("PaymentsOne", "payments/"));
    });
    assert.deepEqual(JSON.parse(added.statementsJson), [statement("PaymentsOne", "payments/")]);
    assert.equal(recorder.count("PutPolicyStatements"), writes + 1);
    const same = await gateway.updatePolicyStatements((statements) => statements.map((s) => ({ ...s })));
    assert.equal(same.etag, added.etag);
    assert.equal(recorder.count("PutPolicyStatements"), writes + 1);
    let calls = 0;
    const merged = await gateway.updatePolicyStatements(async (statements) => {
      calls += 1;
      if (calls === 1) {
        const now = await gateway.getPolicyStatements({}, { noCache: true });
        const theirs = [...JSON.parse(now.statementsJson), statement("PaymentsTheirs", "payments/")];
        await gateway.putPolicyStatements({ statementsJson: JSON.stringify(theirs), etag: now.etag });
      }
      return [...statements, statement("PaymentsMine", "payments/")];
    });
    assert.equal(calls, 2);
    assert.deepEqual(
      JSON.parse(merged.statementsJson).map((s: { Sid: string }) => s.Sid),
      ["PaymentsOne", "PaymentsTheirs", "PaymentsMine"],
    );
    const cleared = await gateway.updatePolicyStatements(() => []);
    assert.deepEqual(JSON.parse(cleared.statementsJson), []);
  });

  test(`[${transport}] iterConfigurationHistory: every version, newest first, page by page`, async () => {
    const all = await gateway.getConfigurationHistory({ resource: HistoryResource.POLICY, pageSize: 50 });
    assert.ok(all.versions.length >= 3, String(all.versions.length));
    const pages = recorder.count("GetConfigurationHistory");
    const iterated: string[] = [];
    for await (const version of gateway.iterConfigurationHistory("policy", { pageSize: 1 })) {
      iterated.push(version.etag);
    }
    assert.deepEqual(iterated, all.versions.map((v) => v.etag));
    assert.equal(recorder.count("GetConfigurationHistory"), pages + all.versions.length);
    // Stop early: no more pages are read.
    const before = recorder.count("GetConfigurationHistory");
    for await (const version of gateway.iterConfigurationHistory(HistoryResource.POLICY, { pageSize: 1 })) {
      assert.equal(version.etag, iterated[0]);
      break;
    }
    assert.equal(recorder.count("GetConfigurationHistory"), before + 1);
  });

  test(`[${transport}] restore: a recorded version written back over the current etag`, async () => {
    const start = await gateway.describeRegistry({}, { noCache: true });
    const first = await gateway.putReplicationConfiguration({
      replicationConfiguration: { rules: [rule(`restore-a-${transport}`)] },
      etag: start.etag,
    });
    const second = await gateway.putReplicationConfiguration({
      replicationConfiguration: { rules: [rule(`restore-b-${transport}`)] },
      etag: first.etag,
    });
    const stale = await failure(gateway.restore(first.etag, { resource: "replication", etag: first.etag }));
    assert.ok(stale instanceof EtagMismatch);
    assert.equal(stale.currentEtag, second.etag);
    const restored = await gateway.restore(first.etag, { resource: "replication", etag: second.etag });
    assert.equal(restored.$typeName, "ecr.registry.v1.PutReplicationConfigurationResponse");
    const now = await gateway.describeRegistry({}, { noCache: true });
    assert.deepEqual(filters(now.replicationConfiguration?.rules ?? []), [`restore-a-${transport}`]);
    // Without an etag the client reads the current one itself.
    await gateway.restore(second.etag, { resource: HistoryResource.REPLICATION });
    assert.equal((await gateway.describeRegistry({}, { noCache: true })).etag, second.etag);

    const missing = await failure(gateway.restore("no-such-etag", { resource: "replication" }));
    assert.ok(missing instanceof VersionNotFound && missing instanceof NotFound, missing.constructor.name);
    assert.equal(missing.reason, "VERSION_NOT_FOUND");
    assert.equal(missing.domain, CLIENT_DOMAIN);
    const empty = await failure(gateway.restore("", { resource: "policy" }));
    assert.ok(empty instanceof InvalidArgument);
    assert.deepEqual(empty.fieldViolations.map((v) => v.field), ["versionEtag"]);
    const bogus = await failure(gateway.restore(first.etag, { resource: "bogus" as "policy" }));
    assert.ok(bogus instanceof InvalidArgument);
  });

  test(`[${transport}] restore of "no policy" deletes the policy`, async () => {
    const current = await gateway.getRegistryPolicy({}, { noCache: true }).then(
      (p) => p.etag,
      () => "absent",
    );
    const put = await gateway.putRegistryPolicy({
      policyText: policy(),
      etag: current,
    });
    const deleted = await gateway.restore("absent", { resource: "policy", etag: put.etag });
    assert.equal(deleted.$typeName, "ecr.registry.v1.DeleteRegistryPolicyResponse");
    const gone = await failure(gateway.getRegistryPolicy({}, { noCache: true }));
    assert.ok(gone instanceof NotFound);
  });

  test(`[${transport}] a slice tenant restores its own slice`, async () => {
    const team = client(transport, { apiKey: sliceKey });
    await team.updateReplicationRules(() => []);
    const one = await team.updateReplicationRules(() => [rule(`team/${transport}-one`)]);
    const two = await team.updateReplicationRules((rules) => [...rules, rule(`team/${transport}-two`)]);
    const versions = [];
    for await (const version of team.iterConfigurationHistory("replication")) {
      versions.push(version.etag);
    }
    assert.deepEqual(versions.slice(0, 2), [two.etag, one.etag]);
    const rules = await team.restore(one.etag, { resource: "replication" });
    assert.equal(rules.$typeName, "ecr.registry.v1.PutReplicationRulesResponse");
    const now = await team.getReplicationRules({}, { noCache: true });
    assert.deepEqual(filters(now.rules), [`team/${transport}-one`]);

    await team.updatePolicyStatements(() => []);
    const mine = await team.updatePolicyStatements(() => [statement("TeamOne", "team/")]);
    await team.updatePolicyStatements((s) => [...s, statement("TeamTwo", "team/")]);
    const statements = await team.restore(mine.etag, { resource: "policy" });
    assert.equal(statements.$typeName, "ecr.registry.v1.PutPolicyStatementsResponse");
    const read = await team.getPolicyStatements({}, { noCache: true });
    assert.deepEqual(JSON.parse(read.statementsJson), [statement("TeamOne", "team/")]);
    await team.updateReplicationRules(() => []);
    await team.updatePolicyStatements(() => []);
  });
}
