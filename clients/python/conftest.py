"""Starts the four Agora services on free loopback ports, each with its own
SQLite file, and generates the Python client from proto/ with grpcio-tools.

Nothing here knows Rust: the services are the built binaries, found in
target/debug (override with AGORA_BIN_DIR), and the client is what any
Python user of the contracts would generate."""

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("AGORA_BIN_DIR", ROOT / "target" / "debug"))
SERVICES = ["catalog", "customers", "offers", "shopping"]
BOUND_SECONDS = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate_client(out: Path) -> None:
    """The same protoc run a client author makes: messages and stubs."""
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        ["grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
        + protos
    )
    assert code == 0, "protoc failed"


def wait_serving(addr: str) -> None:
    deadline = time.monotonic() + BOUND_SECONDS
    with grpc.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{addr} is not SERVING after {BOUND_SECONDS} s")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def pb():
    """The generated modules, importable as agora.<context>.v1.*_pb2."""
    out = Path(tempfile.mkdtemp(prefix="agora-python-client-"))
    generate_client(out)
    sys.path.insert(0, str(out))
    import agora.catalog.v1.catalog_service_pb2 as catalog_pb2
    import agora.catalog.v1.catalog_service_pb2_grpc as catalog_grpc
    import agora.common.v1.money_pb2 as money_pb2
    import agora.customers.v1.customers_service_pb2 as customers_pb2
    import agora.customers.v1.customers_service_pb2_grpc as customers_grpc
    import agora.offers.v1.offers_service_pb2 as offers_pb2
    import agora.offers.v1.offers_service_pb2_grpc as offers_grpc
    import agora.shopping.v1.shopping_service_pb2 as shopping_pb2
    import agora.shopping.v1.shopping_service_pb2_grpc as shopping_grpc

    return {
        "catalog": (catalog_pb2, catalog_grpc),
        "customers": (customers_pb2, customers_grpc),
        "offers": (offers_pb2, offers_grpc),
        "shopping": (shopping_pb2, shopping_grpc),
        "money": money_pb2,
    }


@pytest.fixture(scope="session")
def system():
    """Addresses of the four running services; stopped with SIGTERM at the end."""
    data = Path(tempfile.mkdtemp(prefix="agora-python-data-"))
    ports = {name: free_port() for name in SERVICES}
    addrs = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    processes = []
    for name in SERVICES:
        env = dict(
            os.environ,
            AGORA_GRPC_ADDR=addrs[name],
            AGORA_ADMIN_ADDR=f"127.0.0.1:{free_port()}",
            AGORA_DATABASE_URL=f"sqlite:{data / name}.db",
            AGORA_CATALOG_ADDRS=f"http://{addrs['catalog']}",
            AGORA_CUSTOMERS_ADDRS=f"http://{addrs['customers']}",
            AGORA_DRAIN_DELAY_MS="0",
            AGORA_OUTBOX_POLL_MS="100",
            AGORA_LOG="warn",
        )
        binary = BIN_DIR / f"agora-{name}"
        assert binary.exists(), f"{binary} is missing: build the workspace first"
        processes.append(subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr))
    try:
        for name in SERVICES:
            wait_serving(addrs[name])
        yield addrs
    finally:
        for p in processes:
            p.terminate()
        for p in processes:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
