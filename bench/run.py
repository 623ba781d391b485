"""`make bench`: Agora measured side by side with its references, in one run.

Run with tools/.venv/bin/python (grpcio, grpcio-tools). It builds the release
binaries once, prepares the data (catalog SQLite files with 1,000 and
1,000,000 products, a PostgreSQL database it creates and drops, an offers
file), then measures with h2load (nghttp2-client) speaking gRPC:

  references  the bare tonic server (bench/bare: GetProduct from memory, no
              middleware) and the Python grpc.aio peer (bench/python_peer.py:
              GetProduct from the same SQLite file)
  Agora       GetProduct on SQLite and PostgreSQL, ListAvailableOffers,
              CreateOffer (offers asks catalog), StreamProducts, start-up and
              idle memory of every service, overload, and scale (1,000 versus
              1,000,000 products)

Servers run on one core and h2load on the other (taskset). Every call kind
is checked with a real gRPC client before and after its run (h2load sees
HTTP 200 only), and the Agora services' own metrics count the gRPC codes of
the run. The table is printed and, in a full run, written into
BENCHMARKS.md between its markers with the machine it came from.

BENCH_QUICK=1: smaller counts and 1,000 products instead of a million for
the streaming and scale parts; a smoke run, BENCHMARKS.md is left alone.
BENCH_BUILD=0: use the binaries already in target/release instead of building.
Figures are reported, never asserted: only ratios of one run count.
"""

