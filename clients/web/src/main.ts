/**
 * Agora's storefront: a page that calls the catalog, offers and shopping
 * services directly with gRPC-Web (Connect's transport for the browser).
 *
 * - Where the services are comes from `config.json` beside the page, so one
 *   build serves any deployment.
 * - Who calls is a bearer token handed in the URL's fragment (`#token=...`,
 *   which browsers never send to a server). It is kept for the tab's life in
 *   sessionStorage and taken out of the address bar. The page reads its
 *   claims only to choose what to show: the services verify the token and
 *   their policy decides every call, so the staff forms are shown to anyone
 *   and a customer's attempt is refused by the service, not hidden.
 * - The catalog, the offers the customer can have now, and their shopping
 *   list are read again every `refreshMs` (2 s) while the tab is visible:
 *   a product or an offer added elsewhere appears without a reload. The
 *   services' change feeds are for the services the context map names
 *   (mTLS), not for browsers, so the page polls; the catalog is read with
 *   StreamProducts, a server stream.
 */
import { timestampDate, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Interceptor, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { CatalogService, type Product, ProductState } from "./gen/agora/catalog/v1/catalog_service_pb.js";
import { type Offer, OfferKind, OfferService } from "./gen/agora/offers/v1/offers_service_pb.js";
import { type ShoppingList, ShoppingListService } from "./gen/agora/shopping/v1/shopping_service_pb.js";

/** `config.json`: each service's gRPC-Web base URL. */
interface Config {
  catalog: string;
  offers: string;
  shopping: string;
  refreshMs?: number;
}

const TOKEN_KEY = "agora.token";

/** The token handed in the fragment, or the one this tab kept. */
function signIn(): string | undefined {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY) ?? undefined;
}

/** What the token says of its bearer: read, not verified (the services do). */
function claimsOf(token: string | undefined): { subject: string; staff: boolean } {
  try {
    const payload = token!.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(payload));
    return { subject: String(claims.sub ?? ""), staff: Array.isArray(claims.roles) && claims.roles.includes("staff") };
  } catch {
    return { subject: "", staff: false };
  }
}

const element = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

/** An element with `text`, never parsed as HTML. */
function item(tag: string, text: string, className?: string): HTMLElement {
  const node = document.createElement(tag);
  node.textContent = text;
  if (className) node.className = className;
  return node;
}

const price = (p: Product, discount = 0) =>
  `${((Number(p.price?.amountMinor ?? 0n) * (100 - discount)) / 10000).toFixed(2)} ${p.price?.currencyCode ?? ""}`;

/** Where an error on show came from: a poll's error goes when a poll
 * succeeds, an action's stays until the next action. */
let errorFrom: "poll" | "action" | undefined;

function showError(from: "poll" | "action", err: unknown) {
  const text =
    err instanceof ConnectError ? `Refused (${Code[err.code]}): ${err.rawMessage}` : `Failed: ${String(err)}`;
  const box = element("error");
  box.textContent = text;
  box.hidden = false;
  errorFrom = from;
}

function clearError(from: "poll" | "action") {
  if (errorFrom === from) {
    element("error").hidden = true;
    errorFrom = undefined;
  }
}

