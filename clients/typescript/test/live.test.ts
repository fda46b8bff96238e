/**
 * The TypeScript client against live gateways, over both transports. It starts nothing: the
 * Python suite (tests/clients/test_typescript_client.py) starts three gateways on moto, each
 * with its gRPC and its HTTP listener, and runs `node --test` on the compiled file with:
 *   GATEWAY_TARGET              host:port of the gateway's plaintext gRPC listener
 *   GATEWAY_HTTP_TARGET         host:port of its HTTP listener (Connect over HTTP/1.1)
 *   GATEWAY_LIMITED_TARGET      the same two of a gateway that rate-limits the tenant
 *   GATEWAY_LIMITED_HTTP_TARGET   (one read and one write a second, bursts of one)
 *   GATEWAY_SHARE_TARGET        the same two of a gateway where the tenant's share of the
 *   GATEWAY_SHARE_HTTP_TARGET     registry is one repository filter (`max_filters: 1`)
 *   GATEWAY_API_KEY             a key of a tenant allowed everything on GATEWAY_REGISTRY_ID,
 *                               owning the slice `payments/` (statement Sids `Payments...`)
 *   GATEWAY_REGISTRY_ID         that tenant's registry
 *   GATEWAY_FORBIDDEN_REGISTRY  a registry the tenant may not touch
 *   GATEWAY_PARTNER_ACCOUNT     an account the tenant may replicate to (us-west-2)
 * The tests run in order, as one story per transport, on one registry; the last one checks
 * that every RPC of the service was called over both.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  CallInfo,
  callOptions,
  ConnectError,
  ChangeOrigin,
  Code,
  create,
  createRegistryClient,
  DOMAIN,
  EtagMismatch,
  fromJson,
  GatewayError,
  gatewayError,
  HistoryResource,
  InvalidArgument,
  NotFound,
  PermissionDenied,
  PutReplicationConfigurationRequestSchema,
  READ_RPCS,
  RegistryConfigService,
  ReplicationRuleSchema,
  RepositoryFilterSchema,
  ResourceExhausted,
  retryable,
  toGatewayError,
  trailers,
  Unauthenticated,
  type Interceptor,
  type RegistryClientOptions,
  type TransportKind,
} from "../src/index.js";

function env(name: string): string {
  const value = process.env[name];
  assert.ok(value, `${name} must be set (the Python suite sets it)`);
  return value;
}

const registryId = env("GATEWAY_REGISTRY_ID");
const forbidden = env("GATEWAY_FORBIDDEN_REGISTRY");
const partner = env("GATEWAY_PARTNER_ACCOUNT");
const apiKey = env("GATEWAY_API_KEY");
const TRANSPORTS: readonly TransportKind[] = ["grpc", "connect"];
const targets: Record<TransportKind, { open: string; limited: string; share: string }> = {
  grpc: {
    open: env("GATEWAY_TARGET"),
    limited: env("GATEWAY_LIMITED_TARGET"),
    share: env("GATEWAY_SHARE_TARGET"),
  },
  connect: {
    open: env("GATEWAY_HTTP_TARGET"),
    limited: env("GATEWAY_LIMITED_HTTP_TARGET"),
    share: env("GATEWAY_SHARE_HTTP_TARGET"),
  },
};

/** Every RPC a client of this file sent, as "transport:Method" (checked by the last test). */
const called = new Set<string>();
function recorder(transport: TransportKind): Interceptor {
  return (next) => async (req) => {
    called.add(`${transport}:${req.method.name}`);
    return next(req);
  };
}

function client(transport: TransportKind, options: Partial<RegistryClientOptions> = {}) {
  return createRegistryClient({
    target: targets[transport].open,
    transport,
    apiKey,
    interceptors: [recorder(transport)],
    ...options,
  });
}

const POLICY = JSON.stringify({
  Version: "2012-10-17",
  Statement: [
    {
      Sid: "ReplicateFromPartner",
      Effect: "Allow",
      Principal: { AWS: `arn:aws:iam::${partner}:root` },
      Action: ["ecr:CreateRepository", "ecr:ReplicateImage"],
      Resource: `arn:aws:ecr:us-east-1:${registryId}:repository/*`,
    },
  ],
});

