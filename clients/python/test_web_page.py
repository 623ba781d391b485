"""The storefront (clients/web: a TypeScript page built with vite, calling
the services with gRPC-Web) in a real browser: Debian's chromium, headless,
driven by playwright-core from clients/web/test/storefront.test.mjs. The
built page is served by `vite preview` from a copy holding its config.json
(where the services are) on the origin the services allow (CORS); a staff
and a customer page are opened with tokens of the development issuer in
their fragment, as `make web` hands them out. The story is clicked through
and what the pages show is checked; screenshots of the pages are written
to clients/web/test-results/ when it fails."""

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
import urllib.request
from pathlib import Path

import pytest

from conftest import WEB_ORIGIN, WEB_PORT
from test_story import stub

WEB = Path(__file__).resolve().parents[1] / "web"
BOUND_SECONDS = 180
CHROMIUM = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")


def chromium() -> str:
    if os.environ.get("AGORA_CHROMIUM"):
        return os.environ["AGORA_CHROMIUM"]
    found = next((c for c in CHROMIUM if shutil.which(c)), None)
    if found is None:
        pytest.fail("the page is tested in Chromium: apt-get install chromium (or set AGORA_CHROMIUM)")
    return shutil.which(found)


@pytest.fixture
def page_server(system):
    """The built page with its config.json, served by `vite preview` on WEB_ORIGIN."""
    if not (WEB / "dist" / "index.html").is_file():
        pytest.fail("the page is not built: tools/test-clients.sh builds it (npm ci, npm run build in clients/web)")
    root = Path(tempfile.mkdtemp(prefix="agora-web-"))
    site = root / "dist"
    shutil.copytree(WEB / "dist", site)
    urls = {name: f"https://{system.addrs[name]}" for name in ("catalog", "offers", "shopping")}
    (site / "config.json").write_text(json.dumps({**urls, "refreshMs": 500}))
    log = (root / "preview.log").open("w")
    preview = subprocess.Popen(
        [str(WEB / "node_modules" / ".bin" / "vite"), "preview", "--outDir", str(site), "--port", str(WEB_PORT)],
        cwd=WEB, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{WEB_ORIGIN}/config.json", timeout=2) as answer:
                    assert json.load(answer)["catalog"] == urls["catalog"]
                break
            except OSError:
                assert preview.poll() is None, (root / "preview.log").read_text()
                assert time.monotonic() < deadline, "vite preview did not serve the page within 30 s"
                time.sleep(0.1)
        yield WEB_ORIGIN
    finally:
        preview.terminate()
        preview.wait(timeout=10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def test_the_storefront_in_a_browser(system, pb, page_server):
    customers_pb2, _ = pb["customers"]
    customer = stub(system, pb, "customers", system.token("staff")).CreateCustomer(
        customers_pb2.CreateCustomerRequest(
            customer=customers_pb2.Customer(given_name="Ada", family_name="Lovelace", email=f"ada.{uuid.uuid4().hex[:8]}@example.com")),
        timeout=5).customer
    env = {
        **os.environ,
        "AGORA_CHROMIUM": chromium(),
        "AGORA_STAFF_PAGE": f"{page_server}/#token={system.token('staff')}",
        "AGORA_CUSTOMER_PAGE": f"{page_server}/#token={system.token('customer', customer.customer_id)}",
        "AGORA_CUSTOMER_ID": customer.customer_id,
        # The page's browser trusts the services' certificates by their keys.
        "AGORA_CERT_FILES": ",".join(system.env(name)["AGORA_TLS_CERT_FILE"]
                                     for name in ("catalog", "offers", "shopping")),
        "AGORA_SCREENSHOTS": str(WEB / "test-results"),
    }
    done = subprocess.run(["node", "--test", "test/storefront.test.mjs"], cwd=WEB, env=env,
                          capture_output=True, text=True, timeout=BOUND_SECONDS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# pass 2" in done.stdout and "# fail 0" in done.stdout, done.stdout
