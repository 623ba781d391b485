"""The Go client (clients/go: generated from proto/ with Debian's
protoc-gen-go and protoc-gen-go-grpc, on Debian's grpc-go) makes the
README's first calls against the same four running services, over TLS with
tokens: `go test` in clients/go, given where the catalog is and the
credentials to call it."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

GO_CLIENT = Path(__file__).resolve().parents[1] / "go"
BOUND_SECONDS = 300  # the first run compiles grpc-go


def test_the_go_client_makes_the_first_calls(system):
    if shutil.which("go") is None:
        pytest.fail("the Go client needs Go: tools/test-clients.sh says which Debian packages")
    generated = subprocess.run([str(GO_CLIENT / "generate.sh")], capture_output=True, text=True, check=True)
    build_env = dict(line.split("=", 1) for line in generated.stdout.split())
    env = {
        **os.environ,
        **build_env,
        "AGORA_CATALOG_ADDR": system.addrs["catalog"],
        "AGORA_CA_FILE": str(system.credentials / "ca.pem"),
        "AGORA_STAFF_TOKEN": system.token("staff"),
        "AGORA_CUSTOMER_TOKEN": system.token("customer", "cus_go_first_calls"),
    }
    done = subprocess.run(["go", "test", "-count=1", "-v", "."], cwd=GO_CLIENT, env=env, capture_output=True,
                          text=True, timeout=BOUND_SECONDS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "--- PASS: TestFirstCalls" in done.stdout, done.stdout
