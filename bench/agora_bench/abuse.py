"""Abuse: what clients that hold things open cost the server, and what the well-behaved ones still get.

- 1,000 stalled streams: StreamProducts over the large catalog on 40 connections of 25 streams, from
  an HTTP/2 client (the h2 package) that answers the server's frames but never takes the data, so
  every stream stops at its flow-control window; the stream limit is raised to 1,000 for the run
  (its default, 512, would refuse the rest)
- 10,000 idle connections: each sends the HTTP/2 preface and its SETTINGS, then nothing; the
  connection caps (in all and per address) are raised to 10,000 and the handshake timeout to a
  minute for the run (at the defaults, at most 1,024 are kept, new connections take the places of
  the oldest that never called, and a connection that never calls is closed after 10 s)

Each reports the catalog's memory with the abuse in place, beside its memory before, and the
GetProduct rate h2load gets during the abuse, beside the rate it got just before."""

import selectors
import socket
import threading
import time

import h2.config
import h2.connection

from .runner import (BOUND, MIB, QUICK, RUN_SECONDS, Bench, Server, frame, log, metric, start_service)

STALLED_CONNECTIONS, STALLED_PER_CONNECTION = (8, 25) if QUICK else (40, 25)
IDLE_CONNECTIONS = 1_000 if QUICK else 10_000
STREAM_PATH = "/agora.catalog.v1.CatalogService/StreamProducts"
GET_PATH = "/agora.catalog.v1.CatalogService/GetProduct"


def wait_for(condition, bound: float = BOUND) -> bool:
    """Polls `condition` every 50 ms until it holds (True) or `bound` passes (False)."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


class Holders:
    """HTTP/2 connections made by hand and held open. A thread reads them and answers the server
    (SETTINGS, PING) through the h2 state machine, but never acknowledges received data: streams
    stop at their window, as behind a reader that stopped reading."""

    def __init__(self):
        self.selector = selectors.DefaultSelector()
        self.connections: list[tuple[socket.socket, h2.connection.H2Connection]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def open(self, addr: str, big_connection_window: bool = True) -> h2.connection.H2Connection:
        host, port = addr.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.setblocking(False)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        if big_connection_window:
            # The connection may take all its streams' windows: each stream stops at its own.
            conn.increment_flow_control_window(2**31 - 1 - 65_535)
        with self.lock:
            self.send(sock, conn)
            self.connections.append((sock, conn))
            self.selector.register(sock, selectors.EVENT_READ, conn)
        return conn

    def stream(self, sock_conn_index: int, addr: str, path: str, body: bytes) -> None:
        sock, conn = self.connections[sock_conn_index]
        with self.lock:
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":authority", addr), (":path", path),
                                    ("content-type", "application/grpc"), ("te", "trailers")])
            conn.send_data(sid, body, end_stream=True)
            self.send(sock, conn)

    @staticmethod
    def send(sock: socket.socket, conn: h2.connection.H2Connection) -> None:
        data = conn.data_to_send()
        while data:
            try:
                sent = sock.send(data)
                data = data[sent:]
            except BlockingIOError:
                time.sleep(0.001)

    def read(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.selector.select(timeout=0.1):
                sock, conn = key.fileobj, key.data
                try:
                    data = sock.recv(65_536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                with self.lock:
                    if not data:
                        self.selector.unregister(sock)
                        continue
                    try:
                        conn.receive_data(data)  # data frames stay unacknowledged
                        self.send(sock, conn)
                    except Exception:
                        self.selector.unregister(sock)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for sock, _ in self.connections:
            sock.close()


def served_rate(bench: Bench, catalog: Server, body: bytes) -> float:
    """GetProduct req/s from h2load for one run."""
    return bench.h2.run(catalog.grpc, GET_PATH, body, duration=max(1, round(RUN_SECONDS)))["rps"]


def measured(bench: Bench, catalog: Server, get_body: bytes, count: int, gauge: str, what: str, hold,
             settle=None) -> dict:
    """GetProduct's rate and the catalog's memory before `hold(holders)` opens `count` of `what`, and
    while they are held: once the catalog's `gauge` counts them all (and `settle()` holds, if given)."""
    holders = Holders()
    try:
        rate_before = served_rate(bench, catalog, get_body)
        rss_before = catalog.status("VmRSS")
        log(f"abuse: {count:,} {what}")
        hold(holders)
        opened = wait_for(lambda: metric(catalog.metrics(), gauge) >= count)
        if settle:
            wait_for(settle)
        rss = catalog.status("VmRSS")
        rate_during = served_rate(bench, catalog, get_body)
        if not opened:
            bench.failures.append(f"abuse: only {metric(catalog.metrics(), gauge):.0f} of {count:,} {what}")
        return {"count": count, "rss_before": rss_before, "rss": rss, "hwm": catalog.status("VmHWM"),
                "rate_before": rate_before, "rate_during": rate_during, "each": (rss - rss_before) / count,
                "checked": opened}
    finally:
        holders.close()
        catalog.stop()


