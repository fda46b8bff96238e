/**
 * The smallest authorized call: DescribeRegistry, printed as AWS-shaped JSON.
 *
 *   GATEWAY_TARGET=127.0.0.1:50051 GATEWAY_API_KEY=<key> node build/src/example.js
 */
import { toJson } from "@bufbuild/protobuf";
import {
  createRegistryClient,
  DescribeRegistryResponseSchema,
  gatewayError,
  trailers,
} from "./index.js";

const client = createRegistryClient({
  target: process.env["GATEWAY_TARGET"] ?? "127.0.0.1:50051",
  apiKey: process.env["GATEWAY_API_KEY"],
});
const trailer = trailers();
try {
  const registry = await client.describeRegistry({}, { onTrailer: trailer.onTrailer });
  const json = toJson(DescribeRegistryResponseSchema, registry, {
    alwaysEmitImplicit: true,
  }) as Record<string, unknown>;
  console.log(JSON.stringify({ ...json, xCache: trailer.get("x-cache") }));
} catch (error) {
  const details = gatewayError(error);
  console.error(`${details.codeName} ${details.reason}: ${details.message} (request ${details.requestId})`);
  process.exitCode = 1;
}
