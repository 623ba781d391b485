"""The machinery every measurement uses: settings, processes, clients, readings.

- the settings of a run: paths, sizes, durations, h2load's concurrency, the two cores
  (SERVER_CPU for the servers, LOAD_CPU for h2load and the harness) and `pin()`, which
  decides whether they are used
- `build()`: the binaries (cargo profile dist, as the images ship them)
- `Procs` and `Server`: every process the benchmark starts, its address, health, metrics
  and /proc figures; `start_service` starts one Agora service with `service_env`
- /proc readings: CPU seconds of a process or a core, memory, context switches
- metrics: the services' Prometheus text (`scrape`, `metric`, `metric_delta`, `handled_by_code`)
- the gRPC client generated from proto/ (`Client`, `call`, `stream_count`)
- h2load: `frame` makes a request body, `H2load.run` runs it and reads its output
- `Bench`: a measurement (check, capacity, latency at 80 % and at a light load, the
  side-by-side contest) and the results of the run
"""

import os
import re
import signal
import subprocess
import struct
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
# The local-system helpers the Python client tests use: credentials, the generated client.
sys.path.insert(0, str(ROOT / "clients" / "python"))
from agora_local import Credentials, generate_client  # noqa: E402
QUICK = os.environ.get("BENCH_QUICK", "") == "1"
SERVICES = ["catalog", "customers", "offers", "shopping"]
# The binaries measured: cargo profile dist, the one the images ship.
RELEASE = ROOT / "target" / "dist"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

# Sizes and durations: a full run takes several minutes, a quick one about one.
SMALL = 1_000
LARGE = 1_000 if QUICK else 1_000_000
OFFERS = 10_000
RUN_SECONDS = 1.5 if QUICK else 4.0  # each h2load run
CALIBRATE_SECONDS = 1 if QUICK else 2  # the run that finds the capacity
STARTS = 5 if QUICK else 21  # starts per service for the start-up median
STREAM_REPEATS = 1 if QUICK else 3
CLIENTS, STREAMS = 4, 48  # h2load -c/-m: 192 calls in flight, below the services' limit of 256
LIGHT_RPS = 400  # the light load of the side-by-side comparison: 4 calls every 10 ms
ROUNDS = 1 if QUICK else 3  # turns of the side-by-side GetProduct comparison, and of capacity and overload
OVERLOAD_LIMIT, OVERLOAD_CLIENTS, OVERLOAD_STREAMS = 32, 10, 32  # 320 streams = 10x the limit
BOUND = 60  # seconds: the longest any single wait may take
FLAT_BOUND = 32 * MIB  # streaming memory is flat when its growth stays below this, whatever the catalog's size

SERVER_CPU, LOAD_CPU = 0, 1
PINNED = False  # set by pin(): servers run on SERVER_CPU, h2load and the harness on LOAD_CPU


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pin() -> None:
    """Pins this process to LOAD_CPU and sets PINNED when both cores are there to use."""
    global PINNED
    cpus = sorted(os.sched_getaffinity(0))
    PINNED = SERVER_CPU in cpus and LOAD_CPU in cpus
    if PINNED:
        # The orchestrator (and the Python clients it runs) shares the load generator's core.
        os.sched_setaffinity(0, {LOAD_CPU})
    else:
        log("fewer than two cores: servers and load generator are not pinned")


def build() -> None:
    if os.environ.get("BENCH_BUILD", "1") == "0":
        log("BENCH_BUILD=0: using the binaries already in target/dist")
        return
    log("building the binaries (profile dist, as the images ship them)")
    cmd = ["cargo", "build", "--profile", "dist", "-q"] + [
        arg for p in [f"agora-{s}" for s in SERVICES] + ["agora-dev", "agora-bench-bare"] for arg in ("-p", p)
    ] + ["-p", "agora-testing", "--bins"]  # agora-testing's: agora-fault-proxy
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=3600)


# ---------------------------------------------------------------- processes