import datetime
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
QUICK = os.environ.get("BENCH_QUICK", "") == "1"
SERVICES = ["catalog", "customers", "offers", "shopping"]
RELEASE = ROOT / "target" / "release"
POSTGRES_URL = os.environ.get("AGORA_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
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
ROUNDS = 1 if QUICK else 3  # turns of the side-by-side GetProduct comparison
OVERLOAD_LIMIT, OVERLOAD_CLIENTS, OVERLOAD_STREAMS = 32, 10, 32  # 320 streams = 10x the limit
BOUND = 60  # seconds: the longest any single wait may take
FLAT_BOUND = 32 * MIB  # streaming memory is flat when its growth stays below this, whatever the catalog's size

SERVER_CPU, LOAD_CPU = 0, 1
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- processes


class Procs:
    """Every process the benchmark starts; all stopped at the end, whatever happens."""

    def __init__(self, work: Path):
        self.work = work
        self.running: list[subprocess.Popen] = []
        self.count = 0

    def start(self, name: str, argv: list[str], env: dict | None = None, pin: bool = True) -> "Server":
        self.count += 1
        logfile = self.work / "logs" / f"{self.count:03d}-{name}.log"
        logfile.parent.mkdir(exist_ok=True)
        cmd = (["taskset", "-c", str(SERVER_CPU)] if pin and PINNED else []) + argv
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
        """Waits for the listening line, then for health SERVING."""
        if self.grpc is None:
            self.wait_listening(bound)
        deadline = time.monotonic() + bound
        with grpc.insecure_channel(self.grpc) as channel:
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


def service_env(db_url: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_") and k != "RUST_LOG"}
    env.update(
        AGORA_GRPC_ADDR="127.0.0.1:0",
        AGORA_ADMIN_ADDR="127.0.0.1:0",
        AGORA_DATABASE_URL=db_url,
        AGORA_DRAIN_DELAY_MS="0",
        AGORA_SHUTDOWN_TIMEOUT_MS="2000",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ---------------------------------------------------------------- gRPC client


class Client:
    """The Python client generated from proto/, as a client author makes it."""

    def __init__(self, out: Path):
        from grpc_tools import protoc

        protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
        include = Path(protoc.__file__).parent / "_proto"
        out.mkdir(parents=True, exist_ok=True)
        argv = ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
        if protoc.main(argv + protos) != 0:
            raise RuntimeError("protoc failed")
        sys.path.insert(0, str(out))
        import agora.catalog.v1.catalog_service_pb2 as catalog
        import agora.offers.v1.offers_service_pb2 as offers
        from google.protobuf import timestamp_pb2

        self.dir, self.catalog, self.offers, self.timestamp = out, catalog, offers, timestamp_pb2.Timestamp


def call(addr: str, path: str, request, response_cls, timeout: float = 10):
    """One unary call; returns (grpc code, response or None, details)."""
    with grpc.insecure_channel(addr, options=[("grpc.max_receive_message_length", 64 * MIB)]) as ch:
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
    def __init__(self, work: Path):
        self.work, self.count = work, 0

    def run(self, addr: str, path: str, body: bytes, *, n: int | None = None, duration: float | None = None,
            clients: int = CLIENTS, streams: int = STREAMS, rps_per_client: float | None = None) -> dict:
        """One h2load run (one thread); returns req/s, counts and per-request latencies (ms) from its log."""
        self.count += 1
        data = self.work / f"h2load-{self.count:03d}.bin"
        data.write_bytes(body)
        logfile = self.work / f"h2load-{self.count:03d}.log"
        cmd = (["taskset", "-c", str(LOAD_CPU)] if PINNED else []) + [
            "h2load", "-t", "1", "-c", str(clients), "-m", str(streams), "-d", str(data),
            "-H", "content-type: application/grpc", "-H", "te: trailers", "--log-file", str(logfile),
        ]
        if duration is not None:
            cmd += ["-D", f"{duration}"]
            bound = duration + 30
        else:
            cmd += ["-n", str(n)]
            bound = BOUND * 5
        if rps_per_client:
            cmd += ["--rps", f"{rps_per_client:.2f}"]
        cmd.append(f"http://{addr}{path}")
        started = time.monotonic()
        # subprocess.run kills h2load when the bound passes.
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=bound)
        wall = time.monotonic() - started
        if out.returncode != 0:
            raise RuntimeError(f"h2load failed ({out.returncode}): {out.stderr[-1000:]} {out.stdout[-1000:]}")
        text = out.stdout
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


# ---------------------------------------------------------------- measurements


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


class Bench:
    def __init__(self, work: Path, procs: Procs, client: Client):
        self.work, self.procs, self.client, self.h2 = work, procs, client, H2load(work)
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

    def capacity(self, label: str, addr: str, path: str, body: bytes, check, *, servers: list,
                 extra_cpu=None, method: str | None = None, clients: int = CLIENTS, streams: int = STREAMS,
                 expected: tuple = ()) -> dict:
        """A check, a calibration run, the measured run (req/s, latency, CPU and context switches per call,
        gRPC codes from the server's metrics), a check."""
        ok_before = self.check(f"{label} (before)", check)
        calibration = self.h2.run(addr, path, body, duration=CALIBRATE_SECONDS, clients=clients, streams=streams)
        n = int(min(2_000_000, max(500, calibration["rps"] * RUN_SECONDS)))
        # The calibration ends by cancelling its open calls: let the server finish them first.
        for s in servers:
            s.wait_idle()
        cpu0 = {s.name: s.cpu_seconds() for s in servers}
        cs0 = {s.name: context_switches(s.pid) for s in servers}
        extra0 = extra_cpu() if extra_cpu else 0.0
        metrics0 = {s.name: s.metrics() for s in servers}
        server0, load0 = core_times(SERVER_CPU), core_times(LOAD_CPU)
        run = self.h2.run(addr, path, body, n=n, clients=clients, streams=streams)
        server1, load1 = core_times(SERVER_CPU), core_times(LOAD_CPU)
        cpu1 = {s.name: s.cpu_seconds() for s in servers}
        cs1 = {s.name: context_switches(s.pid) for s in servers}
        extra1 = extra_cpu() if extra_cpu else 0.0
        metrics1 = {s.name: s.metrics() for s in servers}
        done = max(1, run["done"])
        result = {
            "label": label,
            "rps": run["rps"],
            "done": run["done"],
            "seconds": run["seconds"],
            "p50": percentile(run["latencies"], 50),
            "p99": percentile(run["latencies"], 99),
            "cpu_us": {name: (cpu1[name] - cpu0[name]) * 1e6 / done for name in cpu0},
            "cs": sum(cs1[name] - cs0[name] for name in cs0) / done,
            "extra_cpu_us": (extra1 - extra0) * 1e6 / done if extra_cpu else None,
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
              streams: int = STREAMS) -> None:
        """Latency at 80 % of the measured capacity: the same connections, paced with --rps."""
        target = 0.8 * result["rps"]
        n80 = int(max(500, target * RUN_SECONDS))
        paced = self.h2.run(addr, path, body, n=n80, clients=clients, streams=streams,
                            rps_per_client=target / clients)
        result.update(rps80=paced["rps"], p50_80=percentile(paced["latencies"], 50),
                      p99_80=percentile(paced["latencies"], 99))

    def light(self, result: dict, addr: str, path: str, body: bytes) -> None:
        """Latency at a light load: LIGHT_RPS on one connection, a few calls at a time."""
        light = self.h2.run(addr, path, body, n=int(LIGHT_RPS * RUN_SECONDS), clients=1, streams=4,
                            rps_per_client=LIGHT_RPS)
        result.update(p50_light=percentile(light["latencies"], 50), p99_light=percentile(light["latencies"], 99))

    def report(self, key: str, result: dict) -> dict:
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
            self.paced(result, c["addr"], c["path"], c["body"])
            self.light(result, c["addr"], c["path"], c["body"])
            result["checked"] &= self.check(f"{c['label']} (after the paced runs)", c["check"])
            self.report(c["key"], result)


def fmt_ms(v) -> str:
    if v is None:
        return "–"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


# ---------------------------------------------------------------- data


def catalog_schema(procs: Procs, db_url: str) -> None:
    """Lets the catalog create its schema (migrations) on a new database, then stops it."""
    s = procs.start("catalog-migrate", [str(RELEASE / "agora-catalog")], service_env(db_url, AGORA_LOG="warn"))
    try:
        s.wait_serving()
    finally:
        s.stop()


def product_id(i: int) -> str:
    return f"prd_{i:032x}"


PRODUCT_SQL_SQLITE = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count})
INSERT INTO products (product_id, display_name, description, family_id, currency_code, amount_minor,
                      state, revision, create_time, update_time)
SELECT printf('prd_%032x', i), 'Product ' || i,
       'A product of the benchmark catalog, number ' || i || ', with a description of an ordinary length.',
       printf('fam_%032x', 1 + i % 10), 'EUR', 100 + (i * 37) % 100000, 'ACTIVE', 1, {base} + i, {base} + i
FROM n
"""

FAMILY_SQL_SQLITE = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10)
INSERT INTO families (family_id, display_name, description, create_time)
SELECT printf('fam_%032x', i), 'Family ' || i, 'A family of the benchmark catalog', {base} + i FROM n
"""

PRODUCT_SQL_POSTGRES = """
INSERT INTO families (family_id, display_name, description, create_time)
SELECT 'fam_' || lpad(to_hex(i), 32, '0'), 'Family ' || i, 'A family of the benchmark catalog', {base} + i
FROM generate_series(1, 10) AS i;
INSERT INTO products (product_id, display_name, description, family_id, currency_code, amount_minor,
                      state, revision, create_time, update_time)
SELECT 'prd_' || lpad(to_hex(i), 32, '0'), 'Product ' || i,
       'A product of the benchmark catalog, number ' || i || ', with a description of an ordinary length.',
       'fam_' || lpad(to_hex(1 + i % 10), 32, '0'), 'EUR', 100 + (i * 37) % 100000, 'ACTIVE', 1,
       {base} + i, {base} + i
FROM generate_series(1, {count}) AS i;
ANALYZE;
"""