/** A statement of the tenant's slice: its Sid prefix, inside its own repositories. */
const SLICE_STATEMENTS = [
  {
    Sid: "PaymentsReplicateFromPartner",
    Effect: "Allow",
    Principal: { AWS: `arn:aws:iam::${partner}:root` },
    Action: ["ecr:CreateRepository", "ecr:ReplicateImage"],
    Resource: `arn:aws:ecr:us-east-1:${registryId}:repository/payments/*`,
  },
];

function rule(prefix: string, region = "eu-west-1", destination = registryId) {
  return create(ReplicationRuleSchema, {
    destinations: [{ region, registryId: destination }],
    repositoryFilters: [{ filter: prefix, filterType: "PREFIX_MATCH" }],
  });
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

test("RESOURCE_EXHAUSTED is retryable only with a RetryInfo", () => {
  const bare = toGatewayError(new ConnectError("share", Code.ResourceExhausted));
  assert.ok(bare instanceof ResourceExhausted);
  assert.equal(retryable(bare), false);
  assert.equal(retryable({ code: Code.ResourceExhausted, retryDelayMs: 0 }), true);
  assert.equal(retryable({ code: Code.ResourceExhausted, retryDelayMs: 250 }), true);
  assert.equal(retryable({ code: Code.Unavailable, retryDelayMs: undefined }), true);
  assert.equal(retryable({ code: Code.Aborted, retryDelayMs: 250 }), false);
});

test("the reads come from the contract's NO_SIDE_EFFECTS mark", () => {
  assert.deepEqual(
    [...READ_RPCS].sort(),
    ["DescribeRegistry", "GetConfigurationHistory", "GetPolicyStatements", "GetRegistryPolicy", "GetReplicationRules"],
  );
});

for (const transport of TRANSPORTS) {
  const gateway = client(transport);

  test(`[${transport}] PutReplicationConfiguration takes the AWS CLI's JSON`, async () => {
    // The body of `aws ecr put-replication-configuration --cli-input-json`, unchanged.
    const request = fromJson(PutReplicationConfigurationRequestSchema, {
      replicationConfiguration: {
        rules: [
          {
            destinations: [{ region: "eu-west-1", registryId }],
            repositoryFilters: [{ filter: "prod", filterType: "PREFIX_MATCH" }],
          },
        ],
      },
    });
    const written = await gateway.putReplicationConfiguration(request);
    assert.equal(written.registryId, registryId);
    assert.notEqual(written.etag, "");
    const [first] = written.replicationConfiguration?.rules ?? [];
    assert.deepEqual(
      first?.destinations.map((d) => [d.registryId, d.region]),
      [[registryId, "eu-west-1"]],
    );
    assert.deepEqual(first?.repositoryFilters, [
      create(RepositoryFilterSchema, { filter: "prod", filterType: "PREFIX_MATCH" }),
    ]);
  });

  test(`[${transport}] DescribeRegistry answers x-cache and x-request-id`, async () => {
    const fresh = new CallInfo();
    const first = await gateway.describeRegistry({}, callOptions({ noCache: true, info: fresh }));
    assert.equal(fresh.get("x-cache"), "miss");
    assert.notEqual(fresh.get("x-request-id"), "");
    assert.equal(fresh.attempts, 1);
    const cached = trailers();
    const second = await gateway.describeRegistry(
      { registryId },
      { onHeader: cached.onHeader, onTrailer: cached.onTrailer },
    );
    assert.equal(cached.get("x-cache"), "hit");
    assert.equal(second.etag, first.etag);
    assert.equal(second.replicationConfiguration?.rules.length, 1);
  });

  test(`[${transport}] PutRegistryPolicy, GetRegistryPolicy, DeleteRegistryPolicy with etags`, async () => {
    const put = await gateway.putRegistryPolicy({ policyText: POLICY, etag: "absent" });
    assert.equal(put.registryId, registryId);
    assert.deepEqual(JSON.parse(put.policyText), JSON.parse(POLICY));
    const got = await gateway.getRegistryPolicy({});
    assert.equal(got.etag, put.etag);
    const stale = await failure(gateway.deleteRegistryPolicy({ etag: "an-old-etag" }));
    assert.ok(stale instanceof EtagMismatch, stale.codeName);
    assert.equal(stale.code, Code.Aborted);
    assert.equal(stale.reason, "ETAG_MISMATCH");
    assert.equal(stale.currentEtag, got.etag);
    const deleted = await gateway.deleteRegistryPolicy({ etag: got.etag });
    assert.equal(deleted.etag, "absent");
    const gone = await failure(gateway.getRegistryPolicy({}));
    assert.ok(gone instanceof NotFound);
    assert.equal(gone.reason, "REGISTRY_POLICY_NOT_FOUND");
  });

  test(`[${transport}] GetReplicationRules and PutReplicationRules: the tenant's slice`, async () => {
    const before = await gateway.getReplicationRules({});
    assert.equal(before.registryId, registryId);
    assert.ok(before.rulesLimit > 0);
    const mine = [rule("payments/", "eu-west-1"), rule("payments/mirror/", "us-west-2", partner)];
    const written = await gateway.putReplicationRules({ rules: mine, etag: before.etag });
    assert.equal(written.rules.length, 2);
    assert.notEqual(written.etag, before.etag);
    const read = await gateway.getReplicationRules({}, callOptions({ noCache: true }));
    assert.equal(read.etag, written.etag);
    assert.equal(read.rulesUsed, 2);
    assert.equal(read.uniqueDestinationsUsed, 2);
    assert.deepEqual(
      read.rules.map((r) => r.repositoryFilters.map((f) => f.filter)),
      [["payments/"], ["payments/mirror/"]],
    );
    // The whole configuration holds the slice beside the rule of the first test, packed:
    // payments/ shares that rule's destination set, so it stands in it.
    const whole = await gateway.describeRegistry({}, callOptions({ noCache: true }));
    assert.equal(whole.replicationConfiguration?.rules.length, 2);
    const stale = await failure(gateway.putReplicationRules({ rules: [], etag: before.etag }));
    assert.ok(stale instanceof EtagMismatch);
    const outside = await failure(
      gateway.putReplicationRules({ rules: [rule("billing/")], etag: read.etag }),
    );
    assert.ok(outside instanceof InvalidArgument || outside instanceof PermissionDenied, outside.message);
    const cleared = await gateway.putReplicationRules({ rules: [], etag: read.etag });
    assert.equal(cleared.rules.length, 0);
  });

  test(`[${transport}] GetPolicyStatements and PutPolicyStatements: the tenant's slice`, async () => {
    const before = await gateway.getPolicyStatements({});
    assert.equal(before.registryId, registryId);
    assert.deepEqual(JSON.parse(before.statementsJson), []);
    const written = await gateway.putPolicyStatements({
      statementsJson: JSON.stringify(SLICE_STATEMENTS),
      etag: before.etag,
    });
    assert.deepEqual(JSON.parse(written.statementsJson), SLICE_STATEMENTS);
    const read = await gateway.getPolicyStatements({}, callOptions({ noCache: true }));
    assert.equal(read.etag, written.etag);
    // A statement of the slice acts only on the tenant's own repositories.
    const everywhere = [{ ...SLICE_STATEMENTS[0], Resource: `arn:aws:ecr:us-east-1:${registryId}:repository/*` }];
    const refused = await failure(
      gateway.putPolicyStatements({ statementsJson: JSON.stringify(everywhere), etag: read.etag }),
    );
    assert.equal(refused.reason, "RESOURCE_NOT_OWNED");
    const stale = await failure(
      gateway.putPolicyStatements({ statementsJson: "[]", etag: before.etag }),
    );
    assert.ok(stale instanceof EtagMismatch);
    assert.equal(stale.currentEtag, read.etag);
    const cleared = await gateway.putPolicyStatements({ statementsJson: "[]", etag: read.etag });
    assert.deepEqual(JSON.parse(cleared.statementsJson), []);
  });

  test(`[${transport}] GetConfigurationHistory: the policy's versions, newest first, paged`, async () => {
    // The statements test above wrote the policy (first statements, then none): at least
    // two versions besides the first state the gateway saw.
    const first = await gateway.getConfigurationHistory({ resource: HistoryResource.POLICY, pageSize: 2 });
    assert.equal(first.registryId, registryId);
    assert.equal(first.sliceView, false);
    assert.equal(first.versions.length, 2);
    assert.notEqual(first.nextPageToken, "");
    // The newest: the statements test's last write, through the gateway, by this tenant.
    assert.equal(first.versions[0]?.origin, ChangeOrigin.GATEWAY);
    assert.notEqual(first.versions[0]?.tenant, "");
    const older = await gateway.getConfigurationHistory({
      resource: HistoryResource.POLICY,
      pageSize: 2,
      pageToken: first.nextPageToken,
    });
    assert.ok(older.versions.length >= 1);
    const times = [...first.versions, ...older.versions].map((v) => Number(v.recordedAt?.seconds ?? 0n));
    assert.deepEqual(times, [...times].sort((a, b) => b - a));
    const forged = await failure(
      gateway.getConfigurationHistory({ resource: HistoryResource.REPLICATION, pageToken: first.nextPageToken }),
    );
    assert.ok(forged instanceof InvalidArgument, forged.message);
  });

  test(`[${transport}] updateReplicationConfiguration: read, change, write with the etag`, async () => {
    const info = new CallInfo();
    const added = await gateway.updateReplicationConfiguration(
      (config) => {
        config.rules.push(rule("staging", "us-west-2", partner));
      },
      { info },
    );
    assert.equal(info.attempts, 1);
    assert.deepEqual(
      added.replicationConfiguration?.rules.map((r) => r.repositoryFilters[0]?.filter),
      ["prod", "staging"],
    );
    // A change that changes nothing writes nothing.
    const same = await gateway.updateReplicationConfiguration(() => undefined);
    assert.equal(same.etag, added.etag);
    // A colleague writes between our read and our write: ETAG_MISMATCH, read again, change
    // applied to what they wrote, written.
    let calls = 0;
    const merged = await gateway.updateReplicationConfiguration(async (config) => {
      calls += 1;
      if (calls === 1) {
        await gateway.putReplicationConfiguration({
          replicationConfiguration: { rules: [rule("colleague")] },
        });
      }
      config.rules.push(rule("mine"));
    });
    assert.equal(calls, 2);
    assert.deepEqual(
      merged.replicationConfiguration?.rules.map((r) => r.repositoryFilters[0]?.filter),
      ["colleague", "mine"],
    );
    // Past maxAttempts conflicts, the last EtagMismatch is thrown.
    const lost = await failure(
      gateway.updateReplicationConfiguration(
        async (config) => {
          await gateway.putReplicationConfiguration({
            replicationConfiguration: { rules: [rule(`colleague-${Date.now()}`)] },
          });
          config.rules = [];
        },
        { maxAttempts: 2 },
      ),
    );
    assert.ok(lost instanceof EtagMismatch);
  });

  test(`[${transport}] PERMISSION_DENIED carries its ErrorInfo`, async () => {
    const denied = await failure(gateway.describeRegistry({ registryId: forbidden }));
    assert.ok(denied instanceof PermissionDenied);
    assert.equal(denied.code, Code.PermissionDenied);
    assert.equal(denied.domain, DOMAIN);
    assert.equal(denied.reason, "TARGET_NOT_ALLOWED");
    assert.equal(denied.info["registryId"], forbidden);
    assert.equal(denied.info["rpc"], "DescribeRegistry");
    assert.match(denied.requestId, /\S/);
    // The plain-object form, for callers who prefer it.
    const plain = gatewayError(denied);
    assert.equal(plain.codeName, "PermissionDenied");
    assert.equal(plain.metadata["registryId"], forbidden);
  });

  test(`[${transport}] INVALID_ARGUMENT lists the field violations`, async () => {
    const invalid = await failure(gateway.putRegistryPolicy({ policyText: "not JSON" }));
    assert.ok(invalid instanceof InvalidArgument);
    assert.ok(
      invalid.fieldViolations.some((v) => v.field === "policy_text"),
      JSON.stringify(invalid.fieldViolations),
    );
  });

  test(`[${transport}] no credentials is UNAUTHENTICATED`, async () => {
    const anonymous = client(transport, { apiKey: undefined });
    const refused = await failure(anonymous.describeRegistry({}));
    assert.ok(refused instanceof Unauthenticated);
    assert.equal(refused.domain, DOMAIN);
  });

  const limited = client(transport, { target: targets[transport].limited });

  test(`[${transport}] a rate-limited read is retried after the RetryInfo delay`, async () => {
    await limited.describeRegistry({});
    // The bucket is empty: RESOURCE_EXHAUSTED with a RetryInfo, waited out, then answered.
    const info = new CallInfo();
    const started = Date.now();
    const read = await limited.describeRegistry({}, callOptions({ info }));
    assert.equal(read.registryId, registryId);
    assert.equal(info.attempts, 2);
    assert.ok(Date.now() - started >= 100, "answered without waiting");
    // The same read with retries off is refused at once, and says how long to wait.
    const once = new CallInfo();
    const refused = await failure(limited.describeRegistry({}, callOptions({ info: once, retry: false })));
    assert.ok(refused instanceof ResourceExhausted);
    assert.equal(once.attempts, 1);
    assert.ok((refused.retryDelayMs ?? 0) > 0);
  });

  test(`[${transport}] a refusal past the tenant's share is not retried`, async () => {
    // Retry-safe (an etag) and patient, yet one attempt: no RetryInfo, so no repeat helps.
    const shared = client(transport, { target: targets[transport].share });
    const mine = await shared.getReplicationRules({});
    const twoFilters = create(ReplicationRuleSchema, {
      destinations: [{ region: "eu-west-1", registryId }],
      repositoryFilters: [
        { filter: "payments/a", filterType: "PREFIX_MATCH" },
        { filter: "payments/b", filterType: "PREFIX_MATCH" },
      ],
    });
    const info = new CallInfo();
    const refused = await failure(
      shared.putReplicationRules(
        { rules: [twoFilters], etag: mine.etag },
        callOptions({ info, timeoutMs: 20_000, retry: { maxAttempts: 8, initialBackoffMs: 10 } }),
      ),
    );
    assert.ok(refused instanceof ResourceExhausted, refused.message);
    assert.equal(refused.reason, "REPLICATION_QUOTA_EXCEEDED");
    assert.equal(refused.retryDelayMs, undefined);
    assert.ok(refused.quotaViolations.length > 0);
    assert.equal(info.attempts, 1);
  });

  test(`[${transport}] a write is retried only with an etag`, async () => {
    // With an etag: retried if the bucket is still empty from the test before.
    const first = await limited.putRegistryPolicy({ policyText: POLICY, etag: "absent" });
    const blind = new CallInfo();
    const refused = await failure(limited.putRegistryPolicy({ policyText: POLICY }, callOptions({ info: blind })));
    assert.ok(refused instanceof ResourceExhausted, refused.message);
    assert.equal(blind.attempts, 1);
    assert.equal(refused.reason, "RATE_LIMITED");
    assert.ok((refused.retryDelayMs ?? 0) > 0);
    assert.ok(refused.quotaViolations.length > 0);
    const safe = new CallInfo();
    const deleted = await limited.deleteRegistryPolicy({ etag: first.etag }, callOptions({ info: safe }));
    assert.equal(deleted.etag, "absent");
    assert.equal(safe.attempts, 2);
  });
}

test("every RPC of the service was called over both transports", () => {
  const expected = TRANSPORTS.flatMap((t) => RegistryConfigService.methods.map((m) => `${t}:${m.name}`));
  assert.deepEqual(
    expected.filter((name) => !called.has(name)),
    [],
  );
  assert.equal(RegistryConfigService.methods.length, 10);
});