class Procs:
    """Every process the benchmark starts; all stopped at the end, whatever happens."""

    def __init__(self, work: Path):
        self.work = work
        self.running: list[subprocess.Popen] = []
        self.count = 0

    def start(self, name: str, argv: list[str], env: dict | None = None, pin: bool = True,
              core: int = SERVER_CPU) -> "Server":
        """Starts `argv` as `name`, pinned to `core` (the server core by default) when `pin`."""
        self.count += 1
        logfile = self.work / "logs" / f"{self.count:03d}-{name}.log"
        logfile.parent.mkdir(exist_ok=True)
        cmd = (["taskset", "-c", str(core)] if pin and PINNED else []) + argv
        with open(logfile, "wb") as out:
            started = time.monotonic()
            p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.running.append(p)
        return Server(self, name, p, logfile, started)

    def stop(self, p: subprocess.Popen, bound: float = 15) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=bound)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        if p in self.running:
            self.running.remove(p)

    def stop_all(self) -> None:
        for p in list(self.running):
            try:
                self.stop(p, bound=10)
            except Exception as err:  # keep stopping the others
                print(f"stopping pid {p.pid}: {err}", file=sys.stderr)


class Server:
    """A started server: its address (from its first stdout line), metrics and /proc figures."""

    def __init__(self, procs: Procs, name: str, p: subprocess.Popen, logfile: Path, started: float):
        self.procs, self.name, self.p, self.logfile, self.started = procs, name, p, logfile, started
        self.grpc = self.admin = None

    @property
    def pid(self) -> int:
        return self.p.pid

    def wait_listening(self, bound: float = BOUND) -> "Server":
        """Reads the address from the first line, `<name> listening grpc=<addr> [admin=<addr>]`."""
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            text = self.logfile.read_text(errors="replace")
            m = re.search(r"listening grpc=(\S+)(?: admin=(\S+))?", text)
            if m:
                self.grpc, self.admin = m.group(1), m.group(2)
                return self
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.p.returncode}: {text[-2000:]}")
            time.sleep(0.001)
        raise TimeoutError(f"{self.name} did not print its address within {bound} s")

    def wait_serving(self, bound: float = BOUND, pause: float = 0.001) -> "Server":
        """Waits for the listening line, then for health SERVING: on the admin port, in plaintext, where
        the server has one (an Agora service, TLS or not), else on its gRPC port."""
        if self.grpc is None:
            self.wait_listening(bound)
        deadline = time.monotonic() + bound
        with grpc.insecure_channel(self.admin or self.grpc) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                try:
                    answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    pass
                if self.p.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.p.returncode}; see {self.logfile}")
                time.sleep(pause)
        raise TimeoutError(f"{self.name} is not SERVING within {bound} s; see {self.logfile}")

    def wait_idle(self, bound: float = 10) -> None:
        """Waits until no call is in flight (from the metrics; a short pause for servers without)."""
        if not self.admin:
            time.sleep(0.2)
            return

        def in_flight() -> float:
            # Change feeds (Watch*) of downstream consumers stay open for good.
            return sum(v for (name, labels), v in self.metrics().items()
                       if name == "grpc_server_in_flight" and not dict(labels).get("grpc_method", "").startswith("Watch"))

        deadline = time.monotonic() + bound
        while time.monotonic() < deadline and in_flight() > 0:
            time.sleep(0.05)

    def stop(self) -> None:
        self.procs.stop(self.p)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def status(self, field: str) -> int:
        """A /proc/<pid>/status figure in bytes (VmRSS, VmHWM)."""
        return proc_status(self.pid, field)

    def metrics(self) -> dict:
        return scrape(self.admin) if self.admin else {}


def service_env(db_url: str, **extra) -> dict:
    """The environment of an Agora service: free ports, the database, no drain delay, `extra` on top.
    Plaintext and without token checks (AGORA_INSECURE=1), as the bare tonic reference is, so a
    ratio compares like with like; the security rows put TLS and tokens back (`extra`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_") and k != "RUST_LOG"}
    env.update(
        AGORA_INSECURE="1",
        AGORA_GRPC_ADDR="127.0.0.1:0",
        AGORA_ADMIN_ADDR="127.0.0.1:0",
        AGORA_DATABASE_URL=db_url,
        AGORA_DRAIN_DELAY_MS="0",
        AGORA_SHUTDOWN_TIMEOUT_MS="2000",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_service(procs: Procs, name: str, service: str, db_url: str, core: int = SERVER_CPU, **env) -> Server:
    """Starts target/dist/agora-<service> as `name` (not waited for) on `core`; `env` goes to
    service_env."""
    return procs.start(name, [str(RELEASE / f"agora-{service}")], service_env(db_url, **env), core=core)


# ---------------------------------------------------------------- /proc readings


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def core_times(core: int) -> dict:
    """Seconds the core spent so far, from /proc/stat: in processes (user, nice, system), idle
    (idle, iowait), and in total."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                v = [int(x) / CLK_TCK for x in line.split()[1:9]]
                return {"processes": v[0] + v[1] + v[2], "idle": v[3] + v[4], "total": sum(v)}
    return {"processes": 0.0, "idle": 0.0, "total": 0.0}


