/**
 * gRPC-Web, the protocol browsers speak, on the catalog's gRPC port beside
 * native gRPC: unary and server-streaming calls through the same
 * authentication and policy, and CORS answered for the origins the
 * service was configured with (AGORA_WEB_ORIGIN is one) and no other.
 *
 * Node's HTTP/1.1 client offers no ALPN, and the catalog serves it HTTP/1.1:
 * the protocol of gRPC-Web clients and proxies that cannot do HTTP/2.
 *
 * Started by clients/python/test_typescript_client.py, as story.test.ts.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import { test } from "node:test";

import { Code } from "@connectrpc/connect";

import { catalogClient, grpcWebTransport } from "../src/agora.js";
import { codeOf, env } from "./support.js";

const ca = readFileSync(env("AGORA_CA_FILE"));
const catalogUrl = env("AGORA_CATALOG_URL");
type HttpVersion = "1.1" | "2";
for (const version of ["2", "1.1"] as const) {
  test(`unary and streaming calls over gRPC-Web on HTTP/${version}, with the same checks as gRPC`, () =>
    story(version));
}

async function story(version: HttpVersion) {
  const web = (token?: string) => catalogClient(grpcWebTransport({ baseUrl: catalogUrl, ca, token }, version));
  const staff = web(env("AGORA_STAFF_TOKEN"));
  const family = (await staff.createFamily({ family: { displayName: "Web" } })).family!;
  const product = (
    await staff.createProduct({
      requestId: randomUUID(),
      product: { displayName: "Web lamp", familyId: family.familyId, price: { currencyCode: "EUR", amountMinor: 1990n } },
    })
  ).product!;

  const customer = web(env("AGORA_CUSTOMER_TOKEN"));
  const got = (await customer.getProduct({ productId: product.productId })).product!;
  assert.equal(got.displayName, "Web lamp");
  let streamed = 0;
  let found = false;
  for await (const page of customer.streamProducts({}, { signal: AbortSignal.timeout(15_000) })) {
    streamed += page.products.length;
    found ||= page.products.some((p) => p.productId === product.productId);
  }
  assert.ok(streamed >= 1 && found, `the stream carried the product (${streamed} products)`);

  assert.equal(await codeOf(() => customer.discontinueProduct({ productId: product.productId })), Code.PermissionDenied);
  assert.equal(await codeOf(() => web().listFamilies({})), Code.Unauthenticated);
  assert.equal(await codeOf(() => customer.getProduct({ productId: "prd_nothing" })), Code.NotFound);
}

/** The CORS headers the catalog answers a preflight from `origin` with. */
function preflight(origin: string): Promise<http2.IncomingHttpHeaders> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(catalogUrl, { ca });
    session.on("error", reject);
    const request = session.request({
      ":method": "OPTIONS",
      ":path": "/agora.catalog.v1.CatalogService/GetProduct",
      origin,
      "access-control-request-method": "POST",
      "access-control-request-headers": "authorization,content-type,x-grpc-web,x-user-agent",
    });
    request.on("response", (headers) => {
      request.close();
      session.close();
      resolve(headers);
    });
    request.on("error", reject);
    request.end();
  });
}

test("CORS: preflights from the configured origin are answered, others are not", async () => {
  const origin = env("AGORA_WEB_ORIGIN");
  const allowed = await preflight(origin);
  assert.equal(allowed["access-control-allow-origin"], origin);
  const headers = String(allowed["access-control-allow-headers"]).toLowerCase();
  for (const name of ["authorization", "content-type", "x-grpc-web"]) {
    assert.ok(headers.includes(name), `${name} allowed: ${headers}`);
  }
  const foreign = await preflight("https://elsewhere.example.com");
  assert.equal(foreign["access-control-allow-origin"], undefined, "an origin not listed gets no CORS answer");
});