def fill_catalog_sqlite(path: Path, count: int) -> None:
    base = int(time.time() * 1e6) - 10_000_000_000
    db = sqlite3.connect(path)
    try:
        db.execute(FAMILY_SQL_SQLITE.format(base=base))
        db.execute(PRODUCT_SQL_SQLITE.format(count=count, base=base))
        db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (n,) = db.execute("SELECT count(*) FROM products").fetchone()
        if n != count:
            raise RuntimeError(f"{path}: {n} products instead of {count}")
    finally:
        db.close()


def fill_offers_sqlite(path: Path, now: int) -> None:
    """10,000 offers on the first 1,000 products: a quarter ended, a quarter not begun, one in ten
    withdrawn, one in three personal (seven customers), the rest for everyone."""
    hour = 3_600_000_000
    db = sqlite3.connect(path)
    try:
        db.execute(f"""
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {OFFERS})
            INSERT INTO offers (offer_id, product_id, customer_id, kind, discount_percent, start_time, end_time,
                                state, revision, create_time, update_time)
            SELECT printf('off_%032x', i), printf('prd_%032x', 1 + i % 1000),
                   CASE WHEN i % 3 = 0 THEN printf('cus_%032x', 1 + (i / 1000) % 7) ELSE '' END,
                   CASE WHEN i % 2 = 0 THEN 'LAST_DAY' ELSE 'SPEED' END, 5 + i % 50,
                   CASE i % 4 WHEN 0 THEN {now} - 48 * {hour} WHEN 1 THEN {now} + 24 * {hour} ELSE {now} - {hour} END,
                   CASE i % 4 WHEN 0 THEN {now} - 30 * {hour} WHEN 1 THEN {now} + 40 * {hour}
                              ELSE {now} + (1 + i % 20) * {hour} END,
                   CASE WHEN i % 10 = 9 THEN 'WITHDRAWN' ELSE 'ACTIVE' END, 1, {now} - {hour} + i, {now} - {hour} + i
            FROM n""")
        db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def expected_available(path: Path, customer: str, product: str, now: int) -> int:
    db = sqlite3.connect(path)
    try:
        (n,) = db.execute(
            "SELECT count(*) FROM offers WHERE state = 'ACTIVE' AND customer_id IN ('', ?) AND start_time <= ? "
            "AND end_time > ? AND product_id = ?", (customer, now, now, product)).fetchone()
        return n
    finally:
        db.close()


def psql(url: str, sql: str, bound: float = 600) -> str:
    out = subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-q", "-At", "-c", sql], capture_output=True,
                         text=True, timeout=bound)
    if out.returncode != 0:
        raise RuntimeError(f"psql: {out.stderr.strip()}")
    return out.stdout.strip()