def core_share(before: dict, after: dict, key: str) -> float:
    total = after["total"] - before["total"]
    return (after[key] - before[key]) / total if total > 0 else 0.0


def proc_status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of every live thread of the process."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                total += sum(int(n) for n in re.findall(r"ctxt_switches:\s+(\d+)", f.read()))
        except OSError:
            continue
    return total


# ---------------------------------------------------------------- metrics


def scrape(admin: str) -> dict:
    """Prometheus text as {(name, frozenset(labels)): value}."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$", line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        try:
            out[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            pass
    return out


def metric(snapshot: dict, name: str, **want) -> float:
    """Sum of every series of `name` whose labels include `want`."""
    items = set(want.items())
    return sum(v for (n, labels), v in snapshot.items() if n == name and items <= labels)


def metric_delta(before: dict, after: dict, name: str, **want) -> float:
    """How much `name` (summed over the series metric() picks) grew from one snapshot to the next."""
    return metric(after, name, **want) - metric(before, name, **want)


def handled_by_code(before: dict, after: dict, method: str) -> dict:
    """grpc_server_handled_total of one method during a run, by gRPC code."""
    service, rpc = method.strip("/").rsplit("/", 1)
    codes = {dict(labels).get("grpc_code") for (name, labels) in after if name == "grpc_server_handled_total"}
    out = {}
    for code in sorted(c for c in codes if c):
        want = dict(grpc_service=service, grpc_method=rpc, grpc_code=code)
        delta = metric(after, "grpc_server_handled_total", **want) - metric(before, "grpc_server_handled_total", **want)
        if delta:
            out[code] = delta
    return out


# ---------------------------------------------------------------- gRPC client


class Client:
    """The Python client generated from proto/, as a client author makes it."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        generate_client(out)
        sys.path.insert(0, str(out))
        import agora.catalog.v1.catalog_service_pb2 as catalog
        import agora.common.v1.money_pb2 as money
        import agora.offers.v1.offers_service_pb2 as offers
        from google.protobuf import timestamp_pb2

        self.dir, self.catalog, self.offers, self.timestamp = out, catalog, offers, timestamp_pb2.Timestamp
        self.money = money


class DevCredentials(Credentials):
    """Development credentials made by agora-dev (profile dist) under `work`/dev: the environment that runs a
    service with TLS (and tokens), tokens, and the channel of a client."""

    def __init__(self, work: Path):
        super().__init__(work, RELEASE)

    def env(self, service: str, tokens: bool = True) -> dict:
        """TLS with the service's certificate, and token checks unless `tokens` is False (then
        AGORA_INSECURE=1 switches them off, and only them)."""
        env = super().env(service)
        if not tokens:
            env = {k: v for k, v in env.items() if not k.startswith(("AGORA_JWKS", "AGORA_JWT"))}
        env["AGORA_INSECURE"] = "0" if tokens else "1"
        return env

    def channel(self, addr: str, token: str | None) -> grpc.Channel:
        return self.channel_to(addr, token, [("grpc.max_receive_message_length", 64 * MIB)])


def call(addr: str, path: str, request, response_cls, timeout: float = 10, channel=None):
    """One unary call (on `channel`, a TLS one, when given); returns (grpc code, response or None, details)."""
    with channel or grpc.insecure_channel(addr, options=[("grpc.max_receive_message_length", 64 * MIB)]) as ch:
        rpc = ch.unary_unary(path, request_serializer=type(request).SerializeToString,
                             response_deserializer=response_cls.FromString)
        try:
            response = rpc(request, timeout=timeout)
            return grpc.StatusCode.OK, response, ""
        except grpc.RpcError as err:
            return err.code(), None, err.details()


