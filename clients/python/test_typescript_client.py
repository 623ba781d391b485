"""The TypeScript client (clients/typescript: generated from proto/ with
protobuf-es, compiled with tsc by tools/test-clients.sh) tells its story
against the same four running services, over native gRPC with TLS and
tokens, reads the catalog's change feed, and calls the catalog over
gRPC-Web with CORS for the page origin the services allow: `node --test`
on the compiled tests, given where the services are and the credentials to
call them."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import WEB_ORIGIN

TYPESCRIPT = Path(__file__).resolve().parents[1] / "typescript"
BOUND_SECONDS = 120


def test_the_typescript_client_tells_the_story(system):
    tests = TYPESCRIPT / "dist" / "test"
    if not tests.is_dir() or shutil.which("node") is None:
        pytest.fail("the TypeScript client is not built: tools/test-clients.sh builds it (npm ci, npm run build)")
    feed = system.env("shopping")
    env = {
        **os.environ,
        "AGORA_CA_FILE": str(system.credentials / "ca.pem"),
        "AGORA_STAFF_TOKEN": system.token("staff"),
        "AGORA_CUSTOMER_TOKEN": system.token("customer", "cus_typescript"),
        "AGORA_WEB_ORIGIN": WEB_ORIGIN,
        "AGORA_FEED_CERT_FILE": feed["AGORA_TLS_CERT_FILE"],
        "AGORA_FEED_KEY_FILE": feed["AGORA_TLS_KEY_FILE"],
        "AGORA_DEV": str(system.bin_dir / "agora-dev"),
        "AGORA_DEV_DIR": str(system.credentials),
        **{f"AGORA_{name.upper()}_URL": f"https://{addr}" for name, addr in system.addrs.items()},
    }
    files = sorted(str(f) for f in tests.glob("*.test.js"))
    done = subprocess.run(["node", "--test", *files], cwd=TYPESCRIPT, env=env, capture_output=True,
                          text=True, timeout=BOUND_SECONDS)
    assert done.returncode == 0, done.stdout + done.stderr
    # Every test file ran: the story, the change feed, gRPC-Web on HTTP/2
    # and on HTTP/1.1, and CORS.
    assert "# pass 5" in done.stdout and "# fail 0" in done.stdout, done.stdout