def stalled_streams(bench: Bench, large_db, get_body: bytes, stream_body: bytes) -> dict:
    total = STALLED_CONNECTIONS * STALLED_PER_CONNECTION
    catalog = start_service(bench.procs, "catalog-stalled", "catalog", f"sqlite:{large_db}",
                            AGORA_STREAM_LIMIT=total).wait_serving()

    def hold(holders: Holders) -> None:
        for i in range(STALLED_CONNECTIONS):
            holders.open(catalog.grpc)
            for _ in range(STALLED_PER_CONNECTION):
                holders.stream(i, catalog.grpc, STREAM_PATH, stream_body)

    rows = [-1.0]

    def still() -> bool:
        """Every stream has filled its window: the rows read stop growing."""
        now = metric(catalog.metrics(), "agora_catalog_stream_rows_read_total")
        quiet, rows[0] = now == rows[0], now
        time.sleep(0.5)
        return quiet

    return measured(bench, catalog, get_body, total, "agora_grpc_server_streams",
                    f"stalled StreamProducts streams on {STALLED_CONNECTIONS} connections", hold, still)


def idle_connections(bench: Bench, small_db, get_body: bytes) -> dict:
    catalog = start_service(bench.procs, "catalog-idle-conns", "catalog", f"sqlite:{small_db}",
                            AGORA_MAX_CONNECTIONS=IDLE_CONNECTIONS + 100,
                            AGORA_MAX_CONNECTIONS_PER_PEER=IDLE_CONNECTIONS + 100, AGORA_HANDSHAKE_TIMEOUT_MS=60_000
                            ).wait_serving()

    def hold(holders: Holders) -> None:
        for _ in range(IDLE_CONNECTIONS):
            holders.open(catalog.grpc, big_connection_window=False)

    return measured(bench, catalog, get_body, IDLE_CONNECTIONS, "agora_grpc_server_connections",
                    "idle connections", hold)


def abuse(bench: Bench, data, get_body: bytes) -> None:
    cat = bench.client.catalog
    stream_body = frame(cat.StreamProductsRequest())
    bench.results["abuse_stalled"] = stalled_streams(bench, data.large_db, get_body, stream_body)
    bench.results["abuse_idle"] = idle_connections(bench, data.small_db, get_body)


def rows(rows_) -> None:
    """The two abuse rows of the table."""
    from .report import goal, mib, num
    s, i = rows_.r["abuse_stalled"], rows_.r["abuse_idle"]
    for key, x, what, unit in (("stalled", s, f"{s['count']:,} stalled StreamProducts streams", "stream"),
                               ("idle", i, f"{i['count']:,} idle connections", "connection")):
        per = x["each"]
        ratio = x["rate_during"] / x["rate_before"] if x["rate_before"] else 0
        rows_.add(f"abuse: {what}" + ("" if x["checked"] else " ⚠"),
                  f"GetProduct {num(x['rate_during'])} req/s during",
                  f"{ratio:.2f}× the {num(x['rate_before'])} req/s just before",
                  mem=f"{mib(x['rss_before'])} before, {mib(x['rss'])} with them ({per / 1024:,.1f} KiB a {unit})",
                  goals=f"memory bounded ({'< 256 MiB' if key == 'stalled' else '< 512 MiB'}): "
                        f"{goal(x['rss'] < (256 if key == 'stalled' else 512) * MIB)}; "
                        f"served ≥ 0.8×: {goal(ratio >= 0.8)}")
