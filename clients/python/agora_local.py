"""Running Agora locally from Python: free ports, the generated client,
health on the admin port, the development credentials agora-dev makes, and
for the system suites replicas as processes and psql on the databases.
Shared by the client tests (conftest.py) and the system suites
(tests/system); nothing here knows Rust: the services are the built
binaries, found in target/debug (override with AGORA_BIN_DIR)."""

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("AGORA_BIN_DIR", ROOT / "target" / "debug"))
SERVICES = ["catalog", "customers", "offers", "shopping"]
BOUND_SECONDS = 30
# The PostgreSQL the system suites create their databases on.
POSTGRES = os.environ.get("AGORA_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")


def partition_of(key: str, partitions: int = 8) -> int:
    """The partition of an aggregate's events on JetStream, as the contract defines it: FNV-1a, 32 bits,
    of the id's UTF-8 bytes, modulo the partitions."""
    h = 0x811C9DC5
    for byte in key.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % partitions


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


def server_url(database: str) -> str:
    """AGORA_TEST_POSTGRES_URL with another database."""
    base, _, query = POSTGRES.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{database}" + (f"?{query}" if query else "")


def psql(database: str, sql: str) -> str:
    done = subprocess.run(["psql", server_url(database), "-tAqc", sql], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()



class Replica:
    """One process of a service on its own loopback address."""

    def __init__(self, service: str, ip: str, port: int, env: dict, hosts: Path | None, logs: Path):
        """`hosts`: a file the process's resolver reads as /etc/hosts (a mount namespace of its own,
        which needs root); None: the system's."""
        self.service, self.ip, self.port = service, ip, port
        self.addr = f"{ip}:{port}"
        self.admin = f"{ip}:{free_port()}"
        self.env = dict(env, AGORA_GRPC_ADDR=self.addr, AGORA_ADMIN_ADDR=self.admin)
        self.hosts, self.logs = hosts, logs
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self, wait: bool = True) -> "Replica":
        """Starts the process; with `wait`, until its health says SERVING (bounded)."""
        binary = str(BIN_DIR / f"agora-{self.service}")
        command = [binary]
        if self.hosts:
            # The system resolver of this process reads the test's hosts file.
            command = ["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$1"',
                       str(self.hosts), binary]
        self.starts += 1
        log = open(self.logs / f"{self.service}-{self.ip}-{self.starts}.log", "w")
        self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            wait_serving(self.admin)
        return self

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the process holds its connections and answers nothing, as a stalled one."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def drain(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def metric(self, name: str, labels: str = "") -> float | None:
        """A metric's value from /metrics on the admin port; None when absent or unreachable."""
        try:
            with urllib.request.urlopen(f"http://{self.admin}/metrics", timeout=2) as answer:
                text = answer.read().decode()
        except OSError:
            return None
        pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
        found = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
        return float(found.group(1)) if found else None



class Workers:
    """Client threads for a system suite's load: each runs its `work` until `stop` is set; all start
    when the `with` block begins and are told to stop, and joined (bounded), when it ends."""

    def __init__(self, *work, join_bound: float = 60):
        self.stop = threading.Event()
        self.join_bound = join_bound
        self.threads = [threading.Thread(target=w, daemon=True) for w in work]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=self.join_bound)


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




class Nats:
    """A nats-server with JetStream on a free loopback port, with a store directory of its own, over
    TLS with a certificate of the development CA, verifying its clients' certificates (each service
    presents its own, as between services). It can be killed and started again with what it stored."""

    def __init__(self, credentials: Credentials, work: Path):
        self.credentials, self.work = credentials, work
        self.port = free_port()
        self.url = f"tls://127.0.0.1:{self.port}"
        self.store = work / "nats-store"
        # The server's certificate, and one the test presents as a client.
        credentials.dev("server", "nats")
        credentials.dev("server", "nats-reader")
        self.process: subprocess.Popen | None = None

    def start(self) -> "Nats":
        dev = self.credentials.credentials
        command = [
            "nats-server", "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store),
            "--tls", "--tlscert", str(dev / "nats.pem"), "--tlskey", str(dev / "nats.key"),
            "--tlsverify", "--tlscacert", str(dev / "ca.pem"),
        ]
        log = open(self.work / "nats.log", "a")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + BOUND_SECONDS
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                assert self.process.poll() is None, f"nats-server exited: see {self.work / 'nats.log'}"
                assert time.monotonic() < deadline, f"nats-server not listening after {BOUND_SECONDS} s"
                time.sleep(0.02)

    def kill(self) -> None:
        if self.process:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None

    def env(self, service_env: dict) -> dict:
        """The variables that put a service's feeds on this server, given its own (its certificate)."""
        return {
            "AGORA_EVENTS": "jetstream",
            "AGORA_NATS_URL": self.url,
            "AGORA_NATS_CA_FILE": str(self.credentials.credentials / "ca.pem"),
            "AGORA_NATS_CERT_FILE": service_env["AGORA_TLS_CERT_FILE"],
            "AGORA_NATS_KEY_FILE": service_env["AGORA_TLS_KEY_FILE"],
        }

    def stream(self, name: str) -> list:
        """Every message of the stream `name`, in its order: (subject, headers) each."""
        import asyncio
        import ssl

        import nats

        async def read() -> list:
            dev = self.credentials.credentials
            context = ssl.create_default_context(cafile=str(dev / "ca.pem"))
            context.load_cert_chain(str(dev / "nats-reader.pem"), str(dev / "nats-reader.key"))
            client = await nats.connect(self.url, tls=context)
            try:
                js = client.jetstream()
                info = await js.stream_info(name)
                messages = []
                for seq in range(info.state.first_seq, info.state.last_seq + 1):
                    message = await js.get_msg(name, seq)
                    messages.append((message.subject, dict(message.headers or {})))
                return messages
            finally:
                await client.close()

        return asyncio.run(read())


class Running:
    """The four services as processes, each with its own SQLite file under
    `data`, secured as `make run` secures them (TLS, mTLS between services,
    tokens). One may be stopped and started again on the same ports and
    database. A context manager: all start, SERVING, on entry; all stop
    with SIGTERM on exit."""

    def __init__(self, data: Path, extra_env: dict | None = None, logs: Path | None = None, nats: "Nats | None" = None):
        """`extra_env` is added to every service's variables; with `nats`, their feeds are on it; with `logs`,
        each service writes its log to `logs`/<service>.log."""
        self.data, self.logs = data, logs
        self.system = System(data)
        self.processes: dict[str, subprocess.Popen] = {}
        self.extra_env = extra_env or {}
        self.nats = nats

    def env(self, name: str) -> dict:
        system = self.system
        own = system.env(name)
        return {
            **os.environ,
            **own,
            **(self.nats.env(own) if self.nats else {}),
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
