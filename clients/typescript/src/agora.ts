/**
 * Agora's four services as TypeScript clients: the messages and service
 * descriptors protobuf-es generates from proto/ (src/gen/), called over
 * Connect's native gRPC transport for Node (HTTP/2, TLS), or over gRPC-Web,
 * the protocol a browser can speak, which every service's gRPC port serves
 * beside native gRPC.
 *
 * A caller brings the CA that signed the services' certificates and, for
 * every call but health, a bearer token from the issuer the services trust;
 * a downstream service reading a change feed brings its client certificate
 * too (mTLS), since feeds are for the services the context map names.
 */
import { type Client, type Interceptor, type Transport, createClient } from "@connectrpc/connect";
import { createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";

import { CatalogService } from "./gen/agora/catalog/v1/catalog_service_pb.js";
import { CustomerService } from "./gen/agora/customers/v1/customers_service_pb.js";
import { OfferService } from "./gen/agora/offers/v1/offers_service_pb.js";
import { ShoppingListService } from "./gen/agora/shopping/v1/shopping_service_pb.js";

export * as catalog from "./gen/agora/catalog/v1/catalog_service_pb.js";
export * as customers from "./gen/agora/customers/v1/customers_service_pb.js";
export * as offers from "./gen/agora/offers/v1/offers_service_pb.js";
export * as shopping from "./gen/agora/shopping/v1/shopping_service_pb.js";

/** How to reach one service. */
export interface Target {
  /** `https://host:port` */
  baseUrl: string;
  /** PEM of the CA that signed the service's certificate. */
  ca: string | Buffer;
  /** A bearer token, sent as `authorization` on every call. */
  token?: string;
  /** A client certificate and its key (PEM), for mTLS. */
  cert?: string | Buffer;
  key?: string | Buffer;
}

/** Sends `token` as the bearer of every call. */
function bearer(token: string): Interceptor {
  return (next) => async (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
}

/** A native gRPC transport (HTTP/2 over TLS) to `target`. */
export function grpcTransport(target: Target): Transport {
  return createGrpcTransport({
    baseUrl: target.baseUrl,
    interceptors: target.token ? [bearer(target.token)] : [],
    nodeOptions: { ca: target.ca, cert: target.cert, key: target.key },
  });
}

/** A gRPC-Web transport (over TLS, HTTP/2 unless `httpVersion` says
 * 1.1) to `target`: what a page in a browser uses, through
 * `@connectrpc/connect-web` there. */
export function grpcWebTransport(target: Target, httpVersion: "1.1" | "2" = "2"): Transport {
  return createGrpcWebTransport({
    baseUrl: target.baseUrl,
    httpVersion,
    interceptors: target.token ? [bearer(target.token)] : [],
    nodeOptions: { ca: target.ca, cert: target.cert, key: target.key },
  });
}

export const catalogClient = (t: Transport): Client<typeof CatalogService> => createClient(CatalogService, t);
export const customersClient = (t: Transport): Client<typeof CustomerService> => createClient(CustomerService, t);
export const offersClient = (t: Transport): Client<typeof OfferService> => createClient(OfferService, t);
export const shoppingClient = (t: Transport): Client<typeof ShoppingListService> =>
  createClient(ShoppingListService, t);