def postgres_backends_cpu(dbname: str) -> float:
    """CPU seconds of the PostgreSQL backends serving `dbname` (their titles name it)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace")
            if title.startswith("postgres:") and f" {dbname} " in title:
                total += cpu_seconds(int(entry))
        except OSError:
            continue
    return total


# ---------------------------------------------------------------- the run


def machine() -> dict:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(git + ["status", "--porcelain", "--", "services", "src", "proto"], capture_output=True,
                             text=True).stdout.strip()
    h2load = subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "rustc": rustc,
        "code": f"{commit or 'unknown'}" + (", with uncommitted changes in services/, src/ or proto/" if changed
                                           else ", services/, src/ and proto/ as committed"),
        "h2load": h2load,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
    }


def build() -> None:
    if os.environ.get("BENCH_BUILD", "1") == "0":
        log("BENCH_BUILD=0: using the binaries already in target/release")
        return
    log("building release binaries (profile release)")
    cmd = ["cargo", "build", "--release", "-q"] + [
        arg for p in [f"agora-{s}" for s in SERVICES] + ["agora-bench-bare"] for arg in ("-p", p)
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=3600)


PINNED = False


def main() -> int:
    global PINNED
    if shutil.which("h2load") is None:
        print("h2load is missing: apt-get install nghttp2-client (make bench does it)", file=sys.stderr)
        return 2
    build()
    info = machine()
    cpus = sorted(os.sched_getaffinity(0))
    PINNED = SERVER_CPU in cpus and LOAD_CPU in cpus
    if PINNED:
        # The orchestrator (and the Python clients it runs) shares the load generator's core.
        os.sched_setaffinity(0, {LOAD_CPU})
    else:
        log("fewer than two cores: servers and load generator are not pinned")
    work = Path(tempfile.mkdtemp(prefix="agora-bench-"))
    procs = Procs(work)
    created: list[str] = []  # the PostgreSQL database, once created
    ok = False
    try:
        client = Client(work / "gen")
        bench = Bench(work, procs, client)
        run_all(bench, procs, client, work, info, created)
        ok = True
    finally:
        procs.stop_all()
        for db in created:
            try:
                psql(POSTGRES_URL, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", bound=60)
            except Exception as err:
                print(f"dropping {db}: {err}", file=sys.stderr)
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work files and logs kept in {work}", file=sys.stderr)
    # Figures are not asserted, but a call that did not answer grpc-status 0 makes them void.
    return 1 if bench.failures else 0


def run_all(bench: Bench, procs: Procs, client: Client, work: Path, info: dict, created: list) -> None:
    cat, off = client.catalog, client.offers
    r = bench.results
    extra_results: dict = {}

    # --- data
    log(f"preparing data: catalogs of {SMALL:,} and {LARGE:,} products, {OFFERS:,} offers")
    small_db = work / "catalog-small.db"
    catalog_schema(procs, f"sqlite:{small_db}")
    fill_catalog_sqlite(small_db, SMALL)
    if LARGE != SMALL:
        large_db = work / "catalog-large.db"
        catalog_schema(procs, f"sqlite:{large_db}")
        started = time.monotonic()
        fill_catalog_sqlite(large_db, LARGE)
        log(f"{LARGE:,} products inserted in {time.monotonic() - started:.1f} s")
    else:
        large_db = small_db
    pg_db = None
    pg_skip = None
    if shutil.which("psql") is None:
        pg_skip = "psql is not installed"
    else:
        try:
            psql(POSTGRES_URL, "SELECT 1", bound=10)
        except Exception as err:
            pg_skip = f"PostgreSQL unreachable at {POSTGRES_URL}: {err}"
    if pg_skip is None:
        pg_db = f"agora_bench_{os.getpid()}"
        created.append(pg_db)
        psql(POSTGRES_URL, f"CREATE DATABASE {pg_db}")
        pg_url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + pg_db
        catalog_schema(procs, pg_url)
        psql(pg_url, PRODUCT_SQL_POSTGRES.format(count=SMALL, base=int(time.time() * 1e6) - 10_000_000_000))
    else:
        log(f"PostgreSQL skipped: {pg_skip}")

    offers_db = work / "offers-read.db"
    s = procs.start("offers-migrate", [str(RELEASE / "agora-offers")],
                    service_env(f"sqlite:{offers_db}", AGORA_LOG="error",
                                AGORA_CATALOG_ADDRS="http://127.0.0.1:9", AGORA_CUSTOMERS_ADDRS="http://127.0.0.1:9"))
    try:
        s.wait_serving()
    finally:
        s.stop()
    now = int(time.time() * 1e6)
    fill_offers_sqlite(offers_db, now)

    get_path = "/agora.catalog.v1.CatalogService/GetProduct"
    pid_mid = product_id(SMALL // 2)
    get_body = frame(cat.GetProductRequest(product_id=pid_mid))

    def get_check(addr, want=pid_mid):
        def check():
            code, resp, details = call(addr, get_path, cat.GetProductRequest(product_id=want), cat.GetProductResponse)
            if code != grpc.StatusCode.OK:
                return f"{code.name}: {details}"
            if resp.product.product_id != want or resp.product.etag != "r1" or not resp.product.price.currency_code:
                return f"unexpected product {resp.product}"
            return None
        return check

    # --- 1. GetProduct: bare, Python peer, full stack on SQLite and PostgreSQL, side by side in turns
    started = []
    try:
        bare = procs.start("bare", [str(RELEASE / "agora-bench-bare")],
                           {"AGORA_GRPC_ADDR": "127.0.0.1:0", "AGORA_DATABASE_URL": f"sqlite:{small_db}",
                            "PATH": os.environ.get("PATH", "")})
        started.append(bare.wait_listening())
        peer = procs.start("python-peer", [PYTHON, str(ROOT / "bench" / "python_peer.py"), "--db", str(small_db),
                                            "--gen", str(client.dir)])
        started.append(peer.wait_listening())
        catalog = procs.start("catalog", [str(RELEASE / "agora-catalog")], service_env(f"sqlite:{small_db}"))
        started.append(catalog.wait_serving())
        contenders = [
            dict(key="bare", label="bare tonic, GetProduct from memory", addr=bare.grpc, servers=[bare]),
            dict(key="python", label="Python grpc.aio, GetProduct, SQLite", addr=peer.grpc, servers=[peer]),
            dict(key="get_sqlite", label=f"Agora catalog, GetProduct, SQLite ({SMALL:,} products)",
                 addr=catalog.grpc, servers=[catalog], method=get_path),
        ]
        if pg_db:
            catalog_pg = procs.start("catalog", [str(RELEASE / "agora-catalog")], service_env(pg_url))
            started.append(catalog_pg.wait_serving())
            contenders.append(dict(key="get_postgres", label=f"Agora catalog, GetProduct, PostgreSQL ({SMALL:,} products)",
                                   addr=catalog_pg.grpc, servers=[catalog_pg], method=get_path,
                                   extra_cpu=lambda: postgres_backends_cpu(pg_db)))
        for c in contenders:
            c.update(path=get_path, body=get_body, check=get_check(c["addr"]))
        bench.contest(contenders)
    finally:
        for s in started:
            s.stop()

    # --- 2. ListAvailableOffers on SQLite
    db = sqlite3.connect(offers_db)
    (customer,) = db.execute("SELECT customer_id FROM offers WHERE customer_id != '' AND product_id = ? LIMIT 1",
                             (product_id(3),)).fetchone()
    db.close()
    avail_req = off.ListAvailableOffersRequest(customer_id=customer, product_id=product_id(3))
    avail_path = "/agora.offers.v1.OfferService/ListAvailableOffers"

    offers = procs.start("offers-read", [str(RELEASE / "agora-offers")],
                         service_env(f"sqlite:{offers_db}", AGORA_CATALOG_ADDRS="http://127.0.0.1:9",
                                     AGORA_CUSTOMERS_ADDRS="http://127.0.0.1:9", AGORA_LOG="error")).wait_serving()
    try:
        def avail_check():
            want = expected_available(offers_db, customer, product_id(3), int(time.time() * 1e6))
            code, resp, details = call(offers.grpc, avail_path, avail_req, off.ListAvailableOffersResponse)
            if code != grpc.StatusCode.OK:
                return f"{code.name}: {details}"
            if resp.fallback or len(resp.offers) != want or want == 0:
                return f"{len(resp.offers)} offers (fallback {resp.fallback}) instead of {want}"
            return None
        extra_results["available_count"] = expected_available(offers_db, customer, product_id(3), now)
        bench.load("available", f"Agora offers, ListAvailableOffers, SQLite ({OFFERS:,} offers)", offers.grpc,
                   avail_path, frame(avail_req), avail_check, servers=[offers], method=avail_path)
    finally:
        offers.stop()

    # --- 3. CreateOffer: offers asks catalog
    catalog = procs.start("catalog", [str(RELEASE / "agora-catalog")], service_env(f"sqlite:{small_db}")).wait_serving()
    customers = procs.start("customers", [str(RELEASE / "agora-customers")],
                            service_env(f"sqlite:{work / 'customers.db'}")).wait_serving()
    create_db = work / "offers-create.db"
    offers = procs.start("offers", [str(RELEASE / "agora-offers")],
                         service_env(f"sqlite:{create_db}", AGORA_CATALOG_ADDRS=f"http://{catalog.grpc}",
                                     AGORA_CUSTOMERS_ADDRS=f"http://{customers.grpc}")).wait_serving()
    try:
        start = int(time.time()) - 60
        new_offer = off.Offer(product_id=product_id(7), kind=off.OFFER_KIND_SPEED, discount_percent=10,
                              start_time=client.timestamp(seconds=start),
                              end_time=client.timestamp(seconds=start + 24 * 3600))
        create_req = off.CreateOfferRequest(offer=new_offer)
        create_path = "/agora.offers.v1.OfferService/CreateOffer"

        def create_check():
            code, resp, details = call(offers.grpc, create_path, create_req, off.CreateOfferResponse)
            if code != grpc.StatusCode.OK:
                return f"{code.name}: {details}"
            if not resp.offer.offer_id or resp.offer.product_id != product_id(7):
                return f"unexpected offer {resp.offer}"
            return None

        res = bench.load("create", "Agora offers, CreateOffer (asks catalog), SQLite", offers.grpc, create_path,
                         frame(create_req), create_check, servers=[offers, catalog, customers], method=create_path)
        m0, m1 = res["metrics"]
        calls = (metric(m1["catalog"], "grpc_server_handling_seconds_count", grpc_method="GetProduct")
                 - metric(m0["catalog"], "grpc_server_handling_seconds_count", grpc_method="GetProduct"))
        secs = (metric(m1["catalog"], "grpc_server_handling_seconds_sum", grpc_method="GetProduct")
                - metric(m0["catalog"], "grpc_server_handling_seconds_sum", grpc_method="GetProduct"))
        own = (metric(m1["offers"], "grpc_server_handling_seconds_sum", grpc_method="CreateOffer")
               - metric(m0["offers"], "grpc_server_handling_seconds_sum", grpc_method="CreateOffer"))
        own_n = (metric(m1["offers"], "grpc_server_handling_seconds_count", grpc_method="CreateOffer")
                 - metric(m0["offers"], "grpc_server_handling_seconds_count", grpc_method="CreateOffer"))
        res["upstream_calls"] = calls
        res["catalog_ms"] = secs * 1000 / calls if calls else None
        res["offers_ms"] = own * 1000 / own_n if own_n else None
    finally:
        offers.stop()
        customers.stop()
        catalog.stop()

    # --- 7. Scale: GetProduct and a deep ListProducts page, small and large catalogs
    list_path = "/agora.catalog.v1.CatalogService/ListProducts"
    for size, path in (("small", small_db), ("large", large_db)):
        count = SMALL if size == "small" else LARGE
        catalog = procs.start(f"catalog-{size}", [str(RELEASE / "agora-catalog")],
                              service_env(f"sqlite:{path}")).wait_serving()
        try:
            want = product_id(count // 2 + 1)
            bench.load(f"scale_get_{size}", f"scale: GetProduct, {count:,} products", catalog.grpc, get_path,
                       frame(cat.GetProductRequest(product_id=want)), get_check(catalog.grpc, want),
                       servers=[catalog], method=get_path, at80=False)
            # The page after 90 % of the catalog, reached the way a client does: page after page.
            depth = count * 9 // 10
            token, walked, deadline = "", 0, time.monotonic() + 600
            while walked < depth and time.monotonic() < deadline:
                step = min(1000, depth - walked)
                code, resp, details = call(catalog.grpc, list_path,
                                           cat.ListProductsRequest(page_size=step, page_token=token),
                                           cat.ListProductsResponse, timeout=30)
                if code != grpc.StatusCode.OK:
                    raise RuntimeError(f"walking ListProducts: {code.name}: {details}")
                token, walked = resp.next_page_token, walked + len(resp.products)
            deep_req = cat.ListProductsRequest(page_size=50, page_token=token)
            first_id = product_id(depth + 1)

            def deep_check(addr=catalog.grpc, req=deep_req, first_id=first_id):
                code, resp, details = call(addr, list_path, req, cat.ListProductsResponse)
                if code != grpc.StatusCode.OK:
                    return f"{code.name}: {details}"
                if len(resp.products) != 50 or resp.products[0].product_id != first_id:
                    return f"unexpected page: {len(resp.products)} products from {resp.products[:1]}"
                return None

            bench.load(f"scale_list_{size}", f"scale: ListProducts, page of 50 after {depth:,} of {count:,}",
                       catalog.grpc, list_path, frame(deep_req), deep_check, servers=[catalog], method=list_path,
                       at80=False)
        finally:
            catalog.stop()

    # --- 4. StreamProducts over the large catalog: rows/s and the server's peak memory
    stream_path = "/agora.catalog.v1.CatalogService/StreamProducts"
    catalog = procs.start("catalog-stream", [str(RELEASE / "agora-catalog")],
                          service_env(f"sqlite:{large_db}")).wait_serving()
    try:
        log(f"StreamProducts: {LARGE:,} products, Python reader then h2load reader")
        rss_before = catalog.status("VmRSS")
        cpu0 = catalog.cpu_seconds()
        code, items, secs = stream_count(catalog.grpc, stream_path, cat.StreamProductsRequest(),
                                         cat.StreamProductsResponse, "products")
        cpu1 = catalog.cpu_seconds()
        py_ok = code == grpc.StatusCode.OK and items == LARGE
        if not py_ok:
            bench.failures.append(f"StreamProducts (Python reader): {code.name}, {items} of {LARGE}")
        r["stream_python"] = {"rows_s": items / secs if secs else 0, "seconds": secs, "items": items,
                              "cpu_s": cpu1 - cpu0, "cpu_us_per_1000": (cpu1 - cpu0) * 1e9 / max(1, items),
                              "checked": py_ok}
        rss_mid = catalog.status("VmHWM")
        m0 = catalog.metrics()
        cpu0 = catalog.cpu_seconds()
        run = bench.h2.run(catalog.grpc, stream_path, frame(cat.StreamProductsRequest()), n=STREAM_REPEATS,
                           clients=1, streams=1)
        cpu1 = catalog.cpu_seconds()
        m1 = catalog.metrics()
        hwm = catalog.status("VmHWM")
        rows = metric(m1, "agora_catalog_stream_rows_read_total") - metric(m0, "agora_catalog_stream_rows_read_total")
        ok_codes = (metric(m1, "grpc_server_handled_total", grpc_method="StreamProducts", grpc_code="OK")
                    - metric(m0, "grpc_server_handled_total", grpc_method="StreamProducts", grpc_code="OK"))
        h2_ok = rows == LARGE * STREAM_REPEATS and ok_codes == STREAM_REPEATS
        if not h2_ok:
            bench.failures.append(f"StreamProducts (h2load): {rows:.0f} rows read, {ok_codes:.0f} OK streams")
        after_ok = bench.check("StreamProducts (after)", lambda: None if stream_count(
            catalog.grpc, stream_path, cat.StreamProductsRequest(), cat.StreamProductsResponse, "products")[1] == LARGE
            else "wrong count")
        median_s = statistics.median(run["latencies"]) / 1000 if run["latencies"] else run["seconds"] / STREAM_REPEATS
        r["stream_h2load"] = {
            "rows_s": LARGE / median_s if median_s else 0,
            "seconds": median_s,
            "cpu_s": cpu1 - cpu0,
            "cpu_us_per_1000": (cpu1 - cpu0) * 1e9 / max(1, rows),
            "rss_before": rss_before,
            "stream_bytes": run["data_bytes"] / STREAM_REPEATS,
            "hwm_after_python": rss_mid,
            "hwm": hwm,
            "checked": h2_ok and after_ok,
        }
    finally:
        catalog.stop()

    # --- 5. Start-up (median of many starts) and idle memory
    log(f"start-up: {STARTS} starts of each service")
    startup = {}
    for name in SERVICES:
        db_path = work / f"start-{name}.db"
        times, first = [], []
        for i in range(STARTS):
            fresh = work / f"start-{name}-fresh-{i}.db"
            for target, into in ((fresh, first), (db_path, times)):
                s = procs.start(f"start-{name}", [str(RELEASE / f"agora-{name}")],
                                service_env(f"sqlite:{target}", AGORA_LOG="warn",
                                            AGORA_CATALOG_ADDRS="http://127.0.0.1:9",
                                            AGORA_CUSTOMERS_ADDRS="http://127.0.0.1:9"))
                try:
                    s.wait_serving(bound=30)
                    into.append((time.monotonic() - s.started) * 1000)
                finally:
                    s.stop()
        startup[name] = {"median": statistics.median(times), "p90": sorted(times)[int(len(times) * 0.9) - 1]
                         if len(times) >= 10 else max(times), "first": statistics.median(first)}
    # Idle memory: the four services wired together as make run starts them.
    catalog = procs.start("idle-catalog", [str(RELEASE / "agora-catalog")],
                          service_env(f"sqlite:{small_db}")).wait_serving()
    customers = procs.start("idle-customers", [str(RELEASE / "agora-customers")],
                            service_env(f"sqlite:{work / 'idle-customers.db'}")).wait_serving()
    up = dict(AGORA_CATALOG_ADDRS=f"http://{catalog.grpc}", AGORA_CUSTOMERS_ADDRS=f"http://{customers.grpc}")
    offers = procs.start("idle-offers", [str(RELEASE / "agora-offers")],
                         service_env(f"sqlite:{work / 'idle-offers.db'}", **up)).wait_serving()
    shopping = procs.start("idle-shopping", [str(RELEASE / "agora-shopping")],
                           service_env(f"sqlite:{work / 'idle-shopping.db'}", **up)).wait_serving()
    try:
        time.sleep(2 if QUICK else 5)
        for s in (catalog, customers, offers, shopping):
            startup[s.name.split("-")[1]]["idle_rss"] = s.status("VmRSS")
    finally:
        for s in (shopping, offers, customers, catalog):
            s.stop()
    r["startup"] = startup

    # --- 6. Overload: ten times the admitted concurrency
    catalog = procs.start("catalog-overload", [str(RELEASE / "agora-catalog")],
                          service_env(f"sqlite:{small_db}", AGORA_CONCURRENCY_LIMIT=OVERLOAD_LIMIT)).wait_serving()
    try:
        polls, stop_polling = [], threading.Event()

        def poll_health():
            with grpc.insecure_channel(catalog.grpc) as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                while not stop_polling.is_set():
                    started = time.monotonic()
                    try:
                        status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                        polls.append((status == health_pb2.HealthCheckResponse.SERVING, time.monotonic() - started))
                    except grpc.RpcError as err:
                        polls.append((False, time.monotonic() - started, err.code().name))
                    stop_polling.wait(0.1)

        poller = threading.Thread(target=poll_health, daemon=True)
        poller.start()
        try:
            res = bench.load("overload", f"overload: GetProduct, {OVERLOAD_CLIENTS * OVERLOAD_STREAMS} streams, "
                             f"limit {OVERLOAD_LIMIT}", catalog.grpc, get_path, get_body, get_check(catalog.grpc),
                             servers=[catalog], method=get_path, at80=False, clients=OVERLOAD_CLIENTS,
                             streams=OVERLOAD_STREAMS, expected=("RESOURCE_EXHAUSTED",))
        finally:
            stop_polling.set()
            poller.join(timeout=10)
        m0, m1 = res["metrics"][0][catalog.name], res["metrics"][1][catalog.name]
        res["shed"] = metric(m1, "agora_grpc_server_shed_total") - metric(m0, "agora_grpc_server_shed_total")
        res["polls"] = len(polls)
        res["polls_serving"] = sum(1 for p in polls if p[0])
        res["poll_max_ms"] = max((p[1] for p in polls), default=0) * 1000
    finally:
        catalog.stop()

    table = render(bench, info, extra_results, pg_skip)
    print()
    print(table)
    if bench.failures:
        print("\nChecks that failed:\n" + "\n".join(f"- {f}" for f in bench.failures))
    if QUICK:
        log("BENCH_QUICK=1: a smoke run; BENCHMARKS.md is left as it is")
    else:
        write_benchmarks(table)
        log("BENCHMARKS.md updated")


# ---------------------------------------------------------------- report


def num(v: float) -> str:
    return f"{v:,.0f}"


def mib(b) -> str:
    return "–" if b is None else f"{b / MIB:.1f}"


def per_1000(stream: dict) -> str:
    """Server CPU per 1,000 streamed rows, when the run was long enough for clock ticks to tell."""
    if stream["cpu_s"] < 20 / CLK_TCK:
        return "– (too short to tell)"
    return f"{stream['cpu_us_per_1000']:,.0f} per 1,000 rows"


def goal(met: bool) -> str:
    return "met" if met else "**missed**"


def render(bench: Bench, info: dict, extra: dict, pg_skip) -> str:
    r = bench.results
    bare = r["bare"]["rps"]
    py = r["python"]["rps"]
    rows = []

    def add(measure, result, vs, p50="–", p99="–", p99_80="–", cpu="–", mem="–", goals="–", other="–", cs="–",
            light="–", idle="–"):
        rows.append(f"| {measure} | {result} | {vs} | {p50} | {p99} | {p99_80} | {light} | {cpu} | {cs} | {mem} "
                    f"| {other} | {idle} | {goals} |")

    def reqrow(key, vs=None, goals="–", cpu=None):
        x = r[key]
        mark = "" if x.get("checked", True) else " ⚠"
        rounds = f" (median of {' / '.join(num(v) for v in x['rounds'])})" if len(x.get("rounds", [])) > 1 else ""
        add(x["label"] + mark, f"{num(x['rps'])} req/s{rounds}", vs or f"{x['rps'] / bare:.2f}× bare",
            fmt_ms(x["p50"]), fmt_ms(x["p99"]), fmt_ms(x.get("p99_80")),
            cpu or f"{sum(x['cpu_us'].values()):.1f}", mib(max(x["peak_rss"].values())), goals,
            f"{x['foreign']:.0%}", f"{x['cs']:.1f}",
            f"{fmt_ms(x['p50_light'])} / {fmt_ms(x['p99_light'])}" if "p50_light" in x else "–",
            f"{x['idle_server']:.0%} / {x['idle_load']:.0%}")

    reqrow("bare", vs="1.00 (reference)", goals=f"p99 < 2 ms at 80 %: {goal(r['bare']['p99_80'] < 2)}")
    reqrow("python", vs=f"{py / bare:.3f}× bare",
           goals=f"p99 < 2 ms at 80 %: {goal(r['python']['p99_80'] < 2)}")
    g = r["get_sqlite"]
    reqrow("get_sqlite", vs=f"{g['rps'] / bare:.2f}× bare, {g['rps'] / py:.1f}× Python",
           goals=f"≥ 0.6× bare: {goal(g['rps'] >= 0.6 * bare)}; ≥ 10× Python: {goal(g['rps'] >= 10 * py)}; "
                 f"p99 < 2 ms at 80 %: {goal(g['p99_80'] < 2)}")
    if "get_postgres" in r:
        p = r["get_postgres"]
        reqrow("get_postgres", vs=f"{p['rps'] / bare:.2f}× bare, {p['rps'] / py:.1f}× Python",
               cpu=f"{sum(p['cpu_us'].values()):.1f} + {p['extra_cpu_us']:.1f} in PostgreSQL",
               goals=f"≥ 0.6× bare: {goal(p['rps'] >= 0.6 * bare)}; p99 < 2 ms at 80 %: {goal(p['p99_80'] < 2)}")
    else:
        add("Agora catalog, GetProduct, PostgreSQL", f"skipped: {pg_skip}", "–")
    a = r["available"]
    reqrow("available", vs=f"{a['rps'] / g['rps']:.3f}× catalog GetProduct on SQLite "
                           f"({extra.get('available_count', '?')} offers an answer)",
           goals=f"p99 < 2 ms at 80 %: {goal(a['p99_80'] < 2)}")
    c = r["create"]
    cpu = c["cpu_us"]
    share = cpu["catalog"] / max(1e-9, cpu["offers"] + cpu["catalog"])
    reqrow("create", vs=f"the call to catalog: {share:.0%} of the CPU ({cpu['catalog']:.0f} µs a GetProduct here, "
                        f"{sum(g['cpu_us'].values()):.0f} µs under full load), {fmt_ms(c['catalog_ms'])} of "
                        f"{fmt_ms(c['offers_ms'])} ms handling",
           cpu=f"offers {cpu['offers']:.1f} + catalog {cpu['catalog']:.1f}",
           goals=f"p99 < 2 ms at 80 %: {goal(c['p99_80'] < 2)}")
    for kind in ("get", "list"):
        s, l = r[f"scale_{kind}_small"], r[f"scale_{kind}_large"]
        reqrow(f"scale_{kind}_small", vs="1.00 (reference of the row below)")
        ratio = l["rps"] / s["rps"]
        reqrow(f"scale_{kind}_large", vs=f"{ratio:.2f}× the {SMALL:,}-product row",
               goals=f"flat (≥ 0.8×): {goal(ratio >= 0.8)}")
    sp, sh = r["stream_python"], r["stream_h2load"]
    # Flat: the peak stays within a fixed bound, whatever the size of the catalog streamed.
    flat = sh["hwm"] - sh["rss_before"]
    add(f"StreamProducts, {LARGE:,} products, h2load reader" + ("" if sh["checked"] else " ⚠"),
        f"{num(sh['rows_s'])} rows/s", f"{sh['seconds']:.2f} s a stream", "–", "–", "–",
        per_1000(sh),
        f"{mib(sh['rss_before'])} before, peak {mib(sh['hwm_after_python'])} after 1 stream, "
        f"{mib(sh['hwm'])} after {1 + STREAM_REPEATS}",
        f"≥ 500,000 rows/s: {goal(sh['rows_s'] >= 500_000)}; flat memory (+{mib(flat)} MiB while streaming "
        f"{1 + STREAM_REPEATS} × {sh['stream_bytes'] / 1e6:,.0f} MB, bound {FLAT_BOUND // MIB} MiB): "
        f"{goal(flat < FLAT_BOUND)}")
    add(f"StreamProducts, {LARGE:,} products, Python grpcio reader" + ("" if sp["checked"] else " ⚠"),
        f"{num(sp['rows_s'])} rows/s", f"{sp['seconds']:.2f} s a stream", "–", "–", "–",
        per_1000(sp), f"peak {mib(sh['hwm_after_python'])}",
        "– (the pace of a Python client)")
    for name, s in r["startup"].items():
        add(f"start-up and idle: agora-{name}", f"SERVING in {s['median']:.1f} ms (median of {STARTS})",
            f"p90 {s['p90']:.1f} ms; new database (migrations) {s['first']:.1f} ms", "–", "–", "–", "–",
            f"{mib(s['idle_rss'])} idle",
            f"< 100 ms: {goal(s['median'] < 100)}; < 15 MiB: {goal(s['idle_rss'] < 15 * MIB)}")
    o = r["overload"]
    total = sum(o["grpc_codes"].values())
    re_ = o["grpc_codes"].get("RESOURCE_EXHAUSTED", 0)
    add(o["label"], f"{num(o['rps'])} answers/s, {o['grpc_codes'].get('OK', 0) / max(1e-9, o['seconds']):,.0f} OK/s",
        f"{re_ / max(1, total):.0%} shed RESOURCE_EXHAUSTED (shed counter {o['shed']:,.0f}), "
        f"other errors {total - re_ - o['grpc_codes'].get('OK', 0):,.0f}",
        fmt_ms(o["p50"]), fmt_ms(o["p99"]), "–", f"{sum(o['cpu_us'].values()):.1f}",
        mib(max(o["peak_rss"].values())),
        f"health SERVING {o['polls_serving']}/{o['polls']} polls (slowest {o['poll_max_ms']:.0f} ms): "
        f"{goal(o['polls'] > 0 and o['polls_serving'] == o['polls'])}", f"{o['foreign']:.0%}", f"{o['cs']:.1f}",
        idle=f"{o['idle_server']:.0%} / {o['idle_load']:.0%}")

    head = (
        "| measurement | result | against the reference | p50 ms | p99 ms | p99 ms at 80 % | "
        f"p50 / p99 ms at {LIGHT_RPS} req/s | server CPU µs per call | context switches per call | memory MiB | "
        "other processes on the server core | idle: server core / load core | goal |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    machine_line = (
        f"Machine: {info['nproc']} cores, {info['cpu']}, {info['memory']} RAM, Linux {info['kernel']}; "
        f"load average at the start {info['load']}; {info['date']}. Code: {info['code']}. {info['rustc']}, "
        f"{info['h2load']}, Python {info['python']} with grpcio {info['grpcio']}."
    )
    notes = [
        f"Servers pinned to core {SERVER_CPU}, h2load (one thread) and the harness to core {LOAD_CPU}"
        if PINNED else "Not pinned (fewer than two cores).",
        f"h2load -c {CLIENTS} -m {STREAMS} ({CLIENTS * STREAMS} calls in flight) for capacity, each run about "
        f"{RUN_SECONDS:g} s after a {CALIBRATE_SECONDS} s calibration; the 80 % run uses the same connections "
        f"paced with --rps (h2load sends each connection's share in bursts every 10 ms).",
        "Release profile (not bench-release); services at their defaults (log level info, text).",
        "CPU per call is utime + stime of the server process(es) over the capacity run, divided by the calls.",
    ]
    if bench.failures:
        notes.append("Checks that failed (⚠): " + "; ".join(bench.failures))
    else:
        notes.append("Checks: every call kind answered grpc-status 0 with the expected content to a grpcio client "
                     "before and after its runs, and the services' metrics counted no other code than OK during "
                     "the runs (RESOURCE_EXHAUSTED aside in the overload run).")
    if QUICK:
        notes.append("BENCH_QUICK=1: smoke run with small counts; not figures to compare.")
    if os.environ.get("BENCH_BUILD", "1") == "0":
        notes.append("BENCH_BUILD=0: binaries from target/release as they were, not built from the code named above.")
    return "\n".join([machine_line, "", head, *rows, "", *[f"- {n}" for n in notes]])


def write_benchmarks(table: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


if __name__ == "__main__":
    sys.exit(main())