def stream_count(addr: str, path: str, request, response_cls, field: str, timeout: float = 300):
    """Reads a server stream to its end; returns (code, items, seconds)."""
    with grpc.insecure_channel(addr, options=[("grpc.max_receive_message_length", 64 * MIB)]) as ch:
        rpc = ch.unary_stream(path, request_serializer=type(request).SerializeToString,
                              response_deserializer=response_cls.FromString)
        started, items = time.monotonic(), 0
        try:
            for message in rpc(request, timeout=timeout):
                items += len(getattr(message, field))
            return grpc.StatusCode.OK, items, time.monotonic() - started
        except grpc.RpcError as err:
            return err.code(), items, time.monotonic() - started


# ---------------------------------------------------------------- h2load


def frame(message) -> bytes:
    """A gRPC length-prefixed message: not compressed, 4-byte big-endian length, the bytes."""
    body = message.SerializeToString()
    return b"\x00" + struct.pack(">I", len(body)) + body


class H2load:
    """Runs h2load (on LOAD_CPU when pinned), each run with its own request body and log file in `work`."""

    def __init__(self, work: Path):
        self.work, self.count = work, 0

    def run(self, addr: str, path: str, body: bytes, *, n: int | None = None, duration: float | None = None,
            clients: int = CLIENTS, streams: int = STREAMS, rps_per_client: float | None = None,
            tls: bool = False, token: str | None = None, web: bool = False) -> dict:
        """One h2load run (one thread); returns req/s, counts and per-request latencies (ms) from its log.
        `tls`: over TLS (h2load negotiates h2 by ALPN and does not verify the certificate); `token`: sent
        as a bearer token with every call; `web`: as gRPC-Web calls (the same framed body, the status
        in a trailer frame of the answer's body)."""
        self.count += 1
        data = self.work / f"h2load-{self.count:03d}.bin"
        data.write_bytes(body)
        logfile = self.work / f"h2load-{self.count:03d}.log"
        cmd = (["taskset", "-c", str(LOAD_CPU)] if PINNED else []) + [
            "h2load", "-t", "1", "-c", str(clients), "-m", str(streams), "-d", str(data),
            "--log-file", str(logfile),
        ]
        if web:
            cmd += ["-H", "content-type: application/grpc-web+proto", "-H", "x-grpc-web: 1"]
        else:
            cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        if duration is not None:
            cmd += ["-D", f"{duration}"]
            bound = duration + 30
        else:
            cmd += ["-n", str(n)]
            bound = BOUND * 5
        if rps_per_client:
            cmd += ["--rps", f"{rps_per_client:.2f}"]
        if token:
            cmd += ["-H", f"authorization: Bearer {token}"]
        cmd.append(f"{'https' if tls else 'http'}://{addr}{path}")
        started = time.monotonic()
        # subprocess.run kills h2load when the bound passes.
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=bound)
        wall = time.monotonic() - started
        if out.returncode != 0:
            raise RuntimeError(f"h2load failed ({out.returncode}): {out.stderr[-1000:]} {out.stdout[-1000:]}")
        return parse_h2load(out.stdout, logfile, wall)


def parse_h2load(text: str, logfile: Path, wall: float) -> dict:
    """h2load's summary (stdout) and its per-request log: latencies (ms) of the HTTP 200 answers, sorted."""
    finished = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    reqs = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                     r"(\d+) errored, (\d+) timeout", text)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    data_bytes = re.search(r"\((\d+)\) data", text)
    if not (finished and reqs and codes):
        raise RuntimeError(f"unexpected h2load output:\n{text}")
    latencies = []
    if logfile.exists():
        for line in logfile.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1] == "200":
                latencies.append(int(parts[2]) / 1000.0)
    return {
        "rps": float(finished.group(3)),
        "seconds": float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1),
        "wall": wall,
        "done": int(reqs.group(3)),
        "succeeded": int(reqs.group(4)),
        "failed": int(reqs.group(5)) + int(reqs.group(6)) + int(reqs.group(7)),
        "http_200": int(codes.group(1)),
        "data_bytes": int(data_bytes.group(1)) if data_bytes else 0,
        "latencies": sorted(latencies),
    }


