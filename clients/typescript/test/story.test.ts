/**
 * The story of Agora told by the TypeScript client over native gRPC, TLS
 * and tokens, against the four running services: staff make a family, a
 * product, a customer and an offer; the customer, with a token of their
 * own, reads the offers they can have now and keeps a shopping list; a
 * downstream service's certificate reads the catalog's change feed; what a
 * customer may not do is refused with its code.
 *
 * Started by clients/python/test_typescript_client.py, which runs the
 * services and passes where they are (AGORA_<SERVICE>_URL), the CA
 * (AGORA_CA_FILE), a staff token (AGORA_STAFF_TOKEN), the shopping
 * service's certificate and key (AGORA_FEED_CERT_FILE, AGORA_FEED_KEY_FILE)
 * and how to mint a customer's token (AGORA_DEV, AGORA_DEV_DIR).
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";

import {
  catalog,
  catalogClient,
  customersClient,
  grpcTransport,
  offers,
  offersClient,
  shoppingClient,
} from "../src/agora.js";
import { codeOf, env } from "./support.js";

const ca = readFileSync(env("AGORA_CA_FILE"));
const url = (service: string) => env(`AGORA_${service.toUpperCase()}_URL`);
const as = (service: string, token?: string) => grpcTransport({ baseUrl: url(service), ca, token });

/** A customer's token, minted by the development issuer. */
function customerToken(customerId: string): string {
  return execFileSync(env("AGORA_DEV"), ["token", "customer", customerId, "--dir", env("AGORA_DEV_DIR")], {
    encoding: "utf8",
  }).trim();
}

test("a shopper's story over native gRPC with TLS and tokens", async () => {
  const staff = env("AGORA_STAFF_TOKEN");
  const cat = catalogClient(as("catalog", staff));
  const family = (await cat.createFamily({ family: { displayName: "Lamps" } })).family!;
  const product = (
    await cat.createProduct({
      requestId: randomUUID(),
      product: {
        displayName: "Desk lamp",
        familyId: family.familyId,
        price: { currencyCode: "EUR", amountMinor: 3990n },
      },
    })
  ).product!;
  assert.equal(product.state, catalog.ProductState.ACTIVE);

  const customer = (
    await customersClient(as("customers", staff)).createCustomer({
      customer: { givenName: "Grace", familyName: "Hopper", email: "grace@example.com" },
    })
  ).customer!;
  const now = Date.now();
  const offer = (
    await offersClient(as("offers", staff)).createOffer({
      offer: {
        productId: product.productId,
        customerId: customer.customerId,
        kind: offers.OfferKind.SPEED,
        discountPercent: 15,
        startTime: timestampFromMs(now - 60_000),
        endTime: timestampFromMs(now + 3_600_000),
      },
    })
  ).offer!;

  // The customer signs in: their id is their token's subject.
  const me = customerToken(customer.customerId);
  const available = await offersClient(as("offers", me)).listAvailableOffers({ customerId: customer.customerId });
  assert.equal(available.fallback, false);
  assert.deepEqual(
    available.offers.map((o) => o.offerId),
    [offer.offerId],
  );

  const lists = shoppingClient(as("shopping", me));
  const list = (
    await lists.createShoppingList({ shoppingList: { customerId: customer.customerId, title: "Study" } })
  ).shoppingList!;
  const withItem = (await lists.addItem({ listId: list.listId, productId: product.productId, quantity: 2 }))
    .shoppingList!;
  assert.deepEqual(
    withItem.items.map((i) => [i.productId, i.quantity, i.available]),
    [[product.productId, 2, true]],
  );

  // What a customer may not do, and a mistake of the caller.
  assert.equal(
    await codeOf(() => catalogClient(as("catalog", me)).discontinueProduct({ productId: product.productId })),
    Code.PermissionDenied,
  );
  assert.equal(await codeOf(() => cat.createFamily({ family: { displayName: "" } })), Code.InvalidArgument);
  assert.equal(await codeOf(() => catalogClient(as("catalog")).listFamilies({})), Code.Unauthenticated);
});

test("a downstream service reads the catalog's change feed", async () => {
  const cat = catalogClient(as("catalog", env("AGORA_STAFF_TOKEN")));
  const family = (await cat.createFamily({ family: { displayName: "Reading" } })).family!;
  const created = (
    await cat.createProduct({
      requestId: randomUUID(),
      product: {
        displayName: "Reading lamp",
        familyId: family.familyId,
        price: { currencyCode: "EUR", amountMinor: 2490n },
      },
    })
  ).product!;
  // Feeds are for the services the context map names: shopping's certificate.
  const feed = catalogClient(
    grpcTransport({
      baseUrl: url("catalog"),
      ca,
      cert: readFileSync(env("AGORA_FEED_CERT_FILE")),
      key: readFileSync(env("AGORA_FEED_KEY_FILE")),
    }),
  );
  let seen = 0;
  let lastSequence = 0n;
  for await (const message of feed.watchCatalogEvents({ afterSequence: 0n }, { signal: AbortSignal.timeout(15_000) })) {
    const event = message.event!;
    assert.ok(event.sequence > lastSequence, "sequences increase");
    assert.ok(message.headSequence >= event.sequence);
    lastSequence = event.sequence;
    seen += 1;
    if (event.kind.case === "productCreated" && event.kind.value.product?.productId === created.productId) {
      break;
    }
  }
  assert.ok(seen >= 1, "the feed carried the product's creation");
});
