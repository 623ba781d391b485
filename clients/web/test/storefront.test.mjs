/**
 * The storefront clicked through in Debian's chromium, headless, driven by
 * playwright-core: a staff page adds a product and an offer, and the
 * customer's page, open all along, shows them without a reload; the
 * customer puts the product on their list; a customer trying a staff
 * action sees the service's refusal. Screenshots of every page open are
 * written to AGORA_SCREENSHOTS when a test fails.
 *
 * Started by clients/python/test_web_page.py, which runs the services and
 * the page and passes the pages' URLs (with their tokens), the customer's
 * id, the browser, and the services' certificates, which the browser
 * trusts by their keys (--ignore-certificate-errors-spki-list): the
 * development CA is not one the browser knows.
 */
import assert from "node:assert/strict";
import { X509Certificate, createHash, randomUUID } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { after, before, test } from "node:test";

import { chromium } from "playwright-core";

/** How long the pages may take to show what a test waits for. */
const BOUND_MS = 15_000;

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this from clients/python/test_web_page.py`);
  return value;
}

const keys = env("AGORA_CERT_FILES")
  .split(",")
  .map((file) => {
    const spki = new X509Certificate(readFileSync(file)).publicKey.export({ type: "spki", format: "der" });
    return createHash("sha256").update(spki).digest("base64");
  });

let browser;
before(async () => {
  browser = await chromium.launch({
    executablePath: env("AGORA_CHROMIUM"),
    args: [`--ignore-certificate-errors-spki-list=${keys.join(",")}`],
  });
});
after(() => browser?.close());

/**
 * Runs `story` with a way to open pages; when it fails, every page it
 * opened is saved as a screenshot first.
 */
async function withPages(t, story) {
  const pages = [];
  const open = async (name, url) => {
    const context = await browser.newContext();
    const page = await context.newPage();
    const problems = [];
    page.on("pageerror", (err) => problems.push(String(err)));
    page.problems = problems;
    let loads = 0;
    page.on("load", () => (loads += 1));
    page.loads = () => loads;
    pages.push([name, page]);
    await page.goto(url);
    return page;
  };
  try {
    await story(open);
  } catch (err) {
    const dir = env("AGORA_SCREENSHOTS");
    mkdirSync(dir, { recursive: true });
    for (const [name, page] of pages) {
      const file = `${dir}/${t.name.replace(/\W+/g, "-")}-${name}.png`;
      await page.screenshot({ path: file, fullPage: true }).catch(() => {});
      console.error(`screenshot: ${file}`);
    }
    throw err;
  } finally {
    for (const [, page] of pages) await page.context().close();
  }
}

/** Waits until `selector` has an element whose text holds `text`, and returns it. */
async function shown(page, selector, text) {
  const found = page.locator(selector).filter({ hasText: text }).first();
  await found.waitFor({ timeout: BOUND_MS });
  return found;
}

test("staff add a product and an offer, the customer sees them live and keeps a list", (t) =>
  withPages(t, async (open) => {
    const customerId = env("AGORA_CUSTOMER_ID");
    const customer = await open("customer", env("AGORA_CUSTOMER_PAGE"));
    await shown(customer, "#who", `Customer ${customerId}`);
    assert.ok(!customer.url().includes("token="), "the token left the address bar");

    const staff = await open("staff", env("AGORA_STAFF_PAGE"));
    await shown(staff, "#who", "Staff");
    const name = `Lamp ${randomUUID().slice(0, 8)}`;
    await staff.fill("#new-product [name=name]", name);
    await staff.fill("#new-product [name=price]", "19.90");
    await staff.click("#new-product button");
    await shown(staff, "#done", `Added product ${name}`);

    // The customer's page shows it by itself.
    const row = await shown(customer, "#products li", name);
    assert.match(await row.textContent(), /19\.90 EUR/);

    await staff.selectOption("#new-offer [name=product]", { label: name });
    await staff.fill("#new-offer [name=customer]", customerId);
    await staff.fill("#new-offer [name=discount]", "20");
    await staff.click("#new-offer button");
    await shown(staff, "#done", `for ${customerId}`);

    await shown(customer, "#offers li", `20% off ${name}`);
    await shown(customer, "#products li", `15.92 EUR`);

    await row.getByRole("button", { name: "Add to list" }).click();
    await shown(customer, "#done", `Added ${name} to your list`);
    await shown(customer, "#list li", name);
    assert.match(await customer.locator("#list li").filter({ hasText: name }).textContent(), /× 1/);

    assert.equal(customer.loads(), 1, "the customer's page was never reloaded");
    assert.ok(await customer.locator("#error").isHidden(), await customer.locator("#error").textContent());
    assert.deepEqual([...customer.problems, ...staff.problems], []);
  }));

test("a customer trying a staff action sees the service refuse it", (t) =>
  withPages(t, async (open) => {
    const customer = await open("customer", env("AGORA_CUSTOMER_PAGE"));
    await shown(customer, "#who", "Customer");
    const name = `Forbidden ${randomUUID().slice(0, 8)}`;
    await customer.fill("#new-product [name=name]", name);
    await customer.fill("#new-product [name=price]", "5");
    await customer.click("#new-product button");
    const error = await shown(customer, "#error", "Refused (PermissionDenied)");
    assert.ok(await error.isVisible());
    assert.equal(await customer.locator("#done").textContent(), "");
    assert.equal(await customer.locator("#products li").filter({ hasText: name }).count(), 0);
  }));