async function main() {
  const config = (await (await fetch("config.json")).json()) as Config;
  const token = signIn();
  const me = claimsOf(token);
  const customerId = me.staff ? "" : me.subject;
  element("who").textContent = !token
    ? "Not signed in: open the page with #token=..."
    : me.staff
      ? `Staff (${me.subject})`
      : `Customer ${customerId}`;
  element("customer").hidden = !customerId;

  const bearer: Interceptor = (next) => (req) => {
    if (token) req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
  const client = <S extends Parameters<typeof createClient>[0]>(service: S, baseUrl: string) =>
    createClient(service, createGrpcWebTransport({ baseUrl, interceptors: [bearer] }));
  const catalog = client(CatalogService, config.catalog);
  const offers = client(OfferService, config.offers);
  const shopping = client(ShoppingListService, config.shopping);

  let products = new Map<string, Product>();
  let available: Offer[] = [];
  let list: ShoppingList | undefined;

  function render() {
    const discounts = new Map(available.map((o) => [o.productId, o.discountPercent]));
    element("products").replaceChildren(
      ...[...products.values()].map((p) => {
        const row = item("li", "");
        row.dataset.productId = p.productId;
        const discount = discounts.get(p.productId) ?? 0;
        row.append(item("span", p.displayName), item("span", price(p, discount), discount ? "offer" : "price"));
        if (customerId) {
          const add = item("button", "Add to list");
          add.addEventListener("click", () => act(() => addToList(p.productId)));
          row.append(add);
        }
        return row;
      }),
    );
    element("offers").replaceChildren(
      ...available.map((o) => {
        const product = products.get(o.productId);
        const until = o.endTime ? timestampDate(o.endTime).toLocaleString() : "";
        const row = item("li", "", "offer");
        row.dataset.offerId = o.offerId;
        row.append(item("span", `${o.discountPercent}% off ${product?.displayName ?? o.productId}`), item("span", `until ${until}`));
        return row;
      }),
    );
    element("list").replaceChildren(
      ...(list?.items ?? []).map((i) => {
        const row = item("li", "");
        row.dataset.productId = i.productId;
        const name = products.get(i.productId)?.displayName ?? i.productId;
        row.append(item("span", name), item("span", `× ${i.quantity}${i.available ? "" : " (no longer sold)"}`));
        return row;
      }),
    );
    const select = element<HTMLFormElement>("new-offer").elements.namedItem("product") as HTMLSelectElement;
    const chosen = select.value;
    select.replaceChildren(
      ...[...products.values()].map((p) => {
        const option = item("option", p.displayName) as HTMLOptionElement;
        option.value = p.productId;
        return option;
      }),
    );
    if (chosen) select.value = chosen;
  }

  async function refresh() {
    const seen = new Map<string, Product>();
    for await (const page of catalog.streamProducts({ state: ProductState.ACTIVE })) {
      for (const p of page.products) seen.set(p.productId, p);
    }
    products = seen;
    if (customerId) {
      available = (await offers.listAvailableOffers({ customerId })).offers;
      list = (await shopping.listShoppingLists({ customerId, pageSize: 1 })).shoppingLists[0];
    }
    render();
  }

  async function addToList(productId: string) {
    list ??= (await shopping.createShoppingList({ shoppingList: { customerId, title: "My list" } })).shoppingList;
    list = (await shopping.addItem({ listId: list!.listId, productId, quantity: 1 })).shoppingList;
    render();
    return `Added ${products.get(productId)?.displayName ?? productId} to your list`;
  }

  /** Runs a user's action: its outcome or its error is shown. */
  async function act(action: () => Promise<string>) {
    element("done").textContent = "";
    clearError("action");
    try {
      element("done").textContent = await action();
    } catch (err) {
      showError("action", err);
    }
  }

  element<HTMLFormElement>("new-product").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData(event.target as HTMLFormElement);
    act(async () => {
      const families = (await catalog.listFamilies({ pageSize: 1 })).families;
      const familyId =
        families[0]?.familyId ??
        (await catalog.createFamily({ family: { displayName: "Storefront" } })).family!.familyId;
      const displayName = String(form.get("name"));
      const amountMinor = BigInt(Math.round(Number(form.get("price")) * 100));
      const created = (
        await catalog.createProduct({
          requestId: crypto.randomUUID(),
          product: { displayName, familyId, price: { currencyCode: "EUR", amountMinor } },
        })
      ).product!;
      await refresh();
      return `Added product ${created.displayName} (${created.productId})`;
    });
  });

  element<HTMLFormElement>("new-offer").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData(event.target as HTMLFormElement);
    act(async () => {
      const now = Date.now();
      const offer = (
        await offers.createOffer({
          requestId: crypto.randomUUID(),
          offer: {
            productId: String(form.get("product")),
            customerId: String(form.get("customer")).trim(),
            kind: OfferKind.SPEED,
            discountPercent: Number(form.get("discount")),
            startTime: timestampFromMs(now - 60_000),
            endTime: timestampFromMs(now + Number(form.get("hours")) * 3_600_000),
          },
        })
      ).offer!;
      return `Added offer ${offer.offerId} for ${offer.customerId}`;
    });
  });

  const every = config.refreshMs ?? 2000;
  const poll = async () => {
    if (!document.hidden) {
      try {
        await refresh();
        clearError("poll");
      } catch (err) {
        showError("poll", err);
      }
    }
    setTimeout(poll, every);
  };
  await poll();
}

main().catch((err) => showError("action", err));
