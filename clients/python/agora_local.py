"""Running Agora locally from Python: free ports, the generated client,
health on the admin port, and the development credentials agora-dev makes.
Shared by the client tests (conftest.py) and the system suites
(tests/system); nothing here knows Rust: the services are the built
binaries, found in target/debug (override with AGORA_BIN_DIR)."""

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
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


def generated_client() -> dict:
    """Generates the client into a temporary directory; returns its modules by context
    (importable as agora.<context>.v1.*_pb2)."""
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


def wait_serving(admin: str) -> None:
    """Plaintext health on the admin port, as a Kubernetes probe asks."""
    deadline = time.monotonic() + BOUND_SECONDS
    with grpc.insecure_channel(admin) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{admin} is not SERVING after {BOUND_SECONDS} s")
            time.sleep(0.05)


class Credentials:
    """The development credentials agora-dev makes under `data`/dev: the CA,
    each service's certificate and the token signing key."""

    def __init__(self, data: Path, bin_dir: Path = BIN_DIR):
        self.credentials, self.bin_dir = data / "dev", bin_dir
        self.dev("init")
        self.ca = (self.credentials / "ca.pem").read_bytes()

    def dev(self, *args: str) -> str:
        done = subprocess.run(
            [str(self.bin_dir / "agora-dev"), *args, "--dir", str(self.credentials)],
            capture_output=True, text=True, check=True,
        )
        return done.stdout.strip()

    def env(self, name: str) -> dict:
        """The variables `agora-dev env` gives a service: its certificate, the CA, the JWKS."""
        variables = {}
        for line in self.dev("env", name).splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            variables[key] = value.strip("'")
        return variables

    def token(self, role: str, subject: str = "") -> str:
        return self.dev("token", role, *([subject] if subject else []))

    def channel_to(self, target: str, token: str | None, options: list | None = None) -> grpc.Channel:
        """A TLS channel to `target` trusting the development CA, sending `token`."""
        credentials = grpc.ssl_channel_credentials(self.ca)
        if token:
            credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))
        return grpc.secure_channel(target, credentials, options=options or [])


class System(Credentials):
    """The four services on free loopback ports, and the credentials to call them with."""

    def __init__(self, data: Path):
        super().__init__(data)
        self.addrs = {name: f"127.0.0.1:{free_port()}" for name in SERVICES}
        self.admins = {name: f"127.0.0.1:{free_port()}" for name in SERVICES}

    def channel(self, name: str, token: str | None) -> grpc.Channel:
        """A TLS channel to a service, sending `token`."""
        return self.channel_to(self.addrs[name], token)




class Running:
    """The four services as processes, each with its own SQLite file under
    `data`, secured as `make run` secures them (TLS, mTLS between services,
    tokens). One may be stopped and started again on the same ports and
    database. A context manager: all start, SERVING, on entry; all stop
    with SIGTERM on exit."""

    def __init__(self, data: Path, extra_env: dict | None = None, logs: Path | None = None):
        """`extra_env` is added to every service's variables; with `logs`,
        each service writes its log to `logs`/<service>.log."""
        self.data, self.logs = data, logs
        self.system = System(data)
        self.processes: dict[str, subprocess.Popen] = {}
        self.extra_env = extra_env or {}

    def env(self, name: str) -> dict:
        system = self.system
        return {
            **os.environ,
            **system.env(name),
            "AGORA_GRPC_ADDR": system.addrs[name],
            "AGORA_ADMIN_ADDR": system.admins[name],
            "AGORA_DATABASE_URL": f"sqlite:{self.data / name}.db",
            "AGORA_CATALOG_ADDRS": f"https://{system.addrs['catalog']}",
            "AGORA_CUSTOMERS_ADDRS": f"https://{system.addrs['customers']}",
            "AGORA_DRAIN_DELAY_MS": "0",
            "AGORA_OUTBOX_POLL_MS": "100",
            "AGORA_LOG": "warn",
            **self.extra_env,
        }

    def start(self, name: str) -> None:
        binary = BIN_DIR / f"agora-{name}"
        assert binary.exists(), f"{binary} is missing: build the workspace first"
        out = open(self.logs / f"{name}.log", "a") if self.logs else subprocess.DEVNULL
        self.processes[name] = subprocess.Popen([binary], env=self.env(name), stdout=out, stderr=sys.stderr)

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> "Running":
        assert (BIN_DIR / "agora-dev").exists(), f"{BIN_DIR / 'agora-dev'} is missing: build the workspace first"
        try:
            for name in SERVICES:
                self.start(name)
            for name in SERVICES:
                wait_serving(self.system.admins[name])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *_) -> None:
        for name in list(self.processes):
            self.processes[name].terminate()
        for name in list(self.processes):
            self.stop(name)