def percentile(sorted_values: list, q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def fmt_ms(v) -> str:
    """Milliseconds: two decimals below 10, one below 100, none above; – when there is no figure."""
    if v is None:
        return "–"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


# ---------------------------------------------------------------- measurements


class Bench:
    """The measurements of a run: each checked with a real client, driven by h2load; results by key."""

    def __init__(self, work: Path, procs: Procs, client: Client):
        self.work, self.procs, self.client, self.h2 = work, procs, client, H2load(work)
        self.dev = DevCredentials(work)
        self.results: dict[str, dict] = {}
        self.failures: list[str] = []

    def check(self, label: str, fn) -> bool:
        """A real gRPC client's verdict (grpc-status 0 and the right answer)."""
        try:
            problem = fn()
        except Exception as err:
            problem = f"{type(err).__name__}: {err}"
        if problem:
            self.failures.append(f"{label}: {problem}")
            log(f"CHECK FAILED {label}: {problem}")
            return False
        return True

    @staticmethod
    def readings(servers: list, extra_cpu) -> dict:
        """What capacity() reads from the servers before and after its run: CPU seconds, context
        switches, the extra CPU (another process serving the calls, e.g. PostgreSQL) and metrics."""
        return {
            "cpu": {s.name: s.cpu_seconds() for s in servers},
            "cs": {s.name: context_switches(s.pid) for s in servers},
            "extra": extra_cpu() if extra_cpu else 0.0,
            "metrics": {s.name: s.metrics() for s in servers},
        }

    def capacity(self, label: str, addr: str, path: str, body: bytes, check, *, servers: list,
                 extra_cpu=None, method: str | None = None, clients: int = CLIENTS, streams: int = STREAMS,
                 expected: tuple = (), tls: bool = False, token: str | None = None, web: bool = False) -> dict:
        """A check, a calibration run, the measured run (req/s, latency, CPU and context switches per call,
        gRPC codes from the server's metrics), a check."""
        ok_before = self.check(f"{label} (before)", check)
        wire = dict(tls=tls, token=token, web=web)
        calibration = self.h2.run(addr, path, body, duration=CALIBRATE_SECONDS, clients=clients, streams=streams,
                                  **wire)
        n = int(min(2_000_000, max(500, calibration["rps"] * RUN_SECONDS)))
        # The calibration ends by cancelling its open calls: let the server finish them first.
        for s in servers:
            s.wait_idle()
        before = self.readings(servers, extra_cpu)
        server0, load0 = core_times(SERVER_CPU), core_times(LOAD_CPU)
        run = self.h2.run(addr, path, body, n=n, clients=clients, streams=streams, **wire)
        server1, load1 = core_times(SERVER_CPU), core_times(LOAD_CPU)
        after = self.readings(servers, extra_cpu)
        cpu0, cpu1 = before["cpu"], after["cpu"]
        metrics0, metrics1 = before["metrics"], after["metrics"]
        done = max(1, run["done"])
        result = {
            "label": label,
            "rps": run["rps"],
            "done": run["done"],
            "seconds": run["seconds"],
            "p50": percentile(run["latencies"], 50),
            "p99": percentile(run["latencies"], 99),
            "cpu_us": {name: (cpu1[name] - cpu0[name]) * 1e6 / done for name in cpu0},
            "cs": sum(after["cs"][name] - before["cs"][name] for name in before["cs"]) / done,
            "extra_cpu_us": (after["extra"] - before["extra"]) * 1e6 / done if extra_cpu else None,
            "http_not_200": run["done"] - run["http_200"] + run["failed"],
            "peak_rss": {s.name: s.status("VmHWM") for s in servers},
            # Other processes on the server's core during the run (a busy machine), and the idle
            # share of both cores: a server core left idle while the load core is not means the
            # load generator, not the server, set the pace.
            "foreign": max(0.0, (server1["processes"] - server0["processes"]) - sum(cpu1[k] - cpu0[k] for k in cpu0))
            / max(1e-9, server1["total"] - server0["total"]),
            "idle_server": core_share(server0, server1, "idle"),
            "idle_load": core_share(load0, load1, "idle"),
            "metrics": (metrics0, metrics1),
        }
        if method and servers[0].admin:
            codes = handled_by_code(metrics0[servers[0].name], metrics1[servers[0].name], method)
            result["grpc_codes"] = codes
            result["not_ok"] = sum(v for c, v in codes.items() if c not in ("OK", *expected))
            if result["not_ok"]:
                self.failures.append(f"{label}: gRPC codes during the run {codes}")
        if result["http_not_200"]:
            self.failures.append(f"{label}: {result['http_not_200']} answers without HTTP 200")
        ok_after = self.check(f"{label} (after)", check)
        result["checked"] = ok_before and ok_after and result["http_not_200"] == 0 and not result.get("not_ok")
        return result

    def paced(self, result: dict, addr: str, path: str, body: bytes, *, clients: int = CLIENTS,
              streams: int = STREAMS, **wire) -> None:
        """Latency at 80 % of the measured capacity: the same connections, paced with --rps."""
        target = 0.8 * result["rps"]
        n80 = int(max(500, target * RUN_SECONDS))
        paced = self.h2.run(addr, path, body, n=n80, clients=clients, streams=streams,
                            rps_per_client=target / clients, **wire)
        result.update(rps80=paced["rps"], p50_80=percentile(paced["latencies"], 50),
                      p99_80=percentile(paced["latencies"], 99))

    def light(self, result: dict, addr: str, path: str, body: bytes, **wire) -> None:
        """Latency at a light load: LIGHT_RPS on one connection, a few calls at a time."""
        light = self.h2.run(addr, path, body, n=int(LIGHT_RPS * RUN_SECONDS), clients=1, streams=4,
                            rps_per_client=LIGHT_RPS, **wire)
        result.update(p50_light=percentile(light["latencies"], 50), p99_light=percentile(light["latencies"], 99))

    def report(self, key: str, result: dict) -> dict:
        """Keeps the result under `key` and logs its figures."""
        self.results[key] = result
        log(f"{result['label']}: {result['rps']:,.0f} req/s, p50 {fmt_ms(result['p50'])} ms, "
            f"p99 {fmt_ms(result['p99'])} ms, CPU {sum(result['cpu_us'].values()):.1f} us/call, "
            f"{result['cs']:.1f} context switches/call"
            + (f", p99 at 80 % {fmt_ms(result['p99_80'])} ms" if "p99_80" in result else "")
            + (f", codes {result['grpc_codes']}" if "grpc_codes" in result else ""))
        return result

    def load(self, key: str, label: str, addr: str, path: str, body: bytes, check, *, at80: bool = True,
             clients: int = CLIENTS, streams: int = STREAMS, **kw) -> dict:
        """Capacity, then optionally the latency at 80 % of it."""
        log(f"{label}: measuring")
        result = self.capacity(label, addr, path, body, check, clients=clients, streams=streams, **kw)
        if at80:
            self.paced(result, addr, path, body, clients=clients, streams=streams)
            result["checked"] &= self.check(f"{label} (after the paced run)", check)
        return self.report(key, result)

    def contest(self, contenders: list[dict]) -> None:
        """Servers compared with each other run side by side and are measured in turns, ROUNDS times;
        each keeps its median round, so a burst of outside load does not fall on one of them only."""
        rounds = {c["key"]: [] for c in contenders}
        for i in range(ROUNDS):
            for c in contenders:
                log(f"{c['label']}: round {i + 1} of {ROUNDS}")
                kw = {k: v for k, v in c.items() if k not in ("key", "label", "addr", "path", "body", "check")}
                rounds[c["key"]].append(self.capacity(c["label"], c["addr"], c["path"], c["body"], c["check"], **kw))
        for c in contenders:
            runs = sorted(rounds[c["key"]], key=lambda r: r["rps"])
            result = runs[len(runs) // 2]
            result["rounds"] = [r["rps"] for r in rounds[c["key"]]]
            result["checked"] = all(r["checked"] for r in runs)
            wire = {k: c[k] for k in ("tls", "token", "web") if k in c}
            self.paced(result, c["addr"], c["path"], c["body"], **wire)
            self.light(result, c["addr"], c["path"], c["body"], **wire)
            result["checked"] &= self.check(f"{c['label']} (after the paced runs)", c["check"])
            self.report(c["key"], result)
