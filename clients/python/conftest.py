"""Starts the four Agora services on free loopback ports, each with its own
SQLite file, secured as `make run` secures them (TLS, mTLS between
services, tokens), and generates the Python client from proto/ with
grpcio-tools.

Nothing here knows Rust: the services are the built binaries, found in
target/debug (override with AGORA_BIN_DIR), the credentials are made by
the agora-dev binary beside them, and the client is what any Python user
of the contracts would generate."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agora_local import BIN_DIR, SERVICES, System, generated_client, wait_serving


@pytest.fixture(scope="session")
def pb():
    """The generated modules, importable as agora.<context>.v1.*_pb2."""
    return generated_client()


@pytest.fixture(scope="session")
def system():
    """The four running services; stopped with SIGTERM at the end."""
    data = Path(tempfile.mkdtemp(prefix="agora-python-data-"))
    assert (BIN_DIR / "agora-dev").exists(), f"{BIN_DIR / 'agora-dev'} is missing: build the workspace first"
    system = System(data)
    processes = []
    for name in SERVICES:
        env = dict(
            os.environ,
            **system.env(name),
            AGORA_GRPC_ADDR=system.addrs[name],
            AGORA_ADMIN_ADDR=system.admins[name],
            AGORA_DATABASE_URL=f"sqlite:{data / name}.db",
            AGORA_CATALOG_ADDRS=f"https://{system.addrs['catalog']}",
            AGORA_CUSTOMERS_ADDRS=f"https://{system.addrs['customers']}",
            AGORA_DRAIN_DELAY_MS="0",
            AGORA_OUTBOX_POLL_MS="100",
            AGORA_LOG="warn",
        )
        binary = BIN_DIR / f"agora-{name}"
        assert binary.exists(), f"{binary} is missing: build the workspace first"
        processes.append(subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr))
    try:
        for name in SERVICES:
            wait_serving(system.admins[name])
        yield system
    finally:
        for p in processes:
            p.terminate()
        for p in processes:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
