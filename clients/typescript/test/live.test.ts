/**
 * The TypeScript client against a live gateway. It starts nothing: the Python suite
 * (tests/clients/test_typescript_client.py) starts a gateway on moto and runs
 * `node --test` on the compiled file with the gateway in the environment:
 *   GATEWAY_TARGET              host:port of a plaintext listener
 *   GATEWAY_API_KEY             a key of a tenant allowed everything on GATEWAY_REGISTRY_ID
 *   GATEWAY_REGISTRY_ID         that tenant's registry
 *   GATEWAY_FORBIDDEN_REGISTRY  a registry the tenant may not touch
 * The tests run in order, as one story, on one registry.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { create, fromJson } from "@bufbuild/protobuf";
import {
  Code,
  createRegistryClient,
  DOMAIN,
  gatewayError,
  PutReplicationConfigurationRequestSchema,
  RepositoryFilterSchema,
  trailers,
} from "../src/index.js";

function env(name: string): string {
  const value = process.env[name];
  assert.ok(value, `${name} must be set (the Python suite sets it)`);
  return value;
}

const target = env("GATEWAY_TARGET");
const registryId = env("GATEWAY_REGISTRY_ID");
const forbidden = env("GATEWAY_FORBIDDEN_REGISTRY");
const client = createRegistryClient({ target, apiKey: env("GATEWAY_API_KEY") });

const POLICY = JSON.stringify({
  Version: "2012-10-17",
  Statement: [
    {
      Sid: "ReplicateFromPartner",
      Effect: "Allow",
      Principal: { AWS: "arn:aws:iam::210987654321:root" },
      Action: ["ecr:CreateRepository", "ecr:ReplicateImage"],
      Resource: `arn:aws:ecr:us-east-1:${registryId}:repository/*`,
    },
  ],
});

/** Fails the test when a call that should fail does not, and returns its details. */
async function failure(call: Promise<unknown>) {
  try {
    await call;
  } catch (error) {
    return gatewayError(error);
  }
  assert.fail("the call succeeded");
}

test("PutReplicationConfiguration takes the AWS CLI's JSON", async () => {
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
  const written = await client.putReplicationConfiguration(request);
  assert.equal(written.registryId, registryId);
  assert.notEqual(written.etag, "");
  const [rule] = written.replicationConfiguration?.rules ?? [];
  assert.deepEqual(
    rule?.destinations.map((d) => [d.registryId, d.region]),
    [[registryId, "eu-west-1"]],
  );
  assert.deepEqual(
    rule?.repositoryFilters,
    [create(RepositoryFilterSchema, { filter: "prod", filterType: "PREFIX_MATCH" })],
  );
});

test("DescribeRegistry answers x-cache in its trailers", async () => {
  const fresh = trailers();
  const first = await client.describeRegistry(
    {},
    { onTrailer: fresh.onTrailer, headers: { "cache-control": "no-cache" } },
  );
  assert.equal(fresh.get("x-cache"), "miss");
  assert.notEqual(fresh.get("x-request-id"), "");
  const cached = trailers();
  const second = await client.describeRegistry({ registryId }, { onTrailer: cached.onTrailer });
  assert.equal(cached.get("x-cache"), "hit");
  assert.equal(second.etag, first.etag);
  assert.equal(second.replicationConfiguration?.rules.length, 1);
});

test("PutRegistryPolicy, GetRegistryPolicy and DeleteRegistryPolicy with etags", async () => {
  const put = await client.putRegistryPolicy({ policyText: POLICY, etag: "absent" });
  assert.equal(put.registryId, registryId);
  assert.deepEqual(JSON.parse(put.policyText), JSON.parse(POLICY));
  const got = await client.getRegistryPolicy({});
  assert.equal(got.etag, put.etag);
  const stale = await failure(client.deleteRegistryPolicy({ etag: "an-old-etag" }));
  assert.equal(stale.code, Code.Aborted);
  assert.equal(stale.reason, "ETAG_MISMATCH");
  assert.equal(stale.metadata["currentEtag"], got.etag);
  const deleted = await client.deleteRegistryPolicy({ etag: got.etag });
  assert.equal(deleted.etag, "absent");
  const gone = await failure(client.getRegistryPolicy({}));
  assert.equal(gone.code, Code.NotFound);
  assert.equal(gone.reason, "REGISTRY_POLICY_NOT_FOUND");
});

test("PERMISSION_DENIED carries its ErrorInfo", async () => {
  const denied = await failure(client.describeRegistry({ registryId: forbidden }));
  assert.equal(denied.code, Code.PermissionDenied);
  assert.equal(denied.domain, DOMAIN);
  assert.equal(denied.reason, "TARGET_NOT_ALLOWED");
  assert.equal(denied.metadata["registryId"], forbidden);
  assert.equal(denied.metadata["rpc"], "DescribeRegistry");
  assert.match(denied.requestId, /\S/);
});

test("INVALID_ARGUMENT lists the field violations", async () => {
  const invalid = await failure(client.putRegistryPolicy({ policyText: "not JSON" }));
  assert.equal(invalid.code, Code.InvalidArgument);
  assert.ok(
    invalid.fieldViolations.some((v) => v.field === "policy_text"),
    JSON.stringify(invalid.fieldViolations),
  );
});

test("no credentials is UNAUTHENTICATED", async () => {
  const anonymous = createRegistryClient({ target });
  const refused = await failure(anonymous.describeRegistry({}));
  assert.equal(refused.code, Code.Unauthenticated);
  assert.equal(refused.domain, DOMAIN);
});
